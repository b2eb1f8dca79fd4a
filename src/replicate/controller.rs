//! The copy controller: one reconcile per namespace, run only by the Lease holder.
//!
//! Triggers: namespace changes (labels), changes to our copies (someone deleted or edited
//! one) and source changes (every namespace). A reconcile reads the Secret from the API
//! before writing, so a stale cache can never make it overwrite a Secret it did not create.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::dockerconfig;
use super::{Cluster, ReplicateError, copy_of, is_managed};
use crate::config::{SecretSpec, SourceRef};
use crate::kubernetes::{FIELD_MANAGER, watch_backoff};

/// A full re-sync now and then, in case a watch missed something.
const RESYNC: Duration = Duration::from_secs(300);
struct Context {
    cluster: Arc<Cluster>,
    recorder: Recorder,
}

/// Replicates sources into the namespaces that want them until `stop`: run by the Lease
/// holder only (see `leader`).
pub async fn run(cluster: Arc<Cluster>, identity: String, stop: CancellationToken) {
    let client = cluster.client();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity),
        },
    );
    let context = Arc::new(Context {
        cluster: Arc::clone(&cluster),
        recorder,
    });
    let reporter = tokio::spawn(report_source_problems(Arc::clone(&context), stop.clone()));
    let source_trigger =
        futures::stream::unfold(cluster.source_changes(), |mut changes| async move {
            changes.changed().await.ok()?;
            Some(((), changes))
        });
    let mut controller = Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    );
    // A change to one of our copies re-syncs its namespace: one watch per name.
    for name in cluster.settings().copy_names() {
        controller = controller.watches(
            Api::<Secret>::all(client.clone()),
            super::copies_watch(name),
            |secret| {
                secret
                    .namespace()
                    .map(|ns| ObjectRef::<Namespace>::new(&ns))
            },
        );
    }
    controller
        .reconcile_all_on(source_trigger)
        .trigger_backoff(watch_backoff())
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
    let _ = reporter.await;
}

