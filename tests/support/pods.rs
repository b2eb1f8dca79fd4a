//! Pods for the end-to-end tests, and dry-run creates that show whether a webhook
//! configuration is in effect for a namespace.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::api::{Api, ObjectMeta, PostParams};

use super::controlplane::eventually;

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
