//! What every part that writes to or watches the Kubernetes API shares: the clients (our
//! User-Agent, the replication's rate limit), how the objects we write are marked, and how
//! our watches retry. Replication and the certificate keeper both build on it, and on
//! nothing of each other.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::header::{HeaderValue, USER_AGENT};
use kube::client::ClientBuilder;
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;
use tokio::time::{Instant, Sleep};
use tower::layer::util::{Identity, Stack};
use tower::limit::ConcurrencyLimitLayer;

use crate::config::ApiRate;

/// The label on every object we write (copies, the self-managed certificate Secret).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "pullsecret-injector";
/// Our field manager for writes, as server-side apply and managedFields show it.
pub const FIELD_MANAGER: &str = "pullsecret-injector";

/// How the apiserver's audit log tells our requests apart: the same product, and which of
/// the two clients below sent them.
pub const USER_AGENT_VALUE: &str = concat!("pullsecret-injector/", env!("CARGO_PKG_VERSION"));
pub const REPLICATION_USER_AGENT_VALUE: &str = concat!(
    "pullsecret-injector/",
    env!("CARGO_PKG_VERSION"),
    " (replication)"
);

/// The connections to the apiserver, one configuration.
#[derive(Clone)]
pub struct Clients {
    /// Watches, the Lease, the certificate keeper: never made to wait behind bulk work.
    pub api: kube::Client,
    /// What admission needs at once (a namespace's labels, a missing copy), in a connection
    /// pool of its own that the cluster warms while its caches list: kube's client
    /// speaks HTTP/1.1, a watch holds its connection for good, and a first request that has
    /// to open one to an apiserver busy with a first sync waited ~45 ms for it.
    pub admission: kube::Client,
    /// The replication's reads and writes, behind the client-side rate limit: a resync or a
    /// source rotation over thousands of namespaces goes out at `rate`, however many
    /// namespaces are queued.
    pub replication: kube::Client,
}

impl Clients {
    pub fn new(config: kube::Config, rate: ApiRate) -> Result<Self, kube::Error> {
        let with_agent = |agent: &'static str| {
            let mut config = config.clone();
            config
                .headers
                .push((USER_AGENT, HeaderValue::from_static(agent)));
            ClientBuilder::try_from(config)
        };
        let api = with_agent(USER_AGENT_VALUE)?.build();
        let admission = with_agent(USER_AGENT_VALUE)?.build();
        let replication = with_agent(REPLICATION_USER_AGENT_VALUE)?
            .with_layer(&replication_layers(rate))
            .build();
        Ok(Self {
            api,
            admission,
            replication,
        })
    }
}

/// Replication requests the apiserver holds at once, at most. An admission that must make a
/// copy waits inside the apiserver behind whatever we already have in flight there; with 48
/// (16 namespaces x 3 copies) its create took 50-130 ms while converging at 1,000
/// namespaces, with 12 at most ~15 ms, and 12 still keep a one-core apiserver busy
/// (BENCHMARKS.md, "At scale").
pub const REPLICATION_IN_FLIGHT: usize = 12;

pub type ReplicationLayers =
    tower::ServiceBuilder<Stack<RateLimitLayer, Stack<ConcurrencyLimitLayer, Identity>>>;

/// The replication client's stack: at most [`REPLICATION_IN_FLIGHT`] requests in flight,
/// each let through by the rate limit. kube's `Client` drives it from one buffer, so both
/// bounds hold for the whole client.
pub fn replication_layers(rate: ApiRate) -> ReplicationLayers {
    tower::ServiceBuilder::new()
        .concurrency_limit(REPLICATION_IN_FLIGHT)
        .layer(RateLimitLayer { rate })
}

/// client-go's token bucket: `qps` requests a second on average, up to `burst` at once after
/// a quiet spell.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: ApiRate,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// Full: a fresh client may send `burst` requests at once, as client-go's.
    pub fn new(rate: ApiRate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            rate,
            updated: now,
        }
    }

    /// Takes a token, or says when the next one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.qps).min(f64::from(self.rate.burst));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate.qps))
        }
    }
}

/// Holds each request until the bucket has a token for it. kube's `Client` drives its stack
/// from one buffer, so a request waiting here queues the ones behind it: the limit holds for
/// the whole client.
pub struct RateLimitLayer {
    rate: ApiRate,
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            bucket: None,
            rate: self.rate,
            wait: None,
            reserved: false,
        }
    }
}