/// A source that is missing or not a usable pull secret is reported once per change, as a
/// Warning Event on that source Secret (in its namespace, where its owners look), by the
/// leader alone.
async fn report_source_problems(ctx: Arc<Context>, stop: CancellationToken) {
    let mut changes = ctx.cluster.source_changes();
    // Before the caches have listed, every source looks missing.
    while !ctx.cluster.is_synced() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let mut reported: BTreeMap<SourceRef, String> = BTreeMap::new();
    loop {
        let settings = ctx.cluster.settings();
        // A provider's credentials are missing until its plugin first answers: the
        // refresher reports its failures itself (CredentialProviderFailed, …).
        let sources: BTreeSet<&SourceRef> = settings
            .secrets
            .iter()
            .filter(|s| s.provider.is_none())
            .filter_map(|s| s.source.as_ref())
            .collect();
        for source_ref in sources {
            let source = ctx.cluster.source(source_ref);
            let problem = source_problem(source.as_deref());
            match problem {
                None => {
                    reported.remove(source_ref);
                }
                Some((reason, note)) => {
                    if reported.get(source_ref) == Some(&note) {
                        continue;
                    }
                    let reference = match &source {
                        Some(secret) => secret.object_ref(&()),
                        // Not there: an Event about its name, found by
                        // `kubectl get events --field-selector involvedObject.name=...`.
                        None => ObjectReference {
                            api_version: Some("v1".into()),
                            kind: Some("Secret".into()),
                            namespace: Some(source_ref.namespace.clone()),
                            name: Some(source_ref.name.clone()),
                            ..Default::default()
                        },
                    };
                    tracing::warn!(source = %source_ref, reason, %note, "source secret cannot be replicated");
                    let event = Event {
                        type_: EventType::Warning,
                        reason: reason.into(),
                        note: Some(note.clone()),
                        action: "Replicate".into(),
                        secondary: None,
                    };
                    match ctx.recorder.publish(&event, &reference).await {
                        Ok(()) => {
                            reported.insert(source_ref.clone(), note);
                        }
                        Err(error) => {
                            tracing::warn!(source = %source_ref, %error, "cannot publish the source event")
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return; },
        }
    }
}

/// The Event reason and note for a source that cannot be replicated, or `None`. Never the
/// Secret's data.
fn source_problem(source: Option<&Secret>) -> Option<(&'static str, String)> {
    let Some(secret) = source else {
        return Some((
            "SourceSecretMissing",
            "not found: pullsecret-injector has nothing to copy, and existing copies are left as they are until it is back".into(),
        ));
    };
    match dockerconfig::auth_patterns(secret.type_.as_deref(), secret.data.as_ref()) {
        Ok(_) => None,
        Err(error) => Some((
            "SourceSecretInvalid",
            format!("not a usable pull secret: {error}"),
        )),
    }
}

fn error_policy(namespace: Arc<Namespace>, error: &ReplicateError, ctx: Arc<Context>) -> Action {
    ctx.cluster
        .metrics()
        .replication_error(error.metric_label());
    tracing::error!(namespace = %namespace.name_any(), %error, "sync failed; retrying");
    Action::requeue(Duration::from_secs(
        if error.metric_label() == "forbidden" {
            60
        } else {
            5
        },
    ))
}

async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, ReplicateError> {
    if namespace.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = namespace.name_any();
    let cluster = &ctx.cluster;
    let settings = cluster.settings();
    let labels = namespace.labels();
    let api = Api::<Secret>::namespaced(cluster.client(), &name);
    let mut wanted = BTreeSet::new();
    for spec in &settings.secrets {
        let Some(source_ref) = &spec.source else {
            continue;
        };
        if !settings.replicates_into(spec, &name, labels) {
            continue;
        }
        wanted.insert(spec.name.as_str());
        // A deleted source leaves existing copies alone: pods keep pulling until it is back
        // or the entry is removed from config.
        let Some(source) = cluster.source(source_ref) else {
            continue;
        };
        // Reported when the source changes; its copies, if any, are left as they are.
        if !super::is_replicable(&source) {
            continue;
        }
        sync_copy(&ctx, &api, &namespace, spec, source_ref, &source).await?;
    }
    for copy in cluster.copies_in(&name) {
        // A provider's credentials are kept in our namespace under a copy's name: they are
        // that entry's source, not a stray copy.
        let is_source = settings.secrets.iter().any(|s| {
            s.source
                .as_ref()
                .is_some_and(|r| r.namespace == name && r.name == copy.name_any())
        });
        if !wanted.contains(copy.name_any().as_str()) && !is_source {
            delete_copy(&ctx, &api, &copy).await?;
        }
    }
    Ok(Action::requeue(RESYNC))
}

async fn sync_copy(
    ctx: &Context,
    api: &Api<Secret>,
    namespace: &Namespace,
    spec: &SecretSpec,
    source_ref: &SourceRef,
    source: &Secret,
) -> Result<(), ReplicateError> {
    let ns = namespace.name_any();
    let desired = copy_of(spec, source_ref, source, &ns, ctx.cluster.owner());
    let target = Target {
        namespace: &ns,
        api,
        what: "copy",
        from: source_ref.to_string(),
        is_copy: true,
    };
    write_managed(&ctx.cluster, &ctx.recorder, &target, spec, desired).await?;
    Ok(())
}

/// Where [`write_managed`] writes, and how it reports: `what` it writes ("copy",
/// "credentials") `from` what; a copy's write also counts as its source's sync.
pub struct Target<'a> {
    pub namespace: &'a str,
    pub api: &'a Api<Secret>,
    pub what: &'static str,
    pub from: String,
    pub is_copy: bool,
}

/// What [`write_managed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Updated,
    Overwritten,
    Unchanged,
    /// A Secret of that name that is not ours, left alone (and reported).
    Conflict,
}

/// Makes Secret `spec.name` in `target.api`'s namespace what `desired` says, under the
/// ownership rules every write of ours follows (copies and a provider's credentials alike):
/// created when missing; replaced when it is ours (our label and owner) or the entry says
/// `overwriteExisting`; otherwise left alone and reported (log, metric, Event). The Secret
/// is read from the API first, so a stale cache can never make it overwrite one it did not
/// create.
pub async fn write_managed(
    cluster: &Cluster,
    recorder: &Recorder,
    target: &Target<'_>,
    spec: &SecretSpec,
    desired: Secret,
) -> Result<Written, ReplicateError> {
    let (api, ns) = (target.api, target.namespace);
    let (what, from) = (target.what, target.from.as_str());
    let owner = cluster.owner();
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let metrics = cluster.metrics();
    let synced = || {
        if target.is_copy {
            metrics.source_synced(from);
        }
    };
    let written = match api.get_opt(&spec.name).await? {
        None => match api.create(&params, &desired).await {
            Ok(_) => {
                metrics.copy_changed("created");
                synced();
                tracing::info!(namespace = %ns, secret = %spec.name, source = %from, "{what} created");
                Written::Created
            }
            // Made at admission meanwhile: the next reconcile checks it.
            Err(kube::Error::Api(status)) if status.is_already_exists() => Written::Unchanged,
            Err(error) => return Err(error.into()),
        },
        Some(existing) if is_managed(&existing, owner) || spec.overwrite_existing => {
            let ours = is_managed(&existing, owner);
            // The data too: a Secret edited by hand is put back.
            if ours && is_current(&existing, &desired) {
                synced();
                return Ok(Written::Unchanged);
            }
            if existing.type_ == desired.type_ {
                let mut replacement = desired;
                replacement.metadata.resource_version = existing.resource_version();
                api.replace(&spec.name, &params, &replacement).await?;
            } else {
                // A Secret's type is immutable: replace it by delete and create, deleting only
                // the object just read.
                let delete = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: existing.uid(),
                        resource_version: existing.resource_version(),
                    }),
                    ..Default::default()
                };
                api.delete(&spec.name, &delete).await?;
                api.create(&params, &desired).await?;
            }
            let (action, written) = if ours {
                ("updated", Written::Updated)
            } else {
                ("overwritten", Written::Overwritten)
            };
            metrics.copy_changed(action);
            synced();
            tracing::info!(namespace = %ns, secret = %spec.name, source = %from, action, "{what} updated");
            written
        }
        Some(existing) => {
            metrics.conflict();
            tracing::warn!(
                namespace = %ns,
                secret = %spec.name,
                "a Secret of this name exists and was not created by pullsecret-injector; left alone (set overwriteExisting to replace it)"
            );
            let event = Event {
                type_: EventType::Warning,
                reason: "PullSecretConflict".into(),
                note: Some(format!(
                    "Secret {} exists and is not managed by pullsecret-injector; not replaced with a {what} of {from}",
                    spec.name
                )),
                action: "Replicate".into(),
                secondary: None,
            };
            // On the Secret in the way, in its namespace: where its owner looks. An Event about
            // the (cluster-scoped) Namespace would be filed in `default`.
            let reference: ObjectReference = existing.object_ref(&());
            if let Err(error) = recorder.publish(&event, &reference).await {
                tracing::warn!(%error, "cannot publish the conflict event");
            }
            Written::Conflict
        }
    };
    Ok(written)
}

/// Whether `existing` already is `desired`: type, data, and every label and annotation we
/// set (others', such as kubectl's, may be there too).
fn is_current(existing: &Secret, desired: &Secret) -> bool {
    let includes = |have: &BTreeMap<String, String>, want: &BTreeMap<String, String>| {
        want.iter().all(|(k, v)| have.get(k) == Some(v))
    };
    existing.type_ == desired.type_
        && existing.data == desired.data
        && includes(existing.labels(), desired.labels())
        && includes(existing.annotations(), desired.annotations())
}

async fn delete_copy(
    ctx: &Context,
    api: &Api<Secret>,
    copy: &Secret,
) -> Result<(), ReplicateError> {
    // Preconditions: delete exactly the object we saw as ours, never one recreated since.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: copy.uid(),
            resource_version: copy.resource_version(),
        }),
        ..Default::default()
    };
    match api.delete(&copy.name_any(), &params).await {
        Ok(_) => {
            ctx.cluster.metrics().copy_changed("deleted");
            tracing::info!(namespace = copy.namespace().unwrap_or_default(), secret = %copy.name_any(), "copy deleted");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => Ok(()),
        Err(error) => Err(error.into()),
    }
}
