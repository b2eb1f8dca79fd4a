//! The decision per AdmissionReview: bytes in, response review out. No I/O.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{LocalObjectReference, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, NamespaceResourceScope, Resource, TypeMeta};
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

use crate::config::{SecretSpec, Settings};
use crate::image::ImageName;
use crate::matching::Keyring;
use crate::patch::{PullSecretPatch, append_pull_secrets};

/// The kubelet's static-pod mirror annotation: NodeRestriction refuses such pods if they
/// reference any secret, so they are never patched.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
pub const AUDIT_ANNOTATION_INJECTED: &str = "injected-secrets";
const SUPPORTED_API_VERSIONS: [&str; 2] = ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"];

#[derive(Debug, Error)]
pub enum ReviewError {
    #[error("body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("body is not an AdmissionReview: {0}")]
    NotAdmissionReview(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("request.object is not a valid Pod: {0}")]
    InvalidPod(serde_json::Error),
    #[error("cannot encode the patch: {0}")]
    EncodePatch(String),
}

impl ReviewError {
    /// The label of this refusal in the bad-requests metric and the answer's `reason`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "invalid_json",
            Self::NotAdmissionReview(_) => "not_admission_review",
            Self::NoRequest => "no_request",
            Self::InvalidPod(_) => "invalid_pod",
            Self::EncodePatch(_) => "encode_patch",
        }
    }
}

/// Why a request passed through untouched: what an operator reads in the log line and in
/// `skipped_admissions_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Another operation, kind or subresource, or a request without an object.
    NotPodCreate,
    /// The pod's opt-out annotation is "false".
    OptedOut,
    /// A static pod's mirror: the NodeRestriction plugin refuses it with any secret.
    MirrorPod,
    /// No image matches a secret that applies in the namespace.
    NoMatch,
}

impl SkipReason {
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::NotPodCreate => "not_pod_create",
            Self::OptedOut => "opted_out",
            Self::MirrorPod => "mirror_pod",
            Self::NoMatch => "no_match",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Patched(PullSecretPatch),
    Unchanged,
    Skipped(SkipReason),
}

impl Outcome {
    /// The `result` label of the admissions metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Patched(_) => "patched",
            Self::Unchanged => "unchanged",
            Self::Skipped(_) => "skipped",
        }
    }

    pub fn injected(&self) -> &[String] {
        match self {
            Self::Patched(p) => &p.added,
            _ => &[],
        }
    }

    pub fn skip_reason(&self) -> Option<SkipReason> {
        match self {
            Self::Skipped(reason) => Some(*reason),
            _ => None,
        }
    }
}

/// The answer as it goes on the wire: kube's `AdmissionReview` and `AdmissionResponse`,
/// except that `response.patch`, a Go `[]byte`, is the base64 string the API documents.
/// kube-core writes it as an array of numbers (kube-rs#1781), which only Go's lenient decoder
/// accepts and which is three times the bytes.
#[derive(Debug, Serialize)]
pub struct Answer {
    #[serde(flatten)]
    pub types: TypeMeta,
    pub response: AnswerResponse,
}

/// kube's response with its patch moved out, so that kube serializes every other field
/// (including `patchType`) and the patch goes out as base64 beside them.
#[derive(Debug, Serialize)]
pub struct AnswerResponse {
    #[serde(flatten)]
    pub admission: AdmissionResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<ByteString>,
}

impl From<AdmissionResponse> for Answer {
    fn from(mut admission: AdmissionResponse) -> Self {
        let patch = admission.patch.take().map(ByteString);
        Self {
            types: admission.types.clone(),
            response: AnswerResponse { admission, patch },
        }
    }
}

impl Answer {
    /// The JSON patch this answer carries, if any.
    pub fn patch(&self) -> Option<&[u8]> {
        self.response.patch.as_ref().map(|p| p.0.as_slice())
    }
}

/// What the server needs to answer and to log one review.
#[derive(Debug)]
pub struct Reviewed {
    pub response: Answer,
    pub outcome: Outcome,
    pub uid: String,
    pub namespace: String,
    /// The pod's name, or its generateName when controllers have not named it yet.
    pub name: String,
    pub operation: &'static str,
    pub dry_run: bool,
}

/// A decoded review: a Pod request (the fields the decision reads), or a request for another
/// kind.
#[derive(Debug)]
pub enum Decoded {
    Pod(Box<AdmissionRequest<PodView>>),
    Other(Box<AdmissionRequest<DynamicObject>>),
}

