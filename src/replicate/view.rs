//! What the caches keep of the objects they watch: only what replication reads. A namespace
//! is watched as metadata (the metadata API) and kept without its annotations; a copy is kept
//! as its metadata and a hash of its content, never its data. Neither keeps managedFields,
//! the largest part of most objects. At 10,000 namespaces and 15,000 copies this is the
//! difference between tens and hundreds of MiB (BENCHMARKS.md, "At scale").

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{NamespaceResourceScope, PartialObjectMeta, Resource};
use serde::{Deserialize, Deserializer};

use super::dockerconfig;

/// A namespace as the caches keep it: its metadata (name, labels, deletion).
pub type NamespaceMeta = PartialObjectMeta<Namespace>;

/// Drops what replication never reads of a namespace, before it is cached.
pub fn slim_namespace(namespace: &mut NamespaceMeta) {
    namespace.metadata.managed_fields = None;
    namespace.metadata.annotations = None;
}

/// A copy (a Secret under one of our names with our label) as the caches keep it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "CopyWire")]
pub struct CopyView {
    pub metadata: ObjectMeta,
    pub type_: Option<String>,
    /// [`dockerconfig::data_hash`] of its type and data, as they are now.
    pub content_hash: String,
}

impl CopyView {
    pub fn of(secret: &Secret) -> Self {
        let mut metadata = secret.metadata.clone();
        metadata.managed_fields = None;
        Self {
            metadata,
            type_: secret.type_.clone(),
            content_hash: dockerconfig::data_hash(secret.type_.as_deref(), secret.data.as_ref()),
        }
    }
}

/// A Secret as the apiserver sends it; its data lives only until it is hashed.
#[derive(Deserialize)]
struct CopyWire {
    #[serde(default, deserialize_with = "metadata_without_managed_fields")]
    metadata: ObjectMeta,
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    data: Option<BTreeMap<String, ByteString>>,
}

impl From<CopyWire> for CopyView {
    fn from(wire: CopyWire) -> Self {
        Self {
            content_hash: dockerconfig::data_hash(wire.type_.as_deref(), wire.data.as_ref()),
            metadata: wire.metadata,
            type_: wire.type_,
        }
    }
}

impl Resource for CopyView {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Secret::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Secret::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Secret::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Secret::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The metadata replication reads; `managedFields` and the rest are skipped unread.
fn metadata_without_managed_fields<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Fields {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        uid: Option<String>,
        #[serde(default)]
        resource_version: Option<String>,
        #[serde(default)]
        labels: Option<BTreeMap<String, String>>,
        #[serde(default)]
        annotations: Option<BTreeMap<String, String>>,
    }
    let fields = Option::<Fields>::deserialize(deserializer)?;
    Ok(fields.map_or_else(ObjectMeta::default, |f| ObjectMeta {
        name: f.name,
        namespace: f.namespace,
        uid: f.uid,
        resource_version: f.resource_version,
        labels: f.labels,
        annotations: f.annotations,
        ..ObjectMeta::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_kept_as_its_metadata_and_the_hash_of_its_content() {
        let json = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "regcred",
                "namespace": "team-a",
                "uid": "u-1",
                "resourceVersion": "42",
                "labels": {"app.kubernetes.io/managed-by": "pullsecret-injector"},
                "annotations": {"pullsecret-injector.io/source-hash": "sha256:x"},
                "managedFields": [{"manager": "pullsecret-injector", "fieldsV1": {"f:data": {}}}]
            },
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": "eyJhdXRocyI6e319"}
        });
        let view: CopyView = serde_json::from_value(json.clone()).unwrap();
        let secret: Secret = serde_json::from_value(json).unwrap();
        assert_eq!(view.metadata.name.as_deref(), Some("regcred"));
        assert_eq!(view.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(view.metadata.managed_fields, None);
        assert_eq!(
            view.content_hash,
            dockerconfig::data_hash(secret.type_.as_deref(), secret.data.as_ref())
        );
        assert_eq!(view.content_hash, CopyView::of(&secret).content_hash);
        assert_eq!(view.metadata, CopyView::of(&secret).metadata);
    }

    #[test]
    fn a_changed_byte_or_type_changes_the_hash() {
        let secret = |type_: &str, data: &str| -> CopyView {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "regcred"},
                "type": type_,
                "data": {".dockerconfigjson": data}
            }))
            .unwrap()
        };
        let original = secret("kubernetes.io/dockerconfigjson", "eyJhdXRocyI6e319");
        assert_ne!(
            original.content_hash,
            secret("kubernetes.io/dockerconfigjson", "eyJhdXRocyI6e30=").content_hash
        );
        assert_ne!(
            original.content_hash,
            secret("Opaque", "eyJhdXRocyI6e319").content_hash
        );
    }
}
