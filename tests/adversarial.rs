//! Hostile clients on loopback while valid reviews keep flowing over keep-alive and fresh
//! connections: idle TLS connections, slowloris, half-open handshakes, large bodies sent
//! slowly, 7 MiB bodies, malformed JSON, HTTP/2. The short version, with timeouts of 2 s so
//! that the server's reaping shows within seconds; `make stress` and `make soak`
//! (benches/adversary.rs) run the long ones with the default limits and report timings.

use std::time::Duration;

use bytes::Bytes;
use test_support::adversary::{
    self, LoadSpec, Phase, Sample, Target, ValidLoad, bodies_at_rate, half_open_handshakes,
    idle_tls, malformed_at_rate, padded_review, slow_bodies, slowloris,
};
use test_support::client::TlsClient;
use test_support::injector::{Injector, Instance, Options};
use test_support::metrics::metric;

const MIB: usize = 1024 * 1024;
/// The server's own fds beyond the attack: the valid pool, fresh connections in flight.
const FD_SLACK: usize = 8;

const CONFIG: &str = r#"
limits:
  tlsHandshakeTimeoutSeconds: 2
  headerReadTimeoutSeconds: 2
  bodyReadTimeoutSeconds: 2
secrets:
  - name: jmalloc
    registries: [docker.io/jmalloc]
"#;

fn review() -> Bytes {
    let path = format!(
        "{}/tests/fixtures/admission/01_kube-rs_kube-core_admission_rs_pod_create_v1.json",
        env!("CARGO_MANIFEST_DIR")
    );
    Bytes::from(std::fs::read(path).expect("fixture"))
}

struct Harness {
    server: Instance,
    target: Target,
}

fn start() -> Harness {
    let server = Instance::start(|dir| Injector::start(Options::new(CONFIG, dir)));
    let target = Target {
        client: TlsClient::without_resumption(&server.ca_pem),
        addr: server.injector.addr,
    };
    Harness { server, target }
}

/// Valid reviews all answered, and the server back within a few fds of where it started.
fn assert_held<R: std::fmt::Debug>(phase: &Phase<R>) {
    eprintln!("{}", phase.summary());
    assert_eq!(
        phase.valid.errors, 0,
        "{}: valid reviews failed: {:?}",
        phase.name, phase.valid.error_samples
    );
    assert!(
        phase.valid.keepalive.count > 0 && phase.valid.fresh.count > 0,
        "{}: no valid review was answered: {:?}",
        phase.name,
        phase.valid
    );
    assert!(
        phase.settled_in.is_some() && phase.after.fds <= phase.before.fds + FD_SLACK,
        "{}: the server's fds did not come back: before {:?}, during {:?}, after {:?}",
        phase.name,
        phase.before,
        phase.during,
        phase.after
    );
}