/// A Pod as the decision reads it: names, annotations, images and pull secrets. Serde skips
/// the rest of the object unread (managedFields, volumes, env, probes …): most of a review's
/// bytes, and, decoded into k8s-openapi's `Pod`, most of the CPU a review cost (BENCHMARKS.md).
/// The apiserver validates the whole Pod after the webhooks; we only need these fields sound.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodView {
    #[serde(default, deserialize_with = "object_meta_view")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PodSpecView>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView {
    #[serde(default)]
    pub containers: Option<Vec<ContainerView>>,
    #[serde(default)]
    pub init_containers: Option<Vec<ContainerView>>,
    #[serde(default)]
    pub ephemeral_containers: Option<Vec<ContainerView>>,
    #[serde(default)]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerView {
    #[serde(default)]
    pub image: Option<String>,
}

impl PodSpecView {
    /// Images of containers, init containers and ephemeral containers.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        [
            &self.containers,
            &self.init_containers,
            &self.ephemeral_containers,
        ]
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|c| c.image.as_deref())
    }
}

/// The metadata fields the decision and the log read; `managedFields` above all is skipped.
fn object_meta_view<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Fields {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        generate_name: Option<String>,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        annotations: Option<BTreeMap<String, String>>,
    }
    let fields = Option::<Fields>::deserialize(deserializer)?;
    Ok(fields.map_or_else(ObjectMeta::default, |f| ObjectMeta {
        name: f.name,
        generate_name: f.generate_name,
        namespace: f.namespace,
        annotations: f.annotations,
        ..ObjectMeta::default()
    }))
}

/// kube's admission types are generic over a `Resource`; the view is a Pod's.
impl Resource for PodView {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Pod::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Pod::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Pod::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Pod::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// kube's `AdmissionReview` reads its `apiVersion`/`kind` through `#[serde(flatten)]`, which
/// makes serde buffer the whole body as an untyped tree before decoding it; this envelope
/// reads the same three fields in one pass, into kube's `AdmissionRequest`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<T: Resource> {
    api_version: String,
    kind: String,
    #[serde(default = "Option::default")]
    request: Option<AdmissionRequest<T>>,
}

impl Decoded {
    /// The namespace of a Pod CREATE: the requests whose decision needs cluster state.
    pub fn pod_create_namespace(&self) -> Option<&str> {
        match self {
            Self::Pod(r) if r.operation == Operation::Create => r.namespace.as_deref(),
            _ => None,
        }
    }
}

/// What the decision sees of the cluster: the patterns in force (the config's, plus the
/// sources' `auths` keys when they are watched) and, where namespaces are watched, the labels
/// of the pod's namespace, which entries narrowed by a namespace selector need.
pub struct ClusterView<'a> {
    pub keyring: &'a Keyring,
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
}

impl<'a> ClusterView<'a> {
    /// No cluster (standalone `serve`, `mutate`, `match`, the fuzz targets): the configured
    /// patterns, and no namespace labels, so selector-narrowed entries apply nowhere.
    pub fn offline(settings: &'a Settings) -> Self {
        Self {
            keyring: &settings.keyring,
            namespace_labels: None,
        }
    }

    /// Whether `secret` is for pods in `namespace`, as far as this view can tell.
    fn applies(&self, secret: &SecretSpec, namespace: &str) -> bool {
        match self.namespace_labels {
            Some(labels) => secret.applies_to(namespace, labels),
            None => {
                secret.namespace_selector.is_none()
                    && !secret.exclude_namespaces.iter().any(|n| n == namespace)
            }
        }
    }
}

/// Decodes a body: the Pod's fields the decision reads; other kinds are recognised so they
/// can pass untouched.
pub fn decode(body: &[u8]) -> Result<Decoded, ReviewError> {
    match serde_json::from_slice::<Envelope<PodView>>(body) {
        Ok(envelope) => {
            check_envelope(&envelope.api_version, &envelope.kind)?;
            let mut request = envelope.request.ok_or(ReviewError::NoRequest)?;
            request.types = kube::core::TypeMeta {
                api_version: envelope.api_version,
                kind: envelope.kind,
            };
            Ok(Decoded::Pod(Box::new(request)))
        }
        Err(typed_error) => decode_untyped(body, typed_error),
    }
}

