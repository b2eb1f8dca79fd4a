//! A real node beside the test control plane (crates/test-support/src/node.rs): containerd,
//! runc, the CNI bridge, the kubelet and kube-scheduler from `make node`. Pods run here,
//! pull private images from the registries of crates/test-support/src/registry.rs with the
//! secrets the injector adds, and the injector itself runs from its image (`make image`'s
//! image/build.sh) under its chart, installed with helm: issue 12's a–g, the negative control
//! among them, the teardown, `make demo` and the pod start latency figure; and issue 17's
//! credential provider plugin, whose refreshed tokens pods pull with.
//!
//! Needs `make controlplane node registry-tools build` (all part of `make test`), and root
//! (containers, mounts, a bridge).

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Container, Event, LocalObjectReference, Namespace, Node as NodeObject, Pod, PodSpec, Secret,
    ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, ListParams, LogParams, ObjectMeta, Patch, PatchParams, PostParams};
use test_support::access;
use test_support::controlplane::{self, NamespaceName, eventually};
use test_support::helm;
use test_support::images::{self, Image};
use test_support::logs::LogsOnFailure;
use test_support::metrics::metric;
use test_support::node::{self, NODE_NAME, PAUSE_IMAGE};
use test_support::pki::TestCa;
use test_support::pods;
use test_support::providers::{FakeProvider, password_of};
use test_support::registry::{self, Registries, Registry, Request};
use test_support::replication::replication_config;
use test_support::secrets::get_secret;
use test_support::webhook::{self, register};

/// Tests that load the machine (the race's 40 namespaces, the fault test's stream of
/// admissions, a second node) run alone; the others share. On 2 busy cores, running them
/// together starves the injector past the webhook's 5 s timeout, and `failurePolicy: Ignore`
/// then admits pods without their secrets: true to life, but not what those tests measure.
static HEAVY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A pod running the sandbox image's program, which is imported on the node: no registry.
fn local_pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: Some(PAUSE_IMAGE.into()),
                image_pull_policy: Some("Never".into()),
                ..Container::default()
            }],
            termination_grace_period_seconds: Some(1),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// The pod once its phase is Running, else the reason it is not (container states).
fn running(pod: &Pod) -> Result<(), String> {
    let status = pod.status.as_ref().ok_or("no status yet")?;
    if status.phase.as_deref() == Some("Running") {
        return Ok(());
    }
    let waiting: Vec<String> = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .map(|w| {
            format!(
                "{}: {}",
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default()
            )
        })
        .collect();
    Err(format!("phase {:?}, waiting {waiting:?}", status.phase))
}

#[tokio::test]
async fn node_registers_ready_with_its_own_address() {
    let _turn = HEAVY.read().await;
    let node = node::shared();
    let _logs = node.logs_on_failure();
    let client = node.control_plane().client();
    let object = Api::<NodeObject>::all(client)
        .get(NODE_NAME)
        .await
        .expect("the node is registered");
    let addresses: Vec<(String, String)> = object
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.type_, a.address))
        .collect();
    assert!(
        addresses.contains(&("InternalIP".into(), node.network().gateway.to_string())),
        "node addresses {addresses:?} lack the gateway {}",
        node.network().gateway
    );
    let version = object
        .status
        .and_then(|s| s.node_info)
        .map(|i| (i.kubelet_version, i.container_runtime_version))
        .expect("node info");
    assert_eq!(version.0, "v1.36.3");
    assert_eq!(version.1, "containerd://2.4.2");
}

#[tokio::test]
async fn pod_with_a_local_image_runs_on_the_pod_network() {
    let _turn = HEAVY.read().await;
    let node = node::shared();
    let _logs = node.logs_on_failure();
    let client = node.control_plane().client();
    let ns = controlplane::namespace(&client, "node-smoke", &[]).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &local_pod("local"))
        .await
        .expect("creating the pod");

    let pod = eventually(
        "pod local to be Running",
        Duration::from_secs(60),
        || async {
            node.check_running()?;
            let pod = pods.get("local").await.map_err(|e| e.to_string())?;
            running(&pod).map(|()| pod)
        },
    )
    .await;

    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some(NODE_NAME), "scheduled here");
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP");
    let prefix = node.network().pod_cidr.trim_end_matches("0/24").to_string();
    assert!(
        ip.starts_with(&prefix) && ip != node.network().gateway.to_string(),
        "pod IP {ip} is not a pod address of {}",
        node.network().pod_cidr
    );

    // From the pod's network: the pod network itself and the service range, nothing else;
    // the apiserver answers at the `kubernetes` Service's ClusterIP, port 443.
    let container = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .expect("container id");
    let network = node.network();
    let (ok, routes) = node
        .in_network_of(&container, "ip", &["-4", "route", "show"])
        .expect("ip route in the pod's network");
    assert!(ok, "ip route: {routes}");
    let mut routes: Vec<String> = routes
        .lines()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect();
    routes.sort();
    assert_eq!(
        routes,
        [
            format!("{} via {}", network.service_cidr, network.gateway),
            format!("{} dev eth0", network.pod_cidr),
        ]
    );
    let (ok, out) = node
        .in_network_of(
            &container,
            "bash",
            &[
                "-c",
                &format!("exec 3<>/dev/tcp/{}/443", network.cluster_ip),
            ],
        )
        .expect("connecting from the pod's network");
    assert!(
        ok,
        "connecting to {}:443 from the pod: {out}",
        network.cluster_ip
    );

    // The apiserver reaches the kubelet (logs go through it): the pause program writes none.
    let logs = pods
        .logs("local", &LogParams::default())
        .await
        .expect("pod logs through the kubelet");
    assert_eq!(logs, "");

    // The kubelet recorded what it did, as it does for users.
    let events = Api::<Event>::namespaced(client, &ns)
        .list(&ListParams::default().fields("involvedObject.name=local"))
        .await
        .expect("listing events");
    let reasons: Vec<String> = events
        .items
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    for reason in ["Scheduled", "Pulled", "Created", "Started"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} event in {reasons:?}"
        );
    }
}

/// Set in the child process of [`teardown_after_sigkill`].
const CHILD_ENV: &str = "PSI_NODE_TEARDOWN_CHILD";

/// The test process is SIGKILLed while its node runs a pod: its reaper still stops every
/// process, unmounts everything, deletes the network namespaces, veths and the bridge, and
/// removes the node's directory. The node under test is a second one, in a child process
/// (this test binary, running only this test, with [`CHILD_ENV`] set), with its own control
/// plane.
#[tokio::test]
async fn teardown_after_sigkill() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return run_child_until_killed().await;
    }
    let _turn = HEAVY.write().await;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    /// Kills the child if this test fails before it does.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let exe = std::env::current_exe().expect("current_exe");
    let child = Command::new(exe)
        .args(["--exact", "teardown_after_sigkill", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the child test process");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("child stdout");
    // The child prints `READY <node dir> <bridge> <CNI network> <log dir>` once its pod runs.
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("READY ").map(str::to_string))
    });
    let ready = tokio::time::timeout(Duration::from_secs(180), ready)
        .await
        .expect("the child's node within 180 s")
        .expect("reading the child's output")
        .expect("the child printed READY (its output is above)");
    let fields: Vec<&str> = ready.split(' ').collect();
    let [dir, bridge, network, log_dir] = fields[..] else {
        panic!("unexpected READY line {ready:?}");
    };

    // Containers and sandboxes, as runc and containerd's CRI plugin know them.
    let containers: Vec<String> = [
        format!("{dir}/runc/k8s.io"),
        format!("{dir}/containerd/root/io.containerd.grpc.v1.cri/sandboxes"),
    ]
    .iter()
    .flat_map(|d| std::fs::read_dir(d).unwrap_or_else(|e| panic!("{d}: {e}")))
    .flatten()
    .map(|e| e.file_name().to_string_lossy().to_string())
    .collect::<std::collections::BTreeSet<_>>()
    .into_iter()
    .collect();
    let before = leftovers(dir, bridge, network, &containers);
    for what in [
        "mount",
        "bridge",
        "veth",
        "process",
        "container process",
        "network namespace",
        "directory",
        "cgroup",
        "CNI cache entry",
    ] {
        assert!(
            before.iter().any(|l| l.starts_with(what)),
            "a running node has a {what} to clean up; found only {before:?}"
        );
    }

    child.0.kill().expect("SIGKILL to the child test process");
    let status = child.0.wait().expect("waiting for the child");
    assert!(!status.success(), "the child was killed: {status}");

    let reaper_log = std::path::Path::new(log_dir).join("node-reaper.log");
    let log = eventually("the reaper to finish", Duration::from_secs(90), || async {
        let log = std::fs::read_to_string(&reaper_log).map_err(|e| e.to_string())?;
        if log.lines().any(|l| l.ends_with("] done")) {
            Ok(log)
        } else {
            Err(format!("reaper log so far:\n{log}"))
        }
    })
    .await;
    let after = leftovers(dir, bridge, network, &containers);
    assert!(
        after.is_empty(),
        "left behind after the teardown: {after:#?}\nreaper log:\n{log}"
    );
}

