//! Secrets where the pods are: watch caches (namespaces, source secrets, our copies) on every
//! replica, the live keyring built from sources' `auths`, the copy controller on the leader,
//! and the create-before-answer step that closes the race at admission.

pub mod controller;
pub mod dockerconfig;
pub mod keyring;
pub mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use thiserror::Error;
use tokio::sync::{OnceCell, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{SecretSpec, Settings, SourceRef};
use crate::kubernetes::{
    Clients, FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE, watch_backoff,
};
use crate::matching::Keyring;
use crate::metrics::Metrics;
use view::{CopyView, NamespaceMeta};

/// The labels of a namespace as admission knows it: one that could not be read counts as
/// unlabelled, so entries narrowed by a namespace selector skip it.
pub fn labels_of(namespace: Option<&NamespaceMeta>) -> &BTreeMap<String, String> {
    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
    namespace.map_or(&NO_LABELS, |ns| ns.labels())
}

pub const SOURCE_ANNOTATION: &str = "pullsecret-injector.io/source";
pub const HASH_ANNOTATION: &str = "pullsecret-injector.io/source-hash";
/// Which installation made a copy: its Lease, `<namespace>/<leaseName>` (see [`owner`]).
pub const OWNER_ANNOTATION: &str = "pullsecret-injector.io/owner";

#[derive(Debug, Error)]
pub enum ReplicateError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("leader election: {0}")]
    Lease(String),
}

impl ReplicateError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(status)) if status.is_forbidden() => "forbidden",
            Self::Kube(kube::Error::Api(status)) if status.is_conflict() => "conflict",
            Self::Kube(_) => "api",
            Self::Lease(_) => "lease",
        }
    }
}

/// What changed in the caches, for the leader's controller: which namespaces to sync.
#[derive(Debug, Clone)]
enum Change {
    Namespace(String),
    /// A source changed, or a watch listed again (and may have missed deletions).
    All,
}

/// How long a copy made at admission is taken as there without the copy cache: its watch
/// event normally arrives within a second; this bounds what a copy deleted meanwhile costs.
const MADE_AT_ADMISSION_TTL: Duration = Duration::from_secs(10);

/// A copy that admission is making, or made and the copy cache has not shown yet.
struct Ensuring {
    since: Instant,
    /// The create's outcome (a metric label) or why it failed; set once.
    outcome: OnceCell<Result<&'static str, String>>,
}

impl Ensuring {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            outcome: OnceCell::new(),
        }
    }
}

/// How many changes may wait for a slow controller before it is told it fell behind (and
/// then syncs every namespace).
const CHANGE_BUFFER: usize = 4096;

/// What every replica knows of the cluster, kept current by watches.
pub struct Cluster {
    clients: Clients,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    namespaces: Store<NamespaceMeta>,
    sources: BTreeMap<SourceRef, Store<Secret>>,
    /// Our copies, by name: one watch per name, as RBAC grants Secrets by name only.
    copies: BTreeMap<String, Store<CopyView>>,
    /// This installation's [`owner`]: copies made by another one are not ours.
    owner: String,
    keyring: RwLock<Arc<Keyring>>,
    /// By namespace and name: concurrent admissions that need the same missing copy (a
    /// Deployment's pods in a namespace just opted in) wait for one create, not send one
    /// each; the ones after it find it here until the copy cache has it.
    ensuring: Mutex<HashMap<(String, String), Arc<Ensuring>>>,
    changes: broadcast::Sender<Change>,
    /// Bumped whenever a source changes: the leader's reporter of unusable sources waits on it.
    source_changes: watch::Sender<u64>,
    /// The sources have listed: the keyring holds their registries (admission waits for it).
    sources_listed: watch::Sender<bool>,
    synced: watch::Sender<bool>,
}