/// The decision for a decoded review, and the answer that carries it: the one entry point
/// of the server, `mutate` and the fuzz targets. Never denies: this webhook only adds.
pub fn review(
    settings: &Settings,
    view: &ClusterView<'_>,
    decoded: Decoded,
) -> Result<Reviewed, ReviewError> {
    match decoded {
        Decoded::Pod(request) => respond(settings, view, &request),
        Decoded::Other(request) => Ok(Reviewed {
            response: AdmissionResponse::from(&*request).into(),
            outcome: Outcome::Skipped(SkipReason::NotPodCreate),
            uid: request.uid,
            namespace: request.namespace.unwrap_or_default(),
            name: request.name,
            operation: operation_label(&request.operation),
            dry_run: request.dry_run,
        }),
    }
}

/// The typed decode failed: find out whether the body is a review of another kind (allowed
/// untouched), or say precisely what is wrong with it.
fn decode_untyped(body: &[u8], typed_error: serde_json::Error) -> Result<Decoded, ReviewError> {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        return Err(ReviewError::NotJson(e));
    }
    let types = serde_json::from_slice::<kube::core::TypeMeta>(body)
        .map_err(|e| ReviewError::NotAdmissionReview(e.to_string()))?;
    check_envelope(&types.api_version, &types.kind)?;
    #[derive(Deserialize)]
    struct Only<T> {
        request: Option<T>,
    }
    #[derive(Deserialize)]
    struct RequestKind {
        kind: kube::core::GroupVersionKind,
    }
    #[derive(Deserialize)]
    struct RequestObject {
        #[serde(default)]
        #[allow(dead_code)] // decoded to find out whether it is the part that is wrong
        object: Option<PodView>,
    }
    if let Ok(Only {
        request: Some(RequestKind { kind }),
    }) = serde_json::from_slice(body)
        && is_pod(&kind.group, &kind.kind)
    {
        // Name the object when it is what is wrong, else the request around it.
        return Err(match serde_json::from_slice::<Only<RequestObject>>(body) {
            Err(object_error) => ReviewError::InvalidPod(object_error),
            Ok(_) => ReviewError::NotAdmissionReview(typed_error.to_string()),
        });
    }
    let review = serde_json::from_slice::<AdmissionReview<DynamicObject>>(body)
        .map_err(|e| ReviewError::NotAdmissionReview(e.to_string()))?;
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| ReviewError::NoRequest)?;
    Ok(Decoded::Other(Box::new(request)))
}

fn check_envelope(api_version: &str, kind: &str) -> Result<(), ReviewError> {
    if kind != "AdmissionReview" {
        return Err(ReviewError::NotAdmissionReview(format!(
            "kind is {kind:?}, expected \"AdmissionReview\""
        )));
    }
    if !SUPPORTED_API_VERSIONS.contains(&api_version) {
        return Err(ReviewError::NotAdmissionReview(format!(
            "apiVersion {api_version:?} is not one of {SUPPORTED_API_VERSIONS:?}"
        )));
    }
    Ok(())
}

fn is_pod(group: &str, kind: &str) -> bool {
    group.is_empty() && kind == "Pod"
}

fn operation_label(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// The decision for a decoded request, and the response that carries it.
fn respond(
    settings: &Settings,
    view: &ClusterView<'_>,
    request: &AdmissionRequest<PodView>,
) -> Result<Reviewed, ReviewError> {
    let outcome = decide(settings, view, request);
    let mut response = AdmissionResponse::from(request);
    if let Outcome::Patched(patch) = &outcome {
        response = response
            .with_patch(patch.patch.clone())
            .map_err(|e| ReviewError::EncodePatch(e.to_string()))?;
        response.audit_annotations =
            HashMap::from([(AUDIT_ANNOTATION_INJECTED.to_string(), patch.added.join(","))]);
    }
    let metadata = request.object.as_ref().map(|pod| &pod.metadata);
    let name = match metadata {
        Some(m) => m
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| m.generate_name.clone())
            .unwrap_or_default(),
        None => request.name.clone(),
    };
    Ok(Reviewed {
        response: response.into(),
        outcome,
        uid: request.uid.clone(),
        namespace: request.namespace.clone().unwrap_or_default(),
        name,
        operation: operation_label(&request.operation),
        dry_run: request.dry_run,
    })
}

