//! The webhook listener: tokio-rustls accept loop, hyper connections, the axum router,
//! request limits and the drain on shutdown.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use serde_json::json;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;

use crate::admission::{self, ClusterView};
use crate::config::{Limits, Settings};
use crate::metrics::Metrics;
use crate::replicate::{self, Cluster};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("accepting connections failed: {0}")]
    Accept(io::Error),
    #[error("metrics listener failed: {0}")]
    Admin(io::Error),
}

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub cluster: Option<Arc<Cluster>>,
    /// The serving certificate, when it can be missing (self-managed, not yet created).
    pub certificate: Option<Arc<crate::tls::CertResolver>>,
    /// Ready once the certificate is loaded and the listener bound; false while draining.
    pub ready: Arc<AtomicBool>,
    pub draining: Arc<AtomicBool>,
    /// Bytes of request bodies that may be in memory at once (`limits.maxBufferedBodyBytes`).
    pub body_budget: Arc<Semaphore>,
}

impl AppState {
    pub fn new(
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        let budget = settings
            .limits
            .max_buffered_body_bytes
            .min(Semaphore::MAX_PERMITS);
        Self {
            body_budget: Arc::new(Semaphore::new(budget)),
            settings,
            metrics,
            cluster,
            certificate: None,
            ready: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The webhook's routes, usable without a socket (tests drive it with `oneshot`).
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    protect(routes, &state).with_state(state)
}

/// Clear errors for unknown paths and methods, and a 500 for a handler that panics: the
/// panic costs that one request, never the connection's other requests or the server.
fn protect(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    let panic_metrics = Arc::clone(&state.metrics);
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(
            move |_: Box<dyn std::any::Any + Send>| {
                panic_metrics.bad_request("panic");
                tracing::error!("handler panicked; answered 500");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "internal error while handling the request".to_string(),
                )
            },
        ))
}

pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let synced = state.cluster.as_ref().is_none_or(|c| c.is_synced());
    let certified = state.certificate.as_ref().is_none_or(|c| c.is_loaded());
    if synced
        && certified
        && state.ready.load(Ordering::Relaxed)
        && !state.draining.load(Ordering::Relaxed)
    {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn not_found(State(state): State<AppState>, uri: axum::http::Uri) -> Response {
    state.metrics.bad_request("not_found");
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}; the webhook path is /mutate", uri.path()),
    )
}

async fn method_not_allowed(State(state): State<AppState>, method: axum::http::Method) -> Response {
    state.metrics.bad_request("method_not_allowed");
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("method {method} is not allowed here; /mutate takes POST"),
    )
}

fn error_response(status: StatusCode, reason: &str, message: String) -> Response {
    (
        status,
        axum::Json(json!({ "error": message, "reason": reason })),
    )
        .into_response()
}

/// How the request reached us, for the admission log line.
struct Transport<'a> {
    version: axum::http::Version,
    /// The apiserver's `?timeout=Ns`: its remaining budget for us.
    timeout: Option<&'a str>,
}