/// The child's part of [`teardown_after_sigkill`]: a node with a running pod, then wait.
async fn run_child_until_killed() {
    let node = node::shared();
    let _logs = node.logs_on_failure();
    let client = node.control_plane().client();
    let ns = controlplane::namespace(&client, "teardown", &[]).await;
    let pods = Api::<Pod>::namespaced(client, &ns);
    pods.create(&PostParams::default(), &local_pod("victim"))
        .await
        .expect("creating the pod");
    eventually(
        "pod victim to be Running",
        Duration::from_secs(60),
        || async { running(&pods.get("victim").await.map_err(|e| e.to_string())?) },
    )
    .await;
    println!(
        "READY {} {} {} {}",
        node.dir().display(),
        node.network().bridge,
        node.network().cni_name(),
        node.log_dir().display()
    );
    std::future::pending::<()>().await;
}

/// What of a node is still on the machine, one line per thing, each starting with its kind.
/// `containers`: the ids of its containers, whose processes are found by their cgroups.
fn leftovers(dir: &str, bridge: &str, network: &str, containers: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let under = format!("{dir}/");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for line in mountinfo.lines() {
        let point = line.split(' ').nth(4).unwrap_or_default();
        if point.starts_with(&under) {
            found.push(format!("mount {point}"));
            if point.contains("/netns/") {
                found.push(format!("network namespace {point}"));
            }
        }
    }
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if line.contains(&format!(": {bridge}:")) {
            found.push(format!("bridge {bridge}"));
        }
        if line.contains(&format!(" master {bridge} ")) {
            found.push(format!("veth {}", line.split(": ").nth(1).unwrap_or(line)));
        }
    }
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let pid = entry.file_name().to_string_lossy().to_string();
        if cmdline.contains(&under) {
            found.push(format!("process {pid}: {cmdline}"));
        }
        let cgroups = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if containers.iter().any(|id| cgroups.contains(id.as_str())) {
            found.push(format!("container process {pid}: {cmdline}"));
        }
    }
    if std::path::Path::new(dir).exists() {
        found.push(format!("directory {dir}"));
    }
    for entry in std::fs::read_dir("/var/lib/cni/results")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(&format!("{network}-"))
            || containers.iter().any(|id| name.contains(id.as_str()))
        {
            found.push(format!("CNI cache entry {name}"));
        }
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .expect("/sys/fs/cgroup")
        .flatten()
    {
        for id in containers {
            let cgroup = hierarchy.path().join("k8s.io").join(id);
            if cgroup.exists() {
                found.push(format!("cgroup {}", cgroup.display()));
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------
// As users run it: registries, the injector's image, the chart (issue 12, a–g)
// ---------------------------------------------------------------------------

/// The chart's default release and where it lives.
const RELEASE: &str = "pullsecret-injector";
const OPT_IN: &str = "pullsecret-injector.io/inject-pull-secrets";
/// The copies' names, also the source Secrets' names in a release's namespace.
const SECRET_A: &str = "regcred-a";
const SECRET_B: &str = "regcred-b";
const INJECTOR_REPOSITORY: &str = "pullsecret-injector";
const INJECTOR_TAG: &str = "e2e";
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/pullsecret-injector");
/// A pull from the loopback registry and a container start take a second or two; on a
/// machine busy with builds, much more.
const RUNNING: Duration = Duration::from_secs(120);

/// Everything the scenarios share, set up once per test binary: the node (and its control
/// plane), registries A and B trusted by containerd, the injector's image pushed to A, and the
/// chart installed with default values but for the image.
struct Cluster {
    node: &'static node::Node,
    registries: &'static Registries,
    injector: Image,
    /// Registry A's requests before the chart was installed (the image's push).
    before_install: HashSet<String>,
    release: Release,
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    let set_up = CLUSTER.get_or_init(|| {
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(set_up())
        })
        .join()
        .unwrap_or_else(|panic| Err(panic_message(&*panic)))
    });
    match set_up {
        Ok(cluster) => cluster,
        Err(e) => panic!("setting up the node, the registries and the chart: {e}"),
    }
}

async fn set_up() -> Result<Cluster, String> {
    let started = Instant::now();
    let node = node::shared();
    let registries = registry::shared();
    registry::write_containerd_hosts(&node.registry_config_dir(), &[&registries.a, &registries.b])
        .map_err(|e| format!("writing containerd's registry hosts: {e}"))?;
    let injector = images::push_injector_image(&registries.a, INJECTOR_REPOSITORY, INJECTOR_TAG);
    let before_install = logged_before(&registries.a);
    let release = Release::install(node, registries, RELEASE, RELEASE, OPT_IN, &[]).await?;
    eprintln!(
        "e2e_node: chart installed from its image {} in {:.1}s",
        injector.pinned(),
        started.elapsed().as_secs_f64()
    );
    Ok(Cluster {
        node,
        registries,
        injector,
        before_install,
        release,
    })
}

impl Cluster {
    /// A release of a scenario's own, `name` in namespace `psi-<name>` with its own opt-in
    /// label, so the other scenarios never meet its settings; the guard prints its pods'
    /// logs if the test fails.
    async fn own_release(
        &'static self,
        name: &str,
        extra: &[&str],
    ) -> (Release, LogsOnFailure<'static>) {
        let namespace = format!("psi-{name}");
        let logs = LogsOnFailure::new(&format!("{namespace} pods"), {
            let namespace = namespace.clone();
            move || self.node.pod_log_tails(&namespace, 40)
        });
        let opt_in = format!("pullsecret-injector.test/{name}");
        let release =
            Release::install(self.node, self.registries, name, &namespace, &opt_in, extra)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        (release, logs)
    }

    /// The node's and the control plane's log tails, and the default release's pods' logs,
    /// printed if the test fails.
    fn logs_on_failure(&self) -> [LogsOnFailure<'_>; 2] {
        [
            self.node.logs_on_failure(),
            LogsOnFailure::new("injector pods", move || {
                self.node.pod_log_tails(&self.release.namespace, 30)
            }),
        ]
    }
}

/// A release of the chart from this checkout, with the injector's image from registry A and
/// both registries' credentials as sources.
struct Release {
    name: String,
    namespace: String,
    /// The namespace label that opts in (`<label>=enabled`).
    opt_in: String,
}

impl Release {
    /// Creates `namespace` with the source Secrets and runs `helm install --wait`: values are
    /// the chart's defaults but the image (and its pull secret), the sources, the opt-in
    /// label and `extra` (`--set …`).
    async fn install(
        node: &node::Node,
        registries: &Registries,
        name: &str,
        namespace: &str,
        opt_in: &str,
        extra: &[&str],
    ) -> Result<Release, String> {
        let client = node.control_plane().client();
        controlplane::create_namespace(&client, NamespaceName::Exact(namespace), &[]).await;
        let secrets = Api::<Secret>::namespaced(client, namespace);
        for (secret, registry) in [(SECRET_A, &registries.a), (SECRET_B, &registries.b)] {
            secrets
                .create(&PostParams::default(), &registry.pull_secret(secret))
                .await
                .map_err(|e| format!("creating source {namespace}/{secret}: {e}"))?;
        }
        let release = Release {
            name: name.to_string(),
            namespace: namespace.to_string(),
            opt_in: opt_in.to_string(),
        };
        let sources = serde_json::json!([
            {"name": SECRET_A, "source": {"name": SECRET_A}},
            {"name": SECRET_B, "source": {"name": SECRET_B}},
        ]);
        let mut args = vec![
            "install".to_string(),
            name.to_string(),
            CHART.to_string(),
            format!(
                "--set=image.repository={}/{INJECTOR_REPOSITORY}",
                registries.a.host()
            ),
            format!("--set=image.tag={INJECTOR_TAG}"),
            format!("--set-json=imagePullSecrets=[{{\"name\":\"{SECRET_A}\"}}]"),
            format!("--set-json=secrets={sources}"),
            format!("--set=webhook.namespaceSelector.optInLabel={opt_in}"),
            "--wait".to_string(),
            "--timeout=240s".to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        release.helm(node, &args)?;
        Ok(release)
    }

    /// `helm <args> -n <namespace>` against the node's control plane; its output or an error
    /// with both streams.
    fn helm(&self, node: &node::Node, args: &[String]) -> Result<String, String> {
        let out = helm::command()
            .args(args)
            .arg(format!("--namespace={}", self.namespace))
            .arg("--kubeconfig")
            .arg(node.control_plane().kubeconfig_path())
            .output()
            .map_err(|e| format!("running helm: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "helm {}: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The chart's full name (`<release>-pullsecret-injector`, or the release's own name when
    /// it already contains the chart's).
    fn fullname(&self) -> String {
        if self.name.contains("pullsecret-injector") {
            self.name.clone()
        } else {
            format!("{}-pullsecret-injector", self.name)
        }
    }

    /// The injector's pods.
    async fn pods(&self, client: &kube::Client) -> Vec<Pod> {
        Api::<Pod>::namespaced(client.clone(), &self.namespace)
            .list(&ListParams::default().labels(&format!(
                "app.kubernetes.io/instance={},app.kubernetes.io/component=webhook",
                self.name
            )))
            .await
            .expect("listing the injector's pods")
            .items
    }

    /// The pod holding the release's Lease (its identity is `<pod>-<pid>`).
    async fn leader(&self, client: &kube::Client) -> Option<String> {
        let holder = Api::<Lease>::namespaced(client.clone(), &self.namespace)
            .get_opt(&self.fullname())
            .await
            .expect("reading the Lease")
            .and_then(|lease| lease.spec?.holder_identity)?;
        holder.rsplit_once('-').map(|(pod, _pid)| pod.to_string())
    }

    /// A namespace that opts in to this release.
    async fn opted_in_namespace(&self, client: &kube::Client, prefix: &str) -> String {
        controlplane::namespace(client, prefix, &[(self.opt_in.as_str(), "enabled")]).await
    }
}

/// The ids of the requests `registry` has logged so far: what a test did before the step
/// whose requests it wants to see (the image's push logs manifest fetches too).
fn logged_before(registry: &Registry) -> HashSet<String> {
    registry.requests().into_iter().map(|r| r.id).collect()
}

/// The successful manifest fetches of `repository` logged since `before`: the pulls.
fn pulls_since(registry: &Registry, repository: &str, before: &HashSet<String>) -> Vec<Request> {
    registry
        .manifest_pulls(repository)
        .into_iter()
        .filter(|r| !before.contains(&r.id))
        .collect()
}

/// `pod` with every container pulling its image (`imagePullPolicy: Always`), so each pod
/// shows its own pull in the registry's log.
fn always_pull(mut pod: Pod) -> Pod {
    for container in &mut pod.spec.as_mut().expect("spec").containers {
        container.image_pull_policy = Some("Always".into());
    }
    pod.spec
        .as_mut()
        .expect("spec")
        .termination_grace_period_seconds = Some(1);
    pod
}

fn always_pull_deployment(mut deployment: Deployment) -> Deployment {
    let template = &mut deployment.spec.as_mut().expect("spec").template;
    let pod = always_pull(Pod {
        spec: template.spec.take(),
        ..Pod::default()
    });
    template.spec = pod.spec;
    deployment
}

/// The pod's events, as `reason: message`, oldest first.
async fn events_of(client: &kube::Client, namespace: &str, pod: &str) -> Vec<String> {
    let mut events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
        .await
        .expect("listing events")
        .items;
    events.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    events
        .into_iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect()
}

/// Creates `pod` and checks at once that the apiserver admitted it with `expected` as its
/// imagePullSecrets: a webhook call that failed or timed out is admitted without them
/// (`failurePolicy: Ignore`), and this says so instead of waiting for a pull that must fail.
async fn create_injected(pods: &Api<Pod>, pod: &Pod, expected: &[&str]) -> Pod {
    let created = pods
        .create(&PostParams::default(), pod)
        .await
        .expect("creating the pod");
    assert_eq!(
        pods::secret_names(&created),
        expected,
        "pod {} admitted without the injected secrets: the webhook call failed or timed out \
         (failurePolicy Ignore); see kube-apiserver.log",
        created.metadata.name.clone().unwrap_or_default()
    );
    created
}

/// Waits until `pod` is Running, failing early (with its events) if it cannot pull.
async fn wait_running(client: &kube::Client, namespace: &str, pod: &str) -> Pod {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let node = node::shared();
    eventually(
        &format!("pod {namespace}/{pod} to be Running"),
        RUNNING,
        || async {
            node.check_running()?;
            let current = pods.get(pod).await.map_err(|e| e.to_string())?;
            match running(&current) {
                Ok(()) => Ok(current),
                Err(why) => Err(format!(
                    "{why}; events {:?}",
                    events_of(client, namespace, pod).await
                )),
            }
        },
    )
    .await
}

/// The reason a container of `pod` waits with, once one is an image pull failure.
async fn wait_pull_refused(client: &kube::Client, namespace: &str, pod: &str) -> String {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    eventually(
        &format!("pod {namespace}/{pod} to fail pulling its image"),
        RUNNING,
        || async {
            let current = pods.get(pod).await.map_err(|e| e.to_string())?;
            let waiting = current
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
                .find(|w| {
                    matches!(
                        w.reason.as_deref(),
                        Some("ErrImagePull" | "ImagePullBackOff")
                    )
                })
                .map(|w| {
                    format!(
                        "{}: {}",
                        w.reason.clone().unwrap_or_default(),
                        w.message.clone().unwrap_or_default()
                    )
                });
            waiting.ok_or_else(|| format!("status {:?}", current.status))
        },
    )
    .await
}

/// a. The chart from this checkout, its image from the private registry: both replicas
/// Ready through the chart's probes (the injector is ready once its caches have synced, so
/// its pods reached the apiserver through their in-cluster configuration), the leader wrote
/// the caBundle, and the apiserver calls the webhook through the chart's Service.
#[tokio::test]
async fn the_chart_runs_the_injector_from_its_image() {
    let _turn = HEAVY.read().await;
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let client = cluster.node.control_plane().client();
    let release = &cluster.release;

    let pods = release.pods(&client).await;
    assert_eq!(pods.len(), 2, "the chart's default is two replicas");
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.as_ref().expect("spec");
        let container = &spec.containers[0];
        assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());
        let status = pod.status.as_ref().expect("status");
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready, "pod {name} is Ready: {:?}", status.conditions);
        let image_id = status.container_statuses.as_ref().expect("statuses")[0]
            .image_id
            .clone();
        assert!(
            image_id.ends_with(&cluster.injector.digest),
            "pod {name} runs the pushed image {}, not {image_id}",
            cluster.injector.digest
        );
        assert_eq!(spec.node_name.as_deref(), Some(node::NODE_NAME));
    }
    let pulls = pulls_since(
        &cluster.registries.a,
        INJECTOR_REPOSITORY,
        &cluster.before_install,
    );
    assert!(
        pulls
            .iter()
            .any(|p| p.user.as_deref() == Some(cluster.registries.a.user())),
        "registry A logged the injector's image pulled as {}: {pulls:?}",
        cluster.registries.a.user()
    );

    // The leader's Lease and the caBundle it wrote: the CA of the injector's own Secret.
    let leader = release.leader(&client).await.expect("a leader");
    assert!(
        pods.iter()
            .any(|p| p.metadata.name.as_deref() == Some(leader.as_str())),
        "the Lease is held by an injector pod: {leader}"
    );
    let tls = Api::<Secret>::namespaced(client.clone(), &release.namespace)
        .get(&format!("{}-tls", release.fullname()))
        .await
        .expect("the injector's certificate Secret");
    let ca = tls
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .expect("ca.crt")
        .0
        .clone();
    let webhook = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(&release.fullname())
        .await
        .expect("the webhook configuration");
    let bundle = webhook.webhooks.as_ref().expect("webhooks")[0]
        .client_config
        .ca_bundle
        .clone()
        .expect("caBundle written")
        .0;
    assert_eq!(bundle, ca, "the caBundle is the injector's CA");

    // The apiserver calls the webhook through the Service (resolved to its endpoints).
    let ns = release.opted_in_namespace(&client, "chart").await;
    let image = cluster.registries.a.image("anything", "v1");
    pods::wait_dry_run(
        &Api::<Pod>::namespaced(client, &ns),
        &image,
        &[SECRET_A],
        Duration::from_secs(60),
    )
    .await;
}

/// b. A Pod and a Deployment with a private image from A, in an opted-in namespace: both run;
/// registry A logged the pull as its user; the Pod's events show the image pulled.
#[tokio::test]
async fn a_private_image_is_pulled_with_the_injected_secret() {
    let _turn = HEAVY.read().await;
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let _registry_log = cluster.registries.a.logs_on_failure();
    let client = cluster.node.control_plane().client();
    let a = &cluster.registries.a;
    let app = images::push_test_image(a, "private-b", "v1");
    let ns = cluster.release.opted_in_namespace(&client, "private").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let before = logged_before(a);

    create_injected(
        &pods,
        &always_pull(pods::pod("web", &[&app.reference])),
        &[SECRET_A],
    )
    .await;
    let pod = wait_running(&client, &ns, "web").await;
    assert_eq!(pods::secret_names(&pod), [SECRET_A]);
    let events = events_of(&client, &ns, "web").await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Pulled: Successfully pulled image")
                && e.contains(&app.reference)),
        "no pull event in {events:?}"
    );
    let pulls = pulls_since(a, "private-b", &before);
    assert!(
        pulls.iter().any(|p| p.user.as_deref() == Some(a.user())),
        "registry A logged the pull as {}: {pulls:?}",
        a.user()
    );

    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &always_pull_deployment(pods::deployment("web", "web", 2, &[&app.reference])),
        )
        .await
        .expect("creating the Deployment");
    let replicas = pods::wait_app_pods(&pods, "web", 2, RUNNING).await;
    for pod in replicas {
        let name = pod.metadata.name.clone().expect("name");
        let pod = wait_running(&client, &ns, &name).await;
        assert_eq!(pods::secret_names(&pod), [SECRET_A], "{name}");
    }
}

