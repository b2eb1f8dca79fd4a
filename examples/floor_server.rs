//! The benchmark's floor: the webhook's transport stack (tokio multi-thread runtime with the
//! injector's worker count, tokio-rustls with ring, hyper HTTP/1.1 with keep-alive) with no
//! work behind it. It reads each POST body and answers a fixed AdmissionReview, so what the
//! injector costs beyond it is the cost of its decision, routing, metrics and logging.
//!
//! ```text
//! floor_server --cert tls.crt --key tls.key --response ours-typical.json   # fixed body
//! floor_server --cert tls.crt --key tls.key --allow-only                   # allowed: true
//! floor_server --cert tls.crt --key tls.key --allow-only --patch patch.json # and a fixed patch
//! ```
//! Prints `listening on ADDR` on standard output once bound. `GET /reviews` answers the
//! number of reviews served (the apiserver benchmark waits on it). See BENCHMARKS.md.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The injector's defaults (src/config.rs `Limits`), so both servers read bodies alike.
const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(about = "Fixed-response AdmissionReview server: the benchmark's floor")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// PEM certificate chain (the injector's: ECDSA P-256 from certs/generate.sh).
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key.
    #[arg(long)]
    key: PathBuf,
    /// Answer every POST with this file's bytes.
    #[arg(
        long,
        conflicts_with = "allow_only",
        required_unless_present = "allow_only"
    )]
    response: Option<PathBuf>,
    /// Answer `allowed: true` for the request's uid: the protocol floor through an apiserver.
    #[arg(long)]
    allow_only: bool,
    /// With --allow-only: add this JSON patch to every answer, so the apiserver's cost of
    /// applying a patch is in the floor too.
    #[arg(long, requires = "allow_only")]
    patch: Option<PathBuf>,
}

enum Answer {
    Fixed(Bytes),
    /// The patch's bytes, if any, sent with every `allowed: true`.
    AllowOnly(Option<Vec<u8>>),
}

struct Floor {
    answer: Answer,
    reviews: AtomicU64,
}

/// Just enough of an AdmissionReview to echo its uid; serde skips everything else.
#[derive(serde::Deserialize)]
struct Review {
    request: ReviewRequest,
}

#[derive(serde::Deserialize)]
struct ReviewRequest {
    uid: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = tls_config(&args)?;
    let answer = match &args.response {
        Some(path) => Answer::Fixed(Bytes::from(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )),
        None => Answer::AllowOnly(match &args.patch {
            Some(path) => {
                Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            }
            None => None,
        }),
    };
    let floor = Arc::new(Floor {
        answer,
        reviews: AtomicU64::new(0),
    });
    // The injector's `serve` runtime: one worker per core it may run on, at least two.
    let runtime = pullsecret_injector::commands::serve::runtime_builder()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args.listen, tls, floor))
}

fn tls_config(args: &Args) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(&args.cert)
        .with_context(|| format!("reading {}", args.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", args.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .with_context(|| format!("reading {}", args.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn serve(
    listen: SocketAddr,
    tls: Arc<ServerConfig>,
    floor: Arc<Floor>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", listener.local_addr()?)?;
        stdout.flush()?;
    }
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let floor = Arc::clone(&floor);
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = service_fn(move |request| handle(Arc::clone(&floor), request));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    floor: Arc<Floor>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() == Method::GET && request.uri().path() == "/reviews" {
        let count = floor.reviews.load(Ordering::Relaxed);
        return Ok(reply(StatusCode::OK, Bytes::from(count.to_string())));
    }
    if request.method() != Method::POST {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()));
    }
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, Bytes::new())),
    };
    floor.reviews.fetch_add(1, Ordering::Relaxed);
    let answer = match &floor.answer {
        Answer::Fixed(bytes) => bytes.clone(),
        Answer::AllowOnly(patch) => match serde_json::from_slice::<Review>(&body) {
            Ok(review) => Bytes::from(allowed(&review.request.uid, patch.as_deref())),
            Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, Bytes::new())),
        },
    };
    Ok(reply(StatusCode::OK, answer))
}

fn allowed(uid: &str, patch: Option<&[u8]>) -> String {
    let mut response = serde_json::json!({ "uid": uid, "allowed": true });
    if let Some(patch) = patch {
        // As the injector encodes it (kube-core): the patch's bytes as a JSON array.
        response["patchType"] = "JSONPatch".into();
        response["patch"] = patch.into();
    }
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
    .to_string()
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
