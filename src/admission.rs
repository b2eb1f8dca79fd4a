//! The decision per AdmissionReview: bytes in, response review out. No I/O.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use thiserror::Error;

use crate::config::Settings;
use crate::image::ImageName;
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

/// Decodes an AdmissionReview body and decides. Never denies: this webhook only adds.
pub fn review(settings: &Settings, body: &[u8]) -> Result<Reviewed, ReviewError> {
    match serde_json::from_slice::<AdmissionReview<Pod>>(body) {
        Ok(review) => {
            check_envelope(&review.types.api_version, &review.types.kind)?;
            let request: AdmissionRequest<Pod> =
                review.try_into().map_err(|_| ReviewError::NoRequest)?;
            respond(settings, &request)
        }
        Err(typed_error) => review_untyped(body, typed_error),
    }
}

/// The typed decode failed: find out whether the body is a review of another kind (allowed
/// untouched), or say precisely what is wrong with it.
fn review_untyped(body: &[u8], typed_error: serde_json::Error) -> Result<Reviewed, ReviewError> {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        return Err(ReviewError::NotJson(e));
    }
    let types = serde_json::from_slice::<kube::core::TypeMeta>(body)
        .map_err(|e| ReviewError::NotAdmissionReview(e.to_string()))?;
    check_envelope(&types.api_version, &types.kind)?;
    let review = serde_json::from_slice::<AdmissionReview<DynamicObject>>(body)
        .map_err(|e| ReviewError::NotAdmissionReview(e.to_string()))?;
    check_envelope(&review.types.api_version, &review.types.kind)?;
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| ReviewError::NoRequest)?;
    if is_pod(&request.kind.group, &request.kind.kind) {
        return Err(ReviewError::InvalidPod(typed_error));
    }
    let response = AdmissionResponse::from(&request).into_review();
    Ok(Reviewed {
        response,
        outcome: Outcome::Skipped(SkipReason::NotPod),
        uid: request.uid,
        namespace: request.namespace.unwrap_or_default(),
        name: request.name,
        operation: operation_label(&request.operation),
        dry_run: request.dry_run,
    })
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
pub fn respond(
    settings: &Settings,
    request: &AdmissionRequest<Pod>,
) -> Result<Reviewed, ReviewError> {
    let outcome = decide(settings, request);
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
pub fn decide(settings: &Settings, request: &AdmissionRequest<Pod>) -> Outcome {
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
    match patch_for_spec(settings, &["spec"], spec) {
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
    pointer: &[&str],
    spec: &PodSpec,
) -> Option<PullSecretPatch> {
    let wanted = wanted_secrets(settings, spec);
    append_pull_secrets(
        pointer,
        spec.image_pull_secrets.as_deref(),
        wanted
            .into_iter()
            .map(|i| settings.secrets[i].name.as_str()),
    )
}

/// Indices of the configured secrets the kubelet would use for any image of the spec, in
/// config order. Images that do not parse match nothing, as in the kubelet.
pub fn wanted_secrets(settings: &Settings, spec: &PodSpec) -> Vec<usize> {
    let mut wanted = vec![false; settings.secrets.len()];
    for image in pod_images(spec) {
        if let Ok(name) = ImageName::parse(image) {
            settings
                .keyring
                .for_each_match(&name, |secret, _, _| wanted[secret] = true);
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
