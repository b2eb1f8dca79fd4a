//! The Lease holder's side: for each entry with a provider, run its plugin, keep the answer
//! in the entry's Secret, and do it again at two thirds of the credentials' life; after a
//! failure, retry with backoff and leave the Secret (and so every copy) as it was.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::plugin::PluginError;
use super::{CredentialPlan, Held, credentials_secret, epoch_seconds, rfc3339, schedule};
use crate::kubernetes::FIELD_MANAGER;
use crate::replicate::controller::{Target, Written, write_managed};
use crate::replicate::{Cluster, ReplicateError};

/// An Event's note is at most 1 kB.
const MAX_NOTE_CHARS: usize = 1000;

#[derive(Debug, Error)]
enum RefreshError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("cannot write Secret {secret}: {source}")]
    Write {
        secret: String,
        source: ReplicateError,
    },
    #[error("Secret {0} exists and is not ours; the credentials were not written")]
    Conflict(String),
    #[error("no secrets entry is named {0}")]
    NoEntry(String),
}

impl RefreshError {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Plugin(error) => error.metric_label(),
            Self::Write { .. } => "write",
            Self::Conflict(_) => "conflict",
            Self::NoEntry(_) => "config",
        }
    }

    /// Events say whether the plugin failed or answered what is refused.
    fn event_reason(&self) -> &'static str {
        match self {
            Self::Plugin(PluginError::Refused { .. }) => "CredentialProviderRefused",
            Self::Plugin(_) => "CredentialProviderFailed",
            Self::Write { .. } | Self::Conflict(_) | Self::NoEntry(_) => "CredentialsNotWritten",
        }
    }
}

/// Keeps every plan's credentials fresh until `stop` (the end of the Lease term).
pub async fn keep_all(
    cluster: Arc<Cluster>,
    plans: Arc<[CredentialPlan]>,
    identity: String,
    stop: CancellationToken,
) {
    let recorder = Recorder::new(
        cluster.client(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity),
        },
    );
    let tasks: Vec<_> = plans
        .iter()
        .cloned()
        .map(|plan| {
            tokio::spawn(keep(
                Arc::clone(&cluster),
                recorder.clone(),
                plan,
                stop.clone(),
            ))
        })
        .collect();
    for task in tasks {
        if let Err(error) = task.await {
            tracing::error!(%error, "a credential refresh task failed");
        }
    }
}

async fn keep(
    cluster: Arc<Cluster>,
    recorder: Recorder,
    plan: CredentialPlan,
    stop: CancellationToken,
) {
    let metrics = Arc::clone(cluster.metrics());
    let (secret, provider) = (plan.secret.as_str(), plan.plugin.name.as_str());
    let mut changes = cluster.source_changes();
    let current = cluster.source(&plan.keep_in);
    let mut held = current
        .as_ref()
        .and_then(|current| Held::read(current, &plan, cluster.owner()));
    // What is kept, to put back if someone deletes or edits it; never logged.
    let mut kept: Option<Secret> = current
        .filter(|_| held.is_some())
        .map(|current| kept_form(&current));
    let mut next = Instant::now();
    if let Some(held) = &held {
        let at = schedule::resume_at(held.issued_at, held.expires_at, jitter());
        next = instant_of(at);
        metrics.provider_credentials(
            secret,
            provider,
            epoch_seconds(held.issued_at),
            epoch_seconds(held.expires_at),
        );
        tracing::info!(
            secret,
            provider,
            expires_at = %rfc3339(held.expires_at),
            refresh_at = %rfc3339(at),
            "resuming the refresh of credentials issued under an earlier Lease term"
        );
    }
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next.into()) => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                if let Some(kept) = &kept {
                    let fresh = held.as_ref().is_some_and(|h| SystemTime::now() < h.expires_at);
                    let current = cluster.source(&plan.keep_in);
                    if !super::still_kept(current.as_deref(), kept) {
                        if fresh {
                            put_back(&cluster, &recorder, &plan, kept.clone()).await;
                        } else {
                            // Expired credentials are not worth restoring: get new ones.
                            next = next.min(Instant::now());
                        }
                    }
                }
                continue;
            }
        }
        let known = held
            .as_ref()
            .map(|h| h.passwords.clone())
            .unwrap_or_default();
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            outcome = refresh(&cluster, &recorder, &plan, &known) => outcome,
        };
        match outcome {
            Ok(Refreshed {
                held: fresh,
                valid_for,
                registries,
                written,
            }) => {
                kept = Some(written);
                failures = 0;
                let refresh_in = schedule::refresh_after(valid_for, jitter());
                next = Instant::now() + refresh_in;
                metrics.provider_refreshed(secret, provider);
                metrics.provider_credentials(
                    secret,
                    provider,
                    epoch_seconds(fresh.issued_at),
                    epoch_seconds(fresh.expires_at),
                );
                tracing::info!(
                    secret,
                    provider,
                    registries = registries.join(","),
                    valid_for_seconds = valid_for.as_secs_f64(),
                    expires_at = %rfc3339(fresh.expires_at),
                    refresh_in_seconds = refresh_in.as_secs_f64(),
                    "credentials refreshed"
                );
                held = Some(fresh);
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let retry_in = schedule::retry_after(failures, jitter());
                next = Instant::now() + retry_in;
                metrics.provider_failed(secret, provider, error.metric_label());
                let stderr = match &error {
                    RefreshError::Plugin(e) => e.stderr().unwrap_or_default(),
                    _ => "",
                };
                let keeping = match &held {
                    Some(h) => format!(
                        "the copies keep the credentials that expire at {}",
                        rfc3339(h.expires_at)
                    ),
                    None => "there are no credentials to copy yet".to_string(),
                };
                tracing::warn!(
                    secret,
                    provider,
                    reason = error.metric_label(),
                    stderr,
                    failures,
                    retry_in_seconds = retry_in.as_secs_f64(),
                    "credential refresh failed; {keeping}: {error}"
                );
                publish_failure(&recorder, &plan, &error, &keeping).await;
            }
        }
    }
    metrics.provider_forget(secret, provider);
}