/// Pod CREATE only; everything else passes untouched.
fn decide(
    settings: &Settings,
    view: &ClusterView<'_>,
    request: &AdmissionRequest<PodView>,
) -> Outcome {
    if request.operation != Operation::Create
        || !is_pod(&request.kind.group, &request.kind.kind)
        || request.sub_resource.is_some()
    {
        return Outcome::Skipped(SkipReason::NotPodCreate);
    }
    let Some(pod) = &request.object else {
        return Outcome::Skipped(SkipReason::NotPodCreate);
    };
    let Some(spec) = &pod.spec else {
        return Outcome::Skipped(
            skip_reason(settings, pod.metadata.annotations.as_ref()).unwrap_or(SkipReason::NoMatch),
        );
    };
    decide_pod(
        settings,
        view,
        &PodToDecide {
            namespace: request.namespace.as_deref().unwrap_or_default(),
            annotations: pod.metadata.annotations.as_ref(),
            existing: spec.image_pull_secrets.as_deref(),
            pointer: &["spec"],
        },
        spec.images(),
    )
}

/// One pod, or a workload's pod template, as the decision reads it.
pub struct PodToDecide<'a> {
    pub namespace: &'a str,
    pub annotations: Option<&'a BTreeMap<String, String>>,
    pub existing: Option<&'a [LocalObjectReference]>,
    /// Where its pod spec is in the object (`["spec"]` for a Pod), for the patch's paths.
    pub pointer: &'a [&'a str],
}

/// The decision for one pod with `images`: left alone when opted out or mirrored, else the
/// configured secrets the kubelet would use for its images, applicable in its namespace,
/// that it does not reference yet, appended in config order.
pub fn decide_pod<'a>(
    settings: &Settings,
    view: &ClusterView<'_>,
    pod: &PodToDecide<'_>,
    images: impl IntoIterator<Item = &'a str>,
) -> Outcome {
    if let Some(reason) = skip_reason(settings, pod.annotations) {
        return Outcome::Skipped(reason);
    }
    let matched = wanted_secrets(settings, view.keyring, images);
    let mut wanted = matched
        .iter()
        .map(|&i| &settings.secrets[i])
        .filter(|secret| view.applies(secret, pod.namespace))
        .map(|secret| secret.name.as_str())
        .peekable();
    if wanted.peek().is_none() {
        return Outcome::Skipped(SkipReason::NoMatch);
    }
    // Every wanted secret already referenced: unchanged, not skipped.
    match append_pull_secrets(pod.pointer, pod.existing, wanted) {
        Some(patch) => Outcome::Patched(patch),
        None => Outcome::Unchanged,
    }
}

/// Opt-out annotation `"false"` and mirror pods are left alone.
fn skip_reason(
    settings: &Settings,
    annotations: Option<&BTreeMap<String, String>>,
) -> Option<SkipReason> {
    let annotations = annotations?;
    if annotations.contains_key(MIRROR_POD_ANNOTATION) {
        return Some(SkipReason::MirrorPod);
    }
    match annotations.get(&settings.opt_out_annotation) {
        Some(value) if value.eq_ignore_ascii_case("false") => Some(SkipReason::OptedOut),
        _ => None,
    }
}

/// Indices of the configured secrets the kubelet would use for any of the images, in config
/// order. Images that do not parse match nothing, as in the kubelet.
pub fn wanted_secrets<'a>(
    settings: &Settings,
    keyring: &Keyring,
    images: impl IntoIterator<Item = &'a str>,
) -> Vec<usize> {
    let mut wanted = vec![false; settings.secrets.len()];
    for image in images {
        if let Ok(name) = ImageName::parse(image) {
            keyring.for_each_match(&name, |secret, _, _| wanted[secret] = true);
        }
    }
    wanted
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.then_some(i))
        .collect()
}

