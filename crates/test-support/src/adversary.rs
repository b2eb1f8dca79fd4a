//! Hostile clients, a measured stream of valid reviews beside them, and the server's fds and
//! memory from /proc: the shared half of tests/adversarial.rs (short, in `make test`) and
//! benches/adversary.rs (`make stress`, `make soak`). Loopback only; every attack is bounded
//! in connections and time.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout_at};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::client::TlsClient;

pub const JSON: &str = "application/json";
/// How many connections the attackers open at once: a burst, not a queue behind the backlog.
const CONNECT_CONCURRENCY: usize = 64;

// ---------------------------------------------------------------------------------------
// The server under attack is an `Injector` (crate::injector) logging into a file (a soak
// writes 100k+ lines); what it holds is sampled from /proc.

/// A process's open file descriptors and memory, from /proc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub fds: usize,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl Sample {
    pub fn of(pid: u32) -> Self {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Self {
            fds,
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
        }
    }

    fn max(self, other: Self) -> Self {
        Self {
            fds: self.fds.max(other.fds),
            rss_kib: self.rss_kib.max(other.rss_kib),
            hwm_kib: self.hwm_kib.max(other.hwm_kib),
        }
    }
}

/// The soft `RLIMIT_NOFILE` of this process (children inherit it), from /proc/self/limits.
pub fn open_files_soft_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Valid reviews at a steady rate, as the apiserver sends them: most over a pool of
// keep-alive connections, some on fresh connections (a handshake each). Open loop: latency
// is measured from when a request was due, so a stalled server is not hidden by a stalled
// client (coordinated omission).

#[derive(Clone)]
pub struct Target {
    pub client: TlsClient,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// Requests per second over the keep-alive pool.
    pub rate: f64,
    pub connections: usize,
    /// Requests per second, each on a new connection.
    pub fresh_rate: f64,
}

#[derive(Default)]
struct Recorded {
    keepalive: Vec<u32>,
    fresh: Vec<u32>,
    errors: u64,
    error_samples: Vec<String>,
}

impl Recorded {
    fn record(&mut self, fresh: bool, due: Instant, result: Result<(), String>) {
        match result {
            Ok(()) => {
                let micros = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
                if fresh {
                    self.fresh.push(micros);
                } else {
                    self.keepalive.push(micros);
                }
            }
            Err(error) => {
                self.errors += 1;
                if self.error_samples.len() < 5 {
                    self.error_samples.push(error);
                }
            }
        }
    }
}

