//! pullsecret-injector: a mutating admission webhook that adds to each new Pod exactly the
//! image pull secrets the kubelet would use for its images.
//!
//! The core is pure (`image`, `matching`, `patch`, `admission`); `server`, `admin` and `tls`
//! are the edges.

pub mod admin;
pub mod admission;
pub mod cli;
pub mod config;
pub mod explain;
pub mod image;
pub mod matching;
pub mod metrics;
pub mod patch;
pub mod preview;
pub mod server;
pub mod telemetry;
pub mod tls;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::server::{AppState, ServeError};
use crate::tls::CertificateFiles;

/// Sockets bound before `run`, so that callers (and tests) choose ports without races.
pub struct Listeners {
    pub webhook: TcpListener,
    pub admin: TcpListener,
}

/// Serves the webhook and the admin endpoints until `shutdown` fires, then drains.
pub async fn run(
    settings: Arc<Settings>,
    certs: Arc<CertificateFiles>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new());
    let state = AppState::new(Arc::clone(&settings), Arc::clone(&metrics));
    let tls_config = certs
        .server_config()
        .map_err(|e| ServeError::Accept(std::io::Error::other(e)))?;

    // The admin side outlives the drain so that metrics stay scrapeable until exit.
    let background = CancellationToken::new();
    let watcher = tokio::spawn(Arc::clone(&certs).watch(
        settings.reload_interval(),
        Arc::clone(&metrics),
        background.clone(),
    ));
    let admin = tokio::spawn(admin::serve(
        listeners.admin,
        state.clone(),
        background.clone(),
    ));

    let served = server::serve_tls(listeners.webhook, tls_config, state, shutdown).await;
    background.cancel();
    let _ = watcher.await;
    let admin_result = admin.await;
    served?;
    match admin_result {
        Ok(result) => result,
        Err(join) => Err(ServeError::Admin(std::io::Error::other(join))),
    }
}
