//! Pods for the end-to-end tests, dry-run creates that show whether a webhook
//! configuration is in effect for a namespace, and AdmissionReviews as the apiserver sends
//! them.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use serde_json::{Value, json};

use crate::controlplane::eventually;
use crate::replication::CONVERGE;

/// Container `c<i>` running `image`.
pub fn container(i: usize, image: &str) -> Container {
    Container {
        name: format!("c{i}"),
        image: Some(image.into()),
        ..Container::default()
    }
}

/// Pod `name` with one container per image (`c0`, `c1`, …).
pub fn pod(name: &str, images: &[&str]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: images
                .iter()
                .enumerate()
                .map(|(i, image)| container(i, image))
                .collect(),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// Deployment `name` of `replicas` pods labelled `app=<app>`, with one container per image.
pub fn deployment(name: &str, app: &str, replicas: i32, images: &[&str]) -> Deployment {
    let labels = BTreeMap::from([("app".to_string(), app.to_string())]);
    let template = pod("", images);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: template.spec,
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// Waits until exactly `n` pods labelled `app=<app>` exist (made by the controllers; with no
/// node they stay Pending) and returns them.
pub async fn wait_app_pods(pods: &Api<Pod>, app: &str, n: usize, timeout: Duration) -> Vec<Pod> {
    eventually(&format!("{n} pods of app {app}"), timeout, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .map_err(|e| e.to_string())?;
        match list.items.len() {
            found if found == n => Ok(list.items),
            found => Err(format!("{found} pods")),
        }
    })
    .await
}

/// The names in the pod's `spec.imagePullSecrets`, in order.
pub fn secret_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

pub fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// The apiserver's message for a refused request (the Status message), else the error.
pub fn message(error: kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message,
        other => other.to_string(),
    }
}

/// The imagePullSecrets a dry-run create of a pod with `image` comes back with.
pub async fn dry_run_secrets(pods: &Api<Pod>, image: &str) -> Result<Vec<String>, String> {
    pods.create(&dry_run(), &pod("probe", &[image]))
        .await
        .map(|p| secret_names(&p))
        .map_err(|e| e.to_string())
}

/// Polls with dry-run creates until a pod with `image` comes back with exactly `expected`.
pub async fn wait_dry_run(pods: &Api<Pod>, image: &str, expected: &[&str], timeout: Duration) {
    eventually(
        &format!("a dry-run pod with image {image} to get imagePullSecrets {expected:?}"),
        timeout,
        || async {
            let names = dry_run_secrets(pods, image).await?;
            if names == expected {
                Ok(())
            } else {
                Err(format!("got {names:?}"))
            }
        },
    )
    .await;
}

/// Polls with dry-run creates of a pod with `image` until the apiserver refuses it, and
/// returns the apiserver's error message.
pub async fn wait_dry_run_refused(pods: &Api<Pod>, image: &str, timeout: Duration) -> String {
    let probe = pod("probe", &[image]);
    eventually(
        "the apiserver to refuse pods (failurePolicy Fail in effect)",
        timeout,
        || async {
            match pods.create(&dry_run(), &probe).await {
                Ok(created) => Err(format!(
                    "probe still admitted, imagePullSecrets {:?}",
                    secret_names(&created)
                )),
                Err(e) => Ok(message(e)),
            }
        },
    )
    .await
}

/// Creates pods named `name` with `image` until the webhook (newly registered, so it may
/// take the apiserver a moment) has added `expected`; returns the pod.
pub async fn admitted_pod(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    image: &str,
    expected: &[&str],
) -> Pod {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    eventually(
        &format!("pod {namespace}/{name} admitted with {expected:?}"),
        CONVERGE,
        || async {
            let created = pods
                .create(&PostParams::default(), &pod(name, &[image]))
                .await
                .map_err(|e| e.to_string())?;
            let names = secret_names(&created);
            if names == expected {
                return Ok(created);
            }
            let _ = pods
                .delete(name, &DeleteParams::default().grace_period(0))
                .await;
            eventually("the probe pod to go", CONVERGE, || async {
                match pods.get_opt(name).await {
                    Ok(None) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            Err(format!("got {names:?}"))
        },
    )
    .await
}

/// An AdmissionReview for a Pod CREATE of `image` in `namespace`, as the apiserver sends it.
pub fn admission_review(uid: &str, namespace: &str, image: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "e2e"},
            "object": serde_json::to_value(pod("direct", &[image])).expect("pod JSON"),
            "dryRun": false
        }
    })
}