pub struct ValidLoad {
    recorded: Arc<Mutex<Recorded>>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

/// Latency percentiles of one window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latency {
    fn of(mut micros: Vec<u32>) -> Self {
        if micros.is_empty() {
            return Self::default();
        }
        micros.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len());
            Duration::from_micros(micros[rank - 1] as u64)
        };
        Self {
            count: micros.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// What the valid reviews saw in one window.
#[derive(Debug, Clone, Default)]
pub struct ValidWindow {
    pub keepalive: Latency,
    pub fresh: Latency,
    pub errors: u64,
    pub error_samples: Vec<String>,
}

impl ValidWindow {
    pub fn requests(&self) -> u64 {
        (self.keepalive.count + self.fresh.count) as u64 + self.errors
    }
}

impl ValidLoad {
    pub fn start(target: &Target, body: Bytes, spec: LoadSpec) -> Self {
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        if spec.rate > 0.0 && spec.connections > 0 {
            let period = Duration::from_secs_f64(spec.connections as f64 / spec.rate);
            for i in 0..spec.connections {
                let offset = period.mul_f64(i as f64 / spec.connections as f64);
                tasks.spawn(keepalive_worker(
                    target.clone(),
                    body.clone(),
                    Instant::now() + offset,
                    period,
                    Arc::clone(&recorded),
                    stop.clone(),
                ));
            }
        }
        if spec.fresh_rate > 0.0 {
            tasks.spawn(fresh_worker(
                target.clone(),
                body,
                Duration::from_secs_f64(1.0 / spec.fresh_rate),
                Arc::clone(&recorded),
                stop.clone(),
            ));
        }
        Self {
            recorded,
            stop,
            tasks,
        }
    }

    /// What was recorded since the last call.
    pub fn take(&self) -> ValidWindow {
        let recorded = std::mem::take(&mut *self.recorded.lock().expect("lock"));
        ValidWindow {
            keepalive: Latency::of(recorded.keepalive),
            fresh: Latency::of(recorded.fresh),
            errors: recorded.errors,
            error_samples: recorded.error_samples,
        }
    }

    /// Stops sending and waits for requests in flight (at most 15 s).
    pub async fn stop(mut self) -> ValidWindow {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        self.take()
    }
}

type Sender = SendRequest<Full<Bytes>>;

/// An HTTP/1.1 connection over TLS, its driver in a task of its own.
pub async fn http1(target: &Target) -> Result<Sender, String> {
    let stream = target
        .client
        .tls(target.addr)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Posts `body` to /mutate and returns the status and response body.
pub async fn post(sender: &mut Sender, body: Bytes, close: bool) -> Result<(u16, Bytes), String> {
    let mut request = Request::post("/mutate?timeout=10s")
        .header("host", "localhost")
        .header("content-type", JSON);
    if close {
        request = request.header("connection", "close");
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    sender
        .ready()
        .await
        .map_err(|e| format!("connection not ready: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the response failed: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// A valid review must be answered 200 with `allowed: true`.
fn check_valid(answer: Result<(u16, Bytes), String>) -> Result<(), String> {
    let (status, body) = answer?;
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let review: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))?;
    if review["response"]["allowed"] != true {
        return Err(format!("not allowed: {review}"));
    }
    Ok(())
}

async fn keepalive_worker(
    target: Target,
    body: Bytes,
    start: Instant,
    period: Duration,
    recorded: Arc<Mutex<Recorded>>,
    stop: CancellationToken,
) {
    let mut sender = http1(&target).await.ok();
    let mut ticker = tokio::time::interval_at(start, period);
    loop {
        let due = tokio::select! {
            _ = stop.cancelled() => return,
            due = ticker.tick() => due,
        };
        let result = match sender.as_mut() {
            Some(s) => check_valid(post(s, body.clone(), false).await),
            None => match http1(&target).await {
                Ok(mut s) => {
                    let result = check_valid(post(&mut s, body.clone(), false).await);
                    sender = Some(s);
                    result
                }
                Err(e) => Err(e),
            },
        };
        if result.is_err() {
            sender = None;
        }
        recorded.lock().expect("lock").record(false, due, result);
    }
}

async fn fresh_worker(
    target: Target,
    body: Bytes,
    period: Duration,
    recorded: Arc<Mutex<Recorded>>,
    stop: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(64));
    let mut requests = JoinSet::new();
    let mut ticker = tokio::time::interval(period);
    loop {
        let due = tokio::select! {
            _ = stop.cancelled() => break,
            due = ticker.tick() => due,
        };
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        let (target, body, recorded) = (target.clone(), body.clone(), Arc::clone(&recorded));
        requests.spawn(async move {
            let result = match http1(&target).await {
                Ok(mut s) => check_valid(post(&mut s, body, true).await),
                Err(e) => Err(e),
            };
            drop(permit);
            recorded.lock().expect("lock").record(true, due, result);
        });
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
}

// ---------------------------------------------------------------------------------------
// Attacks. Each returns what it saw: connections made, which the server closed and when,
// and the HTTP statuses it got.

#[derive(Debug, Clone, Default)]
pub struct AttackReport {
    /// Connections (or requests) the attack started.
    pub attempted: u64,
    /// Connections that got as far as the attack needs (TCP or TLS up).
    pub established: u64,
    /// Connections the server closed before the attack let go, and when (since opened).
    pub closed_by_server: u64,
    pub close_ages: Vec<Duration>,
    /// HTTP statuses answered, by code.
    pub statuses: BTreeMap<u16, u64>,
    /// Client-side failures (connect refused, handshake failed) and a sample of them.
    pub failures: u64,
    pub failure_samples: Vec<String>,
}

impl AttackReport {
    fn merge(&mut self, outcome: Outcome) {
        self.attempted += 1;
        match outcome {
            Outcome::Failed(error) => {
                self.failures += 1;
                if self.failure_samples.len() < 5 {
                    self.failure_samples.push(error);
                }
            }
            Outcome::Held => self.established += 1,
            Outcome::Closed { age, status } => {
                self.established += 1;
                self.closed_by_server += 1;
                self.close_ages.push(age);
                if let Some(status) = status {
                    *self.statuses.entry(status).or_default() += 1;
                }
            }
            Outcome::Answered(statuses) => {
                self.established += 1;
                for status in statuses {
                    *self.statuses.entry(status).or_default() += 1;
                }
            }
        }
    }

    /// Median and largest age at which the server closed connections.
    pub fn close_age_range(&self) -> Option<(Duration, Duration)> {
        let mut ages = self.close_ages.clone();
        ages.sort_unstable();
        Some((*ages.get(ages.len() / 2)?, *ages.last()?))
    }

    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    pub fn statuses_text(&self) -> String {
        if self.statuses.is_empty() {
            return "none".into();
        }
        self.statuses
            .iter()
            .map(|(s, n)| format!("{n}×{s}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

enum Outcome {
    Failed(String),
    /// Still open when the attack let go.
    Held,
    Closed {
        age: Duration,
        status: Option<u16>,
    },
    Answered(Vec<u16>),
}

/// The status code of an HTTP/1.1 response head.
fn status_of(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Reads until the server closes the connection or `deadline`; the status it sent, if any.
async fn until_closed(
    mut reader: impl AsyncRead + Unpin,
    opened: Instant,
    deadline: Instant,
) -> Outcome {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match timeout_at(deadline, reader.read(&mut buf)).await {
            Err(_) => return Outcome::Held,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Outcome::Closed {
                    age: opened.elapsed(),
                    status: status_of(&head),
                };
            }
            Ok(Ok(n)) => {
                if head.len() < 64 {
                    head.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
}

async fn collect(mut set: JoinSet<Outcome>) -> AttackReport {
    let mut report = AttackReport::default();
    while let Some(joined) = set.join_next().await {
        report.merge(joined.unwrap_or_else(|e| Outcome::Failed(format!("task: {e}"))));
    }
    report
}

/// `n` TLS connections, opened at `rate` per second (at most CONNECT_CONCURRENCY
/// handshakes at once), each handed to `attack` with when it was opened and the deadline
/// `hold` from now.
async fn tls_attack<F, Fut>(
    target: &Target,
    n: usize,
    rate: f64,
    hold: Duration,
    attack: F,
) -> AttackReport
where
    F: Fn(TlsStream<TcpStream>, Instant, Instant) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let deadline = Instant::now() + hold;
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut set = JoinSet::new();
    for _ in 0..n {
        ticker.tick().await;
        let (target, gate, attack) = (target.clone(), Arc::clone(&gate), attack.clone());
        set.spawn(async move {
            let opened = Instant::now();
            let stream = {
                let _permit = gate.acquire().await;
                timeout_at(deadline, target.client.tls(target.addr)).await
            };
            match stream {
                Ok(Ok(stream)) => attack(stream, opened, deadline).await,
                Ok(Err(e)) => Outcome::Failed(format!("TLS: {e}")),
                Err(_) => Outcome::Failed("TLS handshake not done by the end".into()),
            }
        });
    }
    collect(set).await
}

/// `n` TLS connections, opened at `rate` per second, that complete the handshake and then
/// say nothing, held until `hold` has passed (or the server closes them).
pub async fn idle_tls(target: &Target, n: usize, rate: f64, hold: Duration) -> AttackReport {
    tls_attack(target, n, rate, hold, until_closed).await
}

/// `n` TLS connections, opened at `rate` per second, that send a request head one byte a
/// second, never finishing it, until `hold` has passed (or the server closes them).
pub async fn slowloris(target: &Target, n: usize, rate: f64, hold: Duration) -> AttackReport {
    tls_attack(target, n, rate, hold, |stream, opened, deadline| async move {
        let (reader, mut writer) = tokio::io::split(stream);
        let trickle = async move {
            let head = b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nx-slow: ";
            let mut bytes = head.iter().copied().chain(std::iter::repeat(b'a'));
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                let byte = [bytes.next().unwrap_or(b'a')];
                if writer.write_all(&byte).await.is_err() || writer.flush().await.is_err() {
                    // Keep the write half open: the read half reports the close.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            outcome = until_closed(reader, opened, deadline) => outcome,
            _ = trickle => Outcome::Held,
        }
    })
    .await
}

/// The first TLS flight of a real client (a ClientHello record).
pub fn client_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("server name");
    let mut connection =
        rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    let mut hello = Vec::new();
    while connection.wants_write() {
        connection.write_tls(&mut hello).expect("write ClientHello");
    }
    hello
}

/// `count` TCP connections opened at `rate` per second, each sending half a ClientHello
/// and then nothing; each is held until the server drops it or `hold` after the last.
pub async fn half_open_handshakes(
    addr: SocketAddr,
    count: usize,
    rate: f64,
    hold: Duration,
) -> AttackReport {
    let hello = Bytes::from(client_hello());
    let half = hello.slice(..hello.len() / 2);
    let period = Duration::from_secs_f64(1.0 / rate);
    let deadline = Instant::now() + period.mul_f64(count as f64) + hold;
    let mut ticker = tokio::time::interval(period);
    let mut set = JoinSet::new();
    for _ in 0..count {
        ticker.tick().await;
        let half = half.clone();
        set.spawn(async move {
            let opened = Instant::now();
            let mut tcp = match timeout_at(deadline, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => return Outcome::Failed(format!("connect: {e}")),
                Err(_) => return Outcome::Failed("connect not done by the end".into()),
            };
            if let Err(e) = tcp.write_all(&half).await {
                return Outcome::Failed(format!("write: {e}"));
            }
            until_closed(tcp, opened, deadline).await
        });
    }
    collect(set).await
}

/// `n` requests that announce `announced` body bytes and send them at `bytes_per_second`
/// each (never finishing within `hold`); the server's answer is recorded.
pub async fn slow_bodies(
    target: &Target,
    n: usize,
    announced: usize,
    bytes_per_second: usize,
    hold: Duration,
) -> AttackReport {
    let deadline = Instant::now() + hold;
    let mut set = JoinSet::new();
    for _ in 0..n {
        let target = target.clone();
        set.spawn(async move {
            let opened = Instant::now();
            let stream = match timeout_at(deadline, target.client.tls(target.addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Outcome::Failed(format!("TLS: {e}")),
                Err(_) => return Outcome::Failed("TLS handshake not done by the end".into()),
            };
            let (reader, mut writer) = tokio::io::split(stream);
            let trickle = async move {
                let head = format!(
                    "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {announced}\r\n\r\n{{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{{\"x\":\""
                );
                let step = Duration::from_millis(100);
                let chunk = vec![b'a'; (bytes_per_second / 10).max(1)];
                let mut sent = head.len();
                let mut ok = writer.write_all(head.as_bytes()).await.is_ok();
                let mut ticker = tokio::time::interval(step);
                while ok && sent + chunk.len() < announced {
                    ticker.tick().await;
                    ok = writer.write_all(&chunk).await.is_ok() && writer.flush().await.is_ok();
                    sent += chunk.len();
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                outcome = until_closed(reader, opened, deadline) => outcome,
                _ = trickle => Outcome::Held,
            }
        });
    }
    collect(set).await
}

/// `body` posted at `rate` per second for `duration` over `connections` keep-alive
/// connections; statuses recorded (a broken connection is replaced).
pub async fn bodies_at_rate(
    target: &Target,
    body: Bytes,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> AttackReport {
    let per_connection = Duration::from_secs_f64(connections as f64 / rate);
    let end = Instant::now() + duration;
    let mut set = JoinSet::new();
    for i in 0..connections {
        let (target, body) = (target.clone(), body.clone());
        set.spawn(async move {
            let mut report = AttackReport::default();
            let start = Instant::now() + per_connection.mul_f64(i as f64 / connections as f64);
            let mut ticker = tokio::time::interval_at(start, per_connection);
            let mut sender: Option<Sender> = None;
            loop {
                ticker.tick().await;
                if Instant::now() >= end {
                    break;
                }
                if sender.is_none() {
                    match http1(&target).await {
                        Ok(s) => sender = Some(s),
                        Err(e) => {
                            report.merge(Outcome::Failed(e));
                            continue;
                        }
                    }
                }
                let s = sender.as_mut().expect("connected");
                match post(s, body.clone(), false).await {
                    Ok((status, _)) => report.merge(Outcome::Answered(vec![status])),
                    Err(e) => {
                        sender = None;
                        report.merge(Outcome::Failed(e));
                    }
                }
            }
            report
        });
    }
    let mut report = AttackReport::default();
    while let Some(part) = set.join_next().await {
        let part = part.unwrap_or_default();
        report.attempted += part.attempted;
        report.established += part.established;
        report.failures += part.failures;
        for (status, n) in part.statuses {
            *report.statuses.entry(status).or_default() += n;
        }
        for sample in part.failure_samples {
            if report.failure_samples.len() < 5 {
                report.failure_samples.push(sample);
            }
        }
    }
    report
}

/// A valid review of exactly `size` bytes: `review` with a padding annotation on the pod.
pub fn padded_review(review: &[u8], size: usize) -> Bytes {
    let mut value: serde_json::Value = serde_json::from_slice(review).expect("review JSON");
    let annotations = &mut value["request"]["object"]["metadata"]["annotations"];
    if !annotations.is_object() {
        *annotations = serde_json::json!({});
    }
    annotations["example.com/padding"] = serde_json::Value::String(String::new());
    let base = serde_json::to_vec(&value).expect("encode").len();
    assert!(base < size, "review is already {base} bytes");
    value["request"]["object"]["metadata"]["annotations"]["example.com/padding"] =
        serde_json::Value::String("x".repeat(size - base));
    let body = serde_json::to_vec(&value).expect("encode");
    assert_eq!(body.len(), size);
    Bytes::from(body)
}

/// Bodies that are not AdmissionReviews, each answered 400 by a server that keeps serving.
pub fn malformed_bodies() -> Vec<Bytes> {
    let deep_array = "[".repeat(100_000);
    let deep_object = "{\"a\":".repeat(50_000);
    vec![
        Bytes::from_static(b""),
        Bytes::from_static(b"{not json"),
        Bytes::from_static(b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":"),
        Bytes::from_static(b"null"),
        Bytes::from_static(b"[1,2,3]"),
        Bytes::from_static(b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}"),
        Bytes::from_static(b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":7,\"object\":\"x\"}}"),
        Bytes::from_static(b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"u\",\"kind\":{\"group\":\"\",\"version\":\"v1\",\"kind\":\"Pod\"},\"resource\":{\"group\":\"\",\"version\":\"v1\",\"resource\":\"pods\"},\"operation\":\"CREATE\",\"userInfo\":{},\"object\":{\"spec\":{\"containers\":\"nope\"}}}}"),
        Bytes::from_static(b"{\"n\":1e999999999}"),
        Bytes::from_static(b"\xff\xfe\x00{\"\xc3\x28\":1}"),
        Bytes::from(deep_array),
        Bytes::from(deep_object),
        Bytes::from(format!("{{\"k\":\"{}", "\\u00".repeat(10_000))),
    ]
}

/// Malformed bodies at `rate` per second for `duration` over `connections` keep-alive
/// connections.
pub async fn malformed_at_rate(
    target: &Target,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> AttackReport {
    let bodies = Arc::new(malformed_bodies());
    let per_connection = Duration::from_secs_f64(connections as f64 / rate);
    let end = Instant::now() + duration;
    let mut set = JoinSet::new();
    for i in 0..connections {
        let (target, bodies) = (target.clone(), Arc::clone(&bodies));
        set.spawn(async move {
            let mut outcomes = Vec::new();
            let mut ticker = tokio::time::interval(per_connection);
            let mut sender: Option<Sender> = None;
            let mut next = i;
            loop {
                ticker.tick().await;
                if Instant::now() >= end {
                    break;
                }
                if sender.is_none() {
                    match http1(&target).await {
                        Ok(s) => sender = Some(s),
                        Err(e) => {
                            outcomes.push(Outcome::Failed(e));
                            continue;
                        }
                    }
                }
                let body = bodies[next % bodies.len()].clone();
                next += 1;
                let s = sender.as_mut().expect("connected");
                match post(s, body, false).await {
                    Ok((status, _)) => outcomes.push(Outcome::Answered(vec![status])),
                    Err(e) => {
                        sender = None;
                        outcomes.push(Outcome::Failed(e));
                    }
                }
            }
            outcomes
        });
    }
    let mut report = AttackReport::default();
    while let Some(part) = set.join_next().await {
        for outcome in part.unwrap_or_default() {
            report.merge(outcome);
        }
    }
    report
}

/// What HTTP/2 gets: whether an h2-only client was refused a connection, and what the
/// server did with an h2 rapid-reset burst (preface, SETTINGS, then HEADERS + RST_STREAM on
/// `streams` streams) sent over a connection that negotiated http/1.1.
#[derive(Debug, Clone)]
pub struct H2Report {
    pub h2_only_refused: bool,
    pub h2_only_error: String,
    /// The first bytes the server answered the burst with, as text.
    pub burst_answer: String,
    /// An HTTP/2 server's first frame is SETTINGS (type 4).
    pub burst_answered_in_h2: bool,
    pub burst_connection_closed: bool,
}

pub async fn http2(target: &Target, ca_pem: &str, streams: u32) -> H2Report {
    let h2_only = TlsClient::with_alpn(ca_pem, vec![b"h2".to_vec()]);
    let (h2_only_refused, h2_only_error) = match h2_only.tls(target.addr).await {
        Ok(stream) => (
            false,
            format!("connected, ALPN {:?}", stream.get_ref().1.alpn_protocol()),
        ),
        Err(e) => (true, e.to_string()),
    };

    let mut burst = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    burst.extend(frame(4, 0, 0, &[])); // SETTINGS
    // :method POST, :scheme https, :path /, :authority localhost (HPACK, no Huffman).
    let headers = [&[0x83u8, 0x87, 0x84, 0x41, 0x09][..], b"localhost"].concat();
    for i in 0..streams {
        let id = 2 * i + 1;
        burst.extend(frame(1, 0x4, id, &headers)); // HEADERS, END_HEADERS
        burst.extend(frame(3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let mut answer = Vec::new();
    let mut closed = false;
    if let Ok(mut stream) = target.client.tls(target.addr).await {
        let _ = stream.write_all(&burst).await;
        let _ = stream.flush().await;
        let mut buf = [0u8; 1024];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed = true;
                    break;
                }
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
    }
    H2Report {
        h2_only_refused,
        h2_only_error,
        burst_answered_in_h2: answer.len() >= 9 && answer[3] == 4,
        burst_answer: String::from_utf8_lossy(&answer[..answer.len().min(80)]).into_owned(),
        burst_connection_closed: closed,
    }
}

// ---------------------------------------------------------------------------------------
// A phase: an attack while valid reviews flow, with the server's fds and memory before,
// at most during, and after the attackers let go.

#[derive(Debug, Clone)]
pub struct Phase<R> {
    pub name: String,
    pub attack: R,
    pub valid: ValidWindow,
    pub before: Sample,
    pub during: Sample,
    pub after: Sample,
    pub took: Duration,
    /// How long the fds took to come back within `fd_slack` of `before`, if they did.
    pub settled_in: Option<Duration>,
}

/// The largest fds and RSS of a process, sampled every 100 ms until stopped.
pub struct PeakSampler {
    peak: Arc<Mutex<Sample>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl PeakSampler {
    pub fn start(pid: u32) -> Self {
        let peak = Arc::new(Mutex::new(Sample::of(pid)));
        let stop = CancellationToken::new();
        let task = {
            let (peak, stop) = (Arc::clone(&peak), stop.clone());
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_millis(100));
                while !stop.is_cancelled() {
                    ticker.tick().await;
                    let sample = Sample::of(pid);
                    let mut peak = peak.lock().expect("lock");
                    *peak = peak.max(sample);
                }
            })
        };
        Self { peak, stop, task }
    }

    pub async fn stop(self) -> Sample {
        self.stop.cancel();
        let _ = self.task.await;
        *self.peak.lock().expect("lock")
    }
}

impl<R> Phase<R> {
    /// One line for a test's output.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} valid, {} errors, keep-alive p50/p99/max {:?}/{:?}/{:?}, fresh p99 {:?}; \
             fds {}/{}/{}, RSS KiB {}/{}/{} (before/peak/after)",
            self.name,
            self.valid.requests(),
            self.valid.errors,
            self.valid.keepalive.p50,
            self.valid.keepalive.p99,
            self.valid.keepalive.max,
            self.valid.fresh.p99,
            self.before.fds,
            self.during.fds,
            self.after.fds,
            self.before.rss_kib,
            self.during.rss_kib,
            self.after.rss_kib,
        )
    }
}

pub async fn phase<R, F>(
    name: &str,
    server_pid: u32,
    valid: &ValidLoad,
    fd_slack: usize,
    settle_max: Duration,
    attack: F,
) -> Phase<R>
where
    F: Future<Output = R>,
{
    let before = Sample::of(server_pid);
    let _ = valid.take();
    let started = Instant::now();
    let sampler = PeakSampler::start(server_pid);
    let attack = attack.await;
    let took = started.elapsed();
    let window = valid.take();
    let during = sampler.stop().await;
    let settle_start = Instant::now();
    let mut settled_in = None;
    while settle_start.elapsed() < settle_max {
        if Sample::of(server_pid).fds <= before.fds + fd_slack {
            settled_in = Some(settle_start.elapsed());
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    // Let memory freed by the last requests go back before measuring.
    sleep(Duration::from_millis(500)).await;
    let after = Sample::of(server_pid);
    Phase {
        name: name.to_string(),
        attack,
        valid: window,
        before,
        during,
        after,
        took,
        settled_in,
    }
}
