//! The comparison of COMPARISON.md: pullsecret-injector beside the tools users run today, on one
//! real control plane (crates/test-support, `controlplane`: etcd, kube-apiserver and
//! kube-controller-manager, pinned), in one run.
//!
//! - **patcher**: titansoft-pte-ltd/imagepullsecret-patcher, a loop that copies one secret into
//!   every namespace and patches ServiceAccounts every 10 s. It only reads in-cluster
//!   credentials, so it runs with `KUBERNETES_SERVICE_HOST/PORT` and a ServiceAccount token
//!   mounted at the in-cluster path inside a private mount namespace (`unshare --mount`).
//! - **Kyverno**: its admission controller and background controller (which runs generate
//!   rules), outside the cluster in its local development mode (`--kubeconfig`, `--serverIP`:
//!   webhooks registered by URL on 127.0.0.1), with the args and ConfigMaps its Helm chart
//!   renders by default, and two ClusterPolicies: generate the secret into each namespace with
//!   `synchronize: true`, and add `imagePullSecrets` to every Pod whose containers have an image.
//! - **us**: `pullsecret-injector serve` with a `source:` entry (copies kept in sync by the
//!   leader, a missing copy created at admission), registered as a webhook.
//!
//! Three measurements, printed as markdown tables and written to `target/bench/peers.md` and
//! `target/bench/peers.json`:
//!
//! 1. the race: N times, a namespace and at once a Pod in it whose image needs the secret;
//!    Pods without a usable pull secret (no reference, or a reference to a Secret created
//!    after the Pod), and the time until the namespace was usable. A run starts every second
//!    (`ARRIVAL`; the patcher's every 5 s, `PATCHER_ARRIVAL`), whether the previous one has
//!    settled or not; the patcher's race runs on a cluster cleared of the earlier phases'
//!    namespaces (its loop visits them all, rate-limited);
//! 2. latency and cost: Pod creates through the apiserver, 8 at a time, with no webhook,
//!    Kyverno's mutate policy, and us, in interleaved chunks (as benches/apiserver.rs
//!    interleaves), with the webhook process's CPU time and peak RSS;
//! 3. matching: the Pods of tests/fixtures/matching-cases.tsv through Kyverno's wildcard image
//!    rules and through our decision code, against what the kubelet would use.
//!
//! Each peer's phase runs only with what it needs; the patcher (which writes into every
//! namespace) runs last. A peer that `make peers` could not build is reported as such.
//!
//! `make peers` runs it (tests/peers/run.sh); by hand: `tests/peers/build.sh` then
//! `cargo bench --bench peers`. PEERS_RACE_RUNS (100), PEERS_CREATES (500),
//! PEERS_CONCURRENCY (8) and PEERS_PATCHER_ARRIVAL_MS (5000) override the sizes;
//! PEERS_NO_WAIT skips the wait for other benchmarks on the machine before the latency phase.
//! Under `cargo test` it does nothing.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, PostParams,
};
use kube::runtime::watcher;
use serde_json::{Value, json};
use test_support::accounts::service_account_token;
use test_support::controlplane::{self, ControlPlane, NamespaceName, create_namespace, eventually};
use test_support::injector::{self, Instance};
use test_support::matching_cases::{Case, cases};
use test_support::metrics::ensured_metric;
use test_support::pods::{dry_run, dry_run_secrets, pod, secret_names};
use test_support::ports::free_port;
use test_support::replication::replication_config;
use test_support::secrets::{Credentials, create_secret, pull_secret};
use test_support::webhook;

// ---------------------------------------------------------------------------
// What is measured
// ---------------------------------------------------------------------------

const DEFAULT_RACE_RUNS: usize = 100;
const DEFAULT_CREATES: usize = 500;
const DEFAULT_CONCURRENCY: usize = 8;
/// Creates per setup in one interleaved chunk of the latency phase.
const CHUNK: usize = 50;
/// Creates per setup before measuring: connections warm, caches filled.
const WARM_UP: usize = 24;
/// The image of every Pod of the race and latency phases; the secret's registry.
const IMAGE: &str = "race.registry.example/team/app:1";
const REGISTRY: &str = "race.registry.example";
/// The source secret (in SOURCE_NS) and the name every tool gives its copies.
const SOURCE_NS: &str = "peers-source";
const SOURCE_NAME: &str = "regcred-source";
const SECRET: &str = "regcred";
/// Namespace labels that route a namespace to one tool (value `enabled`).
const OURS_LABEL: &str = "peers.pullsecret-injector.io/ours";
const KYVERNO_LABEL: &str = "peers.pullsecret-injector.io/kyverno";
/// Selects the namespace of the matching phase for the per-registry Kyverno policy.
const KYVERNO_MATCHING_LABEL: &str = "peers.pullsecret-injector.io/kyverno-matching";
/// How long the apiserver may take to act on webhook and policy changes, and a peer to start.
const PROPAGATION: Duration = Duration::from_secs(180);
/// How long a race run waits for its namespace to become usable.
const USABLE_TIMEOUT: Duration = Duration::from_secs(30);
const KYVERNO_NS: &str = "kyverno";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "peers comparison: skipped (run it with `make peers` or `cargo bench --bench peers`)"
        );
        return;
    }
    let sizes = Sizes {
        race_runs: env_usize("PEERS_RACE_RUNS", DEFAULT_RACE_RUNS),
        creates: env_usize("PEERS_CREATES", DEFAULT_CREATES),
        concurrency: env_usize("PEERS_CONCURRENCY", DEFAULT_CONCURRENCY),
    };
    let cp = controlplane::shared();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = runtime.block_on(compare(cp, &sizes));
    let out = test_support::repo_root().join("target/bench");
    std::fs::create_dir_all(&out).expect("create target/bench");
    std::fs::write(out.join("peers.md"), &report.markdown).expect("write peers.md");
    std::fs::write(
        out.join("peers.json"),
        serde_json::to_string_pretty(&report.json).expect("JSON"),
    )
    .expect("write peers.json");
    println!("{}", report.markdown);
    println!("written to {0}/peers.md and {0}/peers.json", out.display());
}

struct Sizes {
    race_runs: usize,
    creates: usize,
    concurrency: usize,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peers_dir() -> PathBuf {
    test_support::repo_root().join(".cache/peers")
}

/// `Ok(binary)` if `make peers` built it, else why not (from `<peer>.unavailable`).
fn peer_binary(peer: &str, binary: &str) -> Result<PathBuf, String> {
    let path = peers_dir().join("bin").join(binary);
    if path.is_file() {
        return Ok(path);
    }
    let why = std::fs::read_to_string(peers_dir().join(format!("{peer}.unavailable")))
        .unwrap_or_else(|_| format!("{} not found: run tests/peers/build.sh", path.display()));
    Err(why)
}

fn stamp_version(peer: &str) -> Option<String> {
    std::fs::read_to_string(peers_dir().join(format!("{peer}.stamp")))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("version ").map(str::to_string))
}

struct Report {
    markdown: String,
    json: Value,
}