impl Cluster {
    /// Starts the watches; they stop when `stop` fires.
    pub fn start(
        clients: Clients,
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let client = clients.api.clone();
        let (namespaces, ns_writer) = reflector::store::<NamespaceMeta>();
        let mut copies = BTreeMap::new();
        let mut copy_writers = Vec::new();
        for name in settings.copy_names() {
            let (store, writer) = reflector::store::<CopyView>();
            copies.insert(name.to_string(), store);
            copy_writers.push((name.to_string(), writer));
        }
        let mut source_writers = Vec::new();
        let mut sources = BTreeMap::new();
        let distinct: std::collections::BTreeSet<SourceRef> = settings
            .secrets
            .iter()
            .filter_map(|s| s.source.clone())
            .collect();
        for source in distinct {
            let (store, writer) = reflector::store::<Secret>();
            sources.insert(source.clone(), store);
            source_writers.push((source, writer));
        }
        let cluster = Arc::new(Self {
            keyring: RwLock::new(Arc::new(settings.keyring.clone())),
            ensuring: Mutex::default(),
            clients,
            owner: owner(&settings),
            settings,
            metrics,
            namespaces,
            sources,
            copies,
            changes: broadcast::Sender::new(CHANGE_BUFFER),
            source_changes: watch::Sender::new(0),
            sources_listed: watch::Sender::new(false),
            synced: watch::Sender::new(false),
        });

        let ns_stream = reflector::reflector(
            ns_writer,
            // Metadata only: the apiserver leaves out spec and status.
            watcher(
                Api::<NamespaceMeta>::all(client.clone()),
                watcher::Config::default(),
            )
            .modify(view::slim_namespace),
        );
        spawn_drive("namespaces", ns_stream, stop.clone(), {
            let cluster = Arc::clone(&cluster);
            move |event| {
                cluster.update_cache_gauges();
                cluster.changed(event, |ns| ns.name_any());
            }
        });
        for (name, writer) in copy_writers {
            let stream = reflector::reflector(
                writer,
                watcher(Api::<CopyView>::all(client.clone()), copies_watch(&name)),
            );
            spawn_drive("copies", stream, stop.clone(), {
                let cluster = Arc::clone(&cluster);
                move |event| {
                    cluster.update_cache_gauges();
                    cluster.copy_seen(event);
                    // How the leader's own writes come back: nothing to do about them.
                    if let watcher::Event::Apply(copy) = event
                        && !cluster.copy_needs_sync(copy)
                    {
                        return;
                    }
                    cluster.changed(event, |copy| copy.namespace().unwrap_or_default());
                }
            });
        }
        for (source, writer) in source_writers {
            let api = Api::<Secret>::namespaced(client.clone(), &source.namespace);
            let config =
                watcher::Config::default().fields(&format!("metadata.name={}", source.name));
            let stream = reflector::reflector(writer, watcher(api, config));
            spawn_drive("source", stream, stop.clone(), {
                let cluster = Arc::clone(&cluster);
                move |_| cluster.source_changed()
            });
        }
        // A connection for admission's first request, opened while the caches list (and
        // beside them: a slow answer must not hold their readiness back).
        let admission = cluster.clients.admission.clone();
        tokio::spawn(async move {
            let warmed =
                tokio::time::timeout(Duration::from_secs(5), admission.apiserver_version()).await;
            if !matches!(warmed, Ok(Ok(_))) {
                tracing::debug!("no connection warmed for admission; it opens one when needed");
            }
        });
        let waiter = Arc::clone(&cluster);
        tokio::spawn(async move {
            // Sources first: admission needs only them (their registries), while the other
            // caches, which admission can do without, go on listing meanwhile.
            let mut ok = true;
            for (source, store) in &waiter.sources {
                ok &= listed(&format!("source {source}"), store).await;
            }
            if ok {
                waiter.source_changed();
                waiter.sources_listed.send_replace(true);
            }
            ok &= listed("namespaces", &waiter.namespaces).await;
            for (name, store) in &waiter.copies {
                ok &= listed(&format!("copies {name}"), store).await;
            }
            if ok {
                waiter.synced.send_replace(true);
                tracing::info!(
                    namespaces = waiter.namespaces.len(),
                    copies = waiter.copies.values().map(Store::len).sum::<usize>(),
                    sources = waiter.sources.len(),
                    "caches synced"
                );
            }
        });
        cluster
    }

