//! `make stress` and `make soak`: the release binary under hostile load on loopback, while
//! valid AdmissionReviews flow at a steady rate and are measured (BENCHMARKS.md, "Under
//! attack"). tests/adversarial.rs is the short version that `make test` runs.
//!
//! ```text
//! cargo bench --bench adversary -- stress [--fixture F] [--out report.md]
//! cargo bench --bench adversary -- soak --seconds 600 [--fixture F] [--out report.md]
//! cargo bench --bench adversary -- rotation
//! ```
//! `stress`: a quiet baseline, then one attack per phase (2,000 idle TLS connections,
//! slowloris, half-open handshakes, slow 6 MiB bodies, 7 MiB bodies at rate, malformed JSON
//! at rate, HTTP/2 rapid reset), then 20 certificate rotations under 1,000 valid reviews/s.
//! `soak`: cycles of every attack at once and a quiet pause, RSS compared after warm-up.
//! The server runs with the documented default limits. Needs `ulimit -n` of 8192 or more.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use test_support::adversary::{
    self, AttackReport, H2Report, LoadSpec, Phase, Sample, Target, ValidLoad, ValidWindow,
};
use test_support::client::TlsClient;
use test_support::injector::{EXAMPLE_SECRETS, Injector, Options};
use test_support::metrics::metric;
use test_support::pki::{CertifiedKey, MountedSecret, TestCa, der};
use tokio::time::{Instant, sleep};

const MIB: usize = 1024 * 1024;
/// The server's own fds beyond an attack: the valid pool and fresh connections in flight.
const FD_SLACK: usize = 24;
/// Valid traffic during the attack phases and the soak: an apiserver's keep-alive pool
/// plus new connections, as when its pooled ones are closed.
const VALID: LoadSpec = LoadSpec {
    rate: 200.0,
    connections: 8,
    fresh_rate: 10.0,
};
/// Valid traffic during the rotations.
const ROTATION_LOAD: LoadSpec = LoadSpec {
    rate: 1000.0,
    connections: 16,
    fresh_rate: 50.0,
};
const ROTATIONS: u32 = 20;
/// Which rotation installs a key that does not match its certificate.
const BROKEN_ROTATION: u32 = 10;

struct Args {
    mode: String,
    seconds: u64,
    fixture: PathBuf,
    out: Option<PathBuf>,
}

