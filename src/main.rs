use std::process::ExitCode;

use clap::Parser;
use pullsecret_injector::cli::{Cli, Command};
use pullsecret_injector::commands;
use pullsecret_injector::telemetry;

/// Exit code for input the user must fix: bad config, bad documents.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, &cli.log_level);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Serve(args) => commands::serve::serve(args),
        Command::Mutate(args) => commands::mutate::mutate(args),
        Command::Match(args) => commands::match_images::match_images(args),
    };
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