    /// Ready for `/readyz` once every cache has listed.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits at most `budget` for the sources to list, and says whether they have: until
    /// then the keyring lacks their registries, and a pod whose image needs one of them
    /// would be admitted without it. The namespace and copy caches are not waited for:
    /// admission reads the API where they have no answer yet.
    pub async fn wait_sources_listed(&self, budget: Duration) -> bool {
        if *self.sources_listed.borrow() {
            return true;
        }
        let mut listed = self.sources_listed.subscribe();
        matches!(
            tokio::time::timeout(budget, listed.wait_for(|listed| *listed)).await,
            Ok(Ok(_))
        )
    }

    /// Waits until every cache has listed.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// The client for watches and for what cannot wait (admission, the Lease, certificates).
    pub fn client(&self) -> Client {
        self.clients.api.clone()
    }

    /// The rate-limited client of the leader's replication.
    pub fn replication_client(&self) -> Client {
        self.clients.replication.clone()
    }

    /// The namespaces to sync, for the leader's controller: every one once the caches have
    /// synced, then each one a cache reports changed, and every one again when a source
    /// changes, a watch lists again or the controller fell behind.
    pub fn namespaces_to_sync(self: &Arc<Self>) -> impl Stream<Item = ObjectRef<NamespaceMeta>> {
        // Subscribed once synced: what happened while listing is in that first pass.
        let state = (Arc::clone(self), None, Vec::new());
        futures::stream::unfold(state, |(cluster, mut changes, mut pending)| async move {
            loop {
                if let Some(next) = pending.pop() {
                    return Some((next, (cluster, changes, pending)));
                }
                let everything = match &mut changes {
                    None => {
                        cluster.wait_synced().await;
                        changes = Some(cluster.changes.subscribe());
                        true
                    }
                    Some(receiver) => match receiver.recv().await {
                        Ok(Change::Namespace(name)) => {
                            pending.push(ObjectRef::new(&name));
                            false
                        }
                        Ok(Change::All) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                };
                if everything {
                    pending.extend(
                        cluster
                            .namespaces
                            .state()
                            .iter()
                            .map(|ns| ObjectRef::from_obj(ns.as_ref())),
                    );
                }
            }
        })
    }

    /// The namespace cache, which the leader's controller syncs.
    pub fn namespace_store(&self) -> Store<NamespaceMeta> {
        self.namespaces.clone()
    }

    /// Whether a copy the watch reports calls for a sync of its namespace: not when it is
    /// ours, current, and wanted where it is.
    fn copy_needs_sync(&self, copy: &CopyView) -> bool {
        let name = copy.name_any();
        let namespace = copy.namespace().unwrap_or_default();
        let Some(ns) = self.namespaces.get(&ObjectRef::new(&namespace)) else {
            return true;
        };
        let Some(spec) = self.settings.secrets.iter().find(|s| s.name == name) else {
            return true;
        };
        let (Some(source_ref), true) = (
            &spec.source,
            self.settings.replicates_into(spec, &namespace, ns.labels()),
        ) else {
            return true;
        };
        let Some(source) = self.source(source_ref) else {
            return true;
        };
        let hash = dockerconfig::data_hash(source.type_.as_deref(), source.data.as_ref());
        !(is_managed(copy, &self.owner) && is_current(copy, source_ref, &hash))
    }

    /// Turns a watch event into the namespaces it concerns; a new listing concerns them all.
    fn changed<K>(&self, event: &watcher::Event<K>, namespace_of: impl Fn(&K) -> String) {
        let change = match event {
            watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
                Change::Namespace(namespace_of(object))
            }
            watcher::Event::InitDone => Change::All,
            watcher::Event::Init | watcher::Event::InitApply(_) => return,
        };
        // No receiver: no controller is running on this replica.
        let _ = self.changes.send(change);
    }

    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Config patterns plus the current sources' `auths` keys.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring
            .read()
            .map(|k| Arc::clone(&k))
            .unwrap_or_else(|_| Arc::new(self.settings.keyring.clone()))
    }

    pub fn source(&self, source: &SourceRef) -> Option<Arc<Secret>> {
        let store = self.sources.get(source)?;
        store.get(&ObjectRef::new(&source.name).within(&source.namespace))
    }

    pub fn copy(&self, namespace: &str, name: &str) -> Option<Arc<CopyView>> {
        self.copies
            .get(name)?
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// This installation's copies in `namespace` (not another installation's).
    pub fn copies_in(&self, namespace: &str) -> Vec<Arc<CopyView>> {
        self.copies
            .iter()
            .filter_map(|(name, store)| store.get(&ObjectRef::new(name).within(namespace)))
            .filter(|s| is_managed(s.as_ref(), &self.owner))
            .collect()
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Changes each time a source does.
    pub fn source_changes(&self) -> watch::Receiver<u64> {
        self.source_changes.subscribe()
    }

    /// The namespace as the cache has it, without asking the API.
    pub fn cached_namespace(&self, namespace: &str) -> Option<Arc<NamespaceMeta>> {
        self.namespaces.get(&ObjectRef::new(namespace))
    }

    /// A namespace from the cache, or from the API when the cache has not seen it yet (a
    /// namespace created an instant before its first pod). `None` when it cannot be read.
    pub async fn namespace(&self, namespace: &str) -> Option<Arc<NamespaceMeta>> {
        if let Some(ns) = self.cached_namespace(namespace) {
            return Some(ns);
        }
        let api = Api::<NamespaceMeta>::all(self.clients.admission.clone());
        match tokio::time::timeout(Duration::from_secs(1), api.get_opt(namespace)).await {
            Ok(Ok(found)) => found.map(Arc::new),
            Ok(Err(error)) => {
                tracing::warn!(namespace, %error, "cannot read the namespace's labels");
                None
            }
            Err(_) => {
                tracing::warn!(namespace, "reading the namespace's labels timed out");
                None
            }
        }
    }

    fn source_changed(&self) {
        for (source_ref, store) in &self.sources {
            for source in store.state() {
                if !is_replicable(&source) {
                    tracing::warn!(
                        source = %source_ref,
                        type_ = source.type_.as_deref().unwrap_or_default(),
                        "source is not a kubernetes.io/dockerconfigjson Secret; it is not copied"
                    );
                }
            }
        }
        self.rebuild_keyring();
        self.update_cache_gauges();
        self.source_changes.send_modify(|n| *n += 1);
        let _ = self.changes.send(Change::All);
    }

    fn rebuild_keyring(&self) {
        let (keyring, problems) = keyring::build(&self.settings, |source| self.source(source));
        for problem in &problems {
            if matches!(problem, keyring::SourceProblem::Unusable { .. }) {
                self.metrics.replication_error("invalid_source");
            }
            tracing::warn!(%problem, "source secret gives no patterns");
        }
        if let Ok(mut current) = self.keyring.write() {
            *current = Arc::new(keyring);
        }
    }

    fn update_cache_gauges(&self) {
        self.metrics.cache_size("namespaces", self.namespaces.len());
        self.metrics
            .cache_size("copies", self.copies.values().map(Store::len).sum());
        self.metrics
            .cache_size("sources", self.sources.values().map(Store::len).sum());
    }

    /// Makes sure the Secrets a patch references exist in `namespace` before the pod is
    /// admitted: creates missing copies from their sources. Returns a warning per secret
    /// that could not be made to exist. `labels`: the namespace's, or `None` when the caller
    /// has not read them; they are then read (`namespace`) only if a copy is missing, so an
    /// admission whose copies are cached asks the API nothing, even before the namespace
    /// cache has listed.
    pub async fn ensure_copies(
        &self,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
        names: &[String],
        budget: Duration,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut read = None;
        for name in names {
            let Some(spec) = self.settings.secrets.iter().find(|s| &s.name == name) else {
                continue;
            };
            if self.copy(namespace, name).is_some() {
                continue;
            }
            let labels = match labels {
                Some(labels) => labels,
                None => {
                    if read.is_none() {
                        read = Some(self.namespace(namespace).await);
                    }
                    labels_of(read.as_ref().and_then(Option::as_deref))
                }
            };
            if !self.settings.replicates_into(spec, namespace, labels) {
                continue;
            }
            let ensuring = self.ensuring(namespace, name);
            let mut made_here = false;
            let result = tokio::time::timeout(
                budget,
                ensuring.outcome.get_or_init(|| {
                    made_here = true;
                    self.create_copy(spec, namespace)
                }),
            )
            .await;
            if let Ok(Err(_)) = result {
                // A failure is not remembered: the next admission tries again.
                self.forget_ensuring(namespace, name, &ensuring);
            }
            let outcome = match result {
                // Made by another admission, which this one waited for (or found done).
                Ok(Ok("created")) if !made_here => "joined",
                Ok(Ok(outcome)) => *outcome,
                Ok(Err(reason)) => {
                    warnings.push(format!(
                        "secret {name} is missing in namespace {namespace}: {reason}"
                    ));
                    "failed"
                }
                Err(_) => {
                    warnings.push(format!(
                        "secret {name} is missing in namespace {namespace}: timed out creating it"
                    ));
                    "failed"
                }
            };
            self.metrics.ensured_at_admission(outcome);
        }
        warnings
    }

    /// The one [`Ensuring`] of a copy missing from the cache: a new one when there is none,
    /// or the last one is older than [`MADE_AT_ADMISSION_TTL`].
    fn ensuring(&self, namespace: &str, name: &str) -> Arc<Ensuring> {
        let mut ensuring = self.ensuring.lock().unwrap_or_else(|e| e.into_inner());
        let entry = ensuring
            .entry((namespace.to_string(), name.to_string()))
            .or_insert_with(|| Arc::new(Ensuring::new()));
        if entry.since.elapsed() > MADE_AT_ADMISSION_TTL {
            *entry = Arc::new(Ensuring::new());
        }
        Arc::clone(entry)
    }

    fn forget_ensuring(&self, namespace: &str, name: &str, which: &Arc<Ensuring>) {
        let mut ensuring = self.ensuring.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), name.to_string());
        if ensuring.get(&key).is_some_and(|e| Arc::ptr_eq(e, which)) {
            ensuring.remove(&key);
        }
    }

    /// The copy cache now knows a copy (or its deletion): admission asks it from now on.
    fn copy_seen(&self, event: &watcher::Event<CopyView>) {
        let copy = match event {
            watcher::Event::Apply(copy) | watcher::Event::Delete(copy) => copy,
            _ => return,
        };
        let mut ensuring = self.ensuring.lock().unwrap_or_else(|e| e.into_inner());
        if ensuring.is_empty() {
            return;
        }
        ensuring.remove(&(copy.namespace().unwrap_or_default(), copy.name_any()));
    }

    async fn create_copy(
        &self,
        spec: &SecretSpec,
        namespace: &str,
    ) -> Result<&'static str, String> {
        let Some(source_ref) = &spec.source else {
            return Ok("no_source");
        };
        let Some(source) = self.source(source_ref) else {
            return Err(format!("source {source_ref} not found"));
        };
        if !is_replicable(&source) {
            return Err(format!(
                "source {source_ref} is not a {} Secret",
                dockerconfig::DOCKERCONFIGJSON_TYPE
            ));
        }
        let api = Api::<Secret>::namespaced(self.clients.admission.clone(), namespace);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api
            .create(
                &params,
                &copy_of(spec, source_ref, &source, namespace, &self.owner),
            )
            .await
        {
            Ok(_) => {
                self.metrics.copy_changed("created");
                self.metrics.source_synced(&source_ref.to_string());
                tracing::info!(namespace, secret = %spec.name, source = %source_ref, "copy created at admission");
                Ok("created")
            }
            // A copy made by the leader meanwhile, or a Secret of the user's: either way it exists.
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok("exists"),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// How often a cache that has not listed yet is reported.
const LISTING_REPORT: Duration = Duration::from_secs(10);

/// Waits until `store` has listed (false if its watch ended first), saying which cache keeps
/// `/readyz` failing while it has not. The only task that waits on a store's readiness
/// (kube's wakes only the last waiter): everything else waits for [`Cluster::wait_synced`].
async fn listed<K>(what: &str, store: &Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut waited = Duration::ZERO;
    loop {
        match tokio::time::timeout(LISTING_REPORT, store.wait_until_ready()).await {
            Ok(result) => return result.is_ok(),
            Err(_) => {
                waited += LISTING_REPORT;
                tracing::warn!(
                    cache = what,
                    waited_seconds = waited.as_secs(),
                    "a cache has not listed yet; not ready"
                );
            }
        }
    }
}

/// The watch of our copies named `name`, in every namespace: RBAC allows listing and
/// watching a Secret by name only when the request selects that name.
pub fn copies_watch(name: &str) -> watcher::Config {
    watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"))
}

/// Polls a reflector stream until `stop`, calling `on_event` after each event.
fn spawn_drive<S, K>(
    what: &'static str,
    stream: S,
    stop: CancellationToken,
    on_event: impl Fn(&watcher::Event<K>) + Send + 'static,
) where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.backoff(watch_backoff()));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                next = stream.next() => match next {
                    Some(Ok(event)) => on_event(&event),
                    Some(Err(error)) => tracing::warn!(cache = what, %error, "watch failed; retrying with backoff"),
                    None => return,
                },
            }
        }
    });
}

