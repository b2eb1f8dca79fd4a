//! Smoke test of the shared test control plane (crates/test-support, `controlplane`):
//! the apiserver serves requests and the controller-manager runs controllers.
//! Needs `make controlplane` once.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use test_support::{controlplane, pods};

#[tokio::test]
async fn lists_builtin_namespaces() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();

    let names: Vec<String> = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .expect("listing namespaces")
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect();
    for expected in ["default", "kube-system"] {
        assert!(
            names.iter().any(|n| n == expected),
            "namespace {expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn deployment_gets_its_pods() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let ns =
        controlplane::namespace(&client, "smoke", &[("test", "deployment-gets-its-pods")]).await;

    let deployment = pods::deployment("app", "smoke", 2, &["registry.example.com/app:1"]);
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("creating deployment");

    // No nodes: the pods stay Pending, but the Deployment and ReplicaSet
    // controllers must have created both of them.
    let created = pods::wait_app_pods(
        &Api::<Pod>::namespaced(client, &ns),
        "smoke",
        2,
        Duration::from_secs(60),
    )
    .await;
    for pod in created {
        let spec = pod.spec.expect("pod spec");
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some("registry.example.com/app:1")
        );
        assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    }
}