/// c. The negative control: the same Pod in a namespace that did not opt in gets no secret,
/// cannot pull (ErrImagePull, then ImagePullBackOff), and registry A answered 401.
#[tokio::test]
async fn without_the_injector_the_same_pull_is_refused() {
    let _turn = HEAVY.read().await;
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let client = cluster.node.control_plane().client();
    let a = &cluster.registries.a;
    let app = images::push_test_image(a, "private-c", "v1");
    let ns = controlplane::namespace(&client, "not-opted-in", &[]).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let before = logged_before(a);
    pods.create(
        &PostParams::default(),
        &always_pull(pods::pod("web", &[&app.reference])),
    )
    .await
    .expect("creating the pod");

    let why = wait_pull_refused(&client, &ns, "web").await;
    let pod = pods.get("web").await.expect("the pod");
    assert!(pods::secret_names(&pod).is_empty());
    assert!(
        why.contains("authorization failed"),
        "the kubelet reports the registry's refusal: {why}"
    );
    let refused: Vec<Request> = a
        .unauthorized("private-c")
        .into_iter()
        .filter(|r| !before.contains(&r.id))
        .collect();
    assert!(!refused.is_empty(), "registry A logged a 401");
    let pulled = pulls_since(a, "private-c", &before);
    assert!(pulled.is_empty(), "nothing pulled private-c: {pulled:?}");
}