/// The copy of `source` that belongs in `namespace` for `spec`, made by installation `owner`.
pub fn copy_of(
    spec: &SecretSpec,
    source_ref: &SourceRef,
    source: &Secret,
    namespace: &str,
    owner: &str,
) -> Secret {
    let hash = dockerconfig::data_hash(source.type_.as_deref(), source.data.as_ref());
    Secret {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY_VALUE.to_string(),
            )])),
            annotations: Some(BTreeMap::from([
                (SOURCE_ANNOTATION.to_string(), source_ref.to_string()),
                (HASH_ANNOTATION.to_string(), hash),
                (OWNER_ANNOTATION.to_string(), owner.to_string()),
            ])),
            ..Default::default()
        },
        type_: source.type_.clone(),
        data: source.data.clone(),
        immutable: None,
        string_data: None,
    }
}

/// Only pull secrets are copied: the Secret policy lets the injector write no other type.
pub fn is_replicable(source: &Secret) -> bool {
    source.type_.as_deref() == Some(dockerconfig::DOCKERCONFIGJSON_TYPE)
}

/// The installation: replicas that share a Lease are one; every other installation in the
/// cluster (another Lease) has copies of its own, which this one must leave alone.
pub fn owner(settings: &Settings) -> String {
    format!(
        "{}/{}",
        settings.namespace, settings.leader_election.lease_name
    )
}

/// A copy that carries its source's content (`hash`, [`dockerconfig::data_hash`]) and says
/// so in its annotations: nothing to write. Its data too: a copy edited by hand is not current.
pub fn is_current(copy: &CopyView, source: &SourceRef, hash: &str) -> bool {
    let annotation = |key: &str| copy.annotations().get(key).map(String::as_str);
    annotation(HASH_ANNOTATION) == Some(hash)
        && annotation(SOURCE_ANNOTATION) == Some(source.to_string().as_str())
        && copy.content_hash == hash
}

/// A Secret is ours only if it carries our label and names this installation as its owner;
/// nothing else is ever changed or deleted.
pub fn is_managed(secret: &impl ResourceExt, owner: &str) -> bool {
    secret.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
        && secret
            .annotations()
            .get(OWNER_ANNOTATION)
            .map(String::as_str)
            == Some(owner)
}
