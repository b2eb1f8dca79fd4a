//! `serve`: the config, the certificate files and the credential provider plugins checked,
//! the listeners bound, then `crate::run` until SIGTERM or SIGINT.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{CommandError, Environment, load_settings};
use crate::cli::ServeArgs;
use crate::config::{ServingCertificate, TlsConfig};
use crate::kubernetes::Clients;
use crate::metrics::Metrics;
use crate::tls::CertificateFiles;
use crate::{CertificateSource, Listeners, Service, run};

pub fn serve(args: ServeArgs, environment: &Environment) -> Result<(), CommandError> {
    let settings = load_settings(&args.config, environment, |config| {
        if let Some(listen) = args.listen {
            config.listen = listen.to_string();
        }
        if let Some(listen) = args.metrics_listen {
            config.metrics_listen = listen.to_string();
        }
        if args.tls_cert_file.is_some() || args.tls_key_file.is_some() {
            let tls = config.tls.get_or_insert_with(|| TlsConfig {
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
    let certificates = match settings
        .check_serving_files()
        .map_err(|e| CommandError::Usage(e.to_string()))?
    {
        ServingCertificate::Files(tls) => CertificateSource::Files {
            files: Arc::new(
                CertificateFiles::load(&tls.cert_file, &tls.key_file)
                    .map_err(|e| CommandError::Usage(e.to_string()))?,
            ),
            reload_interval: settings.reload_interval(),
        },
        ServingCertificate::SelfManaged(config) => CertificateSource::SelfManaged(config.clone()),
    };
    let credential_plans = settings
        .credential_plans()
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    let settings = Arc::new(settings);

    let runtime = runtime_builder()
        .enable_all()
        .build()
        .map_err(CommandError::io("starting the async runtime"))?;
    let cluster_runtime =
        cluster_runtime().map_err(CommandError::io("starting the cluster's async runtime"))?;
    let cluster_handle = cluster_runtime.handle().clone();
    let served = runtime.block_on(async move {
        let webhook = crate::listen::bind(settings.listen)
            .map_err(CommandError::io(format!(
                "binding listen address {}",
                settings.listen
            )))?;
        let admin = crate::listen::bind(settings.metrics_listen)
            .map_err(CommandError::io(format!(
                "binding metricsListen address {}",
                settings.metrics_listen
            )))?;
        let local = |listener: &tokio::net::TcpListener| {
            listener
                .local_addr()
                .map_err(CommandError::io("reading a bound address"))
        };
        tracing::info!(
            listen = %local(&webhook)?,
            metrics_listen = %local(&admin)?,
            secrets = settings.secrets.len(),
            patterns = settings.keyring.len(),
            "serving"
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let clients = if settings.needs_cluster() {
            // In-cluster config, or $KUBECONFIG / ~/.kube/config outside a cluster.
            let why = "connecting to the Kubernetes API (needed for secret sources, namespace selectors and self-managed certificates)";
            let config = kube::Config::infer()
                .await
                .map_err(kube::Error::InferConfig)
                .map_err(CommandError::kube(why))?;
            Some(
                Clients::new(config, settings.replication_rate_limit)
                    .map_err(CommandError::kube(why))?,
            )
        } else {
            None
        };
        let service = Service {
            settings,
            certificates,
            metrics: Arc::new(Metrics::new()),
            clients,
            identity: environment.identity(),
            credential_plans,
            cluster_runtime: cluster_handle,
        };
        run(service, Listeners { webhook, admin }, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    });
    // `run` has joined the leader's tasks; the watches stop with their runtime.
    cluster_runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served
}

/// The runtime of the cluster's watches, the leader election and the leader's replication:
/// a thread of its own, so that a burst of watch events or of copies to write never holds
/// an admission behind it in a worker's queue, and the kernel, not tokio, shares the CPU
/// between the two (admission's threads, mostly asleep, get it as soon as they wake).
fn cluster_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cluster")
        .on_thread_start(lower_this_threads_priority)
        .enable_all()
        .build()
}

/// How much nicer than admission's threads the cluster's are. On a CPU both want, a woken
/// admission worker preempts a converging replication at once and gets about ten times its
/// share (nice 0 against 10), so a pod's review never waits behind a first sync; when
/// admission sleeps, which is nearly always, replication has the CPU to itself.
pub(crate) const CLUSTER_NICENESS: i32 = 10;

/// Linux keeps a nice value per thread (setpriority(2) with a thread id), so this lowers the
/// calling thread only. Lowering one's own priority needs no privilege; if it fails anyway
/// (a seccomp profile), replication runs at admission's priority, as it did before.
fn lower_this_threads_priority() {
    let thread = rustix::thread::gettid();
    let lowered = rustix::process::getpriority_process(Some(thread)).and_then(|nice| {
        rustix::process::setpriority_process(Some(thread), (nice + CLUSTER_NICENESS).min(19))
    });
    if let Err(error) = lowered {
        tracing::warn!(%error, "could not lower the cluster thread's CPU priority");
    }
}

/// One worker per CPU the process may use, and never fewer than two: with one (a pod limited
/// to a CPU, or pinned), a long poll of replication (a page of 500 namespaces decoded, a burst
/// of watch events) holds every admission behind it, where with two the kernel time-slices
/// them. `make scale` with the injector on one core, 10,000 namespaces: admission p99 while
/// converging 72.7 ms with one worker, 6.3 with two (BENCHMARKS.md, "At scale").
/// `TOKIO_WORKER_THREADS`, tokio's own variable, still decides when it is set.
pub fn runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        builder.worker_threads(cpus.max(2));
    }
    builder
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

#[cfg(test)]
mod tests {
    #[test]
    fn admission_never_has_a_single_worker_to_share_with_replication() {
        // CI and test runs do not set TOKIO_WORKER_THREADS; the variable would decide if
        // they did.
        if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
            return;
        }
        let runtime = super::runtime_builder().build().unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(runtime.metrics().num_workers(), cpus.max(2));
    }

    #[test]
    fn the_cluster_threads_yield_the_cpu_to_admission() {
        let ours = rustix::process::getpriority_process(None).unwrap();
        let runtime = super::cluster_runtime().unwrap();
        let (theirs, blocking) = runtime.block_on(async {
            let worker = tokio::spawn(async {
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
            });
            let blocking = tokio::task::spawn_blocking(|| {
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
            });
            (worker.await.unwrap(), blocking.await.unwrap())
        });
        let expected = (ours + super::CLUSTER_NICENESS).min(19);
        assert_eq!(theirs, expected, "the cluster runtime's worker");
        assert_eq!(blocking, expected, "its blocking threads");
        // Only those threads: the test's own (admission's, in the server) is untouched.
        assert_eq!(
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap(),
            ours
        );
    }
}
