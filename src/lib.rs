//! pullsecret-injector: a mutating admission webhook that adds to each new Pod exactly the
//! image pull secrets the kubelet would use for its images.
//!
//! The core is pure (`image`, `matching`, `patch`, `admission`); `server`, `admin` and `tls`
//! are the edges.

pub mod admin;
pub mod admission;
pub mod certificates;
pub mod cli;
pub mod commands;
pub mod config;
pub mod image;
pub mod kubelet_url;
pub mod kubernetes;
pub mod leader;
pub mod listen;
pub mod matching;
pub mod metrics;
pub mod patch;
pub mod provider;
pub mod replicate;
pub mod server;
pub mod telemetry;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{CertificatesConfig, Settings};
use crate::metrics::Metrics;
use crate::replicate::Cluster;
use crate::server::{AppState, ServeError};
use crate::tls::{CertResolver, CertificateFiles, TlsError};

/// Sockets bound before `run`, so that callers (and tests) choose ports without races.
pub struct Listeners {
    pub webhook: TcpListener,
    pub admin: TcpListener,
}

/// Where the serving certificate comes from.
pub enum CertificateSource {
    /// PEM files (`tls`), loaded before `run` and re-read every `reload_interval`.
    Files {
        files: Arc<CertificateFiles>,
        reload_interval: Duration,
    },
    /// A Secret in the cluster (the config's `certificates` block) that the leader keeps
    /// and every replica serves; handshakes fail until it holds a pair.
    SelfManaged(CertificatesConfig),
}

/// Everything `run` serves with.
pub struct Service {
    pub settings: Arc<Settings>,
    pub certificates: CertificateSource,
    pub metrics: Arc<Metrics>,
    /// Cluster access, when the config needs it (sources, namespace selectors, self-managed
    /// certificates).
    pub clients: Option<kubernetes::Clients>,
    /// This replica's name in the leader-election Lease.
    pub identity: String,
    /// What the Lease holder runs for entries with a `provider`
    /// ([`Settings::credential_plans`]).
    pub credential_plans: Vec<provider::CredentialPlan>,
    /// Where the cluster's watches, the leader election and the leader's tasks run (a
    /// runtime of their own in `serve`; `Handle::current()` keeps them beside admission).
    pub cluster_runtime: tokio::runtime::Handle,
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error("serving certificate: {0}")]
    Tls(#[from] TlsError),
    #[error("self-managed certificates need cluster access")]
    NoCluster,
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("{task} stopped unexpectedly: {reason}")]
    Task { task: &'static str, reason: String },
}