async fn compare(cp: &'static ControlPlane, sizes: &Sizes) -> Report {
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let kube_version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let source = create_source(&client).await;

    // Us and Kyverno run through the latency, matching and race phases; the patcher, which
    // writes into every namespace, only through its own race, last.
    let ours = Ours::start(cp, &client).await;
    let kyverno = match peer_binary("kyverno", "kyverno") {
        Ok(_) => Some(Kyverno::start(cp, &client).await),
        Err(why) => {
            eprintln!("peers: Kyverno not built, its rows are skipped: {why}");
            None
        }
    };

    eprintln!("== latency and cost");
    let latency = latency(&client, sizes, &ours, kyverno.as_ref()).await;
    eprintln!("== matching");
    let matching = matching(&client, kyverno.as_ref()).await;
    if let Some(kyverno) = &kyverno {
        kyverno.delete_policies(&client, "peers-matching").await;
    }

    wait_no_benchmark().await;
    eprintln!("== race baseline: Pod creates in fresh namespaces, no tool");
    let mut baselines = vec![(
        "no tool, Kyverno and us running: the conditions of their rows",
        fresh_pod_creates(&client, "race-baseline-", sizes.race_runs).await,
    )];
    eprintln!("== race: us");
    let mut races = vec![race(&client, Tool::Ours, sizes.race_runs).await];
    let metrics = ours.instance.injector.metrics().await;
    let ensured =
        ["created", "exists", "failed"].map(|result| (result, ensured_metric(&metrics, result)));
    ours.stop(&client).await;
    match &kyverno {
        Some(_) => {
            eprintln!("== race: Kyverno");
            races.push(race(&client, Tool::Kyverno, sizes.race_runs).await);
        }
        None => races.push(RaceResult::skipped(Tool::Kyverno, "not built")),
    }
    drop(kyverno);
    // The patcher's loop visits every namespace, at most 5 API requests a second (client-go's
    // default rate limit, which it does not change): the earlier phases' hundreds of
    // namespaces would make each loop minutes long. It runs on a small cluster instead.
    delete_namespaces(&client, |name| {
        [
            "race-",
            "latency-",
            "matching-",
            "peers-ours-",
            "peers-kyverno-",
        ]
        .iter()
        .any(|p| name.starts_with(p))
            || name == KYVERNO_NS
    })
    .await;
    match peer_binary("patcher", "imagepullsecret-patcher") {
        Ok(binary) => {
            eprintln!("== race baseline: no tool, Kyverno and us stopped");
            baselines.push((
                "no tool, Kyverno and us stopped, small cluster: the conditions of the \
                 patcher's row",
                fresh_pod_creates(&client, "quiet-baseline-", sizes.race_runs).await,
            ));
            delete_namespaces(&client, |name| name.starts_with("quiet-baseline-")).await;
            match Patcher::start(cp, &client, &binary, &source).await {
                Ok(patcher) => {
                    eprintln!("== race: patcher");
                    let pid = patcher.daemon.pid;
                    let cpu = cpu_seconds(pid);
                    let mut result = race(&client, Tool::Patcher, sizes.race_runs).await;
                    result.process = Some(ProcessCost {
                        cpu_seconds: cpu_seconds(pid) - cpu,
                        peak_rss_mib: status_mib(pid, "VmHWM:"),
                    });
                    races.push(result);
                    drop(patcher);
                }
                Err(why) => races.push(RaceResult::skipped(Tool::Patcher, &why)),
            }
        }
        Err(why) => races.push(RaceResult::skipped(
            Tool::Patcher,
            &format!("not built: {}", first_reason(&why)),
        )),
    }

    let race_notes = RaceNotes { baselines, ensured };
    render(
        sizes,
        &kube_version,
        &races,
        &race_notes,
        &latency,
        &matching,
    )
}

/// The line of a build failure that says why (the proxy's answer), not the whole log.
fn first_reason(why: &str) -> String {
    if why.contains("403 Forbidden") {
        return "the Go module proxy refuses the module (403: This module version is not \
                available)"
            .into();
    }
    why.lines()
        .find(|l| l.contains("error") || l.contains("go:"))
        .or_else(|| why.lines().next())
        .unwrap_or_default()
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------

/// The source `kubernetes.io/dockerconfigjson` Secret every tool copies.
async fn create_source(client: &kube::Client) -> Secret {
    create_namespace(client, NamespaceName::Exact(SOURCE_NS), &[]).await;
    let credentials = Credentials::new(REGISTRY, "robot", "s3cret");
    create_secret(
        client,
        SOURCE_NS,
        &pull_secret(SOURCE_NAME, &credentials.dockerconfigjson()),
    )
    .await
}

/// Deletes the namespaces `doomed` picks and waits (up to PROPAGATION) until they are gone.
async fn delete_namespaces(client: &kube::Client, doomed: impl Fn(&str) -> bool) {
    let namespaces = Api::<Namespace>::all(client.clone());
    let names: Vec<String> = match namespaces.list(&Default::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter_map(|ns| ns.metadata.name)
            .filter(|name| doomed(name))
            .collect(),
        Err(e) => panic!("listing namespaces: {e}"),
    };
    eprintln!("peers: deleting {} namespaces", names.len());
    for name in &names {
        let _ = namespaces.delete(name, &DeleteParams::default()).await;
    }
    eventually("the namespaces to be deleted", PROPAGATION, || async {
        let left = namespaces
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter_map(|ns| ns.metadata.name)
            .filter(|name| doomed(name))
            .count();
        match left {
            0 => Ok(()),
            n => Err(format!("{n} left")),
        }
    })
    .await;
}

/// Polls dry-run creates of a pod with `image` in `namespace` until it comes back with `secret`.
async fn wait_injected(client: &kube::Client, namespace: &str, image: &str, secret: &str) {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    eventually(
        &format!("a dry-run pod in {namespace} to get imagePullSecret {secret}"),
        PROPAGATION,
        || async {
            let names = dry_run_secrets(&pods, image).await?;
            if names.iter().any(|n| n == secret) {
                Ok(())
            } else {
                Err(format!("got {names:?}"))
            }
        },
    )
    .await;
}

fn rv(meta: &ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Processes: a peer under a small sh wrapper that stops it when the bench exits
// ---------------------------------------------------------------------------

/// Runs `"$@"`, writes its pid to $PIDFILE, and stops it (SIGTERM, SIGKILL after 3 s) when
/// stdin, a pipe held by this process, closes: also if the bench is killed.
const WRAPPER: &str = r#"
exec 3<&0 0</dev/null
"$@" 3<&- &
child=$!
echo "$child" > "$PIDFILE"
(
    read -r _ <&3 || :
    kill -TERM "$child" 2>/dev/null
    i=0
    while kill -0 "$child" 2>/dev/null; do
        if [ "$i" -ge 30 ]; then kill -KILL "$child" 2>/dev/null; break; fi
        sleep 0.1
        i=$((i + 1))
    done
) &
exec 3<&-
wait "$child"
"#;

struct Daemon {
    name: String,
    wrapper: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &str, program: &Path, args: &[String], env: &[(String, String)]) -> Self {
        let dir = test_support::repo_root().join("target/peers-logs");
        std::fs::create_dir_all(&dir).expect("create target/peers-logs");
        let log = dir.join(format!("{name}.log"));
        let pidfile = dir.join(format!("{name}.pid"));
        let _ = std::fs::remove_file(&pidfile);
        let out = std::fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WRAPPER)
            .arg(format!("peer-{name}"))
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PIDFILE", &pidfile)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err);
        let mut wrapper = test_support::loopback_only(&mut command)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdin = wrapper.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "{name} did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        Self {
            name: name.to_string(),
            wrapper,
            stdin,
            pid,
            log,
        }
    }

    fn check_running(&mut self) -> Result<(), String> {
        match self.wrapper.try_wait() {
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); log tail:\n{}",
                self.name,
                tail(&self.log, 30)
            )),
            _ => Ok(()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.wrapper.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// CPU seconds (user + system) a process has used, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start with field 3, state.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> f64 {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (field(14) + field(15)) / ticks
}

/// A `VmHWM`/`VmRSS`-style field of /proc/<pid>/status, in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

// ---------------------------------------------------------------------------
// Us
// ---------------------------------------------------------------------------

struct Ours {
    instance: Instance,
}

impl Ours {
    async fn start(cp: &ControlPlane, client: &kube::Client) -> Self {
        let secrets = format!("  - name: {SECRET}\n    source: {{name: {SOURCE_NAME}}}\n");
        let config = replication_config(SOURCE_NS, OURS_LABEL, "peers-ours", 15, &secrets);
        let instance = Instance::replicator(&config, cp.kubeconfig_path(), &[]).await;
        instance.injector.wait_leader(Duration::from_secs(60)).await;
        // As the chart registers it: side effects only when not a dry run (the missing copy).
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .create(
                &PostParams::default(),
                &webhook::replicating(
                    "peers-ours",
                    OURS_LABEL,
                    &instance.url(),
                    &instance.ca_pem,
                    5,
                ),
            )
            .await
            .expect("register our webhook");
        create_namespace(
            client,
            NamespaceName::Exact("peers-ours-probe"),
            &[(OURS_LABEL, "enabled")],
        )
        .await;
        wait_injected(client, "peers-ours-probe", IMAGE, SECRET).await;
        eprintln!(
            "peers: pullsecret-injector serving on {}",
            instance.injector.addr
        );
        Self { instance }
    }

    fn pid(&self) -> u32 {
        self.instance.injector.pid()
    }

    async fn stop(self, client: &kube::Client) {
        let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete("peers-ours", &DeleteParams::default())
            .await;
        drop(self.instance);
    }
}

// ---------------------------------------------------------------------------
// Kyverno
// ---------------------------------------------------------------------------

struct Kyverno {
    admission: Daemon,
    background: Daemon,
}

fn cluster_policy_api(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kyverno.io", "v1", "ClusterPolicy");
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk, "clusterpolicies"),
    )
}

