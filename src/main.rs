use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use pullsecret_injector::cli::{
    Cli, Command, MatchArgs, MutateArgs, OutputFormat, ReportFormat, ServeArgs,
};
use pullsecret_injector::config::{Config, Settings};
use pullsecret_injector::matching::Keyring;
use pullsecret_injector::metrics::Metrics;
use pullsecret_injector::replicate::Cluster;
use pullsecret_injector::replicate::keyring;
use pullsecret_injector::telemetry::LogFormat;
use pullsecret_injector::tls::CertificateFiles;
use pullsecret_injector::{Listeners, Service, explain, identity, listen, preview, run, telemetry};
use tokio_util::sync::CancellationToken;

/// Exit code for input the user must fix: bad config, bad documents.
const EXIT_USAGE: u8 = 2;
/// `match`: an image matches no secret.
const EXIT_UNMATCHED: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, cli.log_level.as_deref());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Serve(args) => serve(args).map(|()| ExitCode::SUCCESS),
        Command::Mutate(args) => mutate(args).map(|()| ExitCode::SUCCESS),
        Command::Match(args) => match_images(args),
    };
    let (message, code) = match result {
        Ok(code) => return code,
        Err(Failure::Usage(message)) => (message, ExitCode::from(EXIT_USAGE)),
        Err(Failure::Runtime(error)) => (format!("{error:#}"), ExitCode::FAILURE),
    };
    match cli.log_format {
        // One JSON line, like every other: log pipelines parse what they are given.
        LogFormat::Json => tracing::error!(error = %message, "fatal"),
        LogFormat::Text => eprintln!("error: {message}"),
    }
    code
}

enum Failure {
    Usage(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Runtime(e)
    }
}

fn load_settings(path: &Path, overrides: impl FnOnce(&mut Config)) -> Result<Settings, Failure> {
    let mut config = Config::from_file(path).map_err(|e| Failure::Usage(e.to_string()))?;
    overrides(&mut config);
    config.validate().map_err(|e| Failure::Usage(e.to_string()))
}

fn serve(args: ServeArgs) -> Result<(), Failure> {
    let settings = load_settings(&args.config, |config| {
        if let Some(listen) = args.listen {
            config.listen = listen.to_string();
        }
        if let Some(listen) = args.metrics_listen {
            config.metrics_listen = listen.to_string();
        }
        if args.tls_cert_file.is_some() || args.tls_key_file.is_some() {
            let tls = config
                .tls
                .get_or_insert_with(|| pullsecret_injector::config::TlsConfig {
                    cert_file: Default::default(),
                    key_file: Default::default(),
                    reload_interval_seconds: 2,
                });
            if let Some(cert) = args.tls_cert_file {
                tls.cert_file = cert;
            }
            if let Some(key) = args.tls_key_file {
                tls.key_file = key;
            }
        }
    })?;
    let tls = settings
        .check_serving_files()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let cert_files = match tls {
        Some(tls) => Some(Arc::new(
            CertificateFiles::load(&tls.cert_file, &tls.key_file)
                .map_err(|e| Failure::Usage(e.to_string()))?,
        )),
        None => None,
    };
    let settings = Arc::new(settings);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let webhook = listen::bind(settings.listen)
            .with_context(|| format!("binding listen address {}", settings.listen))?;
        let admin = listen::bind(settings.metrics_listen)
            .with_context(|| {
                format!("binding metricsListen address {}", settings.metrics_listen)
            })?;
        tracing::info!(
            listen = %webhook.local_addr()?,
            metrics_listen = %admin.local_addr()?,
            secrets = settings.secrets.len(),
            patterns = settings.keyring.len(),
            "serving"
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let metrics = Arc::new(Metrics::new());
        let cluster = if settings.needs_cluster() {
            // In-cluster config, or $KUBECONFIG / ~/.kube/config outside a cluster.
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (needed for secret sources and namespace selectors)")?;
            Some(Cluster::start(
                client,
                Arc::clone(&settings),
                Arc::clone(&metrics),
                shutdown.clone(),
            ))
        } else {
            None
        };
        let service = Service {
            settings,
            cert_files,
            metrics,
            cluster,
            identity: identity(),
        };
        run(service, Listeners { webhook, admin }, shutdown).await?;
        tracing::info!("stopped");
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = name,
        "shutting down: no new connections, draining in-flight requests"
    );
    shutdown.cancel();
}