fn args() -> Args {
    let mut args = Args {
        mode: String::new(),
        seconds: 600,
        fixture: root().join("target/stress/fixtures/typical.json"),
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => {}
            "--seconds" => {
                args.seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds N")
            }
            "--fixture" => args.fixture = it.next().expect("--fixture PATH").into(),
            "--out" => args.out = Some(it.next().expect("--out PATH").into()),
            mode if !mode.starts_with('-') && args.mode.is_empty() => args.mode = mode.into(),
            other => panic!("unknown argument {other}; see benches/adversary.rs"),
        }
    }
    args
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("adversary: skipped (run it with `make stress` or `make soak`)");
        return;
    }
    let args = args();
    let needed = match args.mode.as_str() {
        "stress" => 8192,
        "soak" | "rotation" => 4096,
        other => panic!("mode {other:?}: stress, soak or rotation"),
    };
    let limit = adversary::open_files_soft_limit();
    assert!(
        limit >= needed,
        "open files limit is {limit}; the attack holds thousands of connections on both \
         ends: run under `ulimit -n {needed}` (make stress and make soak do)"
    );
    let body = Bytes::from(std::fs::read(&args.fixture).unwrap_or_else(|e| {
        panic!(
            "fixture {}: {e} (make stress generates it with benches/fixtures/generate.py)",
            args.fixture.display()
        )
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (report, passed) = runtime.block_on(async {
        match args.mode.as_str() {
            "stress" => {
                let (mut report, attacks_ok) = stress(body.clone()).await;
                let (rotation, rotation_ok) = rotation(body).await;
                report.push_str(&rotation);
                (report, attacks_ok && rotation_ok)
            }
            "rotation" => rotation(body).await,
            _ => soak(body, args.seconds).await,
        }
    });
    let out = args
        .out
        .unwrap_or_else(|| root().join(format!("target/stress/{}.md", args.mode)));
    std::fs::create_dir_all(out.parent().expect("parent")).expect("create report dir");
    std::fs::write(&out, &report).expect("write report");
    println!("\n{report}\nwritten to {}", out.display());
    if !passed {
        eprintln!("adversary: FAILED (see above)");
        std::process::exit(1);
    }
}

/// A server with the default limits and the example secrets, serving a mounted certificate
/// it polls every second.
struct Setup {
    server: Injector,
    target: Target,
    ca: TestCa,
    ca_pem: String,
    mounted: MountedSecret,
    current: CertifiedKey,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("adversary CA");
    let current = ca.serving("v1", &["localhost", "127.0.0.1"]);
    let mounted = MountedSecret::new(dir.path(), &current);
    // The mounted Secret's tls.crt and tls.key are in `dir`, where Options expects them.
    let server = Injector::start(Options {
        log_to_file: true,
        ..Options::new(EXAMPLE_SECRETS, dir.path())
    });
    let ca_pem = ca.cert_pem.clone();
    let target = Target {
        client: TlsClient::without_resumption(&ca_pem),
        addr: server.addr,
    };
    Setup {
        server,
        target,
        ca,
        ca_pem,
        mounted,
        current,
        _dir: dir,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn progress(message: &str) {
    eprintln!("[adversary {}] {message}", time_of_day());
}

fn time_of_day() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// What the attack phase did and how the server treated it, in a table cell.
fn describe(report: &AttackReport) -> String {
    let mut text = format!("{} started", report.attempted);
    if report.failures > 0 {
        write!(text, ", {} failed to connect", report.failures).ok();
    }
    if report.closed_by_server > 0 {
        write!(text, ", {} closed by the server", report.closed_by_server).ok();
        if let Some((median, max)) = report.close_age_range() {
            write!(
                text,
                " after {:.1} s (max {:.1} s)",
                median.as_secs_f64(),
                max.as_secs_f64()
            )
            .ok();
        }
    }
    if !report.statuses.is_empty() {
        write!(text, "; answers {}", report.statuses_text()).ok();
    }
    text
}

struct Row {
    name: String,
    attack: String,
    valid: ValidWindow,
    before: Sample,
    during: Sample,
    after: Sample,
    settled: Option<Duration>,
    took: Duration,
}

impl<R> From<(&Phase<R>, String)> for Row {
    fn from((phase, attack): (&Phase<R>, String)) -> Self {
        Self {
            name: phase.name.clone(),
            attack,
            valid: phase.valid.clone(),
            before: phase.before,
            during: phase.during,
            after: phase.after,
            settled: phase.settled_in,
            took: phase.took,
        }
    }
}

async fn stress(body: Bytes) -> (String, bool) {
    let s = setup();
    let pid = s.server.pid();
    let t = &s.target;
    progress(&format!("injector pid {pid} on {}", s.server.addr));
    let valid = ValidLoad::start(t, body.clone(), VALID);
    sleep(Duration::from_secs(5)).await;
    let settle = Duration::from_secs(45);
    let mut rows: Vec<Row> = Vec::new();
    let mut checks: Vec<(String, bool)> = Vec::new();

    progress("quiet baseline, 20 s");
    let quiet = adversary::phase(
        "quiet",
        pid,
        &valid,
        FD_SLACK,
        settle,
        sleep(Duration::from_secs(20)),
    )
    .await;
    rows.push((&quiet, "none".to_string()).into());

    progress("(a) 2,000 idle TLS connections, opened at 500/s, held 40 s");
    let idle = adversary::phase(
        "(a) 2,000 idle TLS connections",
        pid,
        &valid,
        FD_SLACK,
        settle,
        adversary::idle_tls(t, 2000, 500.0, Duration::from_secs(40)),
    )
    .await;
    checks.push((
        "(a) every idle connection closed by the server (headerReadTimeoutSeconds)".into(),
        idle.attack.closed_by_server == 2000,
    ));
    rows.push((&idle, describe(&idle.attack)).into());

    progress("(b) slowloris: 500 connections, a header byte a second, 40 s");
    let slow = adversary::phase(
        "(b) slowloris, 500 connections",
        pid,
        &valid,
        FD_SLACK,
        settle,
        adversary::slowloris(t, 500, 500.0, Duration::from_secs(40)),
    )
    .await;
    checks.push((
        "(b) every slowloris connection closed by the server".into(),
        slow.attack.closed_by_server == 500,
    ));
    rows.push((&slow, describe(&slow.attack)).into());

    progress("(c) half-open handshakes: 3,000 at 100/s, half a ClientHello each");
    let half = adversary::phase(
        "(c) half-open TLS handshakes, 100/s",
        pid,
        &valid,
        FD_SLACK,
        settle,
        adversary::half_open_handshakes(t.addr, 3000, 100.0, Duration::from_secs(15)),
    )
    .await;
    checks.push((
        "(c) every half-open handshake dropped by the server (tlsHandshakeTimeoutSeconds)".into(),
        half.attack.closed_by_server == 3000,
    ));
    rows.push((&half, describe(&half.attack)).into());

    progress("(d) 50 bodies announced 6 MiB, sent at 64 KiB/s each, 40 s");
    let bodies = adversary::phase(
        "(d) 50 slow 6 MiB bodies",
        pid,
        &valid,
        FD_SLACK,
        settle,
        adversary::slow_bodies(t, 50, 6 * MIB, 64 * 1024, Duration::from_secs(40)),
    )
    .await;
    checks.push((
        "(d) the 5 slow bodies that fit maxBufferedBodyBytes (32 MiB) answered 408 \
         (bodyReadTimeoutSeconds), the other 45 refused at once with 503"
            .into(),
        bodies.attack.count(408) == 5 && bodies.attack.count(503) == 45,
    ));
    rows.push((&bodies, describe(&bodies.attack)).into());

    progress("(e) 7 MiB reviews at 4/s over 4 connections, 30 s");
    let big = adversary::padded_review(&body, 7 * MIB);
    let large = adversary::phase(
        "(e) 7 MiB reviews, 4/s",
        pid,
        &valid,
        FD_SLACK,
        settle,
        adversary::bodies_at_rate(t, big, 4.0, Duration::from_secs(30), 4),
    )
    .await;
    checks.push((
        "(e) every 7 MiB review answered 200".into(),
        large.attack.count(200) == large.attack.attempted && large.attack.attempted > 0,
    ));
    rows.push((&large, describe(&large.attack)).into());

    progress("(f) malformed JSON at 500/s over 8 connections, 30 s");
    let malformed = adversary::phase(
        "(f) malformed JSON, 500/s",
        pid,
        &valid,
        FD_SLACK,
        settle,
        adversary::malformed_at_rate(t, 500.0, Duration::from_secs(30), 8),
    )
    .await;
    checks.push((
        "(f) every malformed body answered 400".into(),
        malformed.attack.count(400) == malformed.attack.attempted && malformed.attack.attempted > 0,
    ));
    rows.push((&malformed, describe(&malformed.attack)).into());

    progress("(g) HTTP/2: h2-only client, rapid-reset burst of 10,000 streams");
    let ca_pem = s.ca_pem.clone();
    let h2 = adversary::phase(
        "(g) HTTP/2 rapid reset",
        pid,
        &valid,
        FD_SLACK,
        settle,
        async { adversary::http2(t, &ca_pem, 10_000).await },
    )
    .await;
    checks.push((
        "(g) h2 never negotiated: h2-only client refused, burst not answered in h2".into(),
        h2.attack.h2_only_refused && !h2.attack.burst_answered_in_h2,
    ));
    rows.push((&h2, describe_h2(&h2.attack)).into());

    progress("quiet again, 10 s");
    let end = adversary::phase(
        "quiet, after",
        pid,
        &valid,
        FD_SLACK,
        settle,
        sleep(Duration::from_secs(10)),
    )
    .await;
    rows.push((&end, "none".to_string()).into());
    let rest = valid.stop().await;
    let (total, errors) = (
        rows.iter().map(|r| r.valid.requests()).sum::<u64>() + rest.requests(),
        rows.iter().map(|r| r.valid.errors).sum::<u64>() + rest.errors,
    );

    // The lower of the two quiet phases: the stricter reference on a shared machine.
    let quiet_p99 = quiet.valid.keepalive.p99.min(end.valid.keepalive.p99);
    let quiet_fresh_p99 = quiet.valid.fresh.p99.min(end.valid.fresh.p99);
    let mut md = String::new();
    writeln!(md, "### Adversarial phases (`make stress`)\n").ok();
    writeln!(
        md,
        "Valid traffic throughout: the `typical` fixture (5 KB, patched) at {} reviews/s over {} \
         keep-alive connections plus {}/s on new connections (a TLS handshake each); latency \
         from when each request was due. The server: the release binary, default limits. \
         p99 ×quiet compares keep-alive p99 with the lower of the two quiet phases' ({} ms).\n",
        VALID.rate,
        VALID.connections,
        VALID.fresh_rate,
        ms(quiet_p99)
    )
    .ok();
    writeln!(
        md,
        "| phase | attack, as the attacker saw it | valid reviews | errors | keep-alive p50 / p99 / max ms | new-connection p99 ms | p99 ×quiet | server fds before / peak / after | RSS MiB before / peak / after (HWM) |"
    )
    .ok();
    writeln!(md, "|---|---|---:|---:|---|---:|---:|---|---|").ok();
    let mut worst_ratio: f64 = 0.0;
    for row in &rows {
        let ratio = row.valid.keepalive.p99.as_secs_f64() / quiet_p99.as_secs_f64().max(1e-6);
        worst_ratio = worst_ratio.max(ratio);
        writeln!(
            md,
            "| {} | {} | {} | {} | {} / {} / {} | {} | {:.1} | {} / {} / {}{} | {} / {} / {} ({}) |",
            row.name,
            row.attack,
            row.valid.requests(),
            row.valid.errors,
            ms(row.valid.keepalive.p50),
            ms(row.valid.keepalive.p99),
            ms(row.valid.keepalive.max),
            ms(row.valid.fresh.p99),
            ratio,
            row.before.fds,
            row.during.fds,
            row.after.fds,
            row.settled
                .map(|d| format!(" ({:.0} s)", d.as_secs_f64()))
                .unwrap_or_else(|| " (not settled)".into()),
            mib(row.before.rss_kib),
            mib(row.during.rss_kib),
            mib(row.after.rss_kib),
            mib(row.after.hwm_kib),
        )
        .ok();
        let _ = row.took;
    }
    writeln!(
        md,
        "\nValid reviews: {total}, errors: {errors}. Worst p99 under attack: {worst_ratio:.1}× quiet \
         (target ≤ 10×); new-connection p99 quiet {} ms. Fds \"after\" are taken once the \
         attackers have let go (time to settle in brackets).\n",
        ms(quiet_fresh_p99)
    )
    .ok();
    writeln!(
        md,
        "HTTP/2: {}; the rapid-reset burst over an http/1.1 connection was answered {:?} and \
         the connection {}.\n",
        if h2.attack.h2_only_refused {
            format!("an h2-only client is refused ({})", h2.attack.h2_only_error)
        } else {
            format!(
                "an h2-only client got a connection ({})",
                h2.attack.h2_only_error
            )
        },
        h2.attack.burst_answer,
        if h2.attack.burst_connection_closed {
            "closed"
        } else {
            "left open"
        }
    )
    .ok();
    checks.push(("zero failed valid reviews".into(), errors == 0));
    checks.push((
        "fds back within the slack after every phase".into(),
        rows.iter().all(|r| r.settled.is_some()),
    ));
    let mut passed = true;
    for (check, ok) in &checks {
        passed &= ok;
        writeln!(md, "- {} {check}", if *ok { "✔" } else { "✘ FAILED:" }).ok();
    }
    if errors > 0 {
        for row in &rows {
            for sample in &row.valid.error_samples {
                writeln!(md, "  - {}: {sample}", row.name).ok();
            }
        }
    }
    writeln!(
        md,
        "- {} p99 under attack ≤ 10× quiet (a target, reported, not failed on)\n",
        if worst_ratio <= 10.0 { "✔" } else { "✘" }
    )
    .ok();
    (md, passed)
}

fn describe_h2(report: &H2Report) -> String {
    format!(
        "h2-only ALPN: {}; 10,000 HEADERS+RST_STREAM on http/1.1: {}",
        if report.h2_only_refused {
            "refused"
        } else {
            "ACCEPTED"
        },
        if report.burst_answered_in_h2 {
            "answered in h2".to_string()
        } else if report.burst_connection_closed {
            "connection closed".to_string()
        } else {
            "ignored".to_string()
        }
    )
}

/// 20 rotations by symlink swap while 1,000 valid reviews/s flow; the 10th installs a key
/// that does not match its certificate.
async fn rotation(body: Bytes) -> (String, bool) {
    let mut s = setup();
    let t = s.target.clone();
    progress(&format!(
        "rotation: {ROTATIONS} rotations under {} reviews/s (+{}/s on new connections)",
        ROTATION_LOAD.rate, ROTATION_LOAD.fresh_rate
    ));
    let valid = ValidLoad::start(&t, body, ROTATION_LOAD);
    sleep(Duration::from_secs(3)).await;
    let _ = valid.take();
    let before = Sample::of(s.server.pid());
    let started = Instant::now();
    let mut seen_after = Vec::new();
    let mut not_served = Vec::new();
    let mut broken_kept = false;
    let mut handshakes = 0u32;
    for i in 1..=ROTATIONS {
        let next =
            s.ca.serving(&format!("v{}", i + 1), &["localhost", "127.0.0.1"]);
        if i == BROKEN_ROTATION {
            let broken = CertifiedKey {
                cert_pem: next.cert_pem.clone(),
                key_pem: s.current.key_pem.clone(),
            };
            s.mounted.rotate(&broken);
            let rotated = Instant::now();
            let mut errors = 0.0;
            while rotated.elapsed() < Duration::from_secs(5) && errors < 1.0 {
                sleep(Duration::from_millis(50)).await;
                errors = metric(
                    &s.server.metrics().await,
                    "pullsecret_injector_certificate_reloads_total{result=\"error\"}",
                );
            }
            let mut kept = errors >= 1.0;
            for _ in 0..3 {
                handshakes += 1;
                kept &=
                    t.client.peer_certificate(t.addr).await.ok() == Some(der(&s.current.cert_pem));
            }
            broken_kept = kept;
            continue;
        }
        s.mounted.rotate(&next);
        let rotated = Instant::now();
        let want = der(&next.cert_pem);
        let mut served = false;
        while rotated.elapsed() < Duration::from_secs(5) {
            handshakes += 1;
            if t.client.peer_certificate(t.addr).await.ok().as_ref() == Some(&want) {
                served = true;
                break;
            }
            sleep(Duration::from_millis(50)).await;
        }
        seen_after.push(rotated.elapsed());
        if served {
            for _ in 0..2 {
                handshakes += 1;
                served &= t.client.peer_certificate(t.addr).await.ok().as_ref() == Some(&want);
            }
        }
        if !served {
            not_served.push(i);
        }
        s.current = next;
    }
    let took = started.elapsed();
    let window = valid.stop().await;
    let after = Sample::of(s.server.pid());
    let metrics = s.server.metrics().await;
    let reloaded = metric(
        &metrics,
        "pullsecret_injector_certificate_reloads_total{result=\"success\"}",
    );
    let refused = metric(
        &metrics,
        "pullsecret_injector_certificate_reloads_total{result=\"error\"}",
    );
    let logged = s
        .server
        .find_log(|l| {
            l["level"] == "ERROR"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("new certificate not loaded"))
        })
        .map(|l| l["error"].as_str().unwrap_or_default().to_string());
    let good = ROTATIONS - 1;
    let mut checks: Vec<(String, bool)> = Vec::new();
    checks.push((
        format!(
            "every good rotation served to new connections, each checked by 3 handshakes{}",
            if not_served.is_empty() {
                String::new()
            } else {
                format!(" (not: {not_served:?})")
            }
        ),
        not_served.is_empty() && seen_after.len() == good as usize,
    ));
    checks.push((
        format!("rotation {BROKEN_ROTATION} (key not matching): refused and counted, the previous certificate still served"),
        broken_kept,
    ));
    checks.push((
        "the broken pair logged at ERROR (\"does not match\")".into(),
        logged
            .as_deref()
            .is_some_and(|e| e.contains("does not match")),
    ));
    checks.push((
        format!("reloads counted: success {reloaded}, error {refused} (expected {good} and 1)"),
        reloaded == f64::from(good) && refused >= 1.0,
    ));
    checks.push(("zero failed valid reviews".into(), window.errors == 0));
    let mut sorted = seen_after.clone();
    sorted.sort_unstable();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let max = sorted.last().copied().unwrap_or_default();

    let mut md = String::new();
    writeln!(md, "### Certificate rotation under load (`make stress`)\n").ok();
    writeln!(
        md,
        "{ROTATIONS} rotations in {:.1} s by the kubelet's `..data` symlink swap (old version \
         directory removed), `reloadIntervalSeconds: 1`, while {} reviews/s flowed over {} \
         keep-alive connections plus {}/s on new connections; rotation {BROKEN_ROTATION} \
         installed a key that does not match its certificate.\n",
        took.as_secs_f64(),
        ROTATION_LOAD.rate,
        ROTATION_LOAD.connections,
        ROTATION_LOAD.fresh_rate
    )
    .ok();
    writeln!(md, "| valid reviews | errors | keep-alive p50 / p99 / max ms | new-connection p50 / p99 ms | new cert seen by handshakes after (median / max) | probe handshakes | reloads success / error | fds before / after | RSS MiB before / after |").ok();
    writeln!(md, "|---:|---:|---|---|---|---:|---|---|---|").ok();
    writeln!(
        md,
        "| {} | {} | {} / {} / {} | {} / {} | {} / {} ms | {handshakes} | {reloaded} / {refused} | {} / {} | {} / {} |\n",
        window.requests(),
        window.errors,
        ms(window.keepalive.p50),
        ms(window.keepalive.p99),
        ms(window.keepalive.max),
        ms(window.fresh.p50),
        ms(window.fresh.p99),
        ms(median),
        ms(max),
        before.fds,
        after.fds,
        mib(before.rss_kib),
        mib(after.rss_kib),
    )
    .ok();
    if let Some(error) = &logged {
        writeln!(md, "Logged for the broken pair: `{error}`\n").ok();
    }
    let mut passed = true;
    for (check, ok) in &checks {
        passed &= ok;
        writeln!(md, "- {} {check}", if *ok { "✔" } else { "✘ FAILED:" }).ok();
    }
    for sample in &window.error_samples {
        writeln!(md, "  - {sample}").ok();
    }
    md.push('\n');
    (md, passed)
}

struct Cycle {
    window: ValidWindow,
    end: Sample,
    peak: Sample,
    /// Median RSS over the quiet pause, KiB.
    floor: u64,
    hostile: u64,
    unexpected: u64,
}

/// Cycles of every attack at once, then a quiet pause in which RSS is sampled each second;
/// growth compares the pauses' medians at the end with those just after the warm-up.
async fn soak(body: Bytes, seconds: u64) -> (String, bool) {
    const CYCLE: Duration = Duration::from_secs(45);
    const HOSTILE: Duration = Duration::from_secs(35);
    let cycles = (seconds / CYCLE.as_secs()).max(2) as usize;
    let warmup = (cycles / 5).max(1);
    let s = setup();
    let t = s.target.clone();
    let pid = s.server.pid();
    progress(&format!(
        "soak: {cycles} cycles of {} s ({warmup} warm-up), injector pid {pid}",
        CYCLE.as_secs()
    ));
    let valid = ValidLoad::start(&t, body.clone(), VALID);
    let big = adversary::padded_review(&body, 7 * MIB);
    let start_sample = Sample::of(s.server.pid());
    let mut rows = Vec::new();
    for cycle in 1..=cycles {
        let began = Instant::now();
        let peak = adversary::PeakSampler::start(pid);
        let (idle, slow, half, bodies, large, malformed) = tokio::join!(
            adversary::idle_tls(&t, 300, 100.0, HOSTILE),
            adversary::slowloris(&t, 50, 50.0, HOSTILE),
            adversary::half_open_handshakes(t.addr, 500, 20.0, Duration::from_secs(10)),
            adversary::slow_bodies(&t, 3, 6 * MIB, 64 * 1024, HOSTILE),
            adversary::bodies_at_rate(&t, big.clone(), 1.0, HOSTILE, 1),
            adversary::malformed_at_rate(&t, 100.0, HOSTILE, 2),
        );
        let peak = peak.stop().await;
        // The quiet pause: RSS sampled each second, its median is the cycle's floor.
        let mut quiet_rss = Vec::new();
        while began.elapsed() + Duration::from_secs(1) <= CYCLE {
            sleep(Duration::from_secs(1)).await;
            quiet_rss.push(Sample::of(s.server.pid()).rss_kib);
        }
        quiet_rss.sort_unstable();
        let floor = quiet_rss
            .get(quiet_rss.len() / 2)
            .copied()
            .unwrap_or_default();
        let window = valid.take();
        let sample = Sample::of(s.server.pid());
        let hostile = idle.attempted
            + slow.attempted
            + half.attempted
            + bodies.attempted
            + large.attempted
            + malformed.attempted;
        let unexpected = (large.attempted - large.count(200))
            + (malformed.attempted - malformed.count(400))
            + (bodies.attempted - bodies.count(408));
        let detail = if unexpected > 0 {
            format!(
                " [7 MiB: {}, {:?}; malformed: {}, {:?}; slow bodies: {}, {:?}]",
                large.statuses_text(),
                large.failure_samples,
                malformed.statuses_text(),
                malformed.failure_samples,
                bodies.statuses_text(),
                bodies.failure_samples
            )
        } else {
            String::new()
        };
        progress(&format!(
            "cycle {cycle}/{cycles}: {} valid, {} errors, p99 {} ms; {hostile} hostile ({unexpected} unexpected answers{detail}); fds {}, RSS peak {} MiB, quiet {} MiB",
            window.requests(),
            window.errors,
            ms(window.keepalive.p99),
            sample.fds,
            mib(peak.rss_kib),
            mib(floor)
        ));
        rows.push(Cycle {
            window,
            end: sample,
            peak,
            floor,
            hostile,
            unexpected,
        });
    }
    let rest = valid.stop().await;
    let total: u64 = rows.iter().map(|r| r.window.requests()).sum::<u64>() + rest.requests();
    let errors: u64 = rows.iter().map(|r| r.window.errors).sum::<u64>() + rest.errors;
    let hostile: u64 = rows.iter().map(|r| r.hostile).sum();
    let unexpected: u64 = rows.iter().map(|r| r.unexpected).sum();
    // Growth: the mean quiet floor of the last cycles against the first after warm-up.
    let after = &rows[warmup..];
    let k = (after.len() / 2).clamp(1, 3);
    let mean =
        |cycles: &[Cycle]| cycles.iter().map(|c| c.floor as f64).sum::<f64>() / cycles.len() as f64;
    let (first, last) = (mean(&after[..k]), mean(&after[after.len() - k..]));
    let growth = (last - first) / first * 100.0;
    let peak = rows
        .iter()
        .map(|r| r.peak.rss_kib)
        .max()
        .unwrap_or_default();
    let hwm = rows.last().map(|r| r.end.hwm_kib).unwrap_or_default();

    let mut md = String::new();
    writeln!(md, "### Soak (`make soak`)\n").ok();
    writeln!(
        md,
        "{} s: {cycles} cycles of {} s, each {} s of every attack at once (300 idle TLS \
         connections, 50 slowloris, 500 half-open handshakes at 20/s, 3 slow 6 MiB bodies, a \
         7 MiB review a second, 100 malformed bodies a second) and a {} s quiet pause in which \
         RSS is sampled each second (its median: the cycle's floor); valid reviews at {}/s \
         keep-alive + {}/s new connections throughout. Warm-up: the first {warmup} cycle(s); \
         growth compares the mean floor of the last {k} cycles with the first {k} after it.\n",
        cycles as u64 * CYCLE.as_secs(),
        CYCLE.as_secs(),
        HOSTILE.as_secs(),
        (CYCLE - HOSTILE).as_secs(),
        VALID.rate,
        VALID.fresh_rate
    )
    .ok();
    writeln!(md, "| cycle | valid reviews | errors | keep-alive p99 ms | new-connection p99 ms | hostile requests + connections | server fds at the end | RSS MiB peak / quiet floor |").ok();
    writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---|").ok();
    writeln!(
        md,
        "| start | | | | | | {} | {} |",
        start_sample.fds,
        mib(start_sample.rss_kib),
    )
    .ok();
    for (i, c) in rows.iter().enumerate() {
        writeln!(
            md,
            "| {}{} | {} | {} | {} | {} | {} | {} | {} / {} |",
            i + 1,
            if i < warmup { " (warm-up)" } else { "" },
            c.window.requests(),
            c.window.errors,
            ms(c.window.keepalive.p99),
            ms(c.window.fresh.p99),
            c.hostile,
            c.end.fds,
            mib(c.peak.rss_kib),
            mib(c.floor),
        )
        .ok();
    }
    writeln!(
        md,
        "\nValid reviews: {total}, errors: {errors}; hostile requests and connections: \
         {hostile} ({unexpected} answered otherwise than the expected 200 / 400 / 408). RSS \
         quiet floor after warm-up {} MiB, at the end {} MiB: growth {growth:+.1} % (target \
         < 10 %); largest RSS {} MiB, VmHWM {} MiB.\n",
        mib(first as u64),
        mib(last as u64),
        mib(peak),
        mib(hwm),
    )
    .ok();
    let passed = errors == 0 && growth < 10.0;
    writeln!(
        md,
        "- {} zero failed valid reviews",
        if errors == 0 { "✔" } else { "✘ FAILED:" }
    )
    .ok();
    writeln!(
        md,
        "- {} RSS growth after warm-up < 10 %\n",
        if growth < 10.0 { "✔" } else { "✘ FAILED:" }
    )
    .ok();
    (md, passed)
}