/// Generate the secret into each (routed) namespace and keep it in sync: Kyverno's
/// "sync secrets" pattern.
fn generate_policy() -> Value {
    json!({
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": "peers-sync-regcred"},
        "spec": {
            "rules": [{
                "name": "sync-regcred",
                "match": {"any": [{"resources": {
                    "kinds": ["Namespace"],
                    "selector": {"matchLabels": {KYVERNO_LABEL: "enabled"}}
                }}]},
                "generate": {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "name": SECRET,
                    "namespace": "{{request.object.metadata.name}}",
                    "synchronize": true,
                    "clone": {"namespace": SOURCE_NS, "name": SOURCE_NAME}
                }
            }]
        }
    })
}

/// Add the secret to every Pod whose containers have any image: Kyverno's
/// "add imagePullSecrets" pattern with the wildcard `*`.
fn mutate_policy() -> Value {
    json!({
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": "peers-add-imagepullsecrets"},
        "spec": {
            "rules": [{
                "name": "add-imagepullsecret",
                "match": {"any": [{"resources": {
                    "kinds": ["Pod"],
                    "namespaceSelector": {"matchLabels": {KYVERNO_LABEL: "enabled"}}
                }}]},
                "mutate": {"patchStrategicMerge": {"spec": {
                    "containers": [{"<(image)": "*"}],
                    "imagePullSecrets": [{"name": SECRET}]
                }}}
            }]
        }
    })
}

/// One rule per row of matching-cases.tsv, scoped to the matching namespace: the row's
/// registry pattern as a user writes it in Kyverno's image wildcard (`<pattern>/*`). In
/// policies of 8 rules: Kyverno's policy webhook validates one of 57 rules past the
/// apiserver's 10 s webhook timeout on this machine.
fn matching_policies(cases: &[Case]) -> Vec<Value> {
    cases
        .chunks(8)
        .enumerate()
        .map(|(k, chunk)| {
            let rules: Vec<Value> = chunk
                .iter()
                .map(|case| {
                    json!({
                        "name": format!("row-{}", case.line),
                        "match": {"any": [{"resources": {
                            "kinds": ["Pod"],
                            "namespaceSelector": {"matchLabels": {KYVERNO_MATCHING_LABEL: "enabled"}}
                        }}]},
                        "mutate": {"patchStrategicMerge": {"spec": {
                            "containers": [{"<(image)": kyverno_glob(case.pattern)}],
                            "imagePullSecrets": [{"name": format!("row-{}", case.line)}]
                        }}}
                    })
                })
                .collect();
            json!({
                "apiVersion": "kyverno.io/v1",
                "kind": "ClusterPolicy",
                "metadata": {"name": format!("peers-matching-{k}")},
                "spec": {"rules": rules}
            })
        })
        .collect()
}

/// A kubelet registry pattern as a Kyverno image wildcard: scheme and `/v1/`, `/v2/` dropped
/// (they are not part of image references), then `/*` for everything under it.
fn kyverno_glob(pattern: &str) -> String {
    let mut p = pattern;
    for scheme in ["https://", "http://"] {
        p = p.strip_prefix(scheme).unwrap_or(p);
    }
    for suffix in ["/v1/", "/v2/"] {
        p = p.strip_suffix(suffix).unwrap_or(p);
    }
    format!("{}/*", p.trim_end_matches('/'))
}