/// What a successful refresh holds: the credentials, how long they are valid, their
/// registry keys, and the Secret written.
struct Refreshed {
    held: Held,
    valid_for: std::time::Duration,
    registries: Vec<String>,
    written: Secret,
}

/// One run of the plugin and the write of its answer.
async fn refresh(
    cluster: &Cluster,
    recorder: &Recorder,
    plan: &CredentialPlan,
    known: &[String],
) -> Result<Refreshed, RefreshError> {
    let spec = cluster
        .settings()
        .secrets
        .iter()
        .find(|s| s.name == plan.secret)
        .ok_or_else(|| RefreshError::NoEntry(plan.secret.clone()))?;
    let issued = plan.plugin.fetch(&plan.images, plan.timeout, known).await?;
    let issued_at = SystemTime::now();
    let uncovered = super::uncovered_images(&plan.images, &issued);
    if !uncovered.is_empty() {
        tracing::warn!(
            secret = %plan.secret,
            provider = %plan.plugin.name,
            images = uncovered.join(","),
            "the plugin's answer has no key matching these images: pods pulling them get nothing from this entry"
        );
    }
    let desired = credentials_secret(plan, cluster.owner(), &issued, issued_at);
    match write(cluster, recorder, plan, spec, desired.clone()).await {
        Ok(Written::Conflict) => Err(RefreshError::Conflict(plan.keep_in.to_string())),
        Ok(_) => Ok(Refreshed {
            held: Held::of(&issued, issued_at),
            valid_for: issued.valid_for,
            registries: issued.auths.keys().cloned().collect(),
            written: desired,
        }),
        Err(source) => Err(RefreshError::Write {
            secret: plan.keep_in.to_string(),
            source,
        }),
    }
}

/// Writes the plan's Secret on the path every write of ours takes.
async fn write(
    cluster: &Cluster,
    recorder: &Recorder,
    plan: &CredentialPlan,
    spec: &crate::config::SecretSpec,
    desired: Secret,
) -> Result<Written, ReplicateError> {
    let namespace = plan.keep_in.namespace.as_str();
    let api = Api::<Secret>::namespaced(cluster.client(), namespace);
    let target = Target {
        namespace,
        api: &api,
        what: "credentials",
        from: format!("provider {}", plan.plugin.name),
        is_copy: false,
    };
    write_managed(cluster, recorder, &target, spec, desired).await
}

/// Puts back the credentials someone deleted or edited, as replication puts back a copy:
/// they are still valid, so the plugin is not asked again.
async fn put_back(cluster: &Cluster, recorder: &Recorder, plan: &CredentialPlan, kept: Secret) {
    let Some(spec) = cluster
        .settings()
        .secrets
        .iter()
        .find(|s| s.name == plan.secret)
    else {
        return;
    };
    match write(cluster, recorder, plan, spec, kept).await {
        Ok(Written::Created | Written::Updated | Written::Overwritten) => {
            tracing::info!(secret = %plan.secret, provider = %plan.plugin.name, "credentials put back");
        }
        Ok(Written::Unchanged | Written::Conflict) => {}
        Err(error) => {
            cluster.metrics().replication_error(error.metric_label());
            tracing::warn!(secret = %plan.secret, %error, "cannot put the credentials back");
        }
    }
}

/// The parts of a Secret read from the cluster that a write sets.
fn kept_form(secret: &Secret) -> Secret {
    Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: secret.metadata.name.clone(),
            namespace: secret.metadata.namespace.clone(),
            labels: secret.metadata.labels.clone(),
            annotations: secret.metadata.annotations.clone(),
            ..Default::default()
        },
        type_: secret.type_.clone(),
        data: secret.data.clone(),
        immutable: None,
        string_data: None,
    }
}

/// A Warning Event about the entry's Secret: what failed, the plugin's last stderr line
/// (redacted), and what the copies keep meanwhile.
async fn publish_failure(
    recorder: &Recorder,
    plan: &CredentialPlan,
    error: &RefreshError,
    keeping: &str,
) {
    let mut note = format!("{error}; {keeping}");
    if note.chars().count() > MAX_NOTE_CHARS {
        note = note.chars().take(MAX_NOTE_CHARS - 1).collect::<String>() + "…";
    }
    let event = Event {
        type_: EventType::Warning,
        reason: error.event_reason().into(),
        note: Some(note),
        action: "RefreshCredentials".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &secret_reference(plan)).await {
        tracing::warn!(%error, secret = %plan.secret, "cannot publish the credential refresh event");
    }
}

/// The entry's Secret, for Events (it may not exist yet).
fn secret_reference(plan: &CredentialPlan) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Secret".into()),
        namespace: Some(plan.keep_in.namespace.clone()),
        name: Some(plan.keep_in.name.clone()),
        ..Default::default()
    }
}

/// The `Instant` at wall-clock time `at` (now, if that is past).
fn instant_of(at: SystemTime) -> Instant {
    Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
}

/// A uniform draw in [0, 1) for the schedule's jitter.
fn jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
