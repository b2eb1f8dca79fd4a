//! A real node beside the test control plane (tests/support/node.rs): containerd, runc, the
//! CNI bridge, the kubelet and kube-scheduler from `make node`. Pods run here.
//!
//! Needs `make controlplane` and `make node` once, and root (containers, mounts, a bridge).

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Event, Node as NodeObject, Pod, PodSpec};
use kube::api::{Api, ListParams, LogParams, ObjectMeta, PostParams};
use support::controlplane::{self, eventually};
use support::node::{self, NODE_NAME, PAUSE_IMAGE};

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