impl Kyverno {
    async fn start(cp: &ControlPlane, client: &kube::Client) -> Self {
        let started = Instant::now();
        let bin = peers_dir().join("bin");
        create_namespace(client, NamespaceName::Exact(KYVERNO_NS), &[]).await;
        apply_crds(client).await;
        let chart = read_chart();
        create_configmaps(client, &chart).await;
        // Policy validation checks, by SubjectAccessReview, that Kyverno's ServiceAccounts may
        // read and manage what the policies clone and generate (the chart's RBAC, plus the
        // extra permissions its docs ask for generated kinds). Here the controllers use the
        // admin kubeconfig, so those accounts get cluster-admin.
        bind_cluster_admin(
            client,
            "peers-kyverno-controllers",
            &[
                "kyverno-admission-controller",
                "kyverno-background-controller",
                "kyverno-reports-controller",
            ],
            KYVERNO_NS,
        )
        .await;

        let kubeconfig = cp.kubeconfig_path().display().to_string();
        let port = free_port();
        let mut admission_args = deployment_args(&chart, "kyverno-admission-controller");
        admission_args.extend([
            format!("--kubeconfig={kubeconfig}"),
            format!("--serverIP=127.0.0.1:{port}"),
            "--webhookServerHost=127.0.0.1".into(),
            format!("--webhookServerPort={port}"),
            "--metricsHost=127.0.0.1".into(),
            format!("--metricsPort={}", free_port()),
            format!(
                "--controllerRuntimeMetricsAddress=127.0.0.1:{}",
                free_port()
            ),
        ]);
        let admission = Daemon::spawn(
            "kyverno-admission-controller",
            &bin.join("kyverno"),
            &admission_args,
            &kyverno_env("kyverno-admission-controller"),
        );
        let mut background_args = deployment_args(&chart, "kyverno-background-controller");
        background_args.extend([
            format!("--kubeconfig={kubeconfig}"),
            "--metricsHost=127.0.0.1".into(),
            format!("--metricsPort={}", free_port()),
            format!(
                "--controllerRuntimeMetricsAddress=127.0.0.1:{}",
                free_port()
            ),
        ]);
        let background = Daemon::spawn(
            "kyverno-background-controller",
            &bin.join("background-controller"),
            &background_args,
            &kyverno_env("kyverno-background-controller"),
        );
        let mut kyverno = Self {
            admission,
            background,
        };

        // Ready as a user would wait for it: its serving certificate made and its policy
        // webhook registered, so that the policies below are validated as usual.
        let tls = Api::<Secret>::namespaced(client.clone(), KYVERNO_NS);
        let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone());
        {
            let this = &mut kyverno;
            eventually(
                "Kyverno's certificate and policy webhook",
                PROPAGATION,
                || {
                    let running = this.check_running();
                    let (tls, validating) = (tls.clone(), validating.clone());
                    async move {
                        running.map_err(|e| format!("PEER EXITED: {e}"))?;
                        tls.get_opt("kyverno-svc.kyverno.svc.kyverno-tls-pair")
                            .await
                            .map_err(|e| e.to_string())?
                            .ok_or("no TLS pair yet")?;
                        validating
                            .get_opt("kyverno-policy-validating-webhook-cfg")
                            .await
                            .map_err(|e| e.to_string())?
                            .ok_or("no policy webhook yet")?;
                        Ok::<_, String>(())
                    }
                },
            )
            .await;
        }
        create_policy(client, generate_policy()).await;
        create_policy(client, mutate_policy()).await;
        // Both rules in effect: a pod is mutated, a new namespace gets the secret.
        eventually("Kyverno to admit a namespace", PROPAGATION, || async {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some("peers-kyverno-probe".into()),
                    labels: Some(BTreeMap::from([(KYVERNO_LABEL.into(), "enabled".into())])),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            };
            match Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &ns)
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.reason == "AlreadyExists" => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        wait_injected(client, "peers-kyverno-probe", IMAGE, SECRET).await;
        let secrets = Api::<Secret>::namespaced(client.clone(), "peers-kyverno-probe");
        eventually("Kyverno to generate the secret", PROPAGATION, || async {
            match secrets.get_opt(SECRET).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("not yet".to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        kyverno.check_running().unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "peers: Kyverno ready in {:.0}s (webhooks on 127.0.0.1:{port}; logs in {})",
            started.elapsed().as_secs_f64(),
            kyverno.admission.log.parent().expect("dir").display()
        );
        kyverno
    }

    fn check_running(&mut self) -> Result<(), String> {
        self.admission.check_running()?;
        self.background.check_running()
    }

    async fn create_matching_policies(&self, client: &kube::Client, cases: &[Case]) {
        for policy in matching_policies(cases) {
            create_policy(client, policy).await;
        }
    }

    async fn delete_policies(&self, client: &kube::Client, prefix: &str) {
        delete_policies(client, prefix).await;
    }
}

/// Creates a ClusterPolicy (retried while Kyverno's policy webhook fails) and waits until
/// Kyverno reports it ready.
async fn create_policy(client: &kube::Client, policy: Value) {
    let object: DynamicObject = serde_json::from_value(policy).expect("policy");
    let name = object.metadata.name.clone().expect("name");
    let policies = cluster_policy_api(client);
    eventually(
        &format!("Kyverno to accept ClusterPolicy {name}"),
        PROPAGATION,
        || async {
            match policies.create(&PostParams::default(), &object).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.reason == "AlreadyExists" => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    wait_policy_ready(client, &name).await;
}

async fn delete_policies(client: &kube::Client, prefix: &str) {
    let policies = cluster_policy_api(client);
    let Ok(list) = policies.list(&Default::default()).await else {
        return;
    };
    for name in list.items.into_iter().filter_map(|p| p.metadata.name) {
        if name.starts_with(prefix) {
            let _ = policies.delete(&name, &DeleteParams::default()).await;
        }
    }
}

async fn delete_kyverno_webhooks<K>(api: Api<K>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Ok(list) = api.list(&Default::default()).await else {
        return;
    };
    for name in list.items.into_iter().filter_map(|c| c.meta().name.clone()) {
        if name.starts_with("kyverno-") {
            let _ = api.delete(&name, &DeleteParams::default()).await;
        }
    }
}

impl Drop for Kyverno {
    /// Its webhooks would outlive it and fail every matching request: remove them.
    fn drop(&mut self) {
        controlplane::cleanup(|client| async move {
            delete_policies(&client, "peers-").await;
        });
        // Stop the processes first, so that they do not put their webhooks back.
        drop(self.admission.stdin.take());
        drop(self.background.stdin.take());
        let _ = self.admission.wrapper.wait();
        let _ = self.background.wrapper.wait();
        controlplane::cleanup(|client| async move {
            // Kyverno names its webhook configurations kyverno-*.
            delete_kyverno_webhooks(Api::<MutatingWebhookConfiguration>::all(client.clone())).await;
            delete_kyverno_webhooks(Api::<ValidatingWebhookConfiguration>::all(client)).await;
        });
    }
}

fn kyverno_env(deployment: &str) -> Vec<(String, String)> {
    [
        ("KYVERNO_NAMESPACE", KYVERNO_NS),
        ("KYVERNO_SERVICEACCOUNT_NAME", deployment),
        ("KYVERNO_DEPLOYMENT", deployment),
        ("KYVERNO_POD_NAME", &format!("{deployment}-local")),
        ("KYVERNO_SVC", "kyverno-svc"),
        ("INIT_CONFIG", "kyverno"),
        ("METRICS_CONFIG", "kyverno-metrics"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The documents tests/peers/build.sh rendered from Kyverno's chart.
fn read_chart() -> Vec<Value> {
    let path = peers_dir().join("kyverno-chart.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run tests/peers/build.sh)", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The container args of a Deployment of the chart (ours are appended after them: for Go's
/// flag package the last value of a flag wins).
fn deployment_args(chart: &[Value], name: &str) -> Vec<String> {
    chart
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
        .and_then(|d| d.pointer("/spec/template/spec/containers/0/args"))
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("Deployment {name} with args not found in the rendered chart"))
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

async fn apply_crds(client: &kube::Client) {
    let dir = peers_dir().join("kyverno-crds");
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let mut names = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run tests/peers/build.sh)", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read CRD");
        for doc in serde_saphyr::from_multiple::<Value>(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        {
            if doc.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition =
                serde_json::from_value(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let name = crd.metadata.name.clone().expect("CRD name");
            match crds.create(&PostParams::default(), &crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.reason == "AlreadyExists" => {}
                Err(e) => panic!("creating CRD {name}: {e}"),
            }
            names.push(name);
        }
    }
    for name in &names {
        eventually(
            &format!("CRD {name} to be established"),
            PROPAGATION,
            || async {
                let crd = crds.get(name).await.map_err(|e| e.to_string())?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    Ok(())
                } else {
                    Err("not established".to_string())
                }
            },
        )
        .await;
    }
}

/// The chart's ConfigMaps, with Kyverno's webhooks routed to the namespaces labelled for it
/// (the chart's `config.webhooks` setting; by default every namespace but kube-system and
/// kyverno), so that the no-webhook and our namespaces never reach Kyverno.
async fn create_configmaps(client: &kube::Client, chart: &[Value]) {
    let api = Api::<ConfigMap>::namespaced(client.clone(), KYVERNO_NS);
    for doc in chart.iter().filter(|d| d["kind"] == "ConfigMap") {
        let mut cm: ConfigMap = serde_json::from_value(doc.clone()).expect("ConfigMap");
        if cm.metadata.name.as_deref() == Some("kyverno") {
            let webhooks =
                json!({"namespaceSelector": {"matchLabels": {KYVERNO_LABEL: "enabled"}}});
            cm.data
                .get_or_insert_with(BTreeMap::new)
                .insert("webhooks".into(), webhooks.to_string());
        }
        api.create(&PostParams::default(), &cm)
            .await
            .unwrap_or_else(|e| panic!("creating ConfigMap {:?}: {e}", cm.metadata.name));
    }
}

async fn bind_cluster_admin(client: &kube::Client, name: &str, accounts: &[&str], namespace: &str) {
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "cluster-admin".into(),
        },
        subjects: Some(
            accounts
                .iter()
                .map(|a| Subject {
                    kind: "ServiceAccount".into(),
                    name: a.to_string(),
                    namespace: Some(namespace.into()),
                    ..Subject::default()
                })
                .collect(),
        ),
    };
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("creating ClusterRoleBinding {name}: {e}"));
}

async fn wait_policy_ready(client: &kube::Client, name: &str) {
    let policies = cluster_policy_api(client);
    eventually(
        &format!("ClusterPolicy {name} to be ready"),
        PROPAGATION,
        || async {
            let policy = policies.get(name).await.map_err(|e| e.to_string())?;
            let ready = policy.data["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
            if ready {
                Ok(())
            } else {
                Err(format!("status: {}", policy.data["status"]))
            }
        },
    )
    .await;
}

// ---------------------------------------------------------------------------
// The patcher
// ---------------------------------------------------------------------------

struct Patcher {
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Patcher {
    /// As its deploy example runs it (CONFIG_FORCE, CONFIG_ALLSERVICEACCOUNT, the secret from
    /// a mounted file), with its example RBAC; in-cluster credentials come from a
    /// TokenRequest, mounted at the in-cluster path in a private mount namespace.
    async fn start(
        cp: &ControlPlane,
        client: &kube::Client,
        binary: &Path,
        source: &Secret,
    ) -> Result<Self, String> {
        let ns = "imagepullsecret-patcher";
        create_namespace(client, NamespaceName::Exact(ns), &[]).await;
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(ns.into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        let sas = Api::<ServiceAccount>::namespaced(client.clone(), ns);
        sas.create(&PostParams::default(), &sa)
            .await
            .map_err(|e| format!("creating its ServiceAccount: {e}"))?;
        let role = ClusterRole {
            metadata: ObjectMeta {
                name: Some(ns.into()),
                ..ObjectMeta::default()
            },
            rules: Some(vec![
                PolicyRule {
                    api_groups: Some(vec!["".into()]),
                    resources: Some(vec!["secrets".into(), "serviceaccounts".into()]),
                    verbs: ["list", "patch", "create", "get", "delete"]
                        .map(String::from)
                        .to_vec(),
                    ..PolicyRule::default()
                },
                PolicyRule {
                    api_groups: Some(vec!["".into()]),
                    resources: Some(vec!["namespaces".into()]),
                    verbs: ["list", "get"].map(String::from).to_vec(),
                    ..PolicyRule::default()
                },
            ]),
            ..ClusterRole::default()
        };
        Api::<ClusterRole>::all(client.clone())
            .create(&PostParams::default(), &role)
            .await
            .map_err(|e| format!("creating its ClusterRole: {e}"))?;
        let binding = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(ns.into()),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: ns.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: ns.into(),
                namespace: Some(ns.into()),
                ..Subject::default()
            }]),
        };
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await
            .map_err(|e| format!("creating its ClusterRoleBinding: {e}"))?;
        let token = service_account_token(client, ns, ns).await;

        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let files = dir.path();
        let data = source
            .data
            .as_ref()
            .and_then(|d| d.get(".dockerconfigjson"))
            .ok_or("source without .dockerconfigjson")?;
        std::fs::write(files.join(".dockerconfigjson"), &data.0).map_err(|e| e.to_string())?;
        std::fs::write(files.join("token"), token).map_err(|e| e.to_string())?;
        std::fs::write(files.join("ca.crt"), cp.ca_pem()).map_err(|e| e.to_string())?;
        std::fs::write(files.join("namespace"), ns).map_err(|e| e.to_string())?;
        let port = cp
            .apiserver_url()
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .ok_or("apiserver URL without a port")?;
        // client-go's rest.InClusterConfig reads these two files at fixed paths. /run is
        // replaced by a fresh tmpfs in the patcher's own mount namespace only.
        let mount = r#"mount -t tmpfs -o mode=755 tmpfs /run &&
            d=/run/secrets/kubernetes.io/serviceaccount && mkdir -p "$d" &&
            cp "$FILES/token" "$FILES/ca.crt" "$FILES/namespace" "$d/" && exec "$0" "$@""#;
        let check = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "true"])
            .output()
            .map_err(|e| format!("unshare: {e}"))?;
        if !check.status.success() {
            return Err(format!(
                "cannot create a mount namespace for its in-cluster credentials (needs root): {}",
                String::from_utf8_lossy(&check.stderr).trim()
            ));
        }
        let args: Vec<String> = ["--mount", "--propagation", "private", "sh", "-c", mount]
            .iter()
            .map(|s| s.to_string())
            .chain([binary.display().to_string()])
            .collect();
        let env: Vec<(String, String)> = [
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_string()),
            ("KUBERNETES_SERVICE_PORT", port),
            ("FILES", files.display().to_string()),
            ("CONFIG_FORCE", "true".into()),
            ("CONFIG_DEBUG", "false".into()),
            ("CONFIG_ALLSERVICEACCOUNT", "true".into()),
            ("CONFIG_SECRETNAME", SECRET.into()),
            (
                "CONFIG_DOCKERCONFIGJSONPATH",
                files.join(".dockerconfigjson").display().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut daemon =
            Daemon::spawn("imagepullsecret-patcher", Path::new("unshare"), &args, &env);
        // Running: its first loop has copied the secret into an existing namespace.
        let secrets = Api::<Secret>::namespaced(client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            daemon.check_running()?;
            if let Ok(Some(_)) = secrets.get_opt(SECRET).await {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no {SECRET} in namespace default after 60 s; log tail:\n{}",
                    tail(&daemon.log, 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self { daemon, _dir: dir })
    }
}

// ---------------------------------------------------------------------------
// 1. The race
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Patcher,
    Kyverno,
    Ours,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Patcher => "imagepullsecret-patcher (ServiceAccount loop)",
            Tool::Kyverno => "Kyverno (generate + mutate policies)",
            Tool::Ours => "pullsecret-injector",
        }
    }

    fn labels(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Tool::Patcher => &[], // it serves every namespace
            Tool::Kyverno => &[(KYVERNO_LABEL, "enabled")],
            Tool::Ours => &[(OURS_LABEL, "enabled")],
        }
    }
}