/// Every connection the attack made was closed by the server, not left to the attacker.
fn assert_all_closed_by_server(phase: &Phase<adversary::AttackReport>, n: u64) {
    let attack = &phase.attack;
    assert_eq!(
        attack.failures, 0,
        "{}: {:?}",
        phase.name, attack.failure_samples
    );
    assert_eq!(attack.attempted, n, "{}", phase.name);
    assert_eq!(attack.closed_by_server, n, "{}: {attack:?}", phase.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_reviews_keep_flowing_and_fds_and_memory_stay_bounded_under_attack() {
    let h = start();
    let pid = h.server.injector.pid();
    let spec = LoadSpec {
        rate: 40.0,
        connections: 4,
        fresh_rate: 4.0,
    };
    let valid = ValidLoad::start(&h.target, review(), spec);
    let settle = Duration::from_secs(5);
    let t = &h.target;

    let quiet = adversary::phase("quiet", pid, &valid, FD_SLACK, settle, async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    })
    .await;
    assert_held(&quiet);

    // Held for twice the header timeout: the server closes them, not the attacker.
    let idle = adversary::phase(
        "300 idle TLS connections",
        pid,
        &valid,
        FD_SLACK,
        settle,
        idle_tls(t, 300, 300.0, Duration::from_secs(4)),
    )
    .await;
    assert_held(&idle);
    assert_all_closed_by_server(&idle, 300);
    assert!(idle.during.fds >= idle.before.fds + 250, "{idle:?}");

    let slow = adversary::phase(
        "50 slowloris",
        pid,
        &valid,
        FD_SLACK,
        settle,
        slowloris(t, 50, 100.0, Duration::from_secs(4)),
    )
    .await;
    assert_held(&slow);
    assert_all_closed_by_server(&slow, 50);

    let half_open = adversary::phase(
        "50 half-open handshakes",
        pid,
        &valid,
        FD_SLACK,
        settle,
        half_open_handshakes(t.addr, 50, 50.0, Duration::from_secs(3)),
    )
    .await;
    assert_held(&half_open);
    assert_all_closed_by_server(&half_open, 50);

    // 6 MiB announced, 64 KiB/s sent: five fit the default 32 MiB budget and get 408 from
    // the body timeout; the other three are refused at once, before a byte is read.
    let bodies = adversary::phase(
        "8 slow 6 MiB bodies",
        pid,
        &valid,
        FD_SLACK,
        settle,
        slow_bodies(t, 8, 6 * MIB, 64 * 1024, Duration::from_secs(4)),
    )
    .await;
    assert_held(&bodies);
    assert_all_closed_by_server(&bodies, 8);
    assert_eq!(bodies.attack.count(408), 5, "{:?}", bodies.attack);
    assert_eq!(bodies.attack.count(503), 3, "{:?}", bodies.attack);

    let big = padded_review(&review(), 7 * MIB);
    let large = adversary::phase(
        "7 MiB reviews",
        pid,
        &valid,
        FD_SLACK,
        settle,
        bodies_at_rate(t, big, 1.0, Duration::from_secs(3), 1),
    )
    .await;
    assert_held(&large);
    assert!(large.attack.attempted >= 2, "{:?}", large.attack);
    assert_eq!(
        large.attack.count(200),
        large.attack.attempted,
        "{:?}",
        large.attack
    );

    let malformed = adversary::phase(
        "malformed JSON",
        pid,
        &valid,
        FD_SLACK,
        settle,
        malformed_at_rate(t, 100.0, Duration::from_secs(2), 4),
    )
    .await;
    assert_held(&malformed);
    assert!(malformed.attack.attempted >= 150, "{:?}", malformed.attack);
    assert_eq!(
        malformed.attack.count(400),
        malformed.attack.attempted,
        "every malformed body gets 400 on a connection that keeps serving: {:?}",
        malformed.attack
    );

    let last = valid.stop().await;
    let (requests, errors) = (
        quiet.valid.requests()
            + [&idle, &slow, &half_open, &bodies, &large, &malformed]
                .iter()
                .map(|p| p.valid.requests())
                .sum::<u64>()
            + last.requests(),
        last.errors,
    );
    assert_eq!(errors, 0, "{:?}", last.error_samples);
    assert!(requests > 500, "only {requests} valid reviews were sent");
    assert!(h.server.injector.is_running(), "the injector exited");

    // Memory: what one 7 MiB review costs to read and decode, a few times over, and back
    // near the start once the attackers are gone.
    let end = Sample::of(pid);
    assert!(
        large.during.rss_kib < quiet.before.rss_kib + 256 * 1024,
        "{large:?}"
    );
    assert!(
        end.rss_kib < quiet.before.rss_kib + 128 * 1024,
        "RSS {} KiB at the end, {} KiB at the start",
        end.rss_kib,
        quiet.before.rss_kib
    );
    let mut open = f64::NAN;
    for _ in 0..50 {
        let metrics = h.server.injector.metrics().await;
        open = metric(&metrics, "pullsecret_injector_open_connections");
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        open, 0.0,
        "connections still counted open after every client left"
    );
}

#[tokio::test]
async fn http2_is_never_spoken_so_rapid_reset_has_nothing_to_reset() {
    let h = start();
    let report = adversary::http2(&h.target, &h.server.ca_pem, 1000).await;
    assert!(report.h2_only_refused, "{report:?}");
    assert!(!report.burst_answered_in_h2, "{report:?}");
    assert!(report.burst_connection_closed, "{report:?}");
    // And the server still serves.
    let mut sender = adversary::http1(&h.target).await.expect("connect");
    let (status, _) = adversary::post(&mut sender, review(), false)
        .await
        .expect("answer");
    assert_eq!(status, 200);
}