// The request whole, not the `HeaderMap` and `Uri` extractors: those clone what the
// request already owns, on every review (and the query's timeout is borrowed from it).
async fn mutate(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let timeout = parts
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("timeout=")));
    let transport = Transport {
        version: parts.version,
        timeout,
    };
    let mut response = mutate_inner(&state, &transport, &parts.headers, body).await;
    if state.draining.load(Ordering::Relaxed) {
        // The apiserver keeps pooled connections to a terminating pod unless told to close.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn mutate_inner(
    state: &AppState,
    transport: &Transport<'_>,
    headers: &HeaderMap,
    mut body: Body,
) -> Response {
    let limits = &state.settings.limits;
    let refuse = |status: StatusCode, reason: &'static str, message: String| {
        state.metrics.bad_request(reason);
        tracing::warn!(status = status.as_u16(), reason, %message, "request refused");
        error_response(status, reason, message)
    };
    // These answer before the body is read to its end: the rest is discarded in the
    // background (see `linger`) so that the answer reaches the client.
    let refuse_early = |body: Body, status: StatusCode, reason: &'static str, message: String| {
        linger(body, refuse(status, reason, message))
    };
    if !is_json(headers) {
        let got = headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_else(|| "none".into());
        return refuse_early(
            body,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type is {got:?}; an AdmissionReview must be sent as application/json"),
        );
    }
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = announced
        && length > limits.max_body_bytes as u64
    {
        return refuse_early(
            body,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "body of {length} bytes is over the limit of {} bytes",
                limits.max_body_bytes
            ),
        );
    }
    // Without a budget, slow senders of large bodies hold maxConnections × maxBodyBytes. The
    // body's known length (Content-Length, or 0 without one; the maximum for a chunked
    // body) is reserved before a byte is read, and a body that does not fit now is refused
    // at once, not queued.
    let reserve = body
        .size_hint()
        .upper()
        .map_or(limits.max_body_bytes, |length| {
            length.min(limits.max_body_bytes as u64) as usize
        });
    let Ok(_reserved) = Arc::clone(&state.body_budget)
        .try_acquire_many_owned(u32::try_from(reserve).unwrap_or(u32::MAX))
    else {
        let in_memory = limits
            .max_buffered_body_bytes
            .saturating_sub(state.body_budget.available_permits());
        let mut response = refuse_early(
            body,
            StatusCode::SERVICE_UNAVAILABLE,
            "body_budget_exhausted",
            format!(
                "{in_memory} bytes of request bodies are in memory already (limits.maxBufferedBodyBytes); retry"
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let read = tokio::time::timeout(
        Duration::from_secs(limits.body_read_timeout_seconds),
        http_body_util::Limited::new(&mut body, limits.max_body_bytes).collect(),
    )
    .await;
    let bytes = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse_early(
                body,
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("body is over the limit of {} bytes", limits.max_body_bytes),
            );
        }
        Ok(Err(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "body_read_error",
                format!("reading the body failed: {e}"),
            );
        }
        Err(_) => {
            // A sender this slow gets no lingering: waiting longer for its bytes is what a
            // slowloris wants, and it is not reading our answer in a hurry either.
            let mut response = refuse(
                StatusCode::REQUEST_TIMEOUT,
                "body_read_timeout",
                format!(
                    "the body did not arrive within {} s",
                    limits.body_read_timeout_seconds
                ),
            );
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };

    let started = Instant::now();
    match review(state, transport, &bytes).await {
        Ok(reviewed) => {
            let elapsed = started.elapsed();
            state
                .metrics
                .admission(reviewed.operation, reviewed.outcome.metric_label(), elapsed);
            for name in reviewed.outcome.injected() {
                state.metrics.injected(name);
            }
            let reason = reviewed.outcome.skip_reason().map(|r| r.metric_label());
            if let Some(reason) = reason {
                state.metrics.skipped(reason);
            }
            tracing::info!(
                uid = %reviewed.uid,
                namespace = %reviewed.namespace,
                pod = %reviewed.name,
                operation = reviewed.operation,
                dry_run = reviewed.dry_run,
                result = reviewed.outcome.metric_label(),
                reason = reason.unwrap_or(""),
                injected = %reviewed.outcome.injected().join(","),
                duration_us = elapsed.as_micros() as u64,
                http_version = ?transport.version,
                timeout = transport.timeout.unwrap_or(""),
                "admission reviewed"
            );
            axum::Json(reviewed.response).into_response()
        }
        Err(Refusal::Review(error)) => refuse(
            StatusCode::BAD_REQUEST,
            error.metric_label(),
            error.to_string(),
        ),
        Err(Refusal::SourcesNotListed(waited)) => {
            // Not ready (`/readyz` says so too): the apiserver applies the failurePolicy,
            // and a pod retried later gets its secrets.
            let mut response = refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "sources_not_listed",
                format!(
                    "the source Secrets have not been read yet (waited {} ms): no decision without their registries; retry",
                    waited.as_millis()
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// Why a review got no decision.
enum Refusal {
    /// The request itself: not an AdmissionReview of a valid pod.
    Review(admission::ReviewError),
    /// The sources had not listed within the budget (how long was waited).
    SourcesNotListed(Duration),
}

impl From<admission::ReviewError> for Refusal {
    fn from(error: admission::ReviewError) -> Self {
        Self::Review(error)
    }
}

/// Decode, look up what the decision needs, decide, and make sure the referenced Secrets
/// exist before answering (not for dry runs: `sideEffects: NoneOnDryRun`).
async fn review(
    state: &AppState,
    transport: &Transport<'_>,
    body: &[u8],
) -> Result<admission::Reviewed, Refusal> {
    let settings = &state.settings;
    let decoded = admission::decode(body)?;
    let Some(cluster) = &state.cluster else {
        return Ok(admission::review(
            settings,
            &ClusterView::offline(settings),
            decoded,
        )?);
    };
    // A review that arrives before the sources have listed (a start, before `/readyz`
    // says ready) waits for them, within the budget the copies would have had: answered
    // at once, it would be a pod admitted without the secret its image needs.
    let budget = ensure_budget(transport);
    let waiting = Instant::now();
    if !cluster.wait_sources_listed(budget).await {
        return Err(Refusal::SourcesNotListed(waiting.elapsed()));
    }
    let keyring = cluster.keyring();
    // The labels decide only entries narrowed by a namespace selector. Without such an entry
    // the cache's answer will do, and the API is asked later only if a copy must be made
    // (`ensure_copies`): admissions before the namespace cache has listed then cost no
    // request (a GET each, and the slowest admissions of a start at 10,000 namespaces).
    let namespace = match decoded.pod_create_namespace() {
        Some(namespace) if settings.decides_by_namespace_labels() => {
            Some(cluster.namespace(namespace).await)
        }
        Some(namespace) => cluster.cached_namespace(namespace).map(Some),
        None => None,
    };
    // `None`: not read, and no entry's decision depends on them.
    let labels = namespace
        .as_ref()
        .map(|ns| replicate::labels_of(ns.as_deref()));
    let view = ClusterView {
        keyring: &keyring,
        namespace_labels: Some(labels.unwrap_or(replicate::labels_of(None))),
    };
    let mut reviewed = admission::review(settings, &view, decoded)?;
    if !reviewed.dry_run && !reviewed.outcome.injected().is_empty() {
        let warnings = cluster
            .ensure_copies(
                &reviewed.namespace,
                labels,
                reviewed.outcome.injected(),
                budget.saturating_sub(waiting.elapsed()),
            )
            .await;
        if !warnings.is_empty() {
            reviewed.response.response.admission.warnings = Some(warnings);
        }
    }
    Ok(reviewed)
}

/// Half of what the apiserver allows us (`?timeout=Ns`), so the answer always arrives.
fn ensure_budget(transport: &Transport<'_>) -> Duration {
    let allowed = transport
        .timeout
        .and_then(|t| t.strip_suffix('s'))
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(4), Duration::from_secs);
    (allowed / 2).max(Duration::from_millis(200))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// How long, and how many bytes, an early answer's unread body is read and discarded.
/// A client that sends its body after the headers is still sending when we answer; closing
/// with its bytes unread makes the kernel send a reset, which can destroy our answer before
/// the client reads it. Two seconds is plenty for a client to read a small answer; the byte
/// bound caps the decryption work a refused client can ask of us.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;

/// A lingering close: the answer goes out now, with `Connection: close`, while the rest of
/// the body is read and dropped in the background (never buffered); hyper closes the
/// connection once the body ends, or when the bounds above drop it.
fn linger(mut body: Body, mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    if !body.is_end_stream() {
        tokio::spawn(async move {
            let mut left = LINGER_BYTES;
            let _ = tokio::time::timeout(LINGER_TIME, async {
                while let Some(Ok(frame)) = body.frame().await {
                    let read = frame.data_ref().map_or(0, |data| data.len());
                    left = left.saturating_sub(read);
                    if left == 0 {
                        break;
                    }
                }
            })
            .await;
        });
    }
    response
}

/// How long a draining server keeps idle keep-alive connections open. Clients pool them and
/// reuse them whatever the endpoints say (the apiserver dials a webhook Service's endpoint
/// only for a new connection): closing one at once can break a request being written on it,
/// and with `failurePolicy: Fail` that is a refused pod. Within this time a connection in use
/// carries its next request, answered with `Connection: close`, and ends cleanly.
const KEEP_ALIVE_GRACE: Duration = Duration::from_secs(2);

/// Accepts TLS connections until `shutdown` fires, then drains in-flight requests for at
/// most `limits.shutdown_timeout_seconds`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let limits: Limits = state.settings.limits.clone();
    let acceptor = TlsAcceptor::from(tls);
    let app = router(state.clone());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handshake_timeout = Duration::from_secs(limits.tls_handshake_timeout_seconds);
    let header_timeout = Duration::from_secs(limits.header_read_timeout_seconds);
    state.ready.store(true, Ordering::Relaxed);

    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(ServeError::Accept(e)),
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let metrics = Arc::clone(&state.metrics);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    metrics.tls_handshake_failed();
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.tls_handshake_failed();
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            metrics.connection_opened();
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            let served = watcher.watch(connection).await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            metrics.connection_closed();
        });
    }

    drop(listener);
    state.draining.store(true, Ordering::Relaxed);
    let drain = Duration::from_secs(limits.shutdown_timeout_seconds);
    let deadline = tokio::time::Instant::now() + drain;
    tracing::info!(connections = graceful.count(), "draining connections");
    // Busy keep-alive connections end with their next answer (`Connection: close`); only
    // then are the idle ones closed, which races with a request a client is writing on one.
    let grace_ends = tokio::time::Instant::now() + KEEP_ALIVE_GRACE.min(drain);
    while graceful.count() > 0 && tokio::time::Instant::now() < grace_ends {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_s = drain.as_secs(),
            "drain timed out; closing remaining connections"
        );
    }
    Ok(())
}

