//! Smoke test of the shared test control plane (tests/support/controlplane.rs):
//! the apiserver serves requests and the controller-manager runs controllers.
//! Needs `make controlplane` once.

#[path = "support/controlplane.rs"]
mod controlplane;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

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

    let labels = BTreeMap::from([("app".to_string(), "smoke".to_string())]);
    let deployment = Deployment {
        metadata: ObjectMeta {
            name: Some("app".into()),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("registry.example.com/app:1".into()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("creating deployment");

    // No nodes: the pods stay Pending, but the Deployment and ReplicaSet
    // controllers must have created both of them.
    let pods = Api::<Pod>::namespaced(client, &ns);
    let created = controlplane::eventually(
        "2 pods of deployment app",
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=smoke"))
                .await
                .map_err(|e| e.to_string())?;
            match list.items.len() {
                2 => Ok(list.items),
                n => Err(format!("{n} pods")),
            }
        },
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
