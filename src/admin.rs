//! The plain-HTTP admin listener: `/metrics` for Prometheus, `/healthz` and `/readyz` for
//! the kubelet's probes.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::{AppState, ServeError, readyz};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Read at scrape time: whichever path swapped the certificate (files, the Secret), the
    // gauge shows the one being served.
    if let Some(not_after) = state.certificate.as_ref().and_then(|c| c.not_after()) {
        state.metrics.set_certificate_expiry(not_after);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(ServeError::Admin)
}
