//! The copy controller: one sync per namespace, run only by the Lease holder.
//!
//! What to sync comes from the caches every replica keeps (`Cluster::namespaces_to_sync`):
//! namespace changes (labels), copies that someone deleted or edited, source changes (every
//! namespace). A sync decides from those caches and writes only what differs, so a resync, a
//! restart or a new leader costs no request at all for a namespace whose copies are current.
//! Every write is conditional: a create fails when anything has the name, a replace or a
//! delete carries the resourceVersion (and uid) it was decided on. So a stale cache can never
//! make it overwrite a Secret it did not create: when such a write fails, the Secret is read
//! from the API and decided on again.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action, applier};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::dockerconfig;
use super::view::{CopyView, NamespaceMeta};
use super::{Cluster, HASH_ANNOTATION, ReplicateError, copy_of, is_current, is_managed};
use crate::config::{SecretSpec, SourceRef};
use crate::kubernetes::FIELD_MANAGER;

/// Every namespace is synced again this often. It costs no request when nothing changed:
/// it catches what no watch event points at (a labelled Secret made by hand where no copy
/// belongs).
const RESYNC: Duration = Duration::from_secs(300);
/// Namespaces synced at once. The replication client holds their requests to its rate limit
/// and to `REPLICATION_IN_FLIGHT` in the apiserver whatever this is; it keeps enough
/// decided to fill those, and a namespace labelled during a long resync from waiting behind
/// thousands of others.
const CONCURRENCY: u16 = 16;

struct Context {
    cluster: Arc<Cluster>,
    recorder: Recorder,
}