/// Images of containers, init containers and ephemeral containers.
pub fn pod_images(spec: &PodSpec) -> impl Iterator<Item = &str> {
    let containers = spec.containers.iter().map(|c| c.image.as_deref());
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.image.as_deref());
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| c.image.as_deref());
    containers.chain(init).chain(ephemeral).flatten()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::config::Config;

    fn settings() -> Settings {
        Config::from_yaml("secrets:\n  - name: acme\n    registries: [ghcr.io/acme/]\n")
            .expect("test config parses")
            .validate()
            .expect("test config is valid")
    }

    fn pod_review(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team",
                "operation": "CREATE",
                "userInfo": {"username": "someone"},
                "object": object,
                "oldObject": null,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            }
        }))
        .expect("encodes")
    }

    /// A body reviewed as the standalone server reviews it.
    fn review_offline(settings: &Settings, body: &[u8]) -> Result<Reviewed, ReviewError> {
        review(settings, &ClusterView::offline(settings), decode(body)?)
    }

    fn injected(body: &[u8]) -> Vec<String> {
        review_offline(&settings(), body)
            .expect("answered")
            .outcome
            .injected()
            .to_vec()
    }

    #[test]
    fn reads_names_annotations_images_and_pull_secrets_from_a_pod() {
        let body = pod_review(json!({
            "metadata": {
                "generateName": "web-",
                "annotations": {"team": "a"},
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {
                "containers": [{"name": "app", "image": "busybox", "env": [{"name": "A"}]}],
                "initContainers": [{"name": "init", "image": "ghcr.io/acme/init:1"}],
                "imagePullSecrets": [{"name": "other"}],
                "volumes": [{"name": "v", "projected": {"sources": []}}]
            }
        }));
        let Decoded::Pod(request) = decode(&body).expect("decodes") else {
            panic!("a Pod review decodes as a Pod");
        };
        let pod = request.object.as_ref().expect("object");
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(
            pod.metadata.annotations.as_ref().map(BTreeMap::len),
            Some(1)
        );
        assert!(
            pod.metadata.managed_fields.is_none(),
            "skipped, not decoded"
        );
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(
            spec.images().collect::<Vec<_>>(),
            ["busybox", "ghcr.io/acme/init:1"]
        );
        assert_eq!(request.types.kind, "AdmissionReview");
        assert_eq!(injected(&body), ["acme"]);
        let reviewed = review_offline(&settings(), &body).expect("answered");
        assert_eq!(reviewed.name, "web-");
        assert_eq!(reviewed.namespace, "team");
    }

    #[test]
    fn null_lists_and_missing_parts_are_empty() {
        let body = pod_review(json!({
            "metadata": null,
            "spec": {
                "containers": [{"name": "app", "image": "ghcr.io/acme/app"}],
                "initContainers": null,
                "ephemeralContainers": null,
                "imagePullSecrets": null
            }
        }));
        assert_eq!(injected(&body), ["acme"]);
        let no_spec = pod_review(json!({"metadata": {"name": "p"}}));
        assert_eq!(
            review_offline(&settings(), &no_spec)
                .expect("answered")
                .outcome,
            Outcome::Skipped(SkipReason::NoMatch)
        );
    }

    #[test]
    fn a_pod_whose_read_fields_are_malformed_is_refused_by_name() {
        for object in [
            json!({"spec": {"containers": "not a list"}}),
            json!({"spec": {"containers": [{"image": 7}]}}),
            json!({"metadata": {"annotations": {"a": 1}}, "spec": {}}),
            json!({"spec": {"imagePullSecrets": [{"name": ["x"]}]}}),
        ] {
            let error = decode(&pod_review(object.clone())).expect_err("refused");
            assert_eq!(error.metric_label(), "invalid_pod", "{object}");
            assert!(
                error
                    .to_string()
                    .starts_with("request.object is not a valid Pod"),
                "{error}"
            );
        }
    }

    #[test]
    fn other_kinds_pass_untouched_whatever_their_shape() {
        let mut deployment: Value = serde_json::from_slice(&pod_review(json!({
            "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"image": "ghcr.io/acme/app"}]}}}
        })))
        .expect("json");
        deployment["request"]["kind"] =
            json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        let body = serde_json::to_vec(&deployment).expect("encodes");
        let reviewed = review_offline(&settings(), &body).expect("answered");
        assert_eq!(reviewed.outcome, Outcome::Skipped(SkipReason::NotPodCreate));
        deployment["request"]["object"]["spec"]["containers"] = json!("a Deployment has none");
        let body = serde_json::to_vec(&deployment).expect("encodes");
        let reviewed = review_offline(&settings(), &body).expect("answered");
        assert_eq!(reviewed.outcome, Outcome::Skipped(SkipReason::NotPodCreate));
        assert!(reviewed.response.response.admission.allowed);
    }

    #[test]
    fn the_patch_goes_out_as_a_base64_string_in_both_review_versions() {
        for version in SUPPORTED_API_VERSIONS {
            let mut body: Value = serde_json::from_slice(&pod_review(json!({
                "spec": {"containers": [{"name": "app", "image": "ghcr.io/acme/app"}]}
            })))
            .expect("json");
            body["apiVersion"] = json!(version);
            let reviewed =
                review_offline(&settings(), &serde_json::to_vec(&body).expect("encodes"))
                    .expect("answered");
            let wire: Value =
                serde_json::from_slice(&serde_json::to_vec(&reviewed.response).expect("encodes"))
                    .expect("json");
            assert_eq!(wire["apiVersion"], version);
            assert_eq!(wire["kind"], "AdmissionReview");
            let response = &wire["response"];
            assert_eq!(response["uid"], "u-1");
            assert_eq!(response["allowed"], true);
            assert_eq!(response["patchType"], "JSONPatch");
            assert_eq!(response["auditAnnotations"]["injected-secrets"], "acme");
            // Standard base64 (RFC 4648 with padding): the alphabet Go's encoding/json uses.
            let expected =
                r#"[{"op":"add","path":"/spec/imagePullSecrets","value":[{"name":"acme"}]}]"#;
            assert_eq!(
                response["patch"],
                "W3sib3AiOiJhZGQiLCJwYXRoIjoiL3NwZWMvaW1hZ2VQdWxsU2VjcmV0cyIsInZhbHVlIjpbeyJuYW1lIjoiYWNtZSJ9XX1d",
                "{response}"
            );
            assert_eq!(reviewed.response.patch(), Some(expected.as_bytes()));
        }
    }

    #[test]
    fn an_answer_without_a_patch_has_neither_patch_nor_patch_type() {
        let reviewed = review_offline(
            &settings(),
            &pod_review(json!({"spec": {"containers": [{"image": "quay.io/other/app"}]}})),
        )
        .expect("answered");
        let wire = serde_json::to_value(&reviewed.response).expect("encodes");
        let response = wire["response"].as_object().expect("response");
        assert!(!response.contains_key("patch"), "{wire}");
        assert!(!response.contains_key("patchType"), "{wire}");
        assert_eq!(response["allowed"], true);
    }

    #[test]
    fn every_pod_left_alone_has_a_reason() {
        let outcome = |object: Value, operation: &str| {
            let mut body: Value = serde_json::from_slice(&pod_review(object)).expect("json");
            body["request"]["operation"] = json!(operation);
            review_offline(&settings(), &serde_json::to_vec(&body).expect("encodes"))
                .expect("answered")
                .outcome
        };
        let acme = json!({"containers": [{"name": "app", "image": "ghcr.io/acme/app"}]});
        for (object, operation, expected) in [
            (
                json!({"spec": acme.clone()}),
                "UPDATE",
                Outcome::Skipped(SkipReason::NotPodCreate),
            ),
            (
                json!({"metadata": {"annotations": {"pullsecret-injector.io/inject": "false"}}, "spec": acme.clone()}),
                "CREATE",
                Outcome::Skipped(SkipReason::OptedOut),
            ),
            (
                json!({"metadata": {"annotations": {MIRROR_POD_ANNOTATION: "hash"}}, "spec": acme.clone()}),
                "CREATE",
                Outcome::Skipped(SkipReason::MirrorPod),
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "image": "quay.io/other/app"}]}}),
                "CREATE",
                Outcome::Skipped(SkipReason::NoMatch),
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "image": "ghcr.io/acme/app"}],
                                "imagePullSecrets": [{"name": "acme"}]}}),
                "CREATE",
                Outcome::Unchanged,
            ),
        ] {
            assert_eq!(
                outcome(object.clone(), operation),
                expected,
                "{operation} {object}"
            );
        }
        assert_eq!(
            [
                SkipReason::NotPodCreate,
                SkipReason::OptedOut,
                SkipReason::MirrorPod,
                SkipReason::NoMatch
            ]
            .map(SkipReason::metric_label),
            ["not_pod_create", "opted_out", "mirror_pod", "no_match"]
        );
    }

    #[test]
    fn a_pod_review_missing_request_fields_names_the_request_not_the_pod() {
        let mut body: Value =
            serde_json::from_slice(&pod_review(json!({"spec": {}}))).expect("json");
        body["request"]
            .as_object_mut()
            .expect("request")
            .remove("uid");
        let error = decode(&serde_json::to_vec(&body).expect("encodes")).expect_err("refused");
        assert_eq!(error.metric_label(), "not_admission_review");
        assert!(error.to_string().contains("missing field `uid`"), "{error}");
    }
}