/// d. Per-registry precision, in the kubelet: a Pod with images from A and B gets both
/// secrets and runs; a Pod with B's image only gets B's secret only, and runs.
#[tokio::test]
async fn each_pod_gets_the_secrets_of_its_registries_only() {
    let _turn = HEAVY.read().await;
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let client = cluster.node.control_plane().client();
    let (a, b) = (&cluster.registries.a, &cluster.registries.b);
    let from_a = images::push_test_image(a, "private-d", "v1");
    let from_b = images::push_test_image(b, "private-d", "v1");
    let ns = cluster
        .release
        .opted_in_namespace(&client, "precision")
        .await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let before = [logged_before(a), logged_before(b)];

    create_injected(
        &pods,
        &always_pull(pods::pod("both", &[&from_a.reference, &from_b.reference])),
        &[SECRET_A, SECRET_B],
    )
    .await;
    create_injected(
        &pods,
        &always_pull(pods::pod("only-b", &[&from_b.reference])),
        &[SECRET_B],
    )
    .await;

    let both = wait_running(&client, &ns, "both").await;
    assert_eq!(pods::secret_names(&both), [SECRET_A, SECRET_B]);
    let only_b = wait_running(&client, &ns, "only-b").await;
    assert_eq!(pods::secret_names(&only_b), [SECRET_B]);
    for ((registry, user), before) in [(a, a.user()), (b, b.user())].into_iter().zip(&before) {
        let pulls = pulls_since(registry, "private-d", before);
        assert!(
            pulls.iter().any(|p| p.user.as_deref() == Some(user)),
            "{} logged a pull as {user}: {pulls:?}",
            registry.name()
        );
    }
}

/// How many namespaces each side of the race gets.
const RACE_RUNS: usize = 20;
/// The label of the namespaces the ServiceAccount patcher serves (not our opt-in label).
const PATCHER_LABEL: &str = "pullsecret-injector.test/sa-patcher";

/// How one run of the race ended: its namespace, whether its pod ran, the failed-pull events.
struct RaceRun {
    namespace: String,
    running: bool,
    failed_pulls: Vec<String>,
}

/// e. The race, for real: RACE_RUNS times a new opted-in namespace and at once a Deployment
/// with a private image: every pod runs, no pull ever failed. Beside it the ServiceAccount
/// way, as imagepullsecret-patcher works but at its best (it reacts to each namespace at
/// once instead of every 10 s): copy the secret in and patch the `default` ServiceAccount;
/// the pods the ReplicaSet made before the patch cannot pull. Its count is reported.
#[tokio::test]
async fn the_namespace_race_never_loses_a_pull() {
    let _turn = HEAVY.write().await;
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let client = cluster.node.control_plane().client();
    let a = &cluster.registries.a;
    let app = images::push_test_image(a, "private-e", "v1");

    let ours = race(&client, "race-ours", (OPT_IN, "enabled"), &app.reference).await;
    let patcher = tokio::spawn(sa_patcher(client.clone(), a.pull_secret(SECRET_A)));
    let theirs = race(&client, "race-sa", (PATCHER_LABEL, "on"), &app.reference).await;
    patcher.abort();

    let report = |name: &str, runs: &[RaceRun]| {
        let failed = runs.iter().filter(|r| !r.failed_pulls.is_empty()).count();
        let running = runs.iter().filter(|r| r.running).count();
        eprintln!(
            "race ({name}): {RACE_RUNS} namespaces, {running} pods Running, {failed} with a failed pull"
        );
        failed
    };
    let our_failures = report("pullsecret-injector", &ours);
    let patcher_failures = report("ServiceAccount patching", &theirs);
    eprintln!("race: ServiceAccount patching lost {patcher_failures} of {RACE_RUNS}");
    let lost: Vec<String> = ours
        .iter()
        .filter(|r| !r.running || !r.failed_pulls.is_empty())
        .map(|r| format!("{}: {:?}", r.namespace, r.failed_pulls))
        .collect();
    assert_eq!(our_failures, 0, "pulls failed with the injector: {lost:?}");
    assert!(
        lost.is_empty(),
        "pods not Running with the injector: {lost:?}"
    );
}

/// Runs the race RACE_RUNS times at once: each creates a namespace labelled `label` and, as
/// soon as the namespace exists, a Deployment of one pod with `image`; then waits until every
/// pod runs or has failed to pull.
async fn race(
    client: &kube::Client,
    prefix: &str,
    label: (&str, &str),
    image: &str,
) -> Vec<RaceRun> {
    let runs = (0..RACE_RUNS).map(|i| {
        let client = client.clone();
        async move {
            let namespace = controlplane::create_namespace(
                &client,
                NamespaceName::Generated(&format!("{prefix}-{i}-")),
                &[label],
            )
            .await;
            Api::<Deployment>::namespaced(client.clone(), &namespace)
                .create(
                    &PostParams::default(),
                    &pods::deployment("app", "app", 1, &[image]),
                )
                .await
                .unwrap_or_else(|e| panic!("creating the Deployment in {namespace}: {e}"));
            namespace
        }
    });
    let namespaces = futures::future::join_all(runs).await;
    let mut settled = Vec::new();
    for namespace in namespaces {
        let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
        let (running, failed_pulls) = eventually(
            &format!("the pod in {namespace} to run or fail its pull"),
            RUNNING,
            || async {
                let list = pods
                    .list(&ListParams::default().labels("app=app"))
                    .await
                    .map_err(|e| e.to_string())?;
                let pod = list.items.first().ok_or("no pod yet")?;
                let failed = failed_pulls(client, &namespace).await;
                match running(pod) {
                    Ok(()) => Ok((true, failed)),
                    Err(_) if !failed.is_empty() => Ok((false, failed)),
                    Err(why) => Err(why),
                }
            },
        )
        .await;
        settled.push(RaceRun {
            namespace,
            running,
            failed_pulls,
        });
    }
    settled
}

