//! Replication as the suites see it: the config that asks for copies, and what a copy must
//! look like (managed by us, pointing at its source, the source's exact bytes).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams};

use crate::controlplane::eventually;
use crate::secrets::{data_of, get_secret, secret};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const SOURCE_ANNOTATION: &str = "pullsecret-injector.io/source";
pub const HASH_ANNOTATION: &str = "pullsecret-injector.io/source-hash";
/// Bound for convergence that has no latency target of its own.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// A replication config: sources and the Lease `lease` (held for `lease_seconds`) in
/// `namespace`, copies into namespaces labelled `label=enabled`, and `secrets` (a YAML list
/// indented by two spaces).
pub fn replication_config(
    namespace: &str,
    label: &str,
    lease: &str,
    lease_seconds: u64,
    secrets: &str,
) -> String {
    format!(
        "namespace: {namespace}\n\
         namespaceSelector:\n  matchLabels: {{\"{label}\": enabled}}\n\
         excludeNamespaces: []\n\
         leaderElection: {{leaseName: {lease}, leaseDurationSeconds: {lease_seconds}}}\n\
         secrets:\n{secrets}"
    )
}

pub fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    value(&secret.metadata.annotations, key)
}

pub fn label<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    value(&secret.metadata.labels, key)
}

fn value<'a>(map: &'a Option<BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    map.as_ref().and_then(|m| m.get(key)).map(String::as_str)
}

/// What must never change about a Secret the injector did not create.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    uid: Option<String>,
    resource_version: Option<String>,
    type_: Option<String>,
    data: BTreeMap<String, ByteString>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

impl Snapshot {
    pub fn of(secret: &Secret) -> Self {
        Self {
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
            type_: secret.type_.clone(),
            data: data_of(secret),
            labels: secret.metadata.labels.clone(),
            annotations: secret.metadata.annotations.clone(),
        }
    }
}

/// Asserts that Secret `namespace/name` is still there, exactly as `before`.
pub async fn assert_untouched(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    before: &Snapshot,
) {
    let now = get_secret(client, namespace, name)
        .await
        .unwrap_or_else(|| panic!("Secret {namespace}/{name} was deleted"));
    assert_eq!(
        &Snapshot::of(&now),
        before,
        "Secret {namespace}/{name} was modified"
    );
}

/// A user's own Secret: no managed-by label, labels and an annotation of its own.
pub fn user_secret(name: &str, type_: &str, data: &[(&str, &[u8])]) -> Secret {
    let mut s = secret(name, type_, data);
    s.metadata.labels = Some(BTreeMap::from([(
        "team".to_string(),
        "payments".to_string(),
    )]));
    s.metadata.annotations = Some(BTreeMap::from([(
        "team.example/note".to_string(),
        "hand made".to_string(),
    )]));
    s
}

/// `namespace/name` of a Secret read from the API.
fn reference(secret: &Secret) -> String {
    format!(
        "{}/{}",
        secret.metadata.namespace.as_deref().unwrap_or_default(),
        secret.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Checks that `copy` is a managed copy of `source` (as read from the API, so that its
/// namespace and name say what the copy's source annotation must say), with the source's
/// type and exactly its data bytes.
pub fn check_copy(copy: &Secret, source: &Secret) -> Result<(), String> {
    let name = reference(copy);
    let source_ref = reference(source);
    assert!(
        source.metadata.namespace.is_some() && source.metadata.name.is_some(),
        "check_copy needs the source as stored (namespace and name), got {source_ref:?}"
    );
    if label(copy, MANAGED_BY) != Some("pullsecret-injector") {
        return Err(format!(
            "{name} lacks the managed-by label: {:?}",
            copy.metadata.labels
        ));
    }
    if annotation(copy, SOURCE_ANNOTATION) != Some(source_ref.as_str()) {
        return Err(format!(
            "{name} has source annotation {:?}, expected {source_ref}",
            annotation(copy, SOURCE_ANNOTATION)
        ));
    }
    if annotation(copy, HASH_ANNOTATION).is_none_or(str::is_empty) {
        return Err(format!("{name} lacks the source-hash annotation"));
    }
    if copy.type_ != source.type_ {
        return Err(format!(
            "{name} has type {:?}, the source {:?}",
            copy.type_, source.type_
        ));
    }
    if data_of(copy) != data_of(source) {
        return Err(format!("{name}'s data differ from the source's"));
    }
    Ok(())
}

/// Waits until `namespace` holds an up-to-date copy `name` of `source` (see
/// [`check_copy`]); returns it.
pub async fn wait_copy(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    source: &Secret,
    timeout: Duration,
) -> Secret {
    eventually(
        &format!(
            "an up-to-date copy {namespace}/{name} of {}",
            reference(source)
        ),
        timeout,
        || async {
            let copy = get_secret(client, namespace, name)
                .await
                .ok_or_else(|| "no such Secret".to_string())?;
            check_copy(&copy, source)?;
            Ok::<_, String>(copy)
        },
    )
    .await
}

pub async fn wait_absent(client: &kube::Client, namespace: &str, name: &str, timeout: Duration) {
    eventually(
        &format!("Secret {namespace}/{name} to be deleted"),
        timeout,
        || async {
            match get_secret(client, namespace, name).await {
                None => Ok(()),
                Some(s) => Err(format!(
                    "still there (resourceVersion {:?})",
                    s.metadata.resource_version
                )),
            }
        },
    )
    .await
}

/// The PullSecretConflict Events in namespace `ns`: about the Secret in the way, where its
/// owner looks.
pub async fn conflict_events(client: &kube::Client, ns: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Secret,involvedObject.namespace={ns},reason=PullSecretConflict"
        )))
        .await
        .expect("list events")
        .items
}
