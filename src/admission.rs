//! The decision per AdmissionReview: bytes in, response review out. No I/O.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
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
    /// A stable label for the bad-requests metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "invalid_json",
            Self::NotAdmissionReview(_) => "not_admission_review",
            Self::NoRequest => "no_request",
            Self::InvalidPod(_) => "invalid_pod",
            Self::EncodePatch(_) => "encode_patch",
        }
    }
}

/// Why a request passed through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    NotCreate,
    NotPod,
    NoObject,
    OptedOut,
    MirrorPod,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotCreate => "not_create",
            Self::NotPod => "not_pod",
            Self::NoObject => "no_object",
            Self::OptedOut => "opted_out",
            Self::MirrorPod => "mirror_pod",
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
    pub fn result_label(&self) -> &'static str {
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
}

/// What the server needs to answer and to log one review.
#[derive(Debug)]
pub struct Reviewed {
    pub response: AdmissionReview<DynamicObject>,
    pub outcome: Outcome,
    pub uid: String,
    pub namespace: String,
    /// The pod's name, or its generateName when controllers have not named it yet.
    pub name: String,
    pub operation: &'static str,
    pub dry_run: bool,
}

/// A decoded review: a Pod request (typed), or a request for another kind.
#[derive(Debug)]
pub enum Decoded {
    Pod(Box<AdmissionRequest<Pod>>),
    Other(Box<AdmissionRequest<DynamicObject>>),
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

/// What the decision may look at beyond the request: the patterns in force and, where the
/// cluster is watched, the namespace's labels for per-entry selectors.
pub struct Scope<'a> {
    pub keyring: &'a Keyring,
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
}

/// Decodes an AdmissionReview body and decides with the configured patterns only (no
/// cluster state): what `mutate` and the standalone server do.
pub fn review(settings: &Settings, body: &[u8]) -> Result<Reviewed, ReviewError> {
    let scope = Scope {
        keyring: &settings.keyring,
        namespace_labels: None,
    };
    answer(settings, &scope, decode(body)?)
}

/// Decodes a body: typed for Pods; other kinds are recognised so they can pass untouched.
pub fn decode(body: &[u8]) -> Result<Decoded, ReviewError> {
    match serde_json::from_slice::<AdmissionReview<Pod>>(body) {
        Ok(review) => {
            check_envelope(&review.types.api_version, &review.types.kind)?;
            let request: AdmissionRequest<Pod> =
                review.try_into().map_err(|_| ReviewError::NoRequest)?;
            Ok(Decoded::Pod(Box::new(request)))
        }
        Err(typed_error) => decode_untyped(body, typed_error),
    }
}

/// Decides and builds the response. Never denies: this webhook only adds.
pub fn answer(
    settings: &Settings,
    scope: &Scope<'_>,
    decoded: Decoded,
) -> Result<Reviewed, ReviewError> {
    match decoded {
        Decoded::Pod(request) => respond(settings, scope, &request),
        Decoded::Other(request) => Ok(Reviewed {
            response: AdmissionResponse::from(&*request).into_review(),
            outcome: Outcome::Skipped(SkipReason::NotPod),
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
    let review = serde_json::from_slice::<AdmissionReview<DynamicObject>>(body)
        .map_err(|e| ReviewError::NotAdmissionReview(e.to_string()))?;
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| ReviewError::NoRequest)?;
    if is_pod(&request.kind.group, &request.kind.kind) {
        return Err(ReviewError::InvalidPod(typed_error));
    }
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
    scope: &Scope<'_>,
    request: &AdmissionRequest<Pod>,
) -> Result<Reviewed, ReviewError> {
    let outcome = decide(settings, scope, request);
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
        response: response.into_review(),
        outcome,
        uid: request.uid.clone(),
        namespace: request.namespace.clone().unwrap_or_default(),
        name,
        operation: operation_label(&request.operation),
        dry_run: request.dry_run,
    })
}

/// Pod CREATE only; everything else passes untouched.
pub fn decide(settings: &Settings, scope: &Scope<'_>, request: &AdmissionRequest<Pod>) -> Outcome {
    if request.operation != Operation::Create {
        return Outcome::Skipped(SkipReason::NotCreate);
    }
    if !is_pod(&request.kind.group, &request.kind.kind) || request.sub_resource.is_some() {
        return Outcome::Skipped(SkipReason::NotPod);
    }
    let Some(pod) = &request.object else {
        return Outcome::Skipped(SkipReason::NoObject);
    };
    if let Some(reason) = skip_reason(settings, pod.metadata.annotations.as_ref()) {
        return Outcome::Skipped(reason);
    }
    let Some(spec) = &pod.spec else {
        return Outcome::Unchanged;
    };
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let applies = |secret: &SecretSpec| match scope.namespace_labels {
        Some(labels) => secret.applies_to(namespace, labels),
        None => {
            secret.namespace_selector.is_none()
                && !secret.exclude_namespaces.iter().any(|n| n == namespace)
        }
    };
    match patch_for_spec(settings, scope.keyring, &applies, &["spec"], spec) {
        Some(patch) => Outcome::Patched(patch),
        None => Outcome::Unchanged,
    }
}

/// Opt-out annotation `"false"` and mirror pods are left alone.
pub fn skip_reason(
    settings: &Settings,
    annotations: Option<&std::collections::BTreeMap<String, String>>,
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

/// The patch for one pod spec at `pointer`, or `None` when it already has what it needs.
pub fn patch_for_spec(
    settings: &Settings,
    keyring: &Keyring,
    applies: &dyn Fn(&SecretSpec) -> bool,
    pointer: &[&str],
    spec: &PodSpec,
) -> Option<PullSecretPatch> {
    let wanted = wanted_secrets(settings, keyring, spec)
        .into_iter()
        .filter(|&i| applies(&settings.secrets[i]));
    append_pull_secrets(
        pointer,
        spec.image_pull_secrets.as_deref(),
        wanted.map(|i| settings.secrets[i].name.as_str()),
    )
}

/// Indices of the configured secrets the kubelet would use for any image of the spec, in
/// config order. Images that do not parse match nothing, as in the kubelet.
pub fn wanted_secrets(settings: &Settings, keyring: &Keyring, spec: &PodSpec) -> Vec<usize> {
    let mut wanted = vec![false; settings.secrets.len()];
    for image in pod_images(spec) {
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