/// The composition root: starts the cluster caches, the certificate source, the admin
/// listener, the leader-held tasks and the webhook server; serves until `shutdown` fires,
/// then drains and stops them all. Every task's failure is logged; the first is returned.
pub async fn run(
    service: Service,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let Service {
        settings,
        certificates,
        metrics,
        clients,
        identity,
        credential_plans,
        cluster_runtime,
    } = service;
    let resolver = match &certificates {
        CertificateSource::Files { files, .. } => files.resolver(),
        CertificateSource::SelfManaged(_) => Arc::new(CertResolver::empty()),
    };
    let tls_config = resolver.server_config()?;
    if matches!(certificates, CertificateSource::SelfManaged(_)) && clients.is_none() {
        return Err(RunError::NoCluster);
    }
    let cluster = clients.map(|clients| {
        // Its watches are spawned where it starts.
        let _on_the_cluster_runtime = cluster_runtime.enter();
        Cluster::start(
            clients,
            Arc::clone(&settings),
            Arc::clone(&metrics),
            shutdown.clone(),
        )
    });
    let mut state = AppState::new(Arc::clone(&settings), Arc::clone(&metrics), cluster.clone());
    state.certificate = Some(Arc::clone(&resolver));

    // The admin side and the certificate outlive the drain, so that metrics stay scrapeable
    // and in-flight handshakes keep their certificate until exit.
    let background = CancellationToken::new();
    let certificate = match &certificates {
        CertificateSource::Files {
            files,
            reload_interval,
        } => tokio::spawn(Arc::clone(files).watch(
            *reload_interval,
            Arc::clone(&metrics),
            background.clone(),
        )),
        CertificateSource::SelfManaged(config) => {
            let cluster = cluster.as_ref().ok_or(RunError::NoCluster)?;
            tokio::spawn(certificates::keeper::follow_secret(
                cluster.client(),
                settings.namespace.clone(),
                config.clone(),
                Arc::clone(&resolver),
                Arc::clone(&metrics),
                background.clone(),
            ))
        }
    };
    let admin = tokio::spawn(admin::serve(
        listeners.admin,
        state.clone(),
        background.clone(),
    ));
    let leader = cluster.as_ref().map(|cluster| {
        let self_managed = match &certificates {
            CertificateSource::SelfManaged(config) => Some(config.clone()),
            CertificateSource::Files { .. } => None,
        };
        cluster_runtime.spawn(leader::lead(
            cluster.client(),
            Arc::clone(&settings),
            identity.clone(),
            Arc::clone(&metrics),
            shutdown.clone(),
            leader_duties(
                Arc::clone(cluster),
                identity,
                self_managed,
                credential_plans.into(),
            ),
        ))
    });

    let served = server::serve_tls(listeners.webhook, tls_config, state, shutdown).await;
    let mut failures = Vec::new();
    if let Err(error) = served {
        tracing::error!(%error, "the webhook server failed");
        failures.push(RunError::Serve(error));
    }
    if let Some(leader) = leader {
        failures.extend(joined("leader election", leader).await.err());
    }
    background.cancel();
    failures.extend(joined("certificate source", certificate).await.err());
    match joined("admin listener", admin).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(%error, "the admin listener failed");
            failures.push(RunError::Serve(error));
        }
        Err(failure) => failures.push(failure),
    }
    match failures.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(()),
    }
}

/// What the Lease holder does each time it wins the Lease, until its term ends: keep the
/// self-managed certificate, run the credential provider plugins, and replicate when an
/// entry has a source (or a provider).
fn leader_duties(
    cluster: Arc<Cluster>,
    identity: String,
    self_managed: Option<CertificatesConfig>,
    credential_plans: Arc<[provider::CredentialPlan]>,
) -> impl Fn(CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    move |term: CancellationToken| {
        let (cluster, identity, self_managed, plans) = (
            Arc::clone(&cluster),
            identity.clone(),
            self_managed.clone(),
            Arc::clone(&credential_plans),
        );
        Box::pin(async move {
            let settings = Arc::clone(cluster.settings());
            let keeper = self_managed.map(|config| {
                tokio::spawn(certificates::keeper::keep(
                    cluster.client(),
                    settings.namespace.clone(),
                    config,
                    Arc::clone(cluster.metrics()),
                    term.clone(),
                ))
            });
            let refresher = (!plans.is_empty()).then(|| {
                tokio::spawn(provider::refresh::keep_all(
                    Arc::clone(&cluster),
                    plans,
                    identity.clone(),
                    term.clone(),
                ))
            });
            if !settings.copy_names().is_empty() {
                let replication = tokio::spawn(replicate::controller::run(
                    Arc::clone(&cluster),
                    identity,
                    term,
                ));
                let _ = joined("replication", replication).await;
            }
            if let Some(refresher) = refresher {
                let _ = joined("credential refresh", refresher).await;
            }
            if let Some(keeper) = keeper {
                let _ = joined("certificate keeper", keeper).await;
            }
        })
    }
}

/// Waits for a task; a panic or cancellation is logged with the task's name and returned.
async fn joined<T>(task: &'static str, handle: JoinHandle<T>) -> Result<T, RunError> {
    handle.await.map_err(|error| {
        tracing::error!(task, %error, "task failed");
        RunError::Task {
            task,
            reason: error.to_string(),
        }
    })
}