/// Replicates sources into the namespaces that want them until `stop`: run by the Lease
/// holder only (see `leader`).
pub async fn run(cluster: Arc<Cluster>, identity: String, stop: CancellationToken) {
    let recorder = Recorder::new(
        cluster.replication_client(),
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
    // The applier waits for the namespace store to list, but the store's readiness wakes
    // only the last task that waited on it: with the cluster's own waiter also waiting, one
    // of the two would sleep until polled again. So the store has one waiter, the cluster's,
    // and this waits on what that one sets; the applier then finds the store ready.
    tokio::select! {
        () = cluster.wait_synced() => {}
        () = stop.cancelled() => {
            let _ = reporter.await;
            return;
        }
    }
    // Ending the queue lets the syncs in flight finish, then ends the applier.
    let queue = cluster
        .namespaces_to_sync()
        .take_until(stop.cancelled_owned())
        .map(Ok::<_, Infallible>);
    applier(
        |namespace, context| -> BoxFuture<'static, Result<Action, ReplicateError>> {
            Box::pin(reconcile(namespace, context))
        },
        error_policy,
        context,
        cluster.namespace_store(),
        queue,
        controller::Config::default().concurrency(CONCURRENCY),
    )
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

fn error_policy(
    namespace: Arc<NamespaceMeta>,
    error: &ReplicateError,
    ctx: Arc<Context>,
) -> Action {
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

async fn reconcile(
    namespace: Arc<NamespaceMeta>,
    ctx: Arc<Context>,
) -> Result<Action, ReplicateError> {
    let synced = sync_namespace(&namespace, &ctx).await;
    let result = if synced.is_ok() { "ok" } else { "error" };
    ctx.cluster.metrics().namespace_synced(result);
    synced.map(|()| Action::requeue(RESYNC))
}

async fn sync_namespace(namespace: &NamespaceMeta, ctx: &Context) -> Result<(), ReplicateError> {
    if namespace.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let name = namespace.name_any();
    let cluster = &ctx.cluster;
    let settings = cluster.settings();
    let labels = namespace.labels();
    let api = Api::<Secret>::namespaced(cluster.replication_client(), &name);
    let mut wanted = BTreeSet::new();
    let mut syncs = Vec::new();
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
        syncs.push(sync_copy(ctx, &api, namespace, spec, source_ref, source));
    }
    // The copies of one namespace go out together: their waits overlap.
    let mut first_error = None;
    for result in futures::future::join_all(syncs).await {
        if let Err(error) = result {
            first_error.get_or_insert(error);
        }
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
            delete_copy(ctx, &api, &copy).await?;
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// What a write decides on: the Secret of the name there now (from a cache or the API), as
/// far as the decision needs it.
#[derive(Debug, Clone, PartialEq)]
struct Existing {
    /// For an Event about it (kube's reference carries no resourceVersion).
    reference: ObjectReference,
    uid: Option<String>,
    resource_version: Option<String>,
    type_: Option<String>,
    /// Ours: our label, and this installation as its owner.
    ours: bool,
    /// Already what the write wants.
    current: bool,
}

impl Existing {
    /// A copy from the cache, against the content the sync wants (`wanted`).
    fn of_copy(copy: &CopyView, wanted: &Wanted<'_>, owner: &str) -> Self {
        Self {
            reference: copy.object_ref(&()),
            uid: copy.uid(),
            resource_version: copy.resource_version(),
            type_: copy.type_.clone(),
            ours: is_managed(copy, owner),
            current: is_current(copy, wanted.source, wanted.hash),
        }
    }

    /// A Secret read from the API, against the whole of `desired`.
    fn of_secret(secret: &Secret, desired: &Secret, owner: &str) -> Self {
        Self {
            reference: secret.object_ref(&()),
            uid: secret.uid(),
            resource_version: secret.resource_version(),
            type_: secret.type_.clone(),
            ours: is_managed(secret, owner),
            current: carries(secret, desired),
        }
    }
}

/// What a write does about one Secret, given what is there now.
#[derive(Debug, PartialEq)]
enum Plan {
    Nothing,
    Create,
    /// Same type: replace the object with this resourceVersion. `ours`: a Secret of ours put
    /// back to what it should be, else a user's Secret taken over (`overwriteExisting`).
    Replace {
        resource_version: Option<String>,
        ours: bool,
    },
    /// A Secret's type is immutable: delete exactly this object, then create.
    Recreate {
        uid: Option<String>,
        resource_version: Option<String>,
        ours: bool,
    },
    /// A Secret of the name that is not ours, and the entry does not overwrite: reported on
    /// that Secret.
    Conflict(Box<ObjectReference>),
}

/// The copy a sync wants: of `source`, whose content hash is `hash`.
struct Wanted<'a> {
    source: &'a SourceRef,
    hash: &'a str,
}

/// The decision for one Secret whose wanted type is `type_`, given what is there.
fn plan(existing: Option<&Existing>, type_: Option<&str>, overwrite: bool) -> Plan {
    let Some(existing) = existing else {
        return Plan::Create;
    };
    if !existing.ours && !overwrite {
        return Plan::Conflict(Box::new(existing.reference.clone()));
    }
    if existing.ours && existing.current {
        Plan::Nothing
    } else if existing.type_.as_deref() == type_ {
        Plan::Replace {
            resource_version: existing.resource_version.clone(),
            ours: existing.ours,
        }
    } else {
        Plan::Recreate {
            uid: existing.uid.clone(),
            resource_version: existing.resource_version.clone(),
            ours: existing.ours,
        }
    }
}

/// Whether `existing` already is `desired`: type, data, and every label and annotation we
/// set (others', such as kubectl's, may be there too).
fn carries(existing: &Secret, desired: &Secret) -> bool {
    let includes = |have: &BTreeMap<String, String>, want: &BTreeMap<String, String>| {
        want.iter().all(|(k, v)| have.get(k) == Some(v))
    };
    existing.type_ == desired.type_
        && existing.data == desired.data
        && includes(existing.labels(), desired.labels())
        && includes(existing.annotations(), desired.annotations())
}

/// Whether a conditional write found something else than what it was decided on.
fn is_stale(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.is_conflict() || status.is_not_found() || status.is_already_exists())
}

async fn sync_copy(
    ctx: &Context,
    api: &Api<Secret>,
    namespace: &NamespaceMeta,
    spec: &SecretSpec,
    source_ref: &SourceRef,
    source: Arc<Secret>,
) -> Result<(), ReplicateError> {
    let ns = namespace.name_any();
    let owner = ctx.cluster.owner();
    let desired = copy_of(spec, source_ref, &source, &ns, owner);
    let hash = desired
        .annotations()
        .get(HASH_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    let wanted = Wanted {
        source: source_ref,
        hash: &hash,
    };
    // Another installation's copy is not ours: decide on it from the API, like a user's.
    let cached = ctx
        .cluster
        .copy(&ns, &spec.name)
        .filter(|copy| is_managed(copy.as_ref(), owner))
        .map(|copy| Existing::of_copy(&copy, &wanted, owner));
    let target = Target {
        namespace: &ns,
        api,
        what: "copy",
        from: source_ref.to_string(),
        is_copy: true,
    };
    write(
        &ctx.cluster,
        &ctx.recorder,
        &target,
        spec,
        desired,
        Some(cached),
    )
    .await?;
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
/// is read from the API first; every write is conditional on what was read.
pub async fn write_managed(
    cluster: &Cluster,
    recorder: &Recorder,
    target: &Target<'_>,
    spec: &SecretSpec,
    desired: Secret,
) -> Result<Written, ReplicateError> {
    write(cluster, recorder, target, spec, desired, None).await
}

/// [`write_managed`], deciding first from what a cache says when `cached` is given (`Some(None)`:
/// none of ours there; `None`: no cache, read the API). A write
/// that finds the cache was behind the API (a conflict, or not found, or already exists)
/// reads the Secret from the API and decides again, once. So a stale cache can never make
/// it overwrite a Secret it did not create.
async fn write(
    cluster: &Cluster,
    recorder: &Recorder,
    target: &Target<'_>,
    spec: &SecretSpec,
    desired: Secret,
    cached: Option<Option<Existing>>,
) -> Result<Written, ReplicateError> {
    let type_ = desired.type_.clone();
    let overwrite = spec.overwrite_existing;
    if let Some(cached) = cached {
        let decided = plan(cached.as_ref(), type_.as_deref(), overwrite);
        match execute(cluster, recorder, target, spec, &desired, decided).await {
            Err(error) if is_stale(&error) => {}
            other => return other.map_err(ReplicateError::from),
        }
    }
    let owner = cluster.owner();
    let existing = target
        .api
        .get_opt(&spec.name)
        .await?
        .map(|secret| Existing::of_secret(&secret, &desired, owner));
    let decided = plan(existing.as_ref(), type_.as_deref(), overwrite);
    match execute(cluster, recorder, target, spec, &desired, decided).await {
        // Made by someone else an instant ago (the webhook at admission): it exists, and the
        // next sync decides on it.
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(Written::Unchanged),
        other => other.map_err(ReplicateError::from),
    }
}

async fn execute(
    cluster: &Cluster,
    recorder: &Recorder,
    target: &Target<'_>,
    spec: &SecretSpec,
    desired: &Secret,
    plan: Plan,
) -> Result<Written, kube::Error> {
    let (api, ns) = (target.api, target.namespace);
    let (what, from) = (target.what, target.from.as_str());
    let metrics = cluster.metrics();
    let synced = || {
        if target.is_copy {
            metrics.source_synced(from);
        }
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let ours = match plan {
        Plan::Nothing => {
            synced();
            return Ok(Written::Unchanged);
        }
        Plan::Create => {
            api.create(&params, desired).await?;
            metrics.copy_changed("created");
            synced();
            tracing::info!(namespace = %ns, secret = %spec.name, source = %from, "{what} created");
            return Ok(Written::Created);
        }
        Plan::Replace {
            resource_version,
            ours,
        } => {
            let mut replacement = desired.clone();
            replacement.metadata.resource_version = resource_version;
            api.replace(&spec.name, &params, &replacement).await?;
            ours
        }
        Plan::Recreate {
            uid,
            resource_version,
            ours,
        } => {
            let delete = DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version,
                }),
                ..Default::default()
            };
            api.delete(&spec.name, &delete).await?;
            api.create(&params, desired).await?;
            ours
        }
        Plan::Conflict(reference) => {
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
            if let Err(error) = recorder.publish(&event, &reference).await {
                tracing::warn!(%error, "cannot publish the conflict event");
            }
            return Ok(Written::Conflict);
        }
    };
    let (action, written) = if ours {
        ("updated", Written::Updated)
    } else {
        ("overwritten", Written::Overwritten)
    };
    metrics.copy_changed(action);
    synced();
    tracing::info!(namespace = %ns, secret = %spec.name, source = %from, action, "{what} updated");
    Ok(written)
}

async fn delete_copy(
    ctx: &Context,
    api: &Api<Secret>,
    copy: &CopyView,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::kubernetes::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
    use crate::replicate::{OWNER_ANNOTATION, SOURCE_ANNOTATION};

    const OWNER: &str = "infra/pullsecret-injector";
    const TYPE: &str = "kubernetes.io/dockerconfigjson";

    fn source() -> SourceRef {
        SourceRef {
            namespace: "infra".into(),
            name: "regcred-source".into(),
        }
    }

    /// A Secret as a cache or a GET shows it.
    fn existing(ours: bool, hash_annotation: &str, content_hash: &str, type_: &str) -> CopyView {
        let mut annotations = BTreeMap::from([
            (HASH_ANNOTATION.to_string(), hash_annotation.to_string()),
            (SOURCE_ANNOTATION.to_string(), source().to_string()),
        ]);
        let mut labels = BTreeMap::new();
        if ours {
            annotations.insert(OWNER_ANNOTATION.to_string(), OWNER.to_string());
            labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string());
        }
        CopyView {
            metadata: ObjectMeta {
                name: Some("regcred".into()),
                namespace: Some("team-a".into()),
                uid: Some("uid-1".into()),
                resource_version: Some("7".into()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            type_: Some(type_.into()),
            content_hash: content_hash.into(),
        }
    }

    /// The plan for a copy the cache holds (or none), wanting source()'s "sha256:new".
    fn decide(copy: Option<&CopyView>, owner: &str, overwrite: bool) -> Plan {
        let source_ref = source();
        let wanted = Wanted {
            source: &source_ref,
            hash: "sha256:new",
        };
        let existing = copy.map(|copy| Existing::of_copy(copy, &wanted, owner));
        plan(existing.as_ref(), Some(TYPE), overwrite)
    }

    #[test]
    fn a_current_copy_costs_nothing_and_a_missing_one_is_created() {
        let current = existing(true, "sha256:new", "sha256:new", TYPE);
        assert_eq!(decide(Some(&current), OWNER, false), Plan::Nothing);
        assert_eq!(decide(None, OWNER, false), Plan::Create);
    }

    #[test]
    fn a_stale_or_edited_copy_is_replaced_at_the_version_it_was_decided_on() {
        let replace = Plan::Replace {
            resource_version: Some("7".into()),
            ours: true,
        };
        let rotated = existing(true, "sha256:old", "sha256:old", TYPE);
        assert_eq!(decide(Some(&rotated), OWNER, false), replace);
        // Annotations current, data edited by hand.
        let edited = existing(true, "sha256:new", "sha256:edited", TYPE);
        assert_eq!(decide(Some(&edited), OWNER, false), replace);
        let retyped = existing(true, "sha256:new", "sha256:other", "Opaque");
        assert_eq!(
            decide(Some(&retyped), OWNER, false),
            Plan::Recreate {
                uid: Some("uid-1".into()),
                resource_version: Some("7".into()),
                ours: true
            }
        );
    }

    #[test]
    fn a_secret_that_is_not_ours_is_a_conflict_unless_the_entry_overwrites() {
        let users = existing(false, "sha256:new", "sha256:new", TYPE);
        let Plan::Conflict(reference) = decide(Some(&users), OWNER, false) else {
            panic!("a user's Secret is not a conflict");
        };
        // Reported on the Secret in the way, in its namespace.
        assert_eq!(reference.kind.as_deref(), Some("Secret"));
        assert_eq!(reference.namespace.as_deref(), Some("team-a"));
        assert_eq!(reference.name.as_deref(), Some("regcred"));
        assert_eq!(
            decide(Some(&users), OWNER, true),
            Plan::Replace {
                resource_version: Some("7".into()),
                ours: false
            }
        );
        let other_installation = existing(true, "sha256:new", "sha256:new", TYPE);
        assert!(matches!(
            decide(
                Some(&other_installation),
                "other/pullsecret-injector",
                false
            ),
            Plan::Conflict(_)
        ));
    }
}
