//! Pod-create latency through a real kube-apiserver (crates/test-support, `controlplane`), four
//! ways: no webhook, an allow-only webhook (examples/floor_server.rs `--allow-only`: the
//! protocol floor), the same returning the injector's patch (`--patch`: the floor for a
//! mutating answer, which the apiserver must apply), and the injector. Creates are sequential
//! and interleaved across the four, so drift in the control plane touches all alike. Writes
//! `target/bench/apiserver.json`. `make bench` runs it; see BENCHMARKS.md.
//!
//! `cargo bench --bench apiserver` (needs `make controlplane` and
//! `cargo build --release --example floor_server`). BENCH_CREATES overrides the 500 creates.
//! Under `cargo test` it does nothing: a control plane per test run is not worth a smoke test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use test_support::client::TlsClient;
use test_support::controlplane::{self, eventually};
use test_support::injector::{self, EXAMPLE_SECRETS, Injector, Options};
use test_support::pods::{dry_run, pod, secret_names};
use test_support::webhook::Spec;

const DEFAULT_CREATES: usize = 500;
/// Creates per setup before measuring: connections to the webhooks and etcd are warm.
const WARM_UP: usize = 20;
/// How long the apiserver may take to act on a new webhook configuration.
const PROPAGATION: Duration = Duration::from_secs(30);
/// The images of every created pod: one secret each from the config above.
const IMAGES: [&str; 2] = ["ghcr.io/acme/web:1.4.2", "corp/log-shipper:3.2.0"];
/// The injector's patch for that pod, which the patching floor sends too.
const PATCH: &str = r#"[{"op":"add","path":"/spec/imagePullSecrets","value":[{"name":"acme-ghcr"},{"name":"corp"}]}]"#;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("apiserver benchmark: skipped (run it with `cargo bench --bench apiserver`)");
        return;
    }
    let creates = std::env::var("BENCH_CREATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CREATES);
    let cp = controlplane::shared();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = runtime.block_on(measure(cp, creates));
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/apiserver.json");
    std::fs::create_dir_all(out.parent().expect("parent")).expect("create target/bench");
    std::fs::write(&out, &report).expect("write target/bench/apiserver.json");
    println!("{report}");
    println!("written to {}", out.display());
}

/// The allow-only floor server, as a child process.
struct AllowOnly {
    child: Child,
    addr: SocketAddr,
}

impl AllowOnly {
    /// `patch`: the JSON patch to send with every answer, if any.
    fn start(dir: &Path, patch: Option<&str>) -> Self {
        let binary = std::env::var_os("FLOOR_SERVER").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/floor_server"),
            PathBuf::from,
        );
        assert!(
            binary.is_file(),
            "{} not found: build it with `cargo build --release --example floor_server`",
            binary.display()
        );
        let mut command = Command::new(&binary);
        command
            .args(["--allow-only", "--cert"])
            .arg(dir.join("tls.crt"))
            .arg("--key")
            .arg(dir.join("tls.key"));
        if let Some(patch) = patch {
            let file = dir.join("patch.json");
            std::fs::write(&file, patch).expect("write patch.json");
            command.arg("--patch").arg(file);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading the floor server's address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("floor server printed {line:?}, not its address"));
        Self { child, addr }
    }

    async fn reviews(&self, client: &TlsClient) -> u64 {
        let request = hyper::Request::get("/reviews")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = client.connect(self.addr).await.send(request).await;
        String::from_utf8_lossy(&response.body)
            .trim()
            .parse()
            .unwrap_or_default()
    }
}

