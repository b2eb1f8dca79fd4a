use std::process::ExitCode;

use clap::Parser;
use pullsecret_injector::cli::{Cli, Command};
use pullsecret_injector::commands::{self, Environment};
use pullsecret_injector::telemetry;

/// Exit code for input the user must fix: bad config, bad documents.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = telemetry::init(cli.log_format, &cli.log_level);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let non_empty = |value: String| Some(value).filter(|v| !v.trim().is_empty());
    let environment = Environment {
        pod_namespace: std::env::var("POD_NAMESPACE").ok().and_then(non_empty),
        pod_name: std::env::var("POD_NAME")
            .ok()
            .and_then(non_empty)
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok()),
    };
    let result = match cli.command {
        Command::Serve(args) => commands::serve::serve(args, &environment),
        Command::Mutate(args) => commands::mutate::mutate(args, &environment),
        Command::Match(args) => commands::match_images::match_images(args, &environment),
    };
    // The last lines out before the error, if any.
    drop(logs);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is_usage() => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
