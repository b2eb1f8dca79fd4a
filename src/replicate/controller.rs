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
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use super::dockerconfig;
use super::{
    Cluster, FIELD_MANAGER, HASH_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, ReplicateError,
    SOURCE_ANNOTATION, copy_of, is_managed,
};
use crate::config::{SecretSpec, SourceRef};

/// A full re-sync now and then, in case a watch missed something.
const RESYNC: Duration = Duration::from_secs(300);
/// Backoff while the Lease cannot be read or created (apiserver unreachable, RBAC).
const LEASE_RETRY_MIN: Duration = Duration::from_secs(1);
const LEASE_RETRY_MAX: Duration = Duration::from_secs(30);

struct Context {
    cluster: Arc<Cluster>,
    recorder: Recorder,
}

/// Competes for the Lease and runs the controller while holding it, until `stop`.
pub async fn run_with_leader_election(
    cluster: Arc<Cluster>,
    identity: String,
    stop: CancellationToken,
) {
    let settings = Arc::clone(cluster.settings());
    let le = &settings.leader_election;
    let duration = le.lease_duration_seconds;
    // Building the manager reads (or creates) the Lease: when the apiserver cannot be reached
    // yet, try again with backoff instead of never replicating.
    let mut retry_in = LEASE_RETRY_MIN;
    let manager = loop {
        let built = LeaseManagerBuilder::new(cluster.client(), &le.lease_name)
            .with_namespace(&settings.namespace)
            .with_identity(&identity)
            .with_duration(duration)
            .with_grace(duration / 3)
            .with_field_manager(FIELD_MANAGER)
            .build()
            .await;
        match built {
            Ok(manager) => break manager,
            Err(error) => {
                cluster.metrics().replication_error("lease");
                tracing::error!(
                    %error,
                    retry_in_seconds = retry_in.as_secs(),
                    "cannot set up leader election; retrying"
                );
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry_in) => {}
                }
                retry_in = (retry_in * 2).min(LEASE_RETRY_MAX);
            }
        }
    };
    let (mut leader, lease_task) = manager.watch().await;
    loop {
        // Wait to become the leader.
        while !*leader.borrow_and_update() {
            tokio::select! {
                _ = stop.cancelled() => { drop(leader); let _ = lease_task.await; return; }
                changed = leader.changed() => if changed.is_err() { return; },
            }
        }
        tracing::info!(identity, lease = %le.lease_name, "became the leader; replicating");
        cluster.metrics().set_leader(true);
        let term = CancellationToken::new();
        let controller = tokio::spawn(leader_duties(
            Arc::clone(&cluster),
            identity.clone(),
            term.clone(),
        ));
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = async { while *leader.borrow_and_update() { if leader.changed().await.is_err() { break; } } } => {
                tracing::warn!(identity, "lost the lease; stopped replicating");
            }
        }
        term.cancel();
        let _ = controller.await;
        cluster.metrics().set_leader(false);
        if stop.is_cancelled() {
            // Dropping the receiver makes the lease task release the Lease for a fast hand-over.
            drop(leader);
            let _ = lease_task.await;
            return;
        }
    }
}

/// What only the Lease holder does: replicate sources, and keep self-managed certificates.
async fn leader_duties(cluster: Arc<Cluster>, identity: String, stop: CancellationToken) {
    let settings = Arc::clone(cluster.settings());
    let keeper = settings.certificates.clone().map(|certificates| {
        tokio::spawn(crate::certkeeper::keep(
            cluster.client(),
            settings.namespace.clone(),
            certificates,
            Arc::clone(cluster.metrics()),
            stop.clone(),
        ))
    });
    if settings.secrets.iter().any(|s| s.source.is_some()) {
        run_controller(Arc::clone(&cluster), identity, stop).await;
    }
    if let Some(keeper) = keeper {
        let _ = keeper.await;
    }
}

async fn run_controller(cluster: Arc<Cluster>, identity: String, stop: CancellationToken) {
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
    let copies =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(Api::<Secret>::all(client), copies, |secret| {
        secret
            .namespace()
            .map(|ns| ObjectRef::<Namespace>::new(&ns))
    })
    .reconcile_all_on(source_trigger)
    .trigger_backoff(super::watch_backoff())
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
        let sources: BTreeSet<&SourceRef> = settings
            .secrets
            .iter()
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
        sync_copy(&ctx, &api, &namespace, spec, source_ref, &source).await?;
    }
    for copy in cluster.copies_in(&name) {
        if !wanted.contains(copy.name_any().as_str()) {
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
    let owner = ctx.cluster.owner();
    let desired = copy_of(spec, source_ref, source, &ns, owner);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let metrics = ctx.cluster.metrics();
    let synced = || metrics.source_synced(&source_ref.to_string());
    match api.get_opt(&spec.name).await? {
        None => match api.create(&params, &desired).await {
            Ok(_) => {
                metrics.copy_changed("created");
                synced();
                tracing::info!(namespace = %ns, secret = %spec.name, source = %source_ref, "copy created");
            }
            // Made at admission meanwhile: the next reconcile checks it.
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(error) => return Err(error.into()),
        },
        Some(existing) if is_managed(&existing, owner) || spec.overwrite_existing => {
            let ours = is_managed(&existing, owner);
            // The data too: a copy edited by hand is put back.
            let current = ours
                && existing.annotations().get(HASH_ANNOTATION)
                    == desired.annotations().get(HASH_ANNOTATION)
                && existing.annotations().get(SOURCE_ANNOTATION)
                    == desired.annotations().get(SOURCE_ANNOTATION)
                && existing.type_ == desired.type_
                && existing.data == desired.data;
            if current {
                synced();
                return Ok(());
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
            let action = if ours { "updated" } else { "overwritten" };
            metrics.copy_changed(action);
            synced();
            tracing::info!(namespace = %ns, secret = %spec.name, source = %source_ref, action, "copy updated");
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
                    "Secret {} exists and is not managed by pullsecret-injector; not replaced with a copy of {source_ref}",
                    spec.name
                )),
                action: "Replicate".into(),
                secondary: None,
            };
            // On the Secret in the way, in its namespace: where its owner looks. An Event about
            // the (cluster-scoped) Namespace would be filed in `default`.
            let reference: ObjectReference = existing.object_ref(&());
            if let Err(error) = ctx.recorder.publish(&event, &reference).await {
                tracing::warn!(%error, "cannot publish the conflict event");
            }
        }
    }
    Ok(())
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
