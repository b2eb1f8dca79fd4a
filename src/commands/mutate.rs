//! `mutate`: the webhook's decision applied offline to Pods, AdmissionReviews and workloads
//! with pod templates, so a person can see what would happen before deploying: the same
//! manifest out with the pull secrets the webhook would add (or only the patches).

use std::io::{Read, Write};

use json_patch::Patch;
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::Value;
use thiserror::Error;

use super::{CommandError, Environment, keyring_with_sources, load_settings};
use crate::admission::{self, ClusterView, Outcome, PodToDecide};
use crate::cli::{MutateArgs, OutputFormat};
use crate::config::Settings;
use crate::matching::Keyring;

#[derive(Debug, Error)]
pub enum PreviewError {
    #[error("input is not valid YAML or JSON: {0}")]
    Parse(String),
    #[error("document {index}{what}: {reason}")]
    Document {
        index: usize,
        what: String,
        reason: String,
    },
}

/// One input document and what the webhook makes of it.
#[derive(Debug)]
pub struct Previewed {
    /// The document as the webhook leaves it (for an AdmissionReview: the response review).
    pub document: Value,
    /// The JSON patch that turns the input into `document` (empty when nothing changes).
    pub patch: Patch,
}

pub fn mutate(args: MutateArgs, environment: &Environment) -> Result<(), CommandError> {
    let settings = load_settings(&args.config, environment, |_| {})?;
    let text = if args.file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CommandError::Usage(format!("reading standard input: {e}")))?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .map_err(|e| CommandError::Usage(format!("reading {}: {e}", args.file)))?
    };
    let keyring = keyring_with_sources(&settings, args.kubeconfig.as_deref())?;
    let previews =
        preview_text(&settings, &keyring, &text).map_err(|e| CommandError::Usage(e.to_string()))?;
    let mut out = String::new();
    for (i, previewed) in previews.iter().enumerate() {
        let rendered = match args.output {
            OutputFormat::Yaml => {
                let yaml = serde_saphyr::to_string(&previewed.document).map_err(|e| {
                    CommandError::Render {
                        what: "YAML",
                        reason: e.to_string(),
                    }
                })?;
                if i > 0 {
                    out.push_str("---\n");
                }
                yaml
            }
            OutputFormat::Json => {
                serde_json::to_string_pretty(&previewed.document).map_err(|e| {
                    CommandError::Render {
                        what: "JSON",
                        reason: e.to_string(),
                    }
                })? + "\n"
            }
            OutputFormat::Patch => {
                serde_json::to_string(&previewed.patch).map_err(|e| CommandError::Render {
                    what: "the patch",
                    reason: e.to_string(),
                })? + "\n"
            }
        };
        out.push_str(&rendered);
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(CommandError::io("writing standard output"))
}

/// Where the pod spec and its annotations live in each kind that has one.
fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &["spec"],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template", "spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        _ => return None,
    })
}

/// Parses one or many YAML or JSON documents (JSON is YAML) and previews each.
pub fn preview_text(
    settings: &Settings,
    keyring: &Keyring,
    text: &str,
) -> Result<Vec<Previewed>, PreviewError> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| PreviewError::Parse(e.to_string()))?;
    documents
        .into_iter()
        .filter(|d| !d.is_null())
        .enumerate()
        .map(|(i, d)| preview_document(settings, keyring, i + 1, d))
        .collect()
}

pub fn preview_document(
    settings: &Settings,
    keyring: &Keyring,
    index: usize,
    document: Value,
) -> Result<Previewed, PreviewError> {
    let kind = document
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = document
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let what = match (kind.as_str(), name) {
        ("", _) => String::new(),
        (kind, "") => format!(" ({kind})"),
        (kind, name) => format!(" ({kind} {name})"),
    };
    let fail = |reason: String| PreviewError::Document {
        index,
        what: what.clone(),
        reason,
    };
    if kind.is_empty() {
        return Err(fail(
            "kind: missing; expected a Pod, an AdmissionReview or a workload with a pod template"
                .into(),
        ));
    }
    if kind == "AdmissionReview" {
        let body = serde_json::to_vec(&document).map_err(|e| fail(e.to_string()))?;
        // Offline: the keyring may hold the sources' patterns (--kubeconfig), no labels.
        let view = ClusterView {
            keyring,
            namespace_labels: None,
        };
        let reviewed = admission::decode(&body)
            .and_then(|decoded| admission::review(settings, &view, decoded))
            .map_err(|e| fail(e.to_string()))?;
        let patch = match reviewed.outcome {
            Outcome::Patched(p) => p.patch,
            _ => Patch(Vec::new()),
        };
        let document = serde_json::to_value(&reviewed.response).map_err(|e| fail(e.to_string()))?;
        return Ok(Previewed { document, patch });
    }
    let Some(spec_path) = pod_spec_path(&kind) else {
        // Services, ConfigMaps and the like pass through a multi-document file untouched.
        return Ok(Previewed {
            document,
            patch: Patch(Vec::new()),
        });
    };
    let spec_pointer: String = spec_path.iter().map(|t| format!("/{t}")).collect();
    let field = spec_path.join(".");
    let spec_value = document
        .pointer(&spec_pointer)
        .ok_or_else(|| fail(format!("{field}: missing")))?;
    let spec: PodSpec =
        serde_json::from_value(spec_value.clone()).map_err(|e| fail(format!("{field}: {e}")))?;
    let metadata_pointer =
        spec_pointer.trim_end_matches("/spec").to_string() + "/metadata/annotations";
    let annotations = match document.pointer(&metadata_pointer) {
        None | Some(Value::Null) => None,
        Some(value) => Some(serde_json::from_value(value.clone()).map_err(|e| {
            fail(format!(
                "{}: {e}",
                metadata_pointer.trim_start_matches('/').replace('/', ".")
            ))
        })?),
    };
    let namespace = document
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let view = ClusterView {
        keyring,
        namespace_labels: None,
    };
    let pod = PodToDecide {
        namespace: &namespace,
        annotations: annotations.as_ref(),
        existing: spec.image_pull_secrets.as_deref(),
        pointer: spec_path,
    };
    let Outcome::Patched(patch) =
        admission::decide_pod(settings, &view, &pod, admission::pod_images(&spec))
    else {
        return Ok(Previewed {
            document,
            patch: Patch(Vec::new()),
        });
    };
    let mut document = document;
    json_patch::patch(&mut document, &patch.patch)
        .map_err(|e| fail(format!("applying the patch: {e}")))?;
    Ok(Previewed {
        document,
        patch: patch.patch,
    })
}
