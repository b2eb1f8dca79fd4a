//! A real node beside the test control plane (tests/support/node.rs): containerd, runc, the
//! CNI bridge, the kubelet and kube-scheduler from `make node`. Pods run here.
//!
//! Needs `make controlplane` and `make node` once, and root (containers, mounts, a bridge).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Event, Node as NodeObject, Pod, PodSpec};
use kube::api::{Api, ListParams, LogParams, ObjectMeta, PostParams};
use test_support::controlplane::{self, eventually};
use test_support::node::{self, NODE_NAME, PAUSE_IMAGE};

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

    let containers: Vec<String> = std::fs::read_dir(format!("{dir}/runc/k8s.io"))
        .expect("runc's state directory of the child's node")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
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
        if name.starts_with(&format!("{network}-")) {
            found.push(format!("CNI cache entry {name}"));
        }
    }
    found
}