fn mutate(args: MutateArgs) -> Result<(), Failure> {
    let settings = load_settings(&args.config, |_| {})?;
    let text = if args.file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Usage(format!("reading standard input: {e}")))?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .map_err(|e| Failure::Usage(format!("reading {}: {e}", args.file)))?
    };
    let keyring = cli_keyring(&settings, args.kubeconfig.as_deref())?;
    let previews = preview::preview_text(&settings, &keyring, &text)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let mut out = String::new();
    for (i, previewed) in previews.iter().enumerate() {
        let rendered = match args.output {
            OutputFormat::Yaml => {
                let yaml =
                    serde_saphyr::to_string(&previewed.document).context("rendering YAML")?;
                if i > 0 {
                    out.push_str("---\n");
                }
                yaml
            }
            OutputFormat::Json => {
                serde_json::to_string_pretty(&previewed.document).context("rendering JSON")? + "\n"
            }
            OutputFormat::Patch => {
                serde_json::to_string(&previewed.patch).context("rendering the patch")? + "\n"
            }
        };
        out.push_str(&rendered);
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing standard output")?;
    Ok(())
}

fn match_images(args: MatchArgs) -> Result<ExitCode, Failure> {
    let settings = load_settings(&args.config, |_| {})?;
    let keyring = cli_keyring(&settings, args.kubeconfig.as_deref())?;
    let reports = explain::reports(&settings, &keyring, &args.images);
    let out = match args.output {
        ReportFormat::Text => explain::render_text(&reports),
        ReportFormat::Json => {
            serde_json::to_string_pretty(&reports).context("rendering JSON")? + "\n"
        }
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing standard output")?;
    if args.allow_unmatched || reports.iter().all(explain::ImageReport::matched) {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(EXIT_UNMATCHED))
    }
}

/// Where `match` and `mutate` read source secrets from: `--kubeconfig`, else `$KUBECONFIG`,
/// else the in-cluster configuration (`kubectl exec` into an injector pod).
enum ClusterAccess {
    Kubeconfig(Box<kube::config::Kubeconfig>, String),
    InCluster(Box<kube::Config>),
    None,
}

fn cluster_access(kubeconfig: Option<&Path>) -> Result<ClusterAccess, Failure> {
    if let Some(path) = kubeconfig {
        let config = kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        return Ok(ClusterAccess::Kubeconfig(
            Box::new(config),
            path.display().to_string(),
        ));
    }
    if let Some(from_env) =
        kube::config::Kubeconfig::from_env().context("reading the kubeconfig in $KUBECONFIG")?
    {
        return Ok(ClusterAccess::Kubeconfig(
            Box::new(from_env),
            "$KUBECONFIG".into(),
        ));
    }
    Ok(
        kube::Config::incluster().map_or(ClusterAccess::None, |config| {
            ClusterAccess::InCluster(Box::new(config))
        }),
    )
}

/// The keyring for `match` and `mutate`: config patterns, plus the sources' `auths` keys
/// read from the cluster when there is one to read from.
fn cli_keyring(settings: &Settings, kubeconfig: Option<&Path>) -> Result<Keyring, Failure> {
    let from_sources: Vec<&str> = settings
        .secrets
        .iter()
        .filter(|s| s.patterns_from_source())
        .map(|s| s.name.as_str())
        .collect();
    if from_sources.is_empty() {
        return Ok(settings.keyring.clone());
    }
    let access = cluster_access(kubeconfig)?;
    if let ClusterAccess::None = access {
        eprintln!(
            "note: {} take their patterns from source secrets; pass --kubeconfig (or set $KUBECONFIG) to read them (they match nothing here)",
            from_sources.join(", ")
        );
        return Ok(settings.keyring.clone());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let sources = runtime.block_on(async {
        let config = match access {
            ClusterAccess::Kubeconfig(kubeconfig, origin) => {
                kube::Config::from_custom_kubeconfig(*kubeconfig, &Default::default())
                    .await
                    .with_context(|| format!("loading the kubeconfig from {origin}"))?
            }
            ClusterAccess::InCluster(config) => *config,
            ClusterAccess::None => return Ok(Default::default()),
        };
        let client = kube::Client::try_from(config).context("creating the Kubernetes client")?;
        let mut sources = std::collections::BTreeMap::new();
        for source in settings.secrets.iter().filter_map(|s| s.source.as_ref()) {
            let api = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
                client.clone(),
                &source.namespace,
            );
            let secret = api
                .get_opt(&source.name)
                .await
                .with_context(|| format!("reading source secret {source}"))?;
            if let Some(secret) = secret {
                sources.insert(source.clone(), Arc::new(secret));
            }
        }
        Ok::<_, anyhow::Error>(sources)
    })?;
    let (keyring, problems) = keyring::build(settings, |source| sources.get(source).cloned());
    for problem in problems {
        eprintln!("note: {problem}");
    }
    Ok(keyring)
}
