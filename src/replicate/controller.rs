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

use std::collections::BTreeSet;
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

use super::view::{CopyView, NamespaceMeta};
use super::{Cluster, HASH_ANNOTATION, ReplicateError, copy_of, is_current, is_managed};
use crate::config::{SecretSpec, SourceRef};
use crate::kubernetes::FIELD_MANAGER;

/// Every namespace is synced again this often. It costs no request when nothing changed:
/// it catches what no watch event points at (a labelled Secret made by hand where no copy
/// belongs).
const RESYNC: Duration = Duration::from_secs(300);
/// Namespaces synced at once. The replication client holds their requests to its rate limit
/// whatever this is; it bounds the connections to the apiserver (HTTP/1.1: one per request
/// in flight) and keeps a namespace labelled during a long resync from waiting behind
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
        if !wanted.contains(copy.name_any().as_str()) {
            delete_copy(ctx, &api, &copy).await?;
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// What a sync does about one copy, given what is there now.
#[derive(Debug, PartialEq)]
enum Plan {
    Nothing,
    Create,
    /// Same type: replace the object with this resourceVersion. `ours`: a copy put back to
    /// the source's content, else a user's Secret taken over (`overwriteExisting`).
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
    /// A Secret of the name that is not ours, and the entry does not overwrite.
    Conflict,
}

/// The copy a sync wants: of `source`, whose content hash is `hash` and type `type_`.
struct Wanted<'a> {
    source: &'a SourceRef,
    hash: &'a str,
    type_: Option<&'a str>,
}

/// The decision for one copy, given what is there (from the cache or the API).
fn plan(existing: Option<&CopyView>, wanted: &Wanted<'_>, owner: &str, overwrite: bool) -> Plan {
    let Some(existing) = existing else {
        return Plan::Create;
    };
    let ours = is_managed(existing, owner);
    if !ours && !overwrite {
        return Plan::Conflict;
    }
    if ours && is_current(existing, wanted.source, wanted.hash) {
        Plan::Nothing
    } else if existing.type_.as_deref() == wanted.type_ {
        Plan::Replace {
            resource_version: existing.resource_version(),
            ours,
        }
    } else {
        Plan::Recreate {
            uid: existing.uid(),
            resource_version: existing.resource_version(),
            ours,
        }
    }
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
        type_: desired.type_.as_deref(),
    };
    // Another installation's copy is not ours: decide on it from the API, like a user's.
    let cached = ctx
        .cluster
        .copy(&ns, &spec.name)
        .filter(|copy| is_managed(copy.as_ref(), owner));
    let decided = plan(cached.as_deref(), &wanted, owner, spec.overwrite_existing);
    let first = execute(ctx, api, namespace, spec, source_ref, &desired, decided).await;
    match first {
        Err(error) if is_stale(&error) => {}
        other => return other.map_err(ReplicateError::from),
    }
    // The cache was behind the API: read the Secret and decide again, once.
    let existing = api.get_opt(&spec.name).await?.map(|s| CopyView::of(&s));
    let decided = plan(existing.as_ref(), &wanted, owner, spec.overwrite_existing);
    match execute(ctx, api, namespace, spec, source_ref, &desired, decided).await {
        // Made by someone else an instant ago (the webhook at admission): it exists, and the
        // next sync decides on it.
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        other => other.map_err(ReplicateError::from),
    }
}

async fn execute(
    ctx: &Context,
    api: &Api<Secret>,
    namespace: &NamespaceMeta,
    spec: &SecretSpec,
    source_ref: &SourceRef,
    desired: &Secret,
    plan: Plan,
) -> Result<(), kube::Error> {
    let ns = namespace.name_any();
    let metrics = ctx.cluster.metrics();
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let ours = match plan {
        Plan::Nothing => return Ok(()),
        Plan::Create => {
            api.create(&params, desired).await?;
            metrics.copy_changed("created");
            tracing::info!(namespace = %ns, secret = %spec.name, source = %source_ref, "copy created");
            return Ok(());
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
        Plan::Conflict => {
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
            let reference: ObjectReference = namespace.object_ref(&());
            if let Err(error) = ctx.recorder.publish(&event, &reference).await {
                tracing::warn!(%error, "cannot publish the conflict event");
            }
            return Ok(());
        }
    };
    let action = if ours { "updated" } else { "overwritten" };
    metrics.copy_changed(action);
    tracing::info!(namespace = %ns, secret = %spec.name, source = %source_ref, action, "copy updated");
    Ok(())
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

    fn wanted(source: &SourceRef) -> Wanted<'_> {
        Wanted {
            source,
            hash: "sha256:new",
            type_: Some(TYPE),
        }
    }

    #[test]
    fn a_current_copy_costs_nothing_and_a_missing_one_is_created() {
        let source = source();
        let current = existing(true, "sha256:new", "sha256:new", TYPE);
        assert_eq!(
            plan(Some(&current), &wanted(&source), OWNER, false),
            Plan::Nothing
        );
        assert_eq!(plan(None, &wanted(&source), OWNER, false), Plan::Create);
    }

    #[test]
    fn a_stale_or_edited_copy_is_replaced_at_the_version_it_was_decided_on() {
        let source = source();
        let replace = Plan::Replace {
            resource_version: Some("7".into()),
            ours: true,
        };
        let rotated = existing(true, "sha256:old", "sha256:old", TYPE);
        assert_eq!(
            plan(Some(&rotated), &wanted(&source), OWNER, false),
            replace
        );
        // Annotations current, data edited by hand.
        let edited = existing(true, "sha256:new", "sha256:edited", TYPE);
        assert_eq!(plan(Some(&edited), &wanted(&source), OWNER, false), replace);
        let retyped = existing(true, "sha256:new", "sha256:other", "Opaque");
        assert_eq!(
            plan(Some(&retyped), &wanted(&source), OWNER, false),
            Plan::Recreate {
                uid: Some("uid-1".into()),
                resource_version: Some("7".into()),
                ours: true
            }
        );
    }

    #[test]
    fn a_secret_that_is_not_ours_is_a_conflict_unless_the_entry_overwrites() {
        let source = source();
        let users = existing(false, "sha256:new", "sha256:new", TYPE);
        assert_eq!(
            plan(Some(&users), &wanted(&source), OWNER, false),
            Plan::Conflict
        );
        assert_eq!(
            plan(Some(&users), &wanted(&source), OWNER, true),
            Plan::Replace {
                resource_version: Some("7".into()),
                ours: false
            }
        );
        let other_installation = existing(true, "sha256:new", "sha256:new", TYPE);
        assert_eq!(
            plan(
                Some(&other_installation),
                &wanted(&source),
                "other/pullsecret-injector",
                false
            ),
            Plan::Conflict
        );
    }
}