struct RaceResult {
    tool: Tool,
    skipped: Option<String>,
    runs: usize,
    no_reference: usize,
    missing_at_creation: usize,
    /// From the namespace create to the namespace being usable, per run that became usable.
    usable: Vec<Duration>,
    not_usable: usize,
    creates: Creates,
    sa_retries: usize,
    /// The tool's process over its race, when it is a process of its own that does the work
    /// outside the Pod path (the patcher).
    process: Option<ProcessCost>,
    /// Namespaces in the cluster when the race started.
    cluster_namespaces: usize,
}

struct ProcessCost {
    cpu_seconds: f64,
    peak_rss_mib: f64,
}

impl RaceResult {
    fn skipped(tool: Tool, why: &str) -> Self {
        Self {
            tool,
            skipped: Some(why.to_string()),
            runs: 0,
            no_reference: 0,
            missing_at_creation: 0,
            usable: Vec::new(),
            not_usable: 0,
            creates: Creates::default(),
            sa_retries: 0,
            process: None,
            cluster_namespaces: 0,
        }
    }

    fn failed(&self) -> usize {
        self.no_reference + self.missing_at_creation
    }

    fn add(&mut self, run: &Settled) {
        match run.usable_at {
            Some(at) => self.usable.push(at),
            None => self.not_usable += 1,
        }
        if !run.referenced {
            self.no_reference += 1;
        } else if run
            .secret
            .is_none_or(|(secret_rv, _)| secret_rv > run.pod_rv)
        {
            self.missing_at_creation += 1;
        }
    }
}

/// When each namespace's copy of the secret was first seen, and its creation revision (the
/// resourceVersion of its ADDED event), from a watch on every Secret named SECRET.
type Created = Arc<Mutex<HashMap<String, (u64, Instant)>>>;

fn watch_copies(client: &kube::Client) -> (Created, tokio::task::JoinHandle<()>) {
    let seen: Created = Arc::default();
    let sink = Arc::clone(&seen);
    let api = Api::<Secret>::all(client.clone());
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={SECRET}"));
        let mut events = watcher(api, config).boxed();
        while let Ok(Some(event)) = events.try_next().await {
            if let watcher::Event::Apply(s) | watcher::Event::InitApply(s) = event {
                let ns = s.metadata.namespace.clone().unwrap_or_default();
                sink.lock()
                    .expect("lock")
                    .entry(ns)
                    .or_insert((rv(&s.metadata), Instant::now()));
            }
        }
    });
    (seen, task)
}

/// When each namespace's `default` ServiceAccount was first seen referring to SECRET, from a
/// watch (the patcher's half of "usable"; polling it would add load beside the patcher's).
type Patched = Arc<Mutex<HashMap<String, Instant>>>;

fn watch_patched_accounts(client: &kube::Client) -> (Patched, tokio::task::JoinHandle<()>) {
    let seen: Patched = Arc::default();
    let sink = Arc::clone(&seen);
    let api = Api::<ServiceAccount>::all(client.clone());
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().fields("metadata.name=default");
        let mut events = watcher(api, config).boxed();
        while let Ok(Some(event)) = events.try_next().await {
            if let watcher::Event::Apply(sa) | watcher::Event::InitApply(sa) = event
                && sa
                    .image_pull_secrets
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|r| r.name == SECRET)
            {
                let ns = sa.metadata.namespace.clone().unwrap_or_default();
                sink.lock()
                    .expect("lock")
                    .entry(ns)
                    .or_insert_with(Instant::now);
            }
        }
    });
    (seen, task)
}

