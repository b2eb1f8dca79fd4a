use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;
use pullsecret_injector::cli::{Cli, Command};
use pullsecret_injector::commands::{self, Environment};
use pullsecret_injector::telemetry::{self, LogFormat};

/// Exit code for input the user must fix: bad config, bad documents.
const EXIT_USAGE: u8 = 2;
/// `match`: an image matches no secret.
const EXIT_UNMATCHED: u8 = 1;

/// A review allocates and frees dozens of small objects (the decoded request, the answer,
/// the log line): with glibc's malloc that was a tenth of a review's CPU (BENCHMARKS.md,
/// "Issue 16, third pass").
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = telemetry::init(cli.log_format, cli.log_level.as_deref());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let non_empty = |value: String| Some(value).filter(|v| !v.trim().is_empty());
    // Every variable of ours is prefixed; the chart sets these two from the Downward API.
    let environment = Environment {
        pod_namespace: std::env::var("PULLSECRET_INJECTOR_POD_NAMESPACE")
            .ok()
            .and_then(non_empty),
        pod_name: std::env::var("PULLSECRET_INJECTOR_POD_NAME")
            .ok()
            .and_then(non_empty)
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok()),
    };
    let result = match cli.command {
        Command::Serve(args) => {
            commands::serve::serve(args, &environment).map(|()| ExitCode::SUCCESS)
        }
        Command::Mutate(args) => {
            commands::mutate::mutate(args, &environment).map(|()| ExitCode::SUCCESS)
        }
        Command::Match(args) => {
            commands::match_images::match_images(args, &environment).map(|all_matched| {
                if all_matched {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_UNMATCHED)
                }
            })
        }
    };
    let (message, code) = match result {
        Ok(code) => return code,
        Err(error) if error.is_usage() => (error.to_string(), ExitCode::from(EXIT_USAGE)),
        Err(error) => (error.to_string(), ExitCode::FAILURE),
    };
    match cli.log_format {
        // One JSON line, like every other: log pipelines parse what they are given.
        LogFormat::Json => tracing::error!(error = %message, "fatal"),
        LogFormat::Text => eprintln!("error: {message}"),
    }
    // The last lines out, the fatal one among them.
    drop(logs);
    code
}
