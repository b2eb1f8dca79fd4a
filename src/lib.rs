//! pullsecret-injector: a mutating admission webhook that adds to each new Pod exactly the
//! image pull secrets the kubelet would use for its images.
//!
//! The core is pure (`image`, `matching`, `patch`, `admission`); `server`, `admin` and `tls`
//! are the edges.

pub mod admin;
pub mod admission;
pub mod certkeeper;
pub mod cli;
pub mod config;
pub mod explain;
pub mod image;
pub mod listen;
pub mod matching;
pub mod metrics;
pub mod patch;
pub mod preview;
pub mod replicate;
pub mod selfcert;
pub mod server;
pub mod telemetry;
pub mod tls;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::replicate::Cluster;
use crate::server::{AppState, ServeError};
use crate::tls::{CertResolver, CertificateFiles};

/// Sockets bound before `run`, so that callers (and tests) choose ports without races.
pub struct Listeners {
    pub webhook: TcpListener,
    pub admin: TcpListener,
}

/// Everything `run` serves with.
pub struct Service {
    pub settings: Arc<Settings>,
    /// The certificate files to serve and re-read; `None` when the certificates are
    /// self-managed in a Secret (`certificates.mode: self`).
    pub cert_files: Option<Arc<CertificateFiles>>,
    pub metrics: Arc<Metrics>,
    /// Present when the config needs cluster state (sources, namespace selectors).
    pub cluster: Option<Arc<Cluster>>,
    /// This replica's name in the leader-election Lease.
    pub identity: String,
}

/// Serves the webhook and the admin endpoints until `shutdown` fires, then drains; while
/// serving, competes for the Lease and replicates source secrets when it holds it.
pub async fn run(
    service: Service,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let Service {
        settings,
        cert_files,
        metrics,
        cluster,
        identity,
    } = service;
    let resolver = cert_files
        .as_ref()
        .map_or_else(|| Arc::new(CertResolver::empty()), |files| files.resolver());
    let mut state = AppState::new(Arc::clone(&settings), Arc::clone(&metrics), cluster.clone());
    state.certificate = Some(Arc::clone(&resolver));
    let tls_config = resolver
        .server_config()
        .map_err(|e| ServeError::Accept(std::io::Error::other(e)))?;

    // The admin side outlives the drain so that metrics stay scrapeable until exit.
    let background = CancellationToken::new();
    let watcher = match (&cert_files, &cluster, &settings.certificates) {
        (Some(files), _, _) => tokio::spawn(Arc::clone(files).watch(
            settings.reload_interval(),
            Arc::clone(&metrics),
            background.clone(),
        )),
        (None, Some(cluster), Some(certificates)) => tokio::spawn(certkeeper::follow_secret(
            cluster.client(),
            settings.namespace.clone(),
            certificates.clone(),
            Arc::clone(&resolver),
            Arc::clone(&metrics),
            background.clone(),
        )),
        _ => tokio::spawn(async {}),
    };
    let admin = tokio::spawn(admin::serve(
        listeners.admin,
        state.clone(),
        background.clone(),
    ));
    let replicator = cluster.map(|cluster| {
        tokio::spawn(replicate::controller::run_with_leader_election(
            cluster,
            identity,
            shutdown.clone(),
        ))
    });

    let served = server::serve_tls(listeners.webhook, tls_config, state, shutdown).await;
    if let Some(replicator) = replicator {
        let _ = replicator.await;
    }
    background.cancel();
    let _ = watcher.await;
    let admin_result = admin.await;
    served?;
    match admin_result {
        Ok(result) => result,
        Err(join) => Err(ServeError::Admin(std::io::Error::other(join))),
    }
}

/// The Lease identity: the pod's name in a cluster ($PULLSECRET_INJECTOR_POD_NAME, or the hostname, which is the
/// pod's name), with the process id to tell apart several processes on one machine.
pub fn identity() -> String {
    let host = std::env::var("PULLSECRET_INJECTOR_POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pullsecret-injector".to_string());
    format!("{host}-{}", std::process::id())
}