/// Creates a pod in a namespace made an instant ago; returns the result and how long the
/// create took, retries included.
async fn create_at_once(pods: &Api<Pod>, sa_retries: &mut usize) -> (kube::Result<Pod>, Duration) {
    let sent = Instant::now();
    loop {
        match pods
            .create(&PostParams::default(), &pod("app", &[IMAGE]))
            .await
        {
            // The ServiceAccount admission plugin (before any webhook) refuses pods until
            // kube-controller-manager has made the `default` ServiceAccount: retried.
            Err(kube::Error::Api(status))
                if status
                    .message
                    .contains("serviceaccount \"default\" not found")
                    && sent.elapsed() < Duration::from_secs(10) =>
            {
                *sa_retries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return (other, sent.elapsed()),
        }
    }
}

/// How long the race's creates took, each list sorted once complete.
#[derive(Default)]
struct Creates {
    namespace: Vec<Duration>,
    /// From the namespace created to the pod created, the ServiceAccount admission plugin's
    /// wait for the `default` ServiceAccount included.
    pod: Vec<Duration>,
}

impl Creates {
    fn sort(&mut self) {
        self.namespace.sort();
        self.pod.sort();
    }
}

/// The race's namespace and pod creates, paced as the race's, with no tool at all (in
/// namespaces no webhook selects): what the race's create columns compare with.
async fn fresh_pod_creates(client: &kube::Client, prefix: &str, runs: usize) -> Creates {
    let mut creates = Creates::default();
    let mut retries = 0;
    let first = Instant::now();
    for run in 0..runs {
        tokio::time::sleep_until((first + ARRIVAL * run as u32).into()).await;
        let started = Instant::now();
        let ns = create_namespace(client, NamespaceName::Generated(prefix), &[]).await;
        creates.namespace.push(started.elapsed());
        let pods = Api::<Pod>::namespaced(client.clone(), &ns);
        let (created, took) = create_at_once(&pods, &mut retries).await;
        created.expect("pod create in a fresh namespace");
        creates.pod.push(took);
    }
    creates.sort();
    creates
}

/// One run of the race, once settled: what its pod got, and when its namespace was usable.
struct Settled {
    referenced: bool,
    pod_rv: u64,
    /// The namespace's copy: its creation revision and when it was seen.
    secret: Option<(u64, Instant)>,
    usable_at: Option<Duration>,
}

/// Waits (up to USABLE_TIMEOUT from `started`) until `ns` is usable: its copy of the Secret
/// exists and, for the patcher (pods get its reference from the ServiceAccount), its
/// `default` ServiceAccount refers to it.
async fn settle(
    (seen, patched): (Created, Patched),
    tool: Tool,
    ns: &str,
    started: Instant,
) -> (Option<(u64, Instant)>, Option<Duration>) {
    let mut secret = None;
    while started.elapsed() < USABLE_TIMEOUT {
        if secret.is_none() {
            secret = seen.lock().expect("lock").get(ns).copied();
        }
        let account_at = match tool {
            Tool::Patcher => patched.lock().expect("lock").get(ns).copied(),
            Tool::Kyverno | Tool::Ours => Some(started),
        };
        if let (Some((_, secret_at)), Some(account_at)) = (secret, account_at) {
            let usable = secret_at.max(account_at).saturating_duration_since(started);
            return (secret, Some(usable));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (secret, None)
}

/// A race run starts every ARRIVAL, without waiting for the previous one to settle: for the
/// patcher, waiting would lock the runs to the phase of its loop (each namespace made just
/// after a loop, so always a full period late); the other tools settle within it.
const ARRIVAL: Duration = Duration::from_secs(1);
/// The patcher's runs arrive slower: a new namespace costs it 4 requests (get and create the
/// Secret, list and patch the ServiceAccounts), every other namespace 2 per loop, at
/// client-go's default 5 requests/s, and it sleeps 10 s between loops. At one namespace a
/// second each loop is longer than the one before, and the race would measure that backlog
/// (and its own 30 s limit) instead of the loop. PEERS_PATCHER_ARRIVAL_MS overrides it.
const PATCHER_ARRIVAL: Duration = Duration::from_secs(5);

fn arrival(tool: Tool) -> Duration {
    match tool {
        Tool::Patcher => Duration::from_millis(env_usize(
            "PEERS_PATCHER_ARRIVAL_MS",
            PATCHER_ARRIVAL.as_millis() as usize,
        ) as u64),
        Tool::Kyverno | Tool::Ours => ARRIVAL,
    }
}

async fn race(client: &kube::Client, tool: Tool, runs: usize) -> RaceResult {
    let (seen, watch) = watch_copies(client);
    let (patched, watch_accounts) = watch_patched_accounts(client);
    tokio::time::sleep(Duration::from_secs(1)).await; // the watches are established
    let namespaces = Api::<Namespace>::all(client.clone());
    let mut result = RaceResult::skipped(tool, "");
    result.skipped = None;
    result.runs = runs;
    result.cluster_namespaces = namespaces
        .list(&Default::default())
        .await
        .map_or(0, |l| l.items.len());
    let prefix = match tool {
        Tool::Patcher => "race-patcher",
        Tool::Kyverno => "race-kyverno",
        Tool::Ours => "race-ours",
    };
    let first = Instant::now();
    let mut pending = Vec::new();
    for run in 0..runs {
        tokio::time::sleep_until((first + arrival(tool) * run as u32).into()).await;
        let generated = format!("{prefix}-");
        let started = Instant::now();
        let ns =
            create_namespace(client, NamespaceName::Generated(&generated), tool.labels()).await;
        result.creates.namespace.push(started.elapsed());
        // At once: no waiting for anything in the new namespace.
        let pods = Api::<Pod>::namespaced(client.clone(), &ns);
        let (created, took) = create_at_once(&pods, &mut result.sa_retries).await;
        result.creates.pod.push(took);
        let created = match created {
            Ok(pod) => pod,
            Err(e) => {
                eprintln!("race {prefix} run {run} ({ns}): pod create failed: {e}");
                result.no_reference += 1;
                continue;
            }
        };
        let pod_rv = rv(&created.metadata);
        let referenced = secret_names(&created).iter().any(|n| n == SECRET);
        let watched = (Arc::clone(&seen), Arc::clone(&patched));
        let namespaces = namespaces.clone();
        let task = tokio::spawn(async move {
            let (secret, usable_at) = settle(watched, tool, &ns, started).await;
            // The patcher's loop time grows with the namespaces it visits: its runs'
            // namespaces go once measured (the other tools act per event, whatever the size).
            if tool == Tool::Patcher {
                let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
            }
            Settled {
                referenced,
                pod_rv,
                secret,
                usable_at,
            }
        });
        pending.push(task);
        if (run + 1) % 25 == 0 {
            eprintln!("race {prefix}: {}/{runs} runs started", run + 1);
        }
    }
    for task in pending {
        result.add(&task.await.expect("race run"));
    }
    watch.abort();
    watch_accounts.abort();
    result.usable.sort();
    result.creates.sort();
    result
}

// ---------------------------------------------------------------------------
// 2. Latency and cost
// ---------------------------------------------------------------------------

struct Setup {
    name: &'static str,
    pods: Api<Pod>,
    want: Vec<String>,
    /// The webhook process, measured while this setup's chunks run.
    pid: Option<u32>,
    latencies: Vec<Duration>,
    cpu: f64,
    next: usize,
}

/// One setup's sorted latencies, and its webhook process's CPU seconds and peak RSS (MiB).
struct Measured {
    name: String,
    latencies: Vec<Duration>,
    cpu: Option<f64>,
    peak_rss: Option<f64>,
}

struct LatencyResult {
    setups: Vec<Measured>,
    /// Peak RSS (MiB) of the other processes of each tool.
    extra: Vec<(String, f64, f64)>,
    seconds: f64,
}

async fn latency(
    client: &kube::Client,
    sizes: &Sizes,
    ours: &Ours,
    kyverno: Option<&Kyverno>,
) -> LatencyResult {
    let mut setups = Vec::new();
    let mut add = |name, ns: &str, want: &[&str], pid| {
        setups.push(Setup {
            name,
            pods: Api::<Pod>::namespaced(client.clone(), ns),
            want: want.iter().map(|s| s.to_string()).collect(),
            pid,
            latencies: Vec::with_capacity(sizes.creates),
            cpu: 0.0,
            next: 0,
        });
    };
    create_namespace(client, NamespaceName::Exact("latency-none"), &[]).await;
    add("no webhook", "latency-none", &[], None);
    if let Some(k) = kyverno {
        create_namespace(
            client,
            NamespaceName::Exact("latency-kyverno"),
            &[(KYVERNO_LABEL, "enabled")],
        )
        .await;
        add(
            "Kyverno mutate policy",
            "latency-kyverno",
            &[SECRET],
            Some(k.admission.pid),
        );
    }
    create_namespace(
        client,
        NamespaceName::Exact("latency-ours"),
        &[(OURS_LABEL, "enabled")],
    )
    .await;
    add(
        "pullsecret-injector",
        "latency-ours",
        &[SECRET],
        Some(ours.pid()),
    );
    for setup in &setups {
        if !setup.want.is_empty() {
            wait_injected(
                client,
                setup.pods.namespace().unwrap_or_default(),
                IMAGE,
                SECRET,
            )
            .await;
        }
    }
    wait_no_benchmark().await;

    for setup in &mut setups {
        chunk(setup, WARM_UP, sizes.concurrency, false).await;
    }
    let started = Instant::now();
    let rounds = sizes.creates.div_ceil(CHUNK);
    for round in 0..rounds {
        let n = CHUNK.min(sizes.creates - round * CHUNK);
        let count = setups.len();
        for k in 0..count {
            let setup = &mut setups[(round + k) % count];
            chunk(setup, n, sizes.concurrency, true).await;
        }
        eprintln!(
            "latency: {}/{} creates per setup",
            (round * CHUNK + n),
            sizes.creates
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut extra = Vec::new();
    if let Some(k) = kyverno {
        extra.push((
            "Kyverno background controller".to_string(),
            status_mib(k.background.pid, "VmHWM:"),
            cpu_seconds(k.background.pid),
        ));
    }
    LatencyResult {
        setups: setups
            .into_iter()
            .map(|mut s| {
                s.latencies.sort();
                Measured {
                    name: s.name.to_string(),
                    cpu: s.pid.map(|_| s.cpu),
                    peak_rss: s.pid.map(|pid| status_mib(pid, "VmHWM:")),
                    latencies: s.latencies,
                }
            })
            .collect(),
        extra,
        seconds,
    }
}

/// `n` creates, `concurrency` at a time; with `record`, their latencies and the webhook
/// process's CPU time go into `setup`.
async fn chunk(setup: &mut Setup, n: usize, concurrency: usize, record: bool) {
    let cpu_before = setup.pid.map(cpu_seconds);
    let first = setup.next;
    setup.next += n;
    let pods = setup.pods.clone();
    let name = setup.name;
    let want = setup.want.clone();
    let latencies: Vec<Duration> = futures::stream::iter(first..first + n)
        .map(|i| {
            let pods = pods.clone();
            let want = want.clone();
            async move {
                let pod_name = format!("p-{i}");
                let sent = Instant::now();
                let created = pods
                    .create(&PostParams::default(), &pod(&pod_name, &[IMAGE]))
                    .await
                    .unwrap_or_else(|e| panic!("{name}: creating pod {pod_name}: {e}"));
                let elapsed = sent.elapsed();
                assert_eq!(secret_names(&created), want, "{name}: pod {pod_name}");
                elapsed
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    if record {
        setup.latencies.extend(latencies);
        if let (Some(pid), Some(before)) = (setup.pid, cpu_before) {
            setup.cpu += cpu_seconds(pid) - before;
        }
    }
}

/// Other engineers benchmark on this machine: wait (up to 20 min) until none of their load
/// generators runs, so that the timed phases (latency, then the races) do not share the
/// cores with them.
async fn wait_no_benchmark() {
    let busy = || -> Option<String> {
        let out = Command::new("pgrep")
            .args([
                "-a",
                "-f",
                "oha|floor_server|benches/run.sh|bench adversary|adversary-",
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mine = std::process::id().to_string();
        let others: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{mine} ")) && !l.contains("pgrep"))
            .collect();
        (!others.is_empty()).then(|| others.join("; "))
    };
    if std::env::var_os("PEERS_NO_WAIT").is_some() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(20 * 60);
    while let Some(what) = busy() {
        if Instant::now() > deadline {
            eprintln!("peers: still busy after 20 min ({what}); measuring anyway");
            return;
        }
        eprintln!("peers: another benchmark is running ({what}); waiting a minute");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

// ---------------------------------------------------------------------------
// 3. Matching
// ---------------------------------------------------------------------------

/// What one tool did with a row's pod.
#[derive(Clone, PartialEq)]
enum Injected {
    Yes,
    No,
    Error(String),
}

struct MatchRow {
    case: Case,
    kubelet_uses: bool,
    ours: Injected,
    kyverno_registry: Option<Injected>,
    kyverno_any: Option<Injected>,
}

async fn matching(client: &kube::Client, kyverno: Option<&Kyverno>) -> Vec<MatchRow> {
    // Rows whose pattern our config refuses (`refused`) have no decision of ours to compare.
    let cases: Vec<Case> = cases().into_iter().filter(|c| !c.refused).collect();
    if let Some(kyverno) = kyverno {
        kyverno.create_matching_policies(client, &cases).await;
        create_namespace(
            client,
            NamespaceName::Exact(MATCHING_NS),
            &[
                (KYVERNO_LABEL, "enabled"),
                (KYVERNO_MATCHING_LABEL, "enabled"),
            ],
        )
        .await;
        // In effect once a pod that the last rule's wildcard matches is mutated by it.
        let last = cases.last().expect("cases");
        let probe = kyverno_glob(last.pattern).replace('*', "x");
        wait_injected(client, MATCHING_NS, &probe, &format!("row-{}", last.line)).await;
    }
    let mut rows = Vec::with_capacity(cases.len());
    for case in cases {
        let (kyverno_registry, kyverno_any) = match kyverno {
            Some(_) => {
                let (registry, any) = kyverno_decision(client, &case).await;
                (Some(registry), Some(any))
            }
            None => (None, None),
        };
        rows.push(MatchRow {
            kubelet_uses: matches!(case.expected, "yes" | "fallback"),
            ours: ours_decision(&case),
            case,
            kyverno_registry,
            kyverno_any,
        });
    }
    rows
}

const MATCHING_NS: &str = "matching-kyverno";

/// What Kyverno does to the row's pod (a dry-run create in a namespace both Kyverno policies
/// select): whether the row's per-registry rule added `row-<line>`, and whether the
/// any-image rule added SECRET.
async fn kyverno_decision(client: &kube::Client, case: &Case) -> (Injected, Injected) {
    let pods = Api::<Pod>::namespaced(client.clone(), MATCHING_NS);
    let row_secret = format!("row-{}", case.line);
    match pods
        .create(&dry_run(), &pod(&format!("m-{}", case.line), &[case.image]))
        .await
    {
        Ok(created) => {
            let names = secret_names(&created);
            let injected = |name: &str| match names.iter().any(|n| n == name) {
                true => Injected::Yes,
                false => Injected::No,
            };
            (injected(&row_secret), injected(SECRET))
        }
        Err(e) => {
            let e = Injected::Error(short_error(&e));
            (e.clone(), e)
        }
    }
}

fn short_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let m = s.message.replace('\n', " ");
            if m.len() > 120 {
                format!(
                    "{}…",
                    &m[..m.char_indices().nth(120).map_or(m.len(), |(i, _)| i)]
                )
            } else {
                m
            }
        }
        other => other.to_string(),
    }
}

/// Our webhook's decision for the row's pod with a one-secret config of the row's pattern:
/// `pullsecret-injector mutate` runs the decision code `serve` runs (admission::decide_pod).
/// One config per row, because the Docker Hub fallback depends on the other patterns.
fn ours_decision(case: &Case) -> Injected {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    let pattern = serde_json::to_string(case.pattern).expect("JSON string");
    std::fs::write(
        &config,
        format!("secrets:\n  - name: row\n    registries: [{pattern}]\n"),
    )
    .expect("write config");
    let pod_file = dir.path().join("pod.json");
    std::fs::write(
        &pod_file,
        serde_json::to_vec(&pod("m", &[case.image])).expect("JSON"),
    )
    .expect("write pod");
    let out = Command::new(injector::binary())
        .args(["mutate", "--config"])
        .arg(&config)
        .arg("-f")
        .arg(&pod_file)
        .args(["-o", "json"])
        .output()
        .expect("run pullsecret-injector mutate");
    if !out.status.success() {
        return Injected::Error(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let mutated: Pod = serde_json::from_slice(&out.stdout).expect("mutate prints the pod");
    if secret_names(&mutated).iter().any(|n| n == "row") {
        Injected::Yes
    } else {
        Injected::No
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fmt_ms(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| {
        let v = ms(d);
        if v >= 1000.0 {
            format!("{:.2} s", v / 1000.0)
        } else {
            format!("{v:.1} ms")
        }
    })
}

fn fmt_injected(i: &Option<Injected>) -> String {
    match i {
        None => "–".into(),
        Some(Injected::Yes) => "injects".into(),
        Some(Injected::No) => "no".into(),
        Some(Injected::Error(e)) => format!("error: {e}"),
    }
}

/// A wrong answer: a secret injected that the kubelet never uses, or one it uses missed.
/// An error (the pod refused) counts as a miss when the kubelet would use the secret.
fn wrong(kubelet_uses: bool, got: &Injected) -> Option<&'static str> {
    match (kubelet_uses, got) {
        (false, Injected::Yes) => Some("injects unused"),
        (true, Injected::No) => Some("misses"),
        (_, Injected::Error(_)) => Some("pod refused"),
        _ => None,
    }
}

/// Context for table 1.
struct RaceNotes {
    /// Namespace and pod create when no tool selects the namespace, under the conditions
    /// named.
    baselines: Vec<(&'static str, Creates)>,
    /// Our `ensured_at_admission` counts after our race (result, count).
    ensured: [(&'static str, f64); 3],
}

fn render(
    sizes: &Sizes,
    kube_version: &str,
    races: &[RaceResult],
    notes: &RaceNotes,
    latency: &LatencyResult,
    matching: &[MatchRow],
) -> Report {
    let mut md = String::new();
    let kyverno_version = stamp_version("kyverno").unwrap_or_else(|| "not built".into());
    let _ = writeln!(
        md,
        "Control plane: kube-apiserver {kube_version} (etcd, kube-controller-manager); \
         Kyverno {kyverno_version}; machine: {} cores.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 1. Race
    let _ = writeln!(
        md,
        "### 1. The race: a namespace, then at once a Pod that needs the secret (N = {})\n",
        sizes.race_runs
    );
    let _ = writeln!(
        md,
        "| tool | Pods without a usable pull secret | no reference | reference to a Secret created after the Pod | namespace usable after: p50 / p99 / max | never usable (30 s) | namespace create p50 | Pod create p50 |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for r in races {
        if let Some(why) = &r.skipped {
            let _ = writeln!(
                md,
                "| {} | not run: {} | | | | | | |",
                r.tool.name(),
                why.replace('|', "/")
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | **{}/{}** | {} | {} | {} / {} / {} | {} | {} | {} |",
            r.tool.name(),
            r.failed(),
            r.runs,
            r.no_reference,
            r.missing_at_creation,
            fmt_ms(percentile(&r.usable, 50.0)),
            fmt_ms(percentile(&r.usable, 99.0)),
            fmt_ms(r.usable.last().copied()),
            r.not_usable,
            fmt_ms(percentile(&r.creates.namespace, 50.0)),
            fmt_ms(percentile(&r.creates.pod, 50.0)),
        );
    }
    for (conditions, baseline) in &notes.baselines {
        let _ = writeln!(
            md,
            "| ({conditions}) | – | – | – | – | – | {} | {} |",
            fmt_ms(percentile(&baseline.namespace, 50.0)),
            fmt_ms(percentile(&baseline.pod, 50.0)),
        );
    }
    let _ = writeln!(
        md,
        "\nA run starts every {} s (the patcher's: see below), whether the previous one has \
         settled or not. The Pod \
         create includes the ServiceAccount admission plugin's wait: while kube-controller-manager \
         has not yet made the namespace's `default` ServiceAccount, the plugin looks it up \
         again after 100–200 ms.",
        ARRIVAL.as_secs_f64()
    );
    let retried: Vec<String> = races
        .iter()
        .filter(|r| r.sa_retries > 0)
        .map(|r| format!("{} {}", r.tool.name(), r.sa_retries))
        .collect();
    if !retried.is_empty() {
        let _ = writeln!(
            md,
            "Pod creates refused for want of that ServiceAccount, and sent again after 20 ms \
             (included): {}.",
            retried.join(", ")
        );
    }
    for r in races {
        if let Some(cost) = &r.process {
            let _ = writeln!(
                md,
                "\n{} over its race: {:.2} CPU seconds, peak RSS {:.1} MiB. Its runs started \
                 every {} s, on a cluster of {} namespaces besides the runs' own (each deleted \
                 once measured): each of its loops visits every namespace, at client-go's \
                 default 5 requests/s, then sleeps 10 s.",
                r.tool.name(),
                cost.cpu_seconds,
                cost.peak_rss_mib,
                arrival(r.tool).as_secs_f64(),
                r.cluster_namespaces,
            );
        }
    }
    let _ = writeln!(
        md,
        "\nOur webhook's ensure-at-admission during our race (copies still missing from its \
         cache when a Pod was admitted, by result): {}; the other copies had been made by \
         the leader's namespace watch before the Pod arrived.",
        notes
            .ensured
            .iter()
            .map(|(result, n)| format!("{result} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // 2. Latency
    let _ = writeln!(
        md,
        "\n### 2. Latency and cost: {} Pod creates per setup, {} concurrent, through kube-apiserver\n",
        sizes.creates, sizes.concurrency
    );
    let _ = writeln!(
        md,
        "| setup | p50 | p99 | added p50 | added p99 | webhook CPU seconds | webhook peak RSS |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let base = latency.setups.first().map(|s| &s.latencies);
    let added = |l: &[Duration], p: f64| -> String {
        match (percentile(l, p), base.and_then(|b| percentile(b, p))) {
            (Some(a), Some(b)) => format!("{:+.1} ms", ms(a) - ms(b)),
            _ => "–".into(),
        }
    };
    for Measured {
        name,
        latencies: l,
        cpu,
        peak_rss: hwm,
    } in &latency.setups
    {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            fmt_ms(percentile(l, 50.0)),
            fmt_ms(percentile(l, 99.0)),
            if cpu.is_some() {
                added(l, 50.0)
            } else {
                "–".into()
            },
            if cpu.is_some() {
                added(l, 99.0)
            } else {
                "–".into()
            },
            cpu.map_or("–".into(), |c| format!("{c:.2} s")),
            hwm.map_or("–".into(), |h| format!("{h:.1} MiB")),
        );
    }
    for (name, hwm, cpu) in &latency.extra {
        let _ = writeln!(
            md,
            "| ({name}, not in the Pod path) | | | | | {cpu:.2} s since start | {hwm:.1} MiB |"
        );
    }

    // 3. Matching
    let rows = matching.len();
    let count = |f: &dyn Fn(&MatchRow) -> Option<&'static str>, what: &str| {
        matching.iter().filter(|r| f(r) == Some(what)).count()
    };
    let ours_wrong = |r: &MatchRow| wrong(r.kubelet_uses, &r.ours);
    let ky_reg = |r: &MatchRow| {
        r.kyverno_registry
            .as_ref()
            .and_then(|k| wrong(r.kubelet_uses, k))
    };
    let ky_any = |r: &MatchRow| {
        r.kyverno_any
            .as_ref()
            .and_then(|k| wrong(r.kubelet_uses, k))
    };
    let _ = writeln!(
        md,
        "\n### 3. Matching: the {rows} Pods of matching-cases.tsv, one registry pattern each\n"
    );
    let _ = writeln!(
        md,
        "| rule | injects a secret the kubelet never uses | misses one the kubelet uses | Pod refused | right |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let kyverno_ran = matching.iter().any(|r| r.kyverno_registry.is_some());
    let mut line = |name: &str, f: &dyn Fn(&MatchRow) -> Option<&'static str>, ran: bool| {
        if !ran {
            let _ = writeln!(md, "| {name} | not run | | | |");
            return;
        }
        let (a, b, c) = (
            count(f, "injects unused"),
            count(f, "misses"),
            count(f, "pod refused"),
        );
        let _ = writeln!(
            md,
            "| {name} | {a} | {b} | {c} | {}/{rows} |",
            rows - a - b - c
        );
    };
    line(
        "Kyverno `<(image): \"*\"` (the policy above)",
        &ky_any,
        kyverno_ran,
    );
    line(
        "Kyverno `<(image): \"<pattern>/*\"` per registry",
        &ky_reg,
        kyverno_ran,
    );
    line("pullsecret-injector (kubelet rules)", &ours_wrong, true);

    let _ = writeln!(
        md,
        "\nRows where a per-registry Kyverno rule or ours disagrees with the kubelet:\n"
    );
    let _ = writeln!(
        md,
        "| line | image | pattern (Kyverno wildcard) | kubelet | Kyverno | ours |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for r in matching
        .iter()
        .filter(|r| ky_reg(r).is_some() || ours_wrong(r).is_some())
    {
        let _ = writeln!(
            md,
            "| {} | `{}` | `{}` (`{}`) | {} | {} | {} |",
            r.case.line,
            r.case.image,
            r.case.pattern,
            kyverno_glob(r.case.pattern),
            r.case.expected,
            fmt_injected(&r.kyverno_registry),
            fmt_injected(&Some(r.ours.clone())),
        );
    }

    let json = json!({
        "kube_version": kube_version,
        "kyverno_version": kyverno_version,
        "race_baselines": notes.baselines.iter().map(|(conditions, b)| json!({
            "conditions": conditions,
            "namespace_create_ms": b.namespace.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "pod_create_ms": b.pod.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "ensured_at_admission": notes.ensured.iter().map(|(r, n)| json!({"result": r, "count": n})).collect::<Vec<_>>(),
        "race": races.iter().map(|r| json!({
            "tool": r.tool.name(),
            "skipped": r.skipped,
            "runs": r.runs,
            "without_usable_secret": r.failed(),
            "no_reference": r.no_reference,
            "missing_at_creation": r.missing_at_creation,
            "usable_ms": r.usable.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "not_usable": r.not_usable,
            "namespace_create_ms": r.creates.namespace.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "pod_create_ms": r.creates.pod.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "sa_retries": r.sa_retries,
            "cluster_namespaces_at_start": r.cluster_namespaces,
            "process_cpu_seconds": r.process.as_ref().map(|c| c.cpu_seconds),
            "process_peak_rss_mib": r.process.as_ref().map(|c| c.peak_rss_mib),
        })).collect::<Vec<_>>(),
        "latency": {
            "creates": sizes.creates,
            "concurrency": sizes.concurrency,
            "seconds": latency.seconds,
            "setups": latency.setups.iter().map(|s| json!({
                "name": s.name,
                "p50_ms": percentile(&s.latencies, 50.0).map(ms),
                "p99_ms": percentile(&s.latencies, 99.0).map(ms),
                "max_ms": s.latencies.last().map(|d| ms(*d)),
                "cpu_seconds": s.cpu,
                "peak_rss_mib": s.peak_rss,
            })).collect::<Vec<_>>(),
        },
        "matching": matching.iter().map(|r| json!({
            "line": r.case.line,
            "image": r.case.image,
            "pattern": r.case.pattern,
            "kubelet": r.case.expected,
            "kyverno_any": fmt_injected(&r.kyverno_any),
            "kyverno_registry": fmt_injected(&r.kyverno_registry),
            "ours": fmt_injected(&Some(r.ours.clone())),
        })).collect::<Vec<_>>(),
    });
    Report { markdown: md, json }
}
