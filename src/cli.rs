//! Command-line interface: `serve`, `mutate` and `match`.
//!
//! A flag wins over its environment variable, and every variable is prefixed
//! `PULLSECRET_INJECTOR_`. A flag given twice takes its last value, so that the chart's
//! `extraArgs` can override the arguments it sets.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "pullsecret-injector",
    version,
    about,
    propagate_version = true,
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "PULLSECRET_INJECTOR_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log level or tracing filter (`info`, `info,pullsecret_injector=debug`). Without it,
    /// `RUST_LOG`, then `info`.
    #[arg(long, global = true, env = "PULLSECRET_INJECTOR_LOG_LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook server.
    Serve(ServeArgs),
    /// Show what the webhook would do to Pods, AdmissionReviews or workloads, offline.
    Mutate(MutateArgs),
    /// Explain which secrets match each image, and through which pattern.
    Match(MatchArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (YAML).
    #[arg(long, env = "PULLSECRET_INJECTOR_CONFIG")]
    pub config: PathBuf,
    /// Override `listen`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Override `metricsListen`.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Override `tls.certFile`.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// Override `tls.keyFile`.
    #[arg(long)]
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Yaml,
    Json,
    /// The JSON patch per document instead of the mutated document.
    Patch,
}

#[derive(Debug, Args)]
pub struct MutateArgs {
    #[arg(long, env = "PULLSECRET_INJECTOR_CONFIG")]
    pub config: PathBuf,
    /// File with one or more YAML or JSON documents; `-` reads standard input.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    pub file: String,
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Yaml)]
    pub output: OutputFormat,
    /// Read source secrets through this kubeconfig, for entries whose patterns are their
    /// sources' `auths` keys. Default: `$KUBECONFIG`, then the in-cluster configuration.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MatchArgs {
    #[arg(long, env = "PULLSECRET_INJECTOR_CONFIG")]
    pub config: PathBuf,
    /// Image references, as written in a pod spec.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// `text` for people, `json` for scripts.
    #[arg(short, long, value_enum, default_value_t = ReportFormat::Text)]
    pub output: ReportFormat,
    /// Exit 0 even when an image matches no secret (a check of the config alone, as the
    /// chart's `helm test` does).
    #[arg(long)]
    pub allow_unmatched: bool,
    /// Read source secrets through this kubeconfig, for entries whose patterns are their
    /// sources' `auths` keys. Default: `$KUBECONFIG`, then the in-cluster configuration.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}