/// The kubelet's events of failed pulls in `namespace` (`Failed` to pull, `BackOff` pulling).
async fn failed_pulls(client: &kube::Client, namespace: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            let message = e.message.clone().unwrap_or_default();
            matches!(e.reason.as_deref(), Some("Failed" | "BackOff")) && message.contains("pull")
        })
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect()
}

/// The ServiceAccount way, for each new namespace labelled PATCHER_LABEL=on: create `secret`
/// there and add it to the `default` ServiceAccount as soon as that exists.
async fn sa_patcher(client: kube::Client, secret: Secret) {
    use futures::TryStreamExt;
    use kube::runtime::watcher;
    let namespaces = Api::<Namespace>::all(client.clone());
    let config = watcher::Config::default().labels(&format!("{PATCHER_LABEL}=on"));
    let mut seen = std::collections::HashSet::new();
    let mut events = std::pin::pin!(watcher(namespaces, config));
    while let Ok(Some(event)) = events.try_next().await {
        let watcher::Event::Apply(namespace) = event else {
            continue;
        };
        let name = namespace.metadata.name.clone().unwrap_or_default();
        if !seen.insert(name.clone()) {
            continue;
        }
        let (client, secret) = (client.clone(), secret.clone());
        tokio::spawn(async move {
            let _ = Api::<Secret>::namespaced(client.clone(), &name)
                .create(&PostParams::default(), &secret)
                .await;
            let accounts = Api::<ServiceAccount>::namespaced(client, &name);
            let patch = serde_json::json!({"imagePullSecrets": [{"name": SECRET_A}]});
            for _ in 0..600 {
                if accounts
                    .patch("default", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
}

/// Dry-run pod creates in a loop until stopped, counting what the apiserver answered: the
/// admission path is the real one (dry-run pods go through every webhook), without filling
/// the node with pods.
struct AdmissionStream {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<StreamCounts>>,
}

#[derive(Debug, Default)]
struct StreamCounts {
    admitted: usize,
    refused: Vec<String>,
    without_secret: Vec<String>,
}

impl AdmissionStream {
    /// `workers` loops, each creating a pod with `image` in `namespace` and expecting
    /// `expected` as its imagePullSecrets.
    fn start(
        client: &kube::Client,
        namespace: &str,
        image: &str,
        expected: &'static [&'static str],
        workers: usize,
    ) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = (0..workers)
            .map(|_| {
                let pods = Api::<Pod>::namespaced(client.clone(), namespace);
                let probe = pods::pod("probe", &[image]);
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut counts = StreamCounts::default();
                    while !*stopped.borrow() {
                        match pods.create(&pods::dry_run(), &probe).await {
                            Ok(pod) if pods::secret_names(&pod) == expected => counts.admitted += 1,
                            Ok(pod) => counts
                                .without_secret
                                .push(format!("{:?}", pods::secret_names(&pod))),
                            Err(e) => counts.refused.push(pods::message(e)),
                        }
                    }
                    counts
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) -> StreamCounts {
        let _ = self.stop.send(true);
        let mut total = StreamCounts::default();
        for task in self.tasks {
            let counts = task.await.expect("a stream worker");
            total.admitted += counts.admitted;
            total.refused.extend(counts.refused);
            total.without_secret.extend(counts.without_secret);
        }
        total
    }
}

/// When each of a release's pods was first seen terminating, and when the Service's
/// EndpointSlices first stopped offering its address as ready: the window in which the
/// apiserver may still call a pod that is going away (the chart's preStop sleep covers it).
struct EndpointLag {
    task: tokio::task::JoinHandle<()>,
    seen: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Terminating>>>,
}

#[derive(Clone, Debug, Default)]
struct Terminating {
    ip: String,
    since: Option<Instant>,
    unready_after: Option<Duration>,
}

impl EndpointLag {
    fn watch(client: &kube::Client, release: &Release) -> Self {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let seen =
            std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, Terminating>::new()));
        let pods = watcher(
            Api::<Pod>::namespaced(client.clone(), &release.namespace),
            watcher::Config::default()
                .labels(&format!("app.kubernetes.io/instance={}", release.name)),
        );
        let slices = watcher(
            Api::<EndpointSlice>::namespaced(client.clone(), &release.namespace),
            watcher::Config::default().labels(&format!(
                "kubernetes.io/service-name={}",
                release.fullname()
            )),
        );
        let record = std::sync::Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut pods = std::pin::pin!(pods);
            let mut slices = std::pin::pin!(slices);
            let mut ready_ips: HashSet<String> = HashSet::new();
            loop {
                tokio::select! {
                    Some(event) = pods.next() => {
                        let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
                            continue;
                        };
                        let (Some(name), Some(ip)) = (
                            pod.metadata.name.clone(),
                            pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
                        ) else { continue };
                        if pod.metadata.deletion_timestamp.is_some() {
                            let mut seen = record.lock().unwrap_or_else(|e| e.into_inner());
                            let entry = seen.entry(name).or_default();
                            if entry.since.is_none() {
                                entry.ip = ip.clone();
                                entry.since = Some(Instant::now());
                                if !ready_ips.contains(&ip) {
                                    entry.unready_after = Some(Duration::ZERO);
                                }
                            }
                        }
                    }
                    Some(event) = slices.next() => {
                        let Ok(watcher::Event::Apply(slice) | watcher::Event::InitApply(slice)) = event else {
                            continue;
                        };
                        ready_ips = slice
                            .endpoints
                            .iter()
                            .flatten()
                            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                            .flat_map(|e| e.addresses.clone())
                            .collect();
                        let mut seen = record.lock().unwrap_or_else(|e| e.into_inner());
                        for entry in seen.values_mut() {
                            if let (Some(since), None) = (entry.since, entry.unready_after)
                                && !ready_ips.contains(&entry.ip)
                            {
                                entry.unready_after = Some(since.elapsed());
                            }
                        }
                    }
                    else => break,
                }
            }
        });
        Self { task, seen }
    }

    /// `<pod>: out of the endpoints <n> ms after it began terminating`, one per pod.
    fn report(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(pod, t)| match t.unready_after {
                Some(lag) => format!(
                    "{pod} ({}): out of the endpoints {} ms after it began terminating",
                    t.ip,
                    lag.as_millis()
                ),
                None => format!("{pod} ({}): still offered as ready", t.ip),
            })
            .collect()
    }
}