/// Running out of file descriptors or a reset before accept must not stop the server.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || e
        .raw_os_error()
        .is_some_and(|code| code == 24 || code == 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tower::ServiceExt;

    fn state() -> AppState {
        let settings = Config::from_yaml("secrets: []")
            .unwrap()
            .validate()
            .unwrap();
        AppState::new(Arc::new(settings), Arc::new(Metrics::new()), None)
    }

    async fn boom() -> &'static str {
        panic!("boom")
    }

    /// A panic cannot be provoked through the real routes, so a route that panics stands in.
    #[tokio::test]
    async fn a_panicking_handler_becomes_a_500_for_that_request_only() {
        let state = state();
        let routes = Router::new()
            .route("/boom", post(boom))
            .route("/fine", post(|| async { "fine" }));
        let app = protect(routes, &state).with_state(state.clone());
        let request = |path: &str| axum::http::Request::post(path).body(Body::empty()).unwrap();
        let boom = app.clone().oneshot(request("/boom")).await.unwrap();
        assert_eq!(boom.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(boom.into_body(), 1024).await.unwrap();
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["reason"], "internal_error");
        let fine = app.oneshot(request("/fine")).await.unwrap();
        assert_eq!(fine.status(), StatusCode::OK);
        assert!(
            state
                .metrics
                .render()
                .contains("bad_requests_total{reason=\"panic\"} 1")
        );
    }

    #[tokio::test]
    async fn a_body_that_does_not_fit_the_budget_is_refused_at_once_and_admitted_once_freed() {
        let settings = Config::from_yaml(
            "secrets: []\nlimits: {maxBodyBytes: 1000, maxBufferedBodyBytes: 1000}",
        )
        .unwrap()
        .validate()
        .unwrap();
        let state = AppState::new(Arc::new(settings), Arc::new(Metrics::new()), None);
        let app = router(state.clone());
        let post = || {
            axum::http::Request::post("/mutate")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, "11")
                .body(Body::from("{not json}!"))
                .unwrap()
        };
        // Another connection's body holds all but 10 bytes of the budget.
        let held = Arc::clone(&state.body_budget)
            .try_acquire_many_owned(990)
            .unwrap();
        let refused = app.clone().oneshot(post()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(refused.into_body(), 1024)
            .await
            .unwrap();
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["reason"], "body_budget_exhausted");
        assert!(
            error["error"].as_str().unwrap().contains("990 bytes"),
            "{error}"
        );
        drop(held);
        let read = app.oneshot(post()).await.unwrap();
        assert_eq!(read.status(), StatusCode::BAD_REQUEST, "read and decoded");
        assert_eq!(state.body_budget.available_permits(), 1000, "released");
    }

    #[tokio::test]
    async fn readiness_follows_the_listener_and_the_drain() {
        let state = state();
        let app = router(state.clone());
        let get = || {
            axum::http::Request::get("/readyz")
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(
            app.clone().oneshot(get()).await.unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(
            app.clone().oneshot(get()).await.unwrap().status(),
            StatusCode::OK
        );
        state.draining.store(true, Ordering::Relaxed);
        assert_eq!(
            app.oneshot(get()).await.unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