impl Drop for AllowOnly {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn opt_in_label(id: &str) -> String {
    format!("pullsecret-injector.io/bench-{id}")
}

/// Pods CREATE in namespaces labelled `opt_in_label(id)=enabled`, sent to `addr`.
fn webhook_configuration(id: &str, addr: SocketAddr, ca_pem: &str) -> MutatingWebhookConfiguration {
    Spec {
        ca_pem: Some(ca_pem),
        ..Spec::new(
            &format!("bench-{id}"),
            &format!("{id}.bench.pullsecret-injector.io"),
            &format!("https://127.0.0.1:{}/mutate", addr.port()),
            &opt_in_label(id),
        )
    }
    .configuration()
}

/// The injector's secrets on a pod: both, one or none.
fn pull_secrets(pod: &Pod) -> usize {
    secret_names(pod).len()
}

struct Setup {
    id: &'static str,
    name: &'static str,
    pods: Api<Pod>,
    latencies: Vec<Duration>,
}

async fn measure(cp: &controlplane::ControlPlane, creates: usize) -> String {
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let configs = Api::<MutatingWebhookConfiguration>::all(client.clone());

    let ours_dir = tempfile::tempdir().expect("tempdir");
    let ours_ca = injector::certificates(ours_dir.path());
    let ours = Injector::start(Options::new(EXAMPLE_SECRETS, ours_dir.path()));
    let floor_dir = tempfile::tempdir().expect("tempdir");
    let floor_ca = injector::certificates(floor_dir.path());
    let floor = AllowOnly::start(floor_dir.path(), None);
    let patching_dir = tempfile::tempdir().expect("tempdir");
    let patching_ca = injector::certificates(patching_dir.path());
    let patching = AllowOnly::start(patching_dir.path(), Some(PATCH));

    for (id, addr, ca) in [
        ("ours", ours.addr, &ours_ca.cert_pem),
        ("allow-only", floor.addr, &floor_ca.cert_pem),
        ("allow-patch", patching.addr, &patching_ca.cert_pem),
    ] {
        configs
            .create(&PostParams::default(), &webhook_configuration(id, addr, ca))
            .await
            .unwrap_or_else(|e| panic!("creating the {id} webhook configuration: {e}"));
    }
    let namespace = |id: &'static str| {
        let client = client.clone();
        async move {
            let label = opt_in_label(id);
            let labels: Vec<(&str, &str)> = match id {
                "none" => Vec::new(),
                _ => vec![(label.as_str(), "enabled")],
            };
            let ns = controlplane::namespace(&client, &format!("bench-{id}"), &labels).await;
            Api::<Pod>::namespaced(client, &ns)
        }
    };
    let mut setups = vec![
        Setup {
            id: "none",
            name: "no webhook",
            pods: namespace("none").await,
            latencies: Vec::with_capacity(creates),
        },
        Setup {
            id: "allow-only",
            name: "allow-only webhook (floor)",
            pods: namespace("allow-only").await,
            latencies: Vec::with_capacity(creates),
        },
        Setup {
            id: "allow-patch",
            name: "allow-only webhook + the same patch (floor)",
            pods: namespace("allow-patch").await,
            latencies: Vec::with_capacity(creates),
        },
        Setup {
            id: "ours",
            name: "pullsecret-injector",
            pods: namespace("ours").await,
            latencies: Vec::with_capacity(creates),
        },
    ];

    // Both webhooks in effect before measuring.
    let probe = pod("probe", &IMAGES);
    eventually(
        "the injector's webhook to take effect",
        PROPAGATION,
        || async {
            let created = setups[2]
                .pods
                .create(&dry_run(), &probe)
                .await
                .map_err(|e| e.to_string())?;
            match pull_secrets(&created) {
                0 => Err("probe not mutated yet".to_string()),
                _ => Ok(()),
            }
        },
    )
    .await;
    let floor_client = TlsClient::new(&floor_ca.cert_pem);
    eventually(
        "the allow-only webhook to take effect",
        PROPAGATION,
        || async {
            setups[1]
                .pods
                .create(&dry_run(), &probe)
                .await
                .map_err(|e| e.to_string())?;
            match floor.reviews(&floor_client).await {
                0 => Err("no review reached the allow-only webhook yet".to_string()),
                _ => Ok(()),
            }
        },
    )
    .await;

    let started = Instant::now();
    for i in 0..WARM_UP + creates {
        for setup in &mut setups {
            let name = format!("p-{i}");
            let sent = Instant::now();
            let created = setup
                .pods
                .create(&PostParams::default(), &pod(&name, &IMAGES))
                .await
                .unwrap_or_else(|e| panic!("{}: creating pod {name}: {e}", setup.name));
            let elapsed = sent.elapsed();
            // The injector and the patching floor add both secrets; the others nothing.
            let want = if matches!(setup.id, "ours" | "allow-patch") {
                2
            } else {
                0
            };
            assert_eq!(pull_secrets(&created), want, "{}: pod {name}", setup.name);
            if i >= WARM_UP {
                setup.latencies.push(elapsed);
            }
        }
    }
    let took = started.elapsed();
    let reviewed = floor.reviews(&floor_client).await;
    drop(ours);
    drop(floor);
    drop(patching);
    report(&mut setups, creates, took, reviewed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The summary benches/report.py renders, as JSON.
fn report(setups: &mut [Setup], creates: usize, took: Duration, reviewed: u64) -> String {
    let setups: Vec<_> = setups
        .iter_mut()
        .map(|setup| {
            setup.latencies.sort();
            let l = &setup.latencies;
            let mean = l.iter().sum::<Duration>() / l.len() as u32;
            serde_json::json!({
                "id": setup.id,
                "name": setup.name,
                "p50_ms": ms(percentile(l, 50.0)),
                "p99_ms": ms(percentile(l, 99.0)),
                "mean_ms": ms(mean),
                "max_ms": ms(*l.last().expect("latencies")),
            })
        })
        .collect();
    let report = serde_json::json!({
        "creates": creates,
        "warm_up": WARM_UP,
        "seconds": took.as_secs_f64(),
        "allow_only_reviews": reviewed,
        "setups": setups,
    });
    serde_json::to_string_pretty(&report).expect("JSON")
}
