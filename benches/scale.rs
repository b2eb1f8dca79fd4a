//! Replication at scale (`make scale`, BENCHMARKS.md "At scale"): SCALE_NAMESPACES namespaces
//! (half of them opted in) and 3 sources on a control plane of its own (one process per size,
//! started without kube-controller-manager, so that nothing else writes), all created before
//! the injector starts. Then, measured:
//!
//! - the floor: a bare client with the injector's identity creates the same 3 copies in each
//!   opted-in namespace as fast as the apiserver takes them (FLOOR_CONCURRENCY in flight);
//!   they are deleted again before the injector starts;
//! - the injector (the release binary, with the chart's access): time from its start until
//!   every copy exists, its CPU and memory, its requests by verb as the apiserver's audit log
//!   records them for our User-Agent, and admission latency (reviews at ADMISSION_RATE a
//!   second, keep-alive, from when `/readyz` says ready, as a Service's endpoints would send
//!   them) while it converges and once it is idle;
//! - with `handover` in SCALE_PHASES (5,000 by default): a second start on the converged
//!   cluster, then a leader hand-over to a standby replica; each must write nothing;
//! - with `rotation` (10,000 by default): the 3 sources get new bytes; time until every copy
//!   carries them, and the replication's request rate against its client-side limit.
//!
//! Writes `target/scale/scale-<namespaces>.json` (benches/scale.py makes the report). Under
//! `cargo test` it does nothing.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::watcher;
use pullsecret_injector::config::{Config, Settings};
use pullsecret_injector::kubernetes::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, REPLICATION_USER_AGENT_VALUE, USER_AGENT_VALUE,
};
use pullsecret_injector::replicate::{copy_of, dockerconfig, owner};
use serde_json::{Value, json};
use test_support::access::ChartAccess;
use test_support::adversary::{LoadSpec, PeakSampler, Sample, Target, ValidLoad, ValidWindow};
use test_support::client::TlsClient;
use test_support::controlplane::{self, ControlPlane, Options as ControlPlaneOptions};
use test_support::injector::{Injector, Instance, Options};
use test_support::pods::admission_review;
use test_support::secrets::{Credentials, pull_secret};
use tokio::sync::watch;