pub struct RateLimited<S> {
    inner: S,
    rate: ApiRate,
    /// Made on first use, inside the runtime whose clock it reads.
    bucket: Option<TokenBucket>,
    wait: Option<Pin<Box<Sleep>>>,
    /// A token is taken for the next `call`.
    reserved: bool,
}

impl<S, R> tower::Service<R> for RateLimited<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.reserved {
            if let Some(wait) = &mut self.wait {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            let now = Instant::now();
            let bucket = self
                .bucket
                .get_or_insert_with(|| TokenBucket::new(self.rate, now));
            match bucket.take(now) {
                Ok(()) => self.reserved = true,
                Err(at) => self.wait = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.reserved = false;
        self.inner.call(request)
    }
}

/// How every watch of ours retries after an error: client-go's reflector backoff (0.8 s,
/// doubling, reset after 2 min quiet) but capped at 5 s instead of 30 s (5–10 s with the
/// jitter, which adds up to one delay), so copies and certificates converge within seconds
/// of an apiserver coming back. A handful of watches per replica retrying that often is no
/// load for a recovering apiserver.
pub fn watch_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    ResetTimerBackoff::new(
        ExponentialBackoff::from(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(800))
                .with_max_delay(Duration::from_secs(5))
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
        ),
        Duration::from_secs(120),
    )
}

#[cfg(test)]
mod tests {
    use kube::runtime::utils::Backoff;

    use super::*;

    #[test]
    fn the_bucket_lets_a_burst_through_then_one_request_per_period() {
        let rate = ApiRate {
            qps: 10.0,
            burst: 3,
        };
        let start = Instant::now();
        let mut bucket = TokenBucket::new(rate, start);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let next = bucket.take(start).expect_err("the burst is spent");
        assert_eq!(next - start, Duration::from_millis(100));
        assert_eq!(bucket.take(next), Ok(()));
        assert!(bucket.take(next).is_err(), "one token per 100 ms");
        // A quiet spell refills up to the burst, never beyond.
        let later = next + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.take(later), Ok(()));
        }
        assert!(bucket.take(later).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_holds_requests_to_the_rate() {
        use tower::{Service, ServiceExt};
        let rate = ApiRate {
            qps: 20.0,
            burst: 5,
        };
        let mut limited = tower::Layer::layer(
            &RateLimitLayer { rate },
            tower::service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>(Instant::now()) }),
        );
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..25 {
            sent.push(limited.ready().await.unwrap().call(()).await.unwrap());
        }
        // 5 at once, then 20 more at 20 a second: the last one second after the start.
        assert!(sent[..5].iter().all(|at| *at == start), "{sent:?}");
        let last = sent[24] - start;
        assert!(
            last >= Duration::from_millis(999) && last <= Duration::from_millis(1010),
            "{last:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn replication_never_has_more_than_its_bound_in_flight() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use futures::StreamExt;
        use tower::ServiceExt;
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let apiserver = {
            let (now, most) = (Arc::clone(&now), Arc::clone(&most));
            tower::service_fn(move |_: ()| {
                let (now, most) = (Arc::clone(&now), Arc::clone(&most));
                async move {
                    let in_flight = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(in_flight, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(())
                }
            })
        };
        // A burst large enough that only the in-flight bound holds the 100 requests back.
        let rate = ApiRate {
            qps: 10_000.0,
            burst: 1_000,
        };
        let client = tower::Layer::layer(&replication_layers(rate), apiserver);
        let answered = client
            .call_all(futures::stream::iter(vec![(); 100]))
            .collect::<Vec<_>>()
            .await;
        assert_eq!(answered.len(), 100);
        assert_eq!(most.load(Ordering::SeqCst), REPLICATION_IN_FLIGHT);
    }

    #[test]
    fn watch_retries_start_under_a_second_and_never_wait_long() {
        let mut backoff = watch_backoff();
        let delays: Vec<Duration> = (0..30)
            .map(|_| backoff.next().expect("never gives up"))
            .collect();
        assert!(delays[0] <= Duration::from_millis(1600), "{delays:?}");
        // Jitter may add up to one delay on top of the 5 s cap.
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(10)),
            "{delays:?}"
        );
        assert!(delays[29] >= Duration::from_secs(5), "{delays:?}");
        backoff.reset();
        assert!(backoff.next().expect("after a reset") <= Duration::from_millis(1600));
    }
}