impl Drop for EndpointLag {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the release has `n` Ready pods and none terminating, and returns their names.
async fn wait_replicas_ready(client: &kube::Client, release: &Release, n: usize) -> Vec<String> {
    eventually(
        &format!("{n} Ready pods of release {}", release.name),
        RUNNING,
        || async {
            let pods = release.pods(client).await;
            let ready: Vec<String> = pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            if ready.len() == n && pods.len() == n {
                Ok(ready)
            } else {
                Err(format!("{} pods, Ready: {ready:?}", pods.len()))
            }
        },
    )
    .await
}

/// f. Faults, under failurePolicy Fail (a miss would be a refused pod): the leader's pod is
/// deleted while pods are being created, then `helm upgrade` changes a value and rolls both
/// replicas. No pod is refused or admitted without its secret, and the other replica takes
/// the Lease. A release of its own (its own opt-in label), so the other scenarios never meet
/// its failurePolicy.
#[tokio::test]
async fn the_leader_dies_and_an_upgrade_rolls_without_a_miss() {
    let _turn = HEAVY.write().await;
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let (release, _release_logs) = cluster
        .own_release("faults", &["--set=webhook.failurePolicy=Fail"])
        .await;
    let client = cluster.node.control_plane().client();
    let ns = release.opted_in_namespace(&client, "faults").await;
    let image = cluster.registries.a.image("anything", "v1");
    let lag = EndpointLag::watch(&client, &release);
    pods::wait_dry_run(
        &Api::<Pod>::namespaced(client.clone(), &ns),
        &image,
        &[SECRET_A],
        Duration::from_secs(60),
    )
    .await;

    // The leader goes, as pods go: deleted, with its grace period (the chart's preStop sleep
    // keeps it serving while the endpoints drop it).
    let stream = AdmissionStream::start(&client, &ns, &image, &[SECRET_A], 4);
    let leader = release.leader(&client).await.expect("a leader");
    tokio::time::sleep(Duration::from_secs(2)).await;
    Api::<Pod>::namespaced(client.clone(), &release.namespace)
        .delete(&leader, &Default::default())
        .await
        .expect("deleting the leader's pod");
    let successor = eventually("another pod to take the Lease", RUNNING, || async {
        match release.leader(&client).await {
            Some(holder) if holder != leader => Ok(holder),
            holder => Err(format!("held by {holder:?}")),
        }
    })
    .await;
    let replicas = wait_replicas_ready(&client, &release, 2).await;
    assert!(
        replicas.contains(&successor),
        "{successor} is one of {replicas:?}"
    );
    let after_kill = stream.stop().await;
    eprintln!(
        "faults: leader {leader} deleted, Lease taken by {successor}; {} admissions, {} refused, {} without their secret",
        after_kill.admitted,
        after_kill.refused.len(),
        after_kill.without_secret.len()
    );

    // An upgrade that changes the pod template rolls both replicas.
    let stream = AdmissionStream::start(&client, &ns, &image, &[SECRET_A], 4);
    release
        .helm(
            cluster.node,
            &[
                "upgrade".into(),
                release.name.clone(),
                CHART.into(),
                "--reuse-values".into(),
                "--set=logLevel=debug".into(),
                "--wait".into(),
                "--timeout=240s".into(),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let rolled = wait_replicas_ready(&client, &release, 2).await;
    let after_upgrade = stream.stop().await;
    eprintln!(
        "faults: upgrade rolled {replicas:?} to {rolled:?}; {} admissions, {} refused, {} without their secret",
        after_upgrade.admitted,
        after_upgrade.refused.len(),
        after_upgrade.without_secret.len()
    );
    assert!(
        rolled.iter().all(|pod| !replicas.contains(pod)),
        "both replicas were replaced: {replicas:?} -> {rolled:?}"
    );

    let lags = lag.report();
    eprintln!("faults: {lags:#?}");
    for (phase, counts) in [("leader deleted", &after_kill), ("upgrade", &after_upgrade)] {
        assert!(counts.admitted > 0, "{phase}: admissions were made");
        assert!(
            counts.refused.is_empty(),
            "{phase}: refused {:?}; the endpoints dropped the terminating pods: {lags:#?}",
            counts.refused
        );
        assert!(
            counts.without_secret.is_empty(),
            "{phase}: admitted without their secret {:?}",
            counts.without_secret
        );
    }
    release
        .helm(
            cluster.node,
            &["uninstall".into(), release.name.clone(), "--wait".into()],
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// g. `helm uninstall`: the webhook configuration is gone, pods that run keep running, and
/// what stays behind is what the chart's README says stays (the injector's certificate
/// Secret in `self` mode, and the copies in opted-in namespaces).
#[tokio::test]
async fn uninstall_leaves_what_the_chart_readme_says() {
    let _turn = HEAVY.read().await;
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let (release, _release_logs) = cluster.own_release("gone", &[]).await;
    let client = cluster.node.control_plane().client();
    let app = images::push_test_image(&cluster.registries.a, "private-g", "v1");
    let ns = release.opted_in_namespace(&client, "gone").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    create_injected(
        &pods,
        &always_pull(pods::pod("web", &[&app.reference])),
        &[SECRET_A],
    )
    .await;
    let before = wait_running(&client, &ns, "web").await;
    assert_eq!(pods::secret_names(&before), [SECRET_A]);

    release
        .helm(
            cluster.node,
            &["uninstall".into(), release.name.clone(), "--wait".into()],
        )
        .unwrap_or_else(|e| panic!("{e}"));

    let webhook = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(&release.fullname())
        .await
        .expect("reading webhook configurations");
    assert!(webhook.is_none(), "the webhook configuration is gone");
    let selector = format!("app.kubernetes.io/instance={}", release.name);
    let cluster_roles = Api::<ClusterRole>::all(client.clone())
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("listing ClusterRoles");
    assert!(
        cluster_roles.items.is_empty(),
        "no ClusterRole of the release is left"
    );
    pods::wait_dry_run(&pods, &app.reference, &[], Duration::from_secs(30)).await;

    // The pod keeps running, the same containers (a uninstall restarts nothing).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = pods.get("web").await.expect("the pod");
    running(&after).expect("still Running");
    let started = |pod: &Pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .map(|c| (c[0].container_id.clone(), c[0].restart_count))
    };
    assert_eq!(
        started(&after),
        started(&before),
        "the same container, never restarted"
    );

    // What is left in the release's namespace: the certificate Secret, as the README says,
    // beside what the test itself created there.
    let mut left: Vec<String> = Vec::new();
    let secrets = Api::<Secret>::namespaced(client.clone(), &release.namespace)
        .list(&ListParams::default())
        .await
        .expect("listing Secrets");
    left.extend(
        secrets
            .items
            .iter()
            .map(|s| format!("Secret/{}", s.metadata.name.clone().unwrap_or_default())),
    );
    let leases = Api::<Lease>::namespaced(client.clone(), &release.namespace)
        .list(&ListParams::default())
        .await
        .expect("listing Leases");
    left.extend(
        leases
            .items
            .iter()
            .map(|l| format!("Lease/{}", l.metadata.name.clone().unwrap_or_default())),
    );
    for kind in [
        "ConfigMap",
        "ServiceAccount",
        "Service",
        "Deployment",
        "Role",
        "RoleBinding",
    ] {
        left.extend(namespaced_names(&client, kind, &release.namespace).await);
    }
    left.sort();
    let mut expected = vec![
        format!("Lease/{}", release.fullname()),
        format!("Secret/{}-tls", release.fullname()),
        format!("Secret/{SECRET_A}"),
        format!("Secret/{SECRET_B}"),
        // Kubernetes' own in every namespace.
        "ConfigMap/kube-root-ca.crt".to_string(),
        "ServiceAccount/default".to_string(),
    ];
    expected.sort();
    assert_eq!(
        left, expected,
        "left in {} after uninstall",
        release.namespace
    );

    let readme = std::fs::read_to_string(format!("{CHART}/README.md")).expect("the chart's README");
    let uninstall = readme
        .split("## Uninstall")
        .nth(1)
        .and_then(|section| section.split("\n## ").next())
        .expect("the README's Uninstall section");
    for named in [
        "the Lease `pullsecret-injector`",
        "the Secret `pullsecret-injector-tls`",
        "`app.kubernetes.io/managed-by=pullsecret-injector`",
        "running pods keep running",
    ] {
        assert!(
            uninstall.contains(named),
            "the README's Uninstall section says {named:?}"
        );
    }
    let copy = Api::<Secret>::namespaced(client, &ns)
        .get(SECRET_A)
        .await
        .expect("the copy stays, as the README says");
    assert_eq!(
        copy.metadata
            .labels
            .unwrap_or_default()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("pullsecret-injector")
    );
}

/// `<Kind>/<name>` of the objects of a namespaced built-in kind.
async fn namespaced_names(client: &kube::Client, kind: &str, namespace: &str) -> Vec<String> {
    macro_rules! names {
        ($type:ty) => {
            Api::<$type>::namespaced(client.clone(), namespace)
                .list(&ListParams::default())
                .await
                .expect("listing")
                .items
                .into_iter()
                .map(|o| format!("{kind}/{}", o.metadata.name.unwrap_or_default()))
                .collect()
        };
    }
    match kind {
        "ConfigMap" => names!(k8s_openapi::api::core::v1::ConfigMap),
        "ServiceAccount" => names!(ServiceAccount),
        "Service" => names!(k8s_openapi::api::core::v1::Service),
        "Deployment" => names!(Deployment),
        "Role" => names!(k8s_openapi::api::rbac::v1::Role),
        "RoleBinding" => names!(k8s_openapi::api::rbac::v1::RoleBinding),
        other => panic!("no lister for {other}"),
    }
}

// ---------------------------------------------------------------------------
// Credentials from a kubelet credential provider plugin (issue 17)
// ---------------------------------------------------------------------------

/// The fake plugin (crates/fake-credential-provider) as the provider of the entry.
const PROVIDER: &str = "fake-registry-provider";
/// The user the plugin's credentials name, and the registry's only htpasswd user.
const PROVIDER_USER: &str = "fake";
/// The label that opts in to the injector of the provider test (not the chart's release).
const PROVIDER_OPT_IN: &str = "pullsecret-injector.io/e2e-node-provider";
/// The plugin's `cacheDuration`: the injector refreshes at two thirds of it, about every 4 s.
const PROVIDER_CACHE_DURATION: &str = "6s";
const PROVIDER_ROUNDS: u64 = 3;
/// Refreshes (tokens issued after the first) before each round of pods.
const REFRESHES_PER_ROUND: u64 = 3;
const PODS_PER_ROUND: usize = 2;

/// `crane manifest <reference>` logged in to `registry` as the plugin's user with `token`.
fn manifest_with_token(registry: &Registry, token: &str, reference: &str) -> std::process::Output {
    registry
        .crane(registry::Login::As(PROVIDER_USER, token))
        .args(["manifest", reference])
        .output()
        .expect("running crane manifest")
}

/// The tokens the plugin issued after its first: the injector's refreshes.
fn refreshes(provider: &FakeProvider) -> u64 {
    provider.issued().saturating_sub(1)
}

/// Issue 17 on the real node: a registry of its own (TLS, htpasswd) whose only login is the
/// plugin's newest token (the fake plugin rewrites the htpasswd file with the bcrypt of each
/// token it issues, so the token before it is refused at once, harsher than a cloud's tokens,
/// which stay valid until they expire). The injector runs on the host beside the node with its
/// own webhook configuration, as in e2e_providers: the plugin must write the registry's
/// htpasswd, a file of this machine. After every few refreshes, pods with `imagePullPolicy:
/// Always` from that registry run, the registry logged their pulls as the plugin's user with
/// status 200 (only the newest token logs in, so the kubelet pulled with the token current
/// then), and the tokens of the earlier rounds are refused. The negative control: the same
/// registry's image in a namespace that did not opt in is refused (401).
#[tokio::test]
async fn pods_pull_with_the_plugins_current_token_refresh_after_refresh() {
    let _turn = HEAVY.read().await;
    let node = node::shared();
    let _logs = node.logs_on_failure();
    let client = node.control_plane().client();
    let ca = TestCa::new("node-provider CA");
    let registry = Registry::start("node-provider", PROVIDER_USER, &ca).expect("the registry");
    let _registry_log = registry.logs_on_failure();
    registry::write_containerd_hosts(&node.registry_config_dir(), &[&registry])
        .expect("writing containerd's hosts for the registry");
    // Pushed with the registry's own password, which the plugin's first token replaces.
    let app = images::push_test_image(&registry, "team/app", "v1");
    let control = images::push_test_image(&registry, "team/control", "v1");

    let htpasswd = registry.htpasswd_path();
    let provider = FakeProvider::with_args(
        PROVIDER,
        &[registry.host()],
        Some(PROVIDER_CACHE_DURATION),
        "1h",
        &[
            "--username",
            PROVIDER_USER,
            "--htpasswd",
            &htpasswd.display().to_string(),
        ],
    );
    let home = controlplane::namespace(&client, "node-provider-home", &[]).await;
    let entry = format!(
        "  - name: regcred\n    provider: {{name: {PROVIDER}, images: [\"{}\"]}}\n",
        app.reference
    );
    let config = format!(
        "{}{}",
        provider.config_block(10),
        replication_config(&home, PROVIDER_OPT_IN, "e2e-node-provider", 4, &entry)
    );
    let replicator = access::replicator(&config, &[]).await;
    let _injector_logs = replicator.injector.logs_on_failure();
    replicator
        .injector
        .wait_leader(Duration::from_secs(20))
        .await;
    let registration = register(
        &client,
        &webhook::replicating(
            "pullsecret-injector-e2e-node-provider",
            PROVIDER_OPT_IN,
            &replicator.url(),
            &replicator.ca_pem,
            10,
        ),
    )
    .await;
    let ns =
        controlplane::namespace(&client, "node-provider", &[(PROVIDER_OPT_IN, "enabled")]).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    pods::wait_dry_run(&pods, &app.reference, &["regcred"], Duration::from_secs(60)).await;

    // The negative control, started now and checked at the end: no secret, no pull.
    let elsewhere = controlplane::namespace(&client, "node-provider-not-opted-in", &[]).await;
    let before_control = logged_before(&registry);
    Api::<Pod>::namespaced(client.clone(), &elsewhere)
        .create(
            &PostParams::default(),
            &always_pull(pods::pod("web", &[&control.reference])),
        )
        .await
        .expect("creating the pod that did not opt in");

    // The registry's password is gone once the plugin has issued a token.
    let own = registry
        .crane(registry::Login::Own)
        .args(["manifest", &app.reference])
        .output()
        .expect("running crane manifest");
    assert!(
        !own.status.success(),
        "the registry still takes its own password"
    );

    let refresh_series = format!(
        "pullsecret_injector_provider_refreshes_total{{secret=\"regcred\",provider=\"{PROVIDER}\",result=\"success\"}}"
    );
    let mut earlier: Vec<String> = Vec::new();
    let mut report = Vec::new();
    for round in 1..=PROVIDER_ROUNDS {
        let wanted = round * REFRESHES_PER_ROUND;
        // Counted twice: the plugin's own counter and the injector's metric.
        let (refreshed, successes) = eventually(
            &format!("{wanted} refreshes of the plugin's token"),
            Duration::from_secs(90),
            || async {
                let refreshed = refreshes(&provider);
                let metrics = replicator.injector.metrics().await;
                let successes = metric(&metrics, &refresh_series);
                if refreshed >= wanted && successes >= (wanted + 1) as f64 {
                    Ok((refreshed, successes))
                } else {
                    Err(format!(
                        "{refreshed} refreshes, {successes} successful plugin calls counted"
                    ))
                }
            },
        )
        .await;

        // The copy holds the newest token, the one login the registry has.
        let token = eventually(
            "the copy to hold the plugin's newest token",
            Duration::from_secs(20),
            || async {
                let copy = get_secret(&client, &ns, "regcred").await.ok_or("no copy")?;
                let held = password_of(&copy, registry.host()).ok_or("no credentials")?;
                match provider.token() {
                    Some(newest) if newest == held => Ok(held),
                    newest => Err(format!(
                        "the copy holds {held}, the plugin issued {newest:?}"
                    )),
                }
            },
        )
        .await;
        let logins = std::fs::read_to_string(&htpasswd).expect("reading the htpasswd file");
        assert_eq!(
            logins
                .lines()
                .map(|l| l.split_once(':').map_or(l, |(user, _)| user))
                .collect::<Vec<_>>(),
            [PROVIDER_USER],
            "one login, the plugin's user"
        );
        assert!(!earlier.contains(&token), "a new token in round {round}");

        let before = logged_before(&registry);
        let names: Vec<String> = (0..PODS_PER_ROUND)
            .map(|i| format!("round-{round}-{i}"))
            .collect();
        for name in &names {
            create_injected(
                &pods,
                &always_pull(pods::pod(name, &[&app.reference])),
                &["regcred"],
            )
            .await;
        }
        for name in &names {
            wait_running(&client, &ns, name).await;
            let events = events_of(&client, &ns, name).await;
            assert!(
                events
                    .iter()
                    .any(|e| e.starts_with("Pulled: Successfully pulled image")
                        && e.contains(&app.reference)),
                "pod {name}: no pull event in {events:?}"
            );
        }
        let pulls = pulls_since(&registry, "team/app", &before);
        let as_plugin = pulls
            .iter()
            .filter(|p| p.user.as_deref() == Some(PROVIDER_USER))
            .count();
        assert!(
            as_plugin >= PODS_PER_ROUND,
            "round {round}: the registry logged {as_plugin} pulls as {PROVIDER_USER}: {pulls:?}"
        );
        // Refused logins during the pulls: the kubelet reads a pod's pull secrets when it
        // starts syncing it, a second or more before the pull, and a refresh in between
        // revokes what it read; it retries with the new token (the pod ran).
        let refused_during: Vec<Request> = registry
            .unauthorized("team/app")
            .into_iter()
            .filter(|r| {
                !before.contains(&r.id) && r.auth_error.as_deref() == Some("authentication failure")
            })
            .collect();

        // The tokens of the earlier rounds (what the earlier pods' secret held) are refused,
        // and the registry logs why.
        let before_old = logged_before(&registry);
        for old in &earlier {
            let pulled = manifest_with_token(&registry, old, &app.reference);
            let stderr = String::from_utf8_lossy(&pulled.stderr);
            assert!(
                !pulled.status.success()
                    && (stderr.contains("401") || stderr.contains("UNAUTHORIZED")),
                "round {round}: an earlier token still pulls: {stderr}"
            );
        }
        let logged_refusals = registry
            .unauthorized("team/app")
            .into_iter()
            .filter(|r| {
                !before_old.contains(&r.id)
                    && r.auth_error.as_deref() == Some("authentication failure")
            })
            .count();
        assert!(
            logged_refusals >= earlier.len(),
            "round {round}: the registry logged {logged_refusals} refused logins for {} earlier tokens",
            earlier.len()
        );
        report.push(format!(
            "round {round}: after {refreshed} refreshes ({successes} successful plugin calls \
             counted by the injector), {PODS_PER_ROUND} pods Running, {as_plugin} pulls logged \
             as {PROVIDER_USER} with 200 ({}), {} refused logins during the pulls, {} earlier \
             tokens refused",
            pulls
                .iter()
                .map(|p| format!(
                    "{} {} user={} status={}",
                    p.method,
                    p.uri,
                    p.user.as_deref().unwrap_or("-"),
                    p.status.map_or("-".into(), |s| s.to_string())
                ))
                .collect::<Vec<_>>()
                .join("; "),
            refused_during.len(),
            earlier.len()
        ));
        earlier.push(token);
    }

    // The negative control: no secret, the kubelet reports the registry's refusal, the
    // registry answered 401 and served nothing.
    let why = wait_pull_refused(&client, &elsewhere, "web").await;
    let pod = Api::<Pod>::namespaced(client.clone(), &elsewhere)
        .get("web")
        .await
        .expect("the pod");
    assert!(pods::secret_names(&pod).is_empty());
    assert!(
        why.contains("authorization failed"),
        "the kubelet reports the registry's refusal: {why}"
    );
    let refused: Vec<Request> = registry
        .unauthorized("team/control")
        .into_iter()
        .filter(|r| !before_control.contains(&r.id))
        .collect();
    assert!(!refused.is_empty(), "the registry logged a 401");
    let pulled = pulls_since(&registry, "team/control", &before_control);
    assert!(pulled.is_empty(), "nothing pulled team/control: {pulled:?}");

    registration.delete().await;
    println!(
        "{} tokens issued; {}; not opted in: {why}",
        provider.issued(),
        report.join("; ")
    );
}

/// Pod start latency, create to Running as the test sees it, with and without the injector
/// in the admission path: POD_START_SAMPLES pods each, one at a time, alternating in chunks of
/// 10. Without: a namespace that did not opt in, the pods carrying the secret themselves; with:
/// an opted-in namespace, the secret injected. The image is on the node already
/// (`IfNotPresent`), so the figure is admission, scheduling, sandbox and container start.
#[tokio::test]
#[ignore = "a measurement for the notes: cargo test --test e2e_node pod_start_latency -- --ignored --nocapture"]
async fn pod_start_latency() {
    let _turn = HEAVY.write().await;
    let samples: usize = std::env::var("POD_START_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let client = cluster.node.control_plane().client();
    let a = &cluster.registries.a;
    let app = images::push_test_image(a, "latency", "v1");

    let with_ns = cluster
        .release
        .opted_in_namespace(&client, "latency-with")
        .await;
    let without_ns = controlplane::namespace(&client, "latency-without", &[]).await;
    Api::<Secret>::namespaced(client.clone(), &without_ns)
        .create(&PostParams::default(), &a.pull_secret(SECRET_A))
        .await
        .expect("the secret, by hand");
    let pod = |name: &str, secret: bool| {
        let mut pod = pods::pod(name, &[&app.reference]);
        let spec = pod.spec.as_mut().expect("spec");
        spec.termination_grace_period_seconds = Some(0);
        if secret {
            spec.image_pull_secrets = Some(vec![LocalObjectReference {
                name: SECRET_A.into(),
            }]);
        }
        pod
    };
    // Pull it once, so that no sample pulls.
    Api::<Pod>::namespaced(client.clone(), &without_ns)
        .create(&PostParams::default(), &always_pull(pod("warm", true)))
        .await
        .expect("creating the warm-up pod");
    wait_running(&client, &without_ns, "warm").await;

    let mut with = Vec::new();
    let mut without = Vec::new();
    for i in 0..samples {
        for (ns, secret, into) in [
            (&without_ns, true, &mut without),
            (&with_ns, false, &mut with),
        ] {
            let pods = Api::<Pod>::namespaced(client.clone(), ns);
            let name = format!("p{i}");
            let started = Instant::now();
            pods.create(&PostParams::default(), &pod(&name, secret))
                .await
                .expect("creating a sample pod");
            // Polled every 20 ms: the figure is a second or so, `eventually`'s 200 ms is coarse.
            loop {
                let pod = pods.get(&name).await.expect("reading a sample pod");
                if running(&pod).is_ok() {
                    break;
                }
                assert!(
                    started.elapsed() < RUNNING,
                    "{ns}/{name} not Running: {:?}",
                    pod.status
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            into.push(started.elapsed());
            let _ = pods.delete(&name, &Default::default()).await;
        }
    }
    let summary = |name: &str, samples: &mut Vec<Duration>| {
        samples.sort();
        let at = |q: f64| {
            samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        format!(
            "| {name} | {} | {:.0} ms | {:.0} ms | {:.0} ms |",
            samples.len(),
            at(0.5).as_secs_f64() * 1000.0,
            at(0.99).as_secs_f64() * 1000.0,
            samples.last().expect("samples").as_secs_f64() * 1000.0
        )
    };
    let table = format!(
        "| pods | n | p50 | p99 | max |\n|---|---|---|---|---|\n{}\n{}\n",
        summary("without the injector", &mut without),
        summary("with the injector", &mut with)
    );
    eprintln!("pod start latency (create to Running, polled every 20 ms):\n{table}");
    let out = test_support::repo_root().join("target/bench/node-pod-start.md");
    let _ = std::fs::create_dir_all(out.parent().expect("parent"));
    std::fs::write(&out, &table).expect("writing the table");
}

/// `make demo`: the whole story on one screen, then everything torn down.
#[tokio::test]
#[ignore = "make demo: cargo test --test e2e_node demo -- --ignored --nocapture"]
async fn demo() {
    let _turn = HEAVY.write().await;
    let say = |text: &str| println!("\n== {text}");
    say(
        "control plane, node, registries A and B, the injector's image, and helm install (about a minute)",
    );
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let client = cluster.node.control_plane().client();
    let network = cluster.node.network();
    println!(
        "kube-apiserver  https://{}:443 (the `kubernetes` Service's ClusterIP, on the node's bridge {})",
        network.cluster_ip, network.bridge
    );
    println!(
        "node            {} Ready, pods on {} (containerd 2.4.2, runc, kubelet v1.36.3)",
        node::NODE_NAME,
        network.pod_cidr
    );
    println!(
        "registry A      https://{} (TLS, htpasswd user {})",
        cluster.registries.a.host(),
        cluster.registries.a.user()
    );
    println!("injector image  {}", cluster.injector.pinned());
    for pod in cluster.release.pods(&client).await {
        println!(
            "injector pod    {}/{} Ready",
            cluster.release.namespace,
            pod.metadata.name.unwrap_or_default()
        );
    }

    let app = images::push_test_image(&cluster.registries.a, "demo-app", "v1");
    say(&format!(
        "the same Pod, image {}, in two namespaces",
        app.reference
    ));
    let with_ns = cluster
        .release
        .opted_in_namespace(&client, "demo-with")
        .await;
    let without_ns = controlplane::namespace(&client, "demo-without", &[]).await;
    println!("{with_ns:<24} labelled {OPT_IN}=enabled");
    println!("{without_ns:<24} not labelled");
    let pushed = logged_before(&cluster.registries.a);
    for ns in [&with_ns, &without_ns] {
        Api::<Pod>::namespaced(client.clone(), ns)
            .create(
                &PostParams::default(),
                &always_pull(pods::pod("app", &[&app.reference])),
            )
            .await
            .expect("creating the demo pod");
    }
    let running = wait_running(&client, &with_ns, "app").await;
    let refused = wait_pull_refused(&client, &without_ns, "app").await;
    let without = Api::<Pod>::namespaced(client.clone(), &without_ns)
        .get("app")
        .await
        .expect("the pod");

    say("kubectl get pods (what the kubelet did)");
    println!(
        "{:<24} {:<5} {:<18} STATUS",
        "NAMESPACE", "NAME", "IMAGEPULLSECRETS"
    );
    println!(
        "{with_ns:<24} {:<5} {:<18} Running",
        "app",
        pods::secret_names(&running).join(",")
    );
    println!(
        "{without_ns:<24} {:<5} {:<18} {}",
        "app",
        "<none>",
        refused.split(':').next().unwrap_or_default()
    );
    assert_eq!(pods::secret_names(&running), [SECRET_A]);
    assert!(pods::secret_names(&without).is_empty());
    say("registry A's log since the pods were created: the refused pull, then alice's");
    for request in cluster
        .registries
        .a
        .requests()
        .into_iter()
        .filter(|r| r.repository.as_deref() == Some("demo-app") && !pushed.contains(&r.id))
    {
        println!(
            "{:<5} {:<40} user={:<6} status={}",
            request.method,
            request.uri,
            request.user.unwrap_or_else(|| "-".into()),
            request.status.map_or("-".into(), |s| s.to_string())
        );
    }

    say("tearing down the node (the control plane and registries stop when this process exits)");
    let log = cluster.node.stop().expect("tearing the node down");
    print!("{log}");
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic while setting up".to_string())
}