/// The injector's namespace: its sources, its Lease, its ServiceAccount.
const SYSTEM_NAMESPACE: &str = "scale-system";
/// The chart's full name: ServiceAccount, Lease.
const FULLNAME: &str = "pullsecret-injector";
const OPT_IN_LABEL: &str = "scale.pullsecret-injector.io/opt-in";
/// The copies, each of its own source for its own registry.
const COPIES: [(&str, &str); 3] = [
    ("regcred-a", "a.registry.example"),
    ("regcred-b", "b.registry.example"),
    ("regcred-c", "c.registry.example"),
];
const FLOOR_USER_AGENT: &str = "pullsecret-injector-scale-floor";
/// Requests in flight while the bench itself sets up or cleans (namespaces, deletions).
const SETUP_CONCURRENCY: usize = 64;
/// How long the idle admission window lasts, after convergence.
const IDLE_WINDOW: Duration = Duration::from_secs(20);
/// After a new leader has synced every namespace, how long the audit log is still watched
/// for writes.
const QUIET_AFTER_SYNC: Duration = Duration::from_secs(5);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(3600);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale benchmark: skipped (run it with `make scale`)");
        return;
    }
    let namespaces: usize = env_or("SCALE_NAMESPACES", 1000);
    let phases = std::env::var("SCALE_PHASES").unwrap_or_else(|_| {
        match namespaces {
            5000 => "handover",
            10000 => "rotation",
            _ => "",
        }
        .to_string()
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/scale");
    std::fs::create_dir_all(&out).expect("create target/scale");
    let audit_log = out.join(format!("audit-{namespaces}.log"));
    let _ = std::fs::remove_file(&audit_log);
    let policy = out.join("audit-policy.yaml");
    std::fs::write(&policy, audit_policy()).expect("write the audit policy");
    let started = Instant::now();
    let cp = controlplane::shared_with(|| ControlPlaneOptions {
        apiserver_args: vec![
            format!("--audit-policy-file={}", policy.display()),
            format!("--audit-log-path={}", audit_log.display()),
            "--audit-log-format=json".into(),
            // One file for the whole run: it is read from offsets.
            "--audit-log-maxsize=4096".into(),
        ],
        without_controller_manager: true,
        ..ControlPlaneOptions::default()
    });
    let control_plane_seconds = started.elapsed().as_secs_f64();
    let cpus = pin_control_plane(cp);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = runtime.block_on(measure(cp, namespaces, &phases, &audit_log));
    report["control_plane_start_seconds"] = json!(control_plane_seconds);
    report["cpus"] = cpus;
    let path = out.join(format!("scale-{namespaces}.json"));
    let text = serde_json::to_string_pretty(&report).expect("JSON");
    std::fs::write(&path, &text).expect("write the report");
    println!("written to {}", path.display());
}

/// With SCALE_CONTROL_PLANE_CPUS (scale.sh sets it to the last core when there are 2 or
/// more): etcd and kube-apiserver move there, while this process and the injector it starts
/// stay on the cores scale.sh gave them (the others), as in a cluster, where the webhook does
/// not run on the apiserver's CPUs. Admission latency then shows what replication costs the
/// injector, not what a saturated apiserver costs a shared machine; the floor and the
/// injector meet the same apiserver either way.
fn pin_control_plane(cp: &ControlPlane) -> Value {
    let Ok(control_plane) = std::env::var("SCALE_CONTROL_PLANE_CPUS") else {
        return json!({"pinned": false});
    };
    for (_, pid) in cp.server_pids() {
        taskset(&control_plane, &pid.to_string(), true);
    }
    let own = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    log(&format!(
        "control plane (and the copy tracker) pinned to CPU {control_plane}; the injector and the admission load on {own}"
    ));
    json!({
        "pinned": true,
        "control_plane": control_plane,
        "bench_and_injector": own,
    })
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Only the injector's ServiceAccount is audited (the floor uses it too; the User-Agent
/// tells them apart); everything else, the bench's admin included, is not.
fn audit_policy() -> String {
    format!(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
         - level: Metadata\n  users: [\"system:serviceaccount:{SYSTEM_NAMESPACE}:{FULLNAME}\"]\n\
         - level: None\n"
    )
}

/// The injector's config: the binary's defaults, but for SCALE_REPLICATION_RATE
/// (`<qps>,<burst>`), which sets `replicationRateLimit`.
fn config() -> String {
    let mut config = format!(
        "namespace: {SYSTEM_NAMESPACE}\n\
         namespaceSelector:\n  matchLabels: {{\"{OPT_IN_LABEL}\": \"true\"}}\n\
         leaderElection: {{leaseName: {FULLNAME}, leaseDurationSeconds: 15}}\n"
    );
    if let Ok(rate) = std::env::var("SCALE_REPLICATION_RATE") {
        let (qps, burst) = rate
            .split_once(',')
            .expect("SCALE_REPLICATION_RATE is <qps>,<burst>");
        config.push_str(&format!(
            "replicationRateLimit: {{qps: {qps}, burst: {burst}}}\n"
        ));
    }
    config.push_str("secrets:\n");
    for (name, _) in COPIES {
        config.push_str(&format!(
            "  - {{name: {name}, source: {{name: {name}-source}}}}\n"
        ));
    }
    config
}

fn namespace_name(i: usize) -> String {
    format!("scale-{i:05}")
}

fn opted_in(i: usize) -> bool {
    i.is_multiple_of(2)
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

async fn measure(cp: &ControlPlane, namespaces: usize, phases: &str, audit_log: &Path) -> Value {
    let admin = cp.client();
    let config = config();
    let settings: Settings = Config::from_yaml(&config)
        .expect("config")
        .validate()
        .expect("valid config");
    let mut report = json!({
        "namespaces": namespaces,
        "opted_in": (0..namespaces).filter(|i| opted_in(*i)).count(),
        "copies_expected": (0..namespaces).filter(|i| opted_in(*i)).count() * COPIES.len(),
        "machine": machine(),
        "started": unix_now(),
        "injector_user_agents": [USER_AGENT_VALUE, REPLICATION_USER_AGENT_VALUE],
        "replication_rate_limit": {
            "qps": settings.replication_rate_limit.qps,
            "burst": settings.replication_rate_limit.burst,
        },
        "phases": phases,
    });
    let expected = report["copies_expected"].as_u64().expect("count") as usize;

    // Set-up: sources, the injector's access, then the namespaces.
    controlplane::create_namespace(
        &admin,
        controlplane::NamespaceName::Exact(SYSTEM_NAMESPACE),
        &[],
    )
    .await;
    let mut sources = BTreeMap::new();
    for (name, registry) in COPIES {
        let secret = pull_secret(
            &format!("{name}-source"),
            &Credentials::new(registry, "robot", "first-password").dockerconfigjson(),
        );
        let created = Api::<Secret>::namespaced(admin.clone(), SYSTEM_NAMESPACE)
            .create(&PostParams::default(), &secret)
            .await
            .expect("create a source");
        sources.insert(name.to_string(), created);
    }
    let state = tempfile::tempdir().expect("tempdir");
    let access = ChartAccess::for_config(&admin, &config, state.path()).await;
    let started = Instant::now();
    futures::stream::iter(0..namespaces)
        .map(|i| {
            let api = Api::<Namespace>::all(admin.clone());
            async move {
                let mut labels = BTreeMap::new();
                if opted_in(i) {
                    labels.insert(OPT_IN_LABEL.to_string(), "true".to_string());
                }
                let ns = Namespace {
                    metadata: ObjectMeta {
                        name: Some(namespace_name(i)),
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    },
                    ..Namespace::default()
                };
                api.create(&PostParams::default(), &ns)
                    .await
                    .unwrap_or_else(|e| panic!("creating namespace {i}: {e}"));
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    report["setup_namespaces_seconds"] = json!(seconds(started.elapsed()));
    log(&format!(
        "{namespaces} namespaces created in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let copies = CopyTracker::start(admin.clone());
    let _ = copies.expect(&sources);

    // The floor: the same copies, created by a bare client as fast as the apiserver takes them.
    let floor = floor(&access, &settings, &sources, namespaces, audit_log).await;
    log(&format!(
        "floor: {} copies in {:.2} s ({:.0}/s)",
        floor["copies"], floor["seconds"], floor["per_second"]
    ));
    report["floor"] = floor;
    copies.wait(|p| p.total == expected, CONVERGE_TIMEOUT).await;
    let started = Instant::now();
    delete_copies(&admin, namespaces).await;
    copies.wait(|p| p.total == 0, CONVERGE_TIMEOUT).await;
    log(&format!(
        "floor's copies deleted in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    // The injector, from its start until every copy exists, then idle.
    let instance = Instance::start(|dir| start_injector(&config, dir, &access));
    let ca_pem = instance.ca_pem.clone();
    let mut current = instance.injector;
    let _dir = instance.dir;
    let review_namespace = namespace_name(0);
    let target = Target {
        client: TlsClient::new(&ca_pem),
        addr: current.addr,
    };
    let converge = converge(
        &current,
        &copies,
        expected,
        audit_log,
        &target,
        &review_namespace,
    )
    .await;
    log(&format!(
        "injector: every copy in {:.2} s (floor {:.2} s)",
        converge["seconds_from_start"], report["floor"]["seconds"]
    ));
    report["injector"] = converge;

    if phases.contains("handover") {
        let (phase, leader) = handover(current, &config, &access, namespaces, audit_log).await;
        report["restart_and_handover"] = phase;
        current = leader;
    }
    if phases.contains("rotation") {
        let target = Target {
            client: TlsClient::new(&ca_pem),
            addr: current.addr,
        };
        report["rotation"] = rotation(
            &admin,
            &current,
            &copies,
            &mut sources,
            expected,
            audit_log,
            &target,
            &review_namespace,
            &settings,
        )
        .await;
    }
    let log_dir = current.dir.clone();
    let status = current.stop();
    report["injector_exit"] = json!(status.to_string());
    // Kept beside the report: one line per admission, with its duration, to find what a
    // window's slowest reviews waited for.
    let _ = std::fs::copy(
        log_dir.join("injector.log"),
        audit_log.with_file_name(format!("injector-{namespaces}.log")),
    );
    report["finished"] = json!(unix_now());
    report
}

fn start_injector(config: &str, dir: &Path, access: &ChartAccess) -> Injector {
    Injector::start(Options {
        kubeconfig: Some(&access.kubeconfig),
        log_to_file: true,
        ..Options::new(config, dir)
    })
}

fn log(message: &str) {
    eprintln!("[scale {:>8.1}] {message}", unix_now() % 100_000.0);
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn machine() -> Value {
    let text = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_start": text("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>(),
    })
}

fn loadavg() -> Vec<String> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .map(String::from)
        .collect()
}

// ---------------------------------------------------------------------------------------
// The floor

async fn floor(
    access: &ChartAccess,
    settings: &Settings,
    sources: &BTreeMap<String, Secret>,
    namespaces: usize,
    audit_log: &Path,
) -> Value {
    let concurrency: usize = env_or("FLOOR_CONCURRENCY", 32);
    let client = client_with_agent(&access.kubeconfig, FLOOR_USER_AGENT).await;
    let owner = owner(settings);
    let mut wanted = Vec::new();
    for i in (0..namespaces).filter(|i| opted_in(*i)) {
        let ns = namespace_name(i);
        for spec in &settings.secrets {
            let source_ref = spec.source.as_ref().expect("every entry has a source");
            let source = &sources[&spec.name];
            wanted.push(copy_of(spec, source_ref, source, &ns, &owner));
        }
    }
    let count = wanted.len();
    let mark = AuditMark::now(audit_log);
    let loadavg_before = loadavg();
    let started = Instant::now();
    futures::stream::iter(wanted)
        .map(|copy| {
            let api = Api::<Secret>::namespaced(
                client.clone(),
                copy.metadata.namespace.as_deref().expect("namespace"),
            );
            async move {
                api.create(&PostParams::default(), &copy)
                    .await
                    .unwrap_or_else(|e| panic!("floor create: {e}"));
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    let took = started.elapsed();
    json!({
        "copies": count,
        "concurrency": concurrency,
        "seconds": seconds(took),
        "per_second": count as f64 / seconds(took),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
        "requests": mark.counts(FLOOR_USER_AGENT),
    })
}

async fn client_with_agent(kubeconfig: &Path, agent: &'static str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("load kubeconfig");
    config.headers.push((
        hyper::header::USER_AGENT,
        hyper::header::HeaderValue::from_static(agent),
    ));
    kube::Client::try_from(config).expect("client")
}

/// Deletes every copy (by label, namespace by namespace) as the admin.
async fn delete_copies(admin: &kube::Client, namespaces: usize) {
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
    futures::stream::iter((0..namespaces).filter(|i| opted_in(*i)))
        .map(|i| {
            let api = Api::<Secret>::namespaced(admin.clone(), &namespace_name(i));
            let selector = selector.clone();
            async move {
                api.delete_collection(
                    &DeleteParams::default(),
                    &ListParams::default().labels(&selector),
                )
                .await
                .unwrap_or_else(|e| panic!("deleting copies: {e}"));
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

// ---------------------------------------------------------------------------------------
// The injector converging

async fn converge(
    injector: &Injector,
    copies: &CopyTracker,
    expected: usize,
    audit_log: &Path,
    target: &Target,
    review_namespace: &str,
) -> Value {
    // Injector::start returned at its `serving` line: the clock starts a little before.
    let started = Instant::now();
    let started_unix = unix_now();
    let mark = AuditMark::now(audit_log);
    let loadavg_before = loadavg();
    let sampler = PeakSampler::start(injector.pid());
    // The apiserver reaches a replica through its Service, whose endpoints list it once
    // `/readyz` says ready (its caches have synced): the load starts then, as in a cluster.
    let ready = wait_ready(injector).await;
    let load = admission_load(target, review_namespace);
    let first = copies.wait(|p| p.total > 0, CONVERGE_TIMEOUT).await;
    let all = copies.wait(|p| p.total >= expected, CONVERGE_TIMEOUT).await;
    let during = load.take();
    let cpu_converged = cpu_seconds(injector.pid());
    let cluster_cpu_converged = threads_cpu_seconds(injector.pid(), "cluster");
    let peak_converging = sampler.stop().await;
    let requests = mark.counts_injector();
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle = load.stop().await;
    let after_idle = Sample::of(injector.pid());
    let metrics = injector.metrics().await;
    let logged = |message: &str| {
        injector
            .find_log(|l| l["message"] == message)
            .and_then(|l| l["timestamp"].as_str().map(String::from))
    };
    let value = json!({
        "seconds_from_start": seconds(all.at.duration_since(started)),
        "first_copy_seconds": seconds(first.at.duration_since(started)),
        "ready_seconds": seconds(ready.duration_since(started)),
        "synced_at": logged("caches synced"),
        "leader_at": logged("became the leader; replicating"),
        "started_unix": started_unix,
        "copies": all.total,
        "cpu_seconds": cpu_converged,
        "cluster_cpu_seconds": cluster_cpu_converged,
        "rss_peak_kib": peak_converging.hwm_kib.max(peak_converging.rss_kib),
        "rss_after_idle_kib": after_idle.rss_kib,
        "hwm_after_idle_kib": after_idle.hwm_kib,
        "requests": requests,
        "admission_converging": window(&during),
        "admission_idle": window(&idle),
        "metrics": injector_metrics(&metrics),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
    });
    value
}

/// Polls `/readyz` until it says ready; when.
async fn wait_ready(injector: &Injector) -> Instant {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        if injector
            .admin_get("/readyz")
            .await
            .starts_with("HTTP/1.1 200")
        {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "the injector never turned ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reviews at ADMISSION_RATE a second over 4 keep-alive connections, for a pod in an opted-in
/// namespace whose image needs the first copy.
fn admission_load(target: &Target, namespace: &str) -> ValidLoad {
    let rate: f64 = env_or("ADMISSION_RATE", 100.0);
    let review = admission_review("scale-review", namespace, "a.registry.example/app:1");
    let body = Bytes::from(serde_json::to_vec(&review).expect("JSON"));
    let _on_its_own_thread = load_runtime().enter();
    ValidLoad::start(
        target,
        body,
        LoadSpec {
            rate,
            connections: 4,
            fresh_rate: 0.0,
        },
    )
}

/// The copy tracker's runtime: one thread, on the control plane's CPUs when scale.sh pins
/// it there. Decoding every Secret event (15,000 at 10,000 namespaces, each again at a
/// rotation) is the cluster being watched, not work of the webhook: on the injector's core
/// it took CPU from the admissions it measures.
fn observer_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        one_thread_runtime(
            "copy-tracker",
            std::env::var("SCALE_CONTROL_PLANE_CPUS").ok(),
        )
    })
}

/// The admission load's runtime, with a thread of its own: on the bench's runtime (one
/// worker, on the injector's core) an answer would wait to be read while the copy tracker
/// decodes a burst of Secret events, and that wait would count as the injector's latency.
fn load_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| one_thread_runtime("admission-load", None))
}

/// A runtime with one worker thread named `name`, moved to `cpus` when given.
fn one_thread_runtime(name: &str, cpus: Option<String>) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .on_thread_start(move || {
            if let Some(cpus) = &cpus {
                // This thread only.
                let tid = rustix::thread::gettid().as_raw_nonzero();
                taskset(cpus, &tid.to_string(), false);
            }
        })
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("the {name} runtime: {e}"))
}

/// `taskset` moves process or thread `id` (with `all_tasks`, every thread of process `id`)
/// to `cpus`.
fn taskset(cpus: &str, id: &str, all_tasks: bool) {
    let mut command = std::process::Command::new("taskset");
    if all_tasks {
        command.arg("--all-tasks");
    }
    let status = command
        .args(["--cpu-list", "--pid", cpus, id])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run taskset");
    assert!(status.success(), "taskset {id}: {status}");
}

fn window(window: &ValidWindow) -> Value {
    json!({
        "reviews": window.keepalive.count,
        "errors": window.errors,
        "error_samples": window.error_samples,
        "p50_ms": window.keepalive.p50.as_secs_f64() * 1e3,
        "p99_ms": window.keepalive.p99.as_secs_f64() * 1e3,
        "max_ms": window.keepalive.max.as_secs_f64() * 1e3,
    })
}

fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// The CPU of `pid`'s threads named `name`: for "cluster", the watches, the leader election
/// and replication (the injector's cluster runtime), without admission's workers, whose CPU
/// follows the admission load's 100 reviews a second for as long as convergence lasts, not
/// the number of namespaces. A thread that has exited is not counted (the runtime's one
/// worker lives as long as the process).
fn threads_cpu_seconds(pid: u32, name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .map(|task| stat_cpu_seconds(&task.path().join("stat").to_string_lossy()))
        .sum()
}

/// utime + stime of a `/proc/.../stat` file.
fn stat_cpu_seconds(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SC_CLK_TCK is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn injector_metrics(text: &str) -> Value {
    const FAMILIES: [&str; 5] = [
        "pullsecret_injector_replicated_copies_total",
        "pullsecret_injector_namespace_syncs_total",
        "pullsecret_injector_ensured_at_admission_total",
        "pullsecret_injector_replication_errors_total",
        "pullsecret_injector_cache_objects",
    ];
    let found: serde_json::Map<String, Value> = text
        .lines()
        .filter(|line| FAMILIES.iter().any(|f| line.starts_with(f)))
        .filter_map(|line| line.rsplit_once(' '))
        .map(|(series, value)| {
            (
                series.to_string(),
                json!(value.parse::<f64>().unwrap_or(0.0)),
            )
        })
        .collect();
    Value::Object(found)
}

fn synced_namespaces(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with("pullsecret_injector_namespace_syncs_total{result=\"ok\"}"))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `injector` has synced at least `namespaces` namespaces (its metric).
async fn wait_synced_namespaces(injector: &Injector, namespaces: usize) -> Instant {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        if synced_namespaces(&injector.metrics().await) >= namespaces as f64 {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the leader never synced every namespace"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// A second start, then a hand-over

async fn handover(
    first: Injector,
    config: &str,
    access: &ChartAccess,
    namespaces: usize,
    audit_log: &Path,
) -> (Value, Injector) {
    let dir = first.dir.clone();
    let status = first.stop();
    log(&format!(
        "first injector stopped ({status}); starting again"
    ));

    // Same certificate directory: the instance's CA still verifies it.
    let mark = AuditMark::now(audit_log);
    let started = Instant::now();
    let second = start_injector(config, &dir, access);
    second.wait_leader(Duration::from_secs(60)).await;
    let synced = wait_synced_namespaces(&second, namespaces).await;
    tokio::time::sleep(QUIET_AFTER_SYNC).await;
    let restart = json!({
        "seconds_to_sync_every_namespace": seconds(synced.duration_since(started)),
        "requests": mark.counts_injector(),
        "metrics": injector_metrics(&second.metrics().await),
        "cpu_seconds": cpu_seconds(second.pid()),
        "rss_kib": Sample::of(second.pid()).rss_kib,
    });
    log(&format!("second start: {}", restart["requests"]["writes"]));

    // A standby replica with a directory of its own but the same serving certificate, as
    // replicas of one Deployment share theirs: the admission load goes on verifying it.
    let standby_dir = tempfile::tempdir().expect("tempdir").keep();
    for file in ["tls.crt", "tls.key"] {
        std::fs::copy(dir.join(file), standby_dir.join(file)).expect("copy the certificate");
    }
    let standby = start_injector(config, &standby_dir, access);
    standby.wait_synced().await;
    let mark = AuditMark::now(audit_log);
    let stopped = Instant::now();
    let status = second.stop();
    standby.wait_leader(Duration::from_secs(60)).await;
    let leading = Instant::now();
    let synced = wait_synced_namespaces(&standby, namespaces).await;
    tokio::time::sleep(QUIET_AFTER_SYNC).await;
    let handover = json!({
        "old_leader_exit": status.to_string(),
        "seconds_to_new_leader": seconds(leading.duration_since(stopped)),
        "seconds_to_sync_every_namespace": seconds(synced.duration_since(stopped)),
        "requests": mark.counts_injector(),
        "metrics": injector_metrics(&standby.metrics().await),
    });
    log(&format!("hand-over: {}", handover["requests"]["writes"]));
    (json!({"restart": restart, "handover": handover}), standby)
}

// ---------------------------------------------------------------------------------------
// Source rotation

#[allow(clippy::too_many_arguments)]
async fn rotation(
    admin: &kube::Client,
    injector: &Injector,
    copies: &CopyTracker,
    sources: &mut BTreeMap<String, Secret>,
    expected: usize,
    audit_log: &Path,
    target: &Target,
    review_namespace: &str,
    settings: &Settings,
) -> Value {
    let load = admission_load(target, review_namespace);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = load.take();
    let mark = AuditMark::now(audit_log);
    let cpu_before = cpu_seconds(injector.pid());
    let sampler = PeakSampler::start(injector.pid());
    let started = Instant::now();
    let api = Api::<Secret>::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    for (name, registry) in COPIES {
        let mut source = sources[name].clone();
        source.data = pull_secret(
            "x",
            &Credentials::new(registry, "robot", "second-password").dockerconfigjson(),
        )
        .data;
        let replaced = api
            .replace(&format!("{name}-source"), &PostParams::default(), &source)
            .await
            .expect("rotate a source");
        sources.insert(name.to_string(), replaced);
    }
    // Counted against the new bytes only: until the watch's next event, `current` still
    // counts the copies that carry the old ones.
    let generation = copies.expect(sources);
    let done = copies
        .wait(
            |p| p.generation == generation && p.current >= expected,
            CONVERGE_TIMEOUT,
        )
        .await;
    let took = done.at.duration_since(started);
    let during = load.stop().await;
    let peak = sampler.stop().await;
    let requests = mark.counts_injector();
    let rate = settings.replication_rate_limit;
    let value = json!({
        "seconds": seconds(took),
        "copies": expected,
        "per_second": expected as f64 / seconds(took),
        "cpu_seconds": cpu_seconds(injector.pid()) - cpu_before,
        "rss_peak_kib": peak.hwm_kib.max(peak.rss_kib),
        "requests": requests,
        "replication_rate": mark.rate(REPLICATION_USER_AGENT_VALUE),
        "rate_limit": {"qps": rate.qps, "burst": rate.burst},
        "admission_before": window(&before),
        "admission_rotating": window(&during),
    });
    log(&format!(
        "rotation: every copy has the new bytes after {:.2} s",
        seconds(took)
    ));
    value
}

// ---------------------------------------------------------------------------------------
// Copies, as an admin watch sees them

#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Copies that exist.
    total: usize,
    /// Copies whose data is their source's current data, as of `generation`.
    current: usize,
    /// Which [`CopyTracker::expect`] `current` was counted against.
    generation: u64,
    at: Instant,
}

struct CopyTracker {
    progress: watch::Receiver<Progress>,
    /// Source data hash by copy name, and how many times it was set.
    expected: Arc<Mutex<(u64, HashMap<String, String>)>>,
}

impl CopyTracker {
    fn start(admin: kube::Client) -> Self {
        let (sender, progress) = watch::channel(Progress {
            total: 0,
            current: 0,
            generation: 0,
            at: Instant::now(),
        });
        let expected = Arc::new(Mutex::new((0, HashMap::<String, String>::new())));
        let wanted = Arc::clone(&expected);
        observer_runtime().spawn(async move {
            let config = watcher::Config::default()
                .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
            let stream = watcher(Api::<Secret>::all(admin), config);
            let mut stream = std::pin::pin!(stream);
            let mut seen: HashMap<(String, String), (String, String)> = HashMap::new();
            // Kept up to date per event, and counted again only when the sources change: a
            // count over every copy per event made this task the busiest thing on the
            // injector's core at 10,000 namespaces (15,000 events x 15,000 copies).
            let mut current = 0usize;
            let mut counted_for = u64::MAX;
            while let Some(event) = stream.next().await {
                let Ok(event) = event else { continue };
                let key = |s: &Secret| {
                    (
                        s.metadata.namespace.clone().unwrap_or_default(),
                        s.metadata.name.clone().unwrap_or_default(),
                    )
                };
                let hash =
                    |s: &Secret| dockerconfig::data_hash(s.type_.as_deref(), s.data.as_ref());
                let expected = wanted.lock().expect("lock");
                let generation = expected.0;
                let is_current =
                    |(name, hash): &(String, String)| expected.1.get(name) == Some(hash);
                if generation != counted_for {
                    current = seen.values().filter(|copy| is_current(copy)).count();
                    counted_for = generation;
                }
                let (added, removed) = match event {
                    watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                        let copy = (s.metadata.name.clone().unwrap_or_default(), hash(&s));
                        let added = is_current(&copy);
                        (added, seen.insert(key(&s), copy))
                    }
                    watcher::Event::Delete(s) => (false, seen.remove(&key(&s))),
                    watcher::Event::Init => {
                        seen.clear();
                        current = 0;
                        (false, None)
                    }
                    watcher::Event::InitDone => (false, None),
                };
                current += usize::from(added);
                current -= usize::from(removed.as_ref().is_some_and(is_current));
                drop(expected);
                sender.send_replace(Progress {
                    total: seen.len(),
                    current,
                    generation,
                    at: Instant::now(),
                });
            }
        });
        Self { progress, expected }
    }

    /// The copies' data from now on: their sources'. Returns the generation from which
    /// `Progress::current` counts against it.
    fn expect(&self, sources: &BTreeMap<String, Secret>) -> u64 {
        let mut expected = self.expected.lock().expect("lock");
        expected.0 += 1;
        for (name, source) in sources {
            expected.1.insert(
                name.clone(),
                dockerconfig::data_hash(source.type_.as_deref(), source.data.as_ref()),
            );
        }
        expected.0
    }

    async fn wait(&self, done: impl Fn(&Progress) -> bool, timeout: Duration) -> Progress {
        let mut progress = self.progress.clone();
        match tokio::time::timeout(timeout, progress.wait_for(|p| done(p))).await {
            Ok(Ok(progress)) => *progress,
            _ => panic!(
                "copies did not get there within {timeout:?}: {:?}",
                *self.progress.borrow()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The audit log: the apiserver's own record of each request, with its User-Agent

/// A place in the audit log, to count what was logged after it.
struct AuditMark {
    path: PathBuf,
    offset: u64,
}

impl AuditMark {
    fn now(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        }
    }

    /// Each request once: a watch when it started, anything else when it completed.
    fn events(&self) -> Vec<Value> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let _ = file.seek(SeekFrom::Start(self.offset));
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
            .filter(|event| {
                let watch = event["verb"] == "watch";
                let stage = event["stage"].as_str().unwrap_or_default();
                (watch && stage == "ResponseStarted") || (!watch && stage == "ResponseComplete")
            })
            .collect()
    }

    /// Requests by `verb resource` from User-Agents that start with `agent`, and their writes.
    fn counts(&self, agent: &str) -> Value {
        let mut by_verb: BTreeMap<String, u64> = BTreeMap::new();
        let mut writes: BTreeMap<String, u64> = BTreeMap::new();
        let mut total = 0;
        for event in self.events() {
            if !event["userAgent"]
                .as_str()
                .is_some_and(|ua| ua.starts_with(agent))
            {
                continue;
            }
            total += 1;
            let verb = event["verb"].as_str().unwrap_or("?").to_string();
            let resource = event["objectRef"]["resource"]
                .as_str()
                .unwrap_or("(none)")
                .to_string();
            let code = event["responseStatus"]["code"].as_u64().unwrap_or(0);
            *by_verb.entry(format!("{verb} {resource}")).or_default() += 1;
            if matches!(
                verb.as_str(),
                "create" | "update" | "patch" | "delete" | "deletecollection"
            ) {
                *writes
                    .entry(format!("{verb} {resource} {code}"))
                    .or_default() += 1;
            }
        }
        json!({"total": total, "by_verb": by_verb, "writes": writes})
    }

    /// Both of the injector's clients (they share the product name).
    fn counts_injector(&self) -> Value {
        let mut all = self.counts(USER_AGENT_VALUE);
        all["replication"] = self.counts(REPLICATION_USER_AGENT_VALUE);
        all
    }

    /// The request rate of `agent` (exactly): overall, and the most in any 1 s and 10 s.
    fn rate(&self, agent: &str) -> Value {
        let mut times: Vec<f64> = self
            .events()
            .iter()
            .filter(|e| e["userAgent"] == agent)
            .filter_map(|e| {
                e["requestReceivedTimestamp"]
                    .as_str()
                    .and_then(parse_rfc3339)
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let most_within = |window: f64| {
            let mut most = 0;
            let mut start = 0;
            for end in 0..times.len() {
                while times[end] - times[start] >= window {
                    start += 1;
                }
                most = most.max(end - start + 1);
            }
            most
        };
        let span = match (times.first(), times.last()) {
            (Some(first), Some(last)) if last > first => last - first,
            _ => 0.0,
        };
        json!({
            "requests": times.len(),
            "seconds": span,
            "per_second": if span > 0.0 { times.len() as f64 / span } else { 0.0 },
            "most_in_1s": most_within(1.0),
            "most_in_10s": most_within(10.0),
        })
    }
}

/// `2026-11-28T07:01:02.123456Z` as seconds since the epoch (UTC, as the apiserver writes).
fn parse_rfc3339(text: &str) -> Option<f64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (hms.next()??, hms.next()??, hms.next()??);
    let fraction: f64 = format!("0.{fraction}").parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60 + s) as f64 + fraction)
}
