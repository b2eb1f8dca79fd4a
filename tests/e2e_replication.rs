//! End to end through a real kube-apiserver (crates/test-support, `controlplane`): the real
//! `pullsecret-injector serve` binary replicates source pull secrets into opted-in
//! namespaces, keeps them in sync, and creates a missing copy while admitting a pod.
//!
//! Isolation: the tests share one control plane and run in parallel, each with injectors of
//! its own. Each test has its own source namespace (which also holds its Lease), its own
//! opt-in label (`pullsecret-injector.io/e2e-repl-<id>`), its own Lease name, its own
//! namespaces and, where pods are involved, its own MutatingWebhookConfiguration selecting
//! that label (deleted at the end, or on drop if the test panics). Every injector runs with
//! the access the chart grants for its config (a ServiceAccount token, test_support::access)
//! and watches its copies' names across the whole cluster, so these tests also show that one
//! installation leaves another's copies alone.
//!
//! Needs `make controlplane` once.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use test_support::access::{self, ChartAccess, apply_access};
use test_support::controlplane::{self, NamespaceName, eventually, set_label};
use test_support::injector::{Injector, Instance, Options};
use test_support::metrics::{
    conflicts_metric, copies_metric, ensured_metric, leader_metric, metric,
};
use test_support::pods::{dry_run_secrets, pod, secret_names, wait_dry_run};
use test_support::ports::free_port;
use test_support::replication::{
    CONVERGE, HASH_ANNOTATION, MANAGED_BY, SOURCE_ANNOTATION, Snapshot, annotation,
    assert_untouched, check_copy, conflict_events, replication_config, user_secret, wait_absent,
    wait_copy,
};
use test_support::secrets::{
    Credentials, DOCKERCONFIGJSON, DOCKERCONFIGJSON_KEY, create_secret, data_of, dockerconfigjson,
    get_secret, pull_secret, rotate, secret,
};
use test_support::webhook::{self, register};

/// The Lease duration every test configures; take-over is asserted within twice this.
const LEASE_SECONDS: u64 = 4;
/// How long a replicator may take to win a free Lease.
const LEADER: Duration = Duration::from_secs(4 * LEASE_SECONDS);
/// How long the apiserver may take to act on a new webhook configuration.
const PROPAGATION: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Helpers: config, injectors
// ---------------------------------------------------------------------------

/// The opt-in namespace label of test `id`: the injector's namespaceSelector and, where a
/// webhook is registered, the webhook's.
fn opt_in_label(id: &str) -> String {
    format!("pullsecret-injector.io/e2e-repl-{id}")
}

/// A replication config: sources in `source_ns` (also the Lease's namespace), copies in
/// namespaces labelled `opt_in_label(id)=enabled`, Lease `e2e-repl-<id>`, and `secrets`
/// (a YAML list, indented by two spaces).
fn config(id: &str, source_ns: &str, secrets: &str) -> String {
    replication_config(
        source_ns,
        &opt_in_label(id),
        &format!("e2e-repl-{id}"),
        LEASE_SECONDS,
        secrets,
    )
}

/// The usual single entry: `regcred`, copied from `regcred-source`, patterns from its auths.
const REGCRED: &str = "  - name: regcred\n    source: {name: regcred-source}\n";

/// Starts an injector with the chart's access for `config` (its certificate directory kept
/// for restarts) and waits until its caches have synced.
async fn start_replicator(config: &str) -> Instance {
    access::replicator(config, &[]).await
}

async fn start_replicator_on(config: &str, listen: &str) -> Instance {
    let replicator = Instance::start(|dir| start_in(config, listen, dir));
    replicator.injector.wait_synced().await;
    replicator
}

/// Starts an injector and waits until it holds the Lease (and its caches have synced).
async fn start_leader(config: &str) -> Instance {
    let replicator = start_replicator(config).await;
    replicator.injector.wait_leader(LEADER).await;
    replicator
}

/// Starts `serve` with `config` on `listen` in `dir` (certificates already there) against the
/// test control plane, with the access the chart grants for that config (its token's
/// kubeconfig written into `dir`).
fn start_in(config: &str, listen: &str, dir: &std::path::Path) -> Injector {
    let access = ChartAccess::for_config_blocking(config, dir);
    Injector::start(Options {
        kubeconfig: Some(&access.kubeconfig),
        listen,
        ..Options::new(config, dir)
    })
}

/// Waits until a restarted injector has synced and holds the Lease.
async fn wait_leader(injector: &Injector) {
    injector.wait_synced().await;
    injector.wait_leader(LEADER).await;
}

/// The webhook configuration of test `id`, calling `replicator`.
fn registration(
    id: &str,
    replicator: &Instance,
) -> k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration {
    webhook::replicating(
        &format!("pullsecret-injector-e2e-repl-{id}"),
        &opt_in_label(id),
        &replicator.url(),
        &replicator.ca_pem,
        5,
    )
}

/// Every write the injector counted (created, updated, overwritten, deleted).
fn writes(text: &str) -> f64 {
    ["created", "updated", "overwritten", "deleted"]
        .iter()
        .map(|a| copies_metric(text, a))
        .sum()
}

// ---------------------------------------------------------------------------
// Helpers: Kubernetes objects
// ---------------------------------------------------------------------------

async fn create_source(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    auths: &[Credentials],
) -> Secret {
    create_secret(
        client,
        namespace,
        &pull_secret(name, &dockerconfigjson(auths)),
    )
    .await
}

/// A test's source namespace (`<prefix>-<random>`, also the Lease's) with the source Secret
/// `regcred-source` holding `auths`: the namespace and the Secret.
async fn regcred_source(
    client: &kube::Client,
    prefix: &str,
    auths: &[Credentials],
) -> (String, Secret) {
    let source_ns = controlplane::namespace(client, prefix, &[]).await;
    let source = create_source(client, &source_ns, "regcred-source", auths).await;
    (source_ns, source)
}

/// Polls `check` every 10 ms until it yields a value, for at most `timeout`; returns the
/// value and the time it took. For latency measurements, where `eventually`'s 200 ms
/// interval would be the error bar.
async fn timed<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return (value, started.elapsed());
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn labelled_namespace_gets_copies_within_two_seconds_and_loses_them_when_unlabelled() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "label";
    let key = opt_in_label(id);
    let (source_ns, source) = regcred_source(
        &client,
        "e2e-repl-label-src",
        &[Credentials::new("registry.example.com", "robot", "s3cret")],
    )
    .await;
    let replicator = start_leader(&config(id, &source_ns, REGCRED)).await;
    let _injector_logs = replicator.injector.logs_on_failure();

    // Several namespaces, labelled one after another; no pod anywhere.
    let mut label_to_copy = Vec::new();
    let mut namespaces = Vec::new();
    for _ in 0..5 {
        let ns = controlplane::namespace(&client, "e2e-repl-label", &[]).await;
        assert!(get_secret(&client, &ns, "regcred").await.is_none());
        set_label(&client, &ns, &key, Some("enabled")).await;
        let (copy, took) = timed(
            &format!("the copy in {ns}"),
            Duration::from_secs(10),
            || async { get_secret(&client, &ns, "regcred").await },
        )
        .await;
        check_copy(&copy, &source).unwrap_or_else(|e| panic!("{e}"));
        label_to_copy.push(took);
        namespaces.push(ns);
    }

    // Unlabel the first: its copy goes; relabel it: the copy comes back.
    let ns = &namespaces[0];
    set_label(&client, ns, &key, None).await;
    let ((), unlabel_to_gone) = timed(
        &format!("the copy in {ns} to be deleted"),
        Duration::from_secs(10),
        || async {
            get_secret(&client, ns, "regcred")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    set_label(&client, ns, &key, Some("enabled")).await;
    let (copy, relabel_to_copy) = timed(
        &format!("the copy in {ns} to be restored"),
        Duration::from_secs(10),
        || async { get_secret(&client, ns, "regcred").await },
    )
    .await;
    check_copy(&copy, &source).unwrap_or_else(|e| panic!("{e}"));
    // The other namespaces kept theirs.
    for other in &namespaces[1..] {
        assert!(
            get_secret(&client, other, "regcred").await.is_some(),
            "{other}"
        );
    }

    println!(
        "label -> copy: {:?}; unlabel -> copy deleted: {unlabel_to_gone:?}; relabel -> copy: {relabel_to_copy:?}",
        label_to_copy
    );
    for took in label_to_copy.iter().chain([&relabel_to_copy]) {
        assert!(*took < Duration::from_secs(2), "copy took {took:?}");
    }
    assert!(
        unlabel_to_gone < Duration::from_secs(2),
        "deletion took {unlabel_to_gone:?}"
    );

    let metrics = replicator.injector.metrics().await;
    assert!(copies_metric(&metrics, "created") >= 6.0, "{metrics}");
    assert!(copies_metric(&metrics, "deleted") >= 1.0, "{metrics}");
    assert_eq!(leader_metric(&metrics), 1.0, "{metrics}");
    let logs = replicator.injector.json_logs();
    assert!(
        logs.iter()
            .any(|l| l["message"] == "copy deleted" && l["secret"] == "regcred"),
        "no 'copy deleted' log line"
    );
    assert!(
        logs.iter()
            .any(|l| l["message"] == "copy created" && l["namespace"] == ns.as_str())
    );
}

#[tokio::test]
async fn source_rotation_reaches_every_copy() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "rotate";
    let key = opt_in_label(id);
    let auths = |password| [Credentials::new("registry.example.com", "robot", password)];
    let (source_ns, source) =
        regcred_source(&client, "e2e-repl-rotate-src", &auths("old-password")).await;
    let replicator = start_leader(&config(id, &source_ns, REGCRED)).await;
    let _injector_logs = replicator.injector.logs_on_failure();

    let mut namespaces = Vec::new();
    for _ in 0..3 {
        namespaces
            .push(controlplane::namespace(&client, "e2e-repl-rotate", &[(&key, "enabled")]).await);
    }
    let mut old_hashes = Vec::new();
    for ns in &namespaces {
        let copy = wait_copy(&client, ns, "regcred", &source, CONVERGE).await;
        old_hashes.push(annotation(&copy, HASH_ANNOTATION).unwrap().to_string());
    }

    let rotated = rotate(
        &client,
        &source_ns,
        "regcred-source",
        &auths("new-password"),
    )
    .await;
    assert_ne!(data_of(&rotated), data_of(&source));
    let started = Instant::now();
    for (ns, old_hash) in namespaces.iter().zip(&old_hashes) {
        let copy = wait_copy(&client, ns, "regcred", &rotated, CONVERGE).await;
        assert_eq!(
            data_of(&copy)[DOCKERCONFIGJSON_KEY].0,
            dockerconfigjson(&auths("new-password")),
            "{ns}: bytes"
        );
        assert_ne!(annotation(&copy, HASH_ANNOTATION), Some(old_hash.as_str()));
    }
    println!(
        "rotation reached all {} copies in {:?}",
        namespaces.len(),
        started.elapsed()
    );
    let metrics = replicator.injector.metrics().await;
    assert!(copies_metric(&metrics, "updated") >= 3.0, "{metrics}");

    // A copy whose data someone edited by hand is put back to the source's bytes.
    let ns = &namespaces[1];
    let edited =
        json!({"data": {DOCKERCONFIGJSON_KEY: ByteString(dockerconfigjson(&auths("edited")))}});
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch("regcred", &PatchParams::default(), &Patch::Merge(&edited))
        .await
        .expect("edit a copy");
    wait_copy(&client, ns, "regcred", &rotated, CONVERGE).await;
}

/// One run of the race: a labelled namespace, then at once a Pod in it.
struct Race {
    /// Pod create latencies of the runs that passed.
    latencies: Vec<Duration>,
    failures: Vec<String>,
    /// Pod creates refused by the ServiceAccount admission plugin and retried.
    sa_retries: usize,
}

async fn race(client: &kube::Client, key: &str, image: &str, source: &Secret, runs: usize) -> Race {
    let mut result = Race {
        latencies: Vec::new(),
        failures: Vec::new(),
        sa_retries: 0,
    };
    for run in 0..runs {
        let ns = controlplane::create_namespace(
            client,
            NamespaceName::Generated("e2e-repl-race-"),
            &[(key, "enabled")],
        )
        .await;
        // At once: no waiting for anything in the new namespace.
        let pods = Api::<Pod>::namespaced(client.clone(), &ns);
        let started = Instant::now();
        let created = loop {
            match pods
                .create(&PostParams::default(), &pod("app", &[image]))
                .await
            {
                // The ServiceAccount admission plugin (which runs before webhooks) refuses pods
                // until kube-controller-manager has made the namespace's `default`
                // ServiceAccount; only that refusal is retried.
                Err(kube::Error::Api(status))
                    if status
                        .message
                        .contains("serviceaccount \"default\" not found")
                        && started.elapsed() < Duration::from_secs(10) =>
                {
                    result.sa_retries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => break other,
            }
        };
        let latency = started.elapsed();
        // Immediately after the create returned.
        let present = get_secret(client, &ns, "regcred").await;
        match created {
            Err(e) => result
                .failures
                .push(format!("run {run} ({ns}): pod create failed: {e}")),
            Ok(created) if secret_names(&created) != ["regcred"] => result.failures.push(format!(
                "run {run} ({ns}): pod returned with imagePullSecrets {:?}",
                secret_names(&created)
            )),
            Ok(_) => match present {
                None => result.failures.push(format!(
                    "run {run} ({ns}): Secret regcred missing right after the pod create"
                )),
                Some(copy) => match check_copy(&copy, source) {
                    Ok(()) => result.latencies.push(latency),
                    Err(e) => result.failures.push(format!("run {run}: {e}")),
                },
            },
        }
    }
    result.latencies.sort();
    result
}

/// Run twice: first with the Lease held by someone else, so that no controller runs and only
/// the webhook's create-before-answer can make the Secret exist; then as deployed, with the
/// webhook's injector also the leader (the controller usually wins the race).
#[tokio::test]
async fn pod_created_with_its_namespace_has_its_secret_present_and_referenced_50_of_50() {
    const RUNS: usize = 50;
    const IMAGE: &str = "race.registry.example/team/app:1";
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "race";
    let key = opt_in_label(id);
    let (source_ns, source) = regcred_source(
        &client,
        "e2e-repl-race-src",
        &[Credentials::new("race.registry.example", "robot", "s3cret")],
    )
    .await;
    let config = config(id, &source_ns, REGCRED);

    // Someone else holds the Lease, for an hour.
    let leases = Api::<Lease>::namespaced(client.clone(), &source_ns);
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some(format!("e2e-repl-{id}")),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("e2e-test-holds-the-lease".into()),
                    lease_duration_seconds: Some(3600),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            },
        )
        .await
        .expect("create the Lease");
    let listen = format!("127.0.0.1:{}", free_port());
    let follower = start_replicator_on(&config, &listen).await;
    let registration = register(&client, &registration(id, &follower)).await;
    let probe_ns =
        controlplane::namespace(&client, "e2e-repl-race-probe", &[(&key, "enabled")]).await;
    let probe_pods = Api::<Pod>::namespaced(client.clone(), &probe_ns);
    {
        let _injector_logs = follower.injector.logs_on_failure().named("no leader");
        wait_dry_run(&probe_pods, IMAGE, &["regcred"], PROPAGATION).await;
        // A dry run has no side effects: nothing was created in the probe namespace.
        assert!(get_secret(&client, &probe_ns, "regcred").await.is_none());
        let race = race(&client, &key, IMAGE, &source, RUNS).await;
        let metrics = follower.injector.metrics().await;
        println!(
            "no leader (admission only): {}/{RUNS} with the Secret present and referenced; pod \
             create p50 {:?}, max {:?}; ServiceAccount-not-found retries: {}; ensured at \
             admission: created {}, exists {}, failed {}",
            race.latencies.len(),
            race.latencies.get(RUNS / 2),
            race.latencies.last(),
            race.sa_retries,
            ensured_metric(&metrics, "created"),
            ensured_metric(&metrics, "exists"),
            ensured_metric(&metrics, "failed"),
        );
        assert!(
            race.failures.is_empty(),
            "failures:\n{}",
            race.failures.join("\n")
        );
        assert_eq!(race.latencies.len(), RUNS);
        assert_eq!(leader_metric(&metrics), 0.0, "{metrics}");
        assert_eq!(
            ensured_metric(&metrics, "created"),
            RUNS as f64,
            "{metrics}"
        );
        assert_eq!(ensured_metric(&metrics, "failed"), 0.0, "{metrics}");

        // A Deployment's pods at once in a namespace just opted in: one create, and the
        // other admissions wait for it rather than send their own (refused as conflicts).
        let burst_ns =
            controlplane::namespace(&client, "e2e-repl-race-burst", &[(&key, "enabled")]).await;
        let tls = test_support::client::TlsClient::new(&follower.ca_pem);
        let body = test_support::pods::admission_review("burst", &burst_ns, IMAGE).to_string();
        let answers = futures::future::join_all((0..8).map(|_| {
            tls.post(
                follower.injector.addr,
                "/mutate?timeout=10s",
                "application/json",
                body.clone(),
            )
        }))
        .await;
        for answer in &answers {
            let response = &answer.json()["response"];
            assert_eq!(answer.status, 200, "{response}");
            assert!(response["patch"].is_string(), "{response}");
            assert!(response["warnings"].is_null(), "{response}");
        }
        let after = follower.injector.metrics().await;
        let delta = |result| ensured_metric(&after, result) - ensured_metric(&metrics, result);
        assert_eq!(delta("created"), 1.0, "{after}");
        assert_eq!(
            delta("exists"),
            0.0,
            "an admission sent a create of its own: {after}"
        );
        assert_eq!(delta("failed"), 0.0, "{after}");
        assert!(delta("joined") <= 7.0, "{after}");
        let copy = get_secret(&client, &burst_ns, "regcred")
            .await
            .expect("the copy exists once the pods are admitted");
        check_copy(&copy, &source).expect("the copy carries the source");
    }

    // As deployed: the Lease is free, the same injector (same port) restarts and leads.
    let Instance { injector, dir, .. } = follower;
    injector.stop_cleanly();
    leases
        .delete(&format!("e2e-repl-{id}"), &DeleteParams::default())
        .await
        .expect("delete the Lease");
    let leader = start_in(&config, &listen, dir.path());
    wait_leader(&leader).await;
    let _injector_logs = leader.logs_on_failure().named("leader");
    wait_dry_run(&probe_pods, IMAGE, &["regcred"], PROPAGATION).await;
    let with_controller = race(&client, &key, IMAGE, &source, RUNS).await;
    let metrics = leader.metrics().await;
    println!(
        "with the controller: {}/{RUNS} with the Secret present and referenced; pod create p50 \
         {:?}, max {:?}; ServiceAccount-not-found retries: {}; ensured at admission: created \
         {}, exists {}, failed {}",
        with_controller.latencies.len(),
        with_controller.latencies.get(RUNS / 2),
        with_controller.latencies.last(),
        with_controller.sa_retries,
        ensured_metric(&metrics, "created"),
        ensured_metric(&metrics, "exists"),
        ensured_metric(&metrics, "failed"),
    );
    assert!(
        with_controller.failures.is_empty(),
        "failures:\n{}",
        with_controller.failures.join("\n")
    );
    assert_eq!(with_controller.latencies.len(), RUNS);
    assert_eq!(ensured_metric(&metrics, "failed"), 0.0, "{metrics}");
    assert_eq!(leader_metric(&metrics), 1.0, "{metrics}");

    registration.delete().await;
}

#[tokio::test]
async fn user_owned_secret_of_the_same_name_is_never_touched() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "userowned";
    let key = opt_in_label(id);
    let auths = |password| [Credentials::new("registry.example.com", "robot", password)];
    let (source_ns, source) = regcred_source(&client, "e2e-repl-user-src", &auths("one")).await;
    let secrets = "  - name: regcred\n    source: {name: regcred-source}\n  \
                   - name: regcred-ow\n    source: {name: regcred-source}\n    overwriteExisting: true\n";
    let replicator = start_leader(&config(id, &source_ns, secrets)).await;
    let _injector_logs = replicator.injector.logs_on_failure();
    let user_config = dockerconfigjson(&[Credentials::new(
        "registry.example.com",
        "me",
        "my-own-password",
    )]);

    // Before labelling: the user's Secret exists, then the namespace opts in.
    let before = controlplane::namespace(&client, "e2e-repl-user-before", &[]).await;
    let user_before = create_secret(
        &client,
        &before,
        &user_secret(
            "regcred",
            DOCKERCONFIGJSON,
            &[(DOCKERCONFIGJSON_KEY, &user_config)],
        ),
    )
    .await;
    let snapshot_before = Snapshot::of(&user_before);
    set_label(&client, &before, &key, Some("enabled")).await;

    // After labelling: the copy is there, and the user takes the name over (drops our label,
    // writes their own data).
    let after = controlplane::namespace(&client, "e2e-repl-user-after", &[(&key, "enabled")]).await;
    let mut taken = wait_copy(&client, &after, "regcred", &source, CONVERGE).await;
    taken.metadata.labels = Some(BTreeMap::from([(
        "team".to_string(),
        "payments".to_string(),
    )]));
    taken.metadata.annotations = None;
    taken.data = Some(BTreeMap::from([(
        DOCKERCONFIGJSON_KEY.to_string(),
        ByteString(user_config.clone()),
    )]));
    let user_after = Api::<Secret>::namespaced(client.clone(), &after)
        .replace("regcred", &PostParams::default(), &taken)
        .await
        .expect("the user takes the Secret over");
    let snapshot_after = Snapshot::of(&user_after);

    // The controller ran: a namespace labelled after these got its copy, the conflicts were
    // counted, logged and reported as Events on the Secrets in the way.
    let control = controlplane::namespace(&client, "e2e-repl-user-control", &[]).await;
    set_label(&client, &control, &key, Some("enabled")).await;
    wait_copy(&client, &control, "regcred", &source, CONVERGE).await;
    for ns in [&before, &after] {
        eventually(
            &format!("a PullSecretConflict Event about namespace {ns}"),
            CONVERGE,
            || async {
                let events = conflict_events(&client, ns).await;
                match events.first() {
                    Some(e) if e.type_.as_deref() != Some("Warning") => {
                        Err(format!("event of type {:?}", e.type_))
                    }
                    Some(e) if e.involved_object.name.as_deref() != Some("regcred") => {
                        Err(format!("event about {:?}", e.involved_object))
                    }
                    Some(_) => Ok(()),
                    None => Err("no event yet".to_string()),
                }
            },
        )
        .await;
    }
    // Never an Event about a Namespace, which would be filed in `default`.
    let about_namespaces = Api::<Event>::all(client.clone())
        .list(
            &ListParams::default()
                .fields("involvedObject.kind=Namespace,reason=PullSecretConflict"),
        )
        .await
        .expect("list events")
        .items;
    assert!(
        about_namespaces.is_empty(),
        "conflict Events about namespaces: {about_namespaces:?}"
    );
    let metrics = replicator.injector.metrics().await;
    assert!(conflicts_metric(&metrics) >= 2.0, "{metrics}");
    let logs = replicator.injector.json_logs();
    for ns in [&before, &after] {
        assert!(
            logs.iter().any(|l| l["level"] == "WARN"
                && l["namespace"] == ns.as_str()
                && l["secret"] == "regcred"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("not created by"))),
            "no conflict warning logged for {ns}"
        );
    }

    // One more full pass (a source rotation reconciles every namespace): the copies follow,
    // the user's Secrets do not.
    let rotated = rotate(&client, &source_ns, "regcred-source", &auths("two")).await;
    wait_copy(&client, &control, "regcred", &rotated, CONVERGE).await;
    wait_copy(&client, &before, "regcred-ow", &rotated, CONVERGE).await;
    wait_copy(&client, &after, "regcred-ow", &rotated, CONVERGE).await;
    assert_untouched(&client, &before, "regcred", &snapshot_before).await;
    assert_untouched(&client, &after, "regcred", &snapshot_after).await;
    assert_eq!(
        data_of(&get_secret(&client, &before, "regcred").await.unwrap())[DOCKERCONFIGJSON_KEY].0,
        user_config,
        "byte for byte"
    );

    // overwriteExisting: true replaces a user's Secret of that entry's name, whatever its type.
    let overwrite = controlplane::namespace(&client, "e2e-repl-user-ow", &[]).await;
    let same_type = create_secret(
        &client,
        &overwrite,
        &user_secret(
            "regcred-ow",
            DOCKERCONFIGJSON,
            &[(DOCKERCONFIGJSON_KEY, &user_config)],
        ),
    )
    .await;
    let overwrite_opaque = controlplane::namespace(&client, "e2e-repl-user-ow-opaque", &[]).await;
    create_secret(
        &client,
        &overwrite_opaque,
        &user_secret("regcred-ow", "Opaque", &[("token", b"abc")]),
    )
    .await;
    set_label(&client, &overwrite, &key, Some("enabled")).await;
    set_label(&client, &overwrite_opaque, &key, Some("enabled")).await;
    let replaced = wait_copy(&client, &overwrite, "regcred-ow", &rotated, CONVERGE).await;
    assert_eq!(
        replaced.metadata.uid, same_type.metadata.uid,
        "replaced in place"
    );
    wait_copy(&client, &overwrite_opaque, "regcred-ow", &rotated, CONVERGE).await;
    // The entry without overwriteExisting makes its copy there as usual.
    wait_copy(&client, &overwrite, "regcred", &rotated, CONVERGE).await;
    let metrics = replicator.injector.metrics().await;
    assert!(copies_metric(&metrics, "overwritten") >= 2.0, "{metrics}");
    // Overwriting is not a conflict.
    let logs = replicator.injector.json_logs();
    for ns in [&overwrite, &overwrite_opaque] {
        assert!(
            !logs
                .iter()
                .any(|l| l["level"] == "WARN" && l["namespace"] == ns.as_str()),
            "a warning was logged for {ns}"
        );
        assert!(conflict_events(&client, ns).await.is_empty(), "{ns}");
    }
}

#[tokio::test]
async fn restart_after_downtime_converges_without_touching_others() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "restart";
    let key = opt_in_label(id);
    let auths = |password| [Credentials::new("registry.example.com", "robot", password)];
    let (source_ns, source) =
        regcred_source(&client, "e2e-repl-restart-src", &auths("before")).await;
    let config = config(id, &source_ns, REGCRED);
    let first = start_leader(&config).await;

    let deleted_copy =
        controlplane::namespace(&client, "e2e-repl-restart-del", &[(&key, "enabled")]).await;
    let kept =
        controlplane::namespace(&client, "e2e-repl-restart-kept", &[(&key, "enabled")]).await;
    let unlabelled =
        controlplane::namespace(&client, "e2e-repl-restart-unl", &[(&key, "enabled")]).await;
    let added = controlplane::namespace(&client, "e2e-repl-restart-add", &[]).await;
    let user_ns = controlplane::namespace(&client, "e2e-repl-restart-user", &[]).await;
    // A Secret of another name next to a copy.
    let other = create_secret(
        &client,
        &kept,
        &user_secret("app-config", "Opaque", &[("key", b"value")]),
    )
    .await;
    {
        let _injector_logs = first.injector.logs_on_failure().named("first");
        for ns in [&deleted_copy, &kept, &unlabelled] {
            wait_copy(&client, ns, "regcred", &source, CONVERGE).await;
        }
    }
    let Instance { injector, dir, .. } = first;
    injector.stop_cleanly();

    // While it is down.
    Api::<Secret>::namespaced(client.clone(), &deleted_copy)
        .delete("regcred", &DeleteParams::default())
        .await
        .expect("delete a copy");
    set_label(&client, &added, &key, Some("enabled")).await;
    set_label(&client, &unlabelled, &key, None).await;
    let rotated = rotate(&client, &source_ns, "regcred-source", &auths("after")).await;
    let user = create_secret(
        &client,
        &user_ns,
        &user_secret(
            "regcred",
            DOCKERCONFIGJSON,
            &[(
                DOCKERCONFIGJSON_KEY,
                &dockerconfigjson(&[Credentials::new("registry.example.com", "me", "mine")]),
            )],
        ),
    )
    .await;
    set_label(&client, &user_ns, &key, Some("enabled")).await;

    let started = Instant::now();
    let second = start_in(&config, "127.0.0.1:0", dir.path());
    wait_leader(&second).await;
    let _injector_logs = second.logs_on_failure().named("second");
    for ns in [&deleted_copy, &kept, &added] {
        wait_copy(&client, ns, "regcred", &rotated, CONVERGE).await;
    }
    wait_absent(&client, &unlabelled, "regcred", CONVERGE).await;
    println!("converged {:?} after the restart", started.elapsed());
    eventually("the conflict to be counted", CONVERGE, || async {
        let metrics = second.metrics().await;
        (conflicts_metric(&metrics) >= 1.0)
            .then_some(())
            .ok_or(metrics)
    })
    .await;
    assert_untouched(&client, &user_ns, "regcred", &Snapshot::of(&user)).await;
    assert_untouched(&client, &kept, "app-config", &Snapshot::of(&other)).await;
    let metrics = second.metrics().await;
    assert!(copies_metric(&metrics, "created") >= 2.0, "{metrics}");
    assert!(copies_metric(&metrics, "updated") >= 1.0, "{metrics}");
    assert!(copies_metric(&metrics, "deleted") >= 1.0, "{metrics}");
    assert_eq!(copies_metric(&metrics, "overwritten"), 0.0, "{metrics}");
    drop(_injector_logs);
    second.stop_cleanly();
}

#[tokio::test]
async fn only_the_leader_writes_and_the_other_takes_over() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "leader";
    let key = opt_in_label(id);
    let (source_ns, source) = regcred_source(
        &client,
        "e2e-repl-leader-src",
        &[Credentials::new("registry.example.com", "robot", "s3cret")],
    )
    .await;
    let config = config(id, &source_ns, REGCRED);
    let a = start_replicator(&config).await;
    let b = start_replicator(&config).await;
    let a_is_leader = {
        let _a_logs = a.injector.logs_on_failure().named("a");
        let _b_logs = b.injector.logs_on_failure().named("b");
        // Exactly one holds the Lease.
        let a_is_leader = eventually(
            "exactly one leader",
            Duration::from_secs(4 * LEASE_SECONDS),
            || async {
                let (ma, mb) = (a.injector.metrics().await, b.injector.metrics().await);
                match (leader_metric(&ma), leader_metric(&mb)) {
                    (1.0, 0.0) => Ok(true),
                    (0.0, 1.0) => Ok(false),
                    other => Err(format!("leader gauges (a, b) = {other:?}")),
                }
            },
        )
        .await;
        let (leader, follower) = if a_is_leader { (&a, &b) } else { (&b, &a) };
        let first =
            controlplane::namespace(&client, "e2e-repl-leader-1", &[(&key, "enabled")]).await;
        wait_copy(&client, &first, "regcred", &source, CONVERGE).await;
        let (lm, fm) = (
            leader.injector.metrics().await,
            follower.injector.metrics().await,
        );
        assert!(copies_metric(&lm, "created") >= 1.0, "leader:\n{lm}");
        assert_eq!(writes(&fm), 0.0, "the follower wrote:\n{fm}");
        assert_eq!((leader_metric(&lm), leader_metric(&fm)), (1.0, 0.0));
        assert!(
            !follower
                .injector
                .json_logs()
                .iter()
                .any(|l| l["message"] == "became the leader; replicating")
        );
        a_is_leader
    };

    // Stop the leader (SIGTERM: it releases the Lease); the other takes over.
    let (leader, follower) = if a_is_leader { (a, b) } else { (b, a) };
    let stopped = Instant::now();
    leader.injector.stop_cleanly();
    let ((), took) = timed(
        "the follower to take over",
        Duration::from_secs(3 * LEASE_SECONDS),
        || async { (leader_metric(&follower.injector.metrics().await) == 1.0).then_some(()) },
    )
    .await;
    let took_from_stop = stopped.elapsed();
    println!(
        "take-over after SIGTERM: {took:?} after the leader exited ({took_from_stop:?} after SIGTERM)"
    );
    assert!(
        took < Duration::from_secs(2 * LEASE_SECONDS),
        "take-over took {took:?}"
    );

    {
        let _follower_logs = follower.injector.logs_on_failure().named("new leader");
        let second =
            controlplane::namespace(&client, "e2e-repl-leader-2", &[(&key, "enabled")]).await;
        wait_copy(&client, &second, "regcred", &source, CONVERGE).await;
        let fm = follower.injector.metrics().await;
        assert!(copies_metric(&fm, "created") >= 1.0, "new leader:\n{fm}");
    }

    // A leader that dies without releasing the Lease (SIGKILL) is replaced once it expires.
    let c = start_replicator(&config).await;
    let _c_logs = c.injector.logs_on_failure().named("c");
    assert_eq!(leader_metric(&c.injector.metrics().await), 0.0);
    let killed = follower.injector;
    killed.signal("KILL");
    killed.wait(Duration::from_secs(10));
    let ((), took) = timed(
        "the third replica to take over",
        Duration::from_secs(4 * LEASE_SECONDS),
        || async { (leader_metric(&c.injector.metrics().await) == 1.0).then_some(()) },
    )
    .await;
    println!("take-over after SIGKILL: {took:?}");
    assert!(
        took < Duration::from_secs(2 * LEASE_SECONDS) + Duration::from_secs(2),
        "take-over took {took:?}"
    );
    let third = controlplane::namespace(&client, "e2e-repl-leader-3", &[(&key, "enabled")]).await;
    wait_copy(&client, &third, "regcred", &source, CONVERGE).await;
    assert!(copies_metric(&c.injector.metrics().await, "created") >= 1.0);
}

#[tokio::test]
async fn patterns_come_from_the_sources_auths_keys() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "patterns";
    let key = opt_in_label(id);
    let (source_ns, _) = regcred_source(
        &client,
        "e2e-repl-patterns-src",
        &[Credentials::new(
            "registry.example.com:5000",
            "robot",
            "s3cret",
        )],
    )
    .await;
    let replicator = start_leader(&config(id, &source_ns, REGCRED)).await;
    let _injector_logs = replicator.injector.logs_on_failure();
    let registration = register(&client, &registration(id, &replicator)).await;
    let ns = controlplane::namespace(&client, "e2e-repl-patterns", &[(&key, "enabled")]).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    wait_dry_run(
        &pods,
        "registry.example.com:5000/probe:1",
        &["regcred"],
        PROPAGATION,
    )
    .await;

    let matching = pods
        .create(
            &PostParams::default(),
            &pod("matching", &["registry.example.com:5000/app"]),
        )
        .await
        .expect("create pod");
    assert_eq!(secret_names(&matching), ["regcred"]);
    let other = pods
        .create(&PostParams::default(), &pod("other", &["ghcr.io/x/y"]))
        .await
        .expect("create pod");
    assert_eq!(secret_names(&other), Vec::<String>::new());
    // Kubelet semantics: a key with a port matches only that port.
    assert_eq!(
        dry_run_secrets(&pods, "registry.example.com/app")
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        secret_names(&pods.get("matching").await.expect("get")),
        ["regcred"]
    );
    assert_eq!(
        secret_names(&pods.get("other").await.expect("get")),
        Vec::<String>::new()
    );

    // The patterns are re-read when the source changes.
    rotate(
        &client,
        &source_ns,
        "regcred-source",
        &[Credentials::new("ghcr.io", "robot", "s3cret")],
    )
    .await;
    wait_dry_run(&pods, "ghcr.io/x/y", &["regcred"], CONVERGE).await;
    assert_eq!(
        dry_run_secrets(&pods, "registry.example.com:5000/app")
            .await
            .unwrap(),
        Vec::<String>::new()
    );

    registration.delete().await;
}

#[tokio::test]
async fn a_review_before_the_sources_have_listed_waits_for_them_or_is_refused() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "early";
    let registry = "registry.example.com:5000";
    let (source_ns, _) = regcred_source(
        &client,
        "e2e-repl-early-src",
        &[Credentials::new(registry, "robot", "s3cret")],
    )
    .await;
    let config = config(id, &source_ns, REGCRED);
    // The chart's access without its release namespace's RoleBinding: the source (and the
    // Lease) cannot be read, as while a Role is still on its way or was lost.
    let state = tempfile::tempdir().expect("tempdir");
    let access = ChartAccess::for_config(&client, &config, state.path()).await;
    let bindings =
        Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), &source_ns);
    bindings
        .delete(&access.fullname, &DeleteParams::default())
        .await
        .expect("delete the release namespace's RoleBinding");
    eventually("the source no longer readable", CONVERGE, || async {
        let list_source = k8s_openapi::api::authorization::v1::ResourceAttributes {
            namespace: Some(source_ns.clone()),
            verb: Some("list".into()),
            resource: Some("secrets".into()),
            name: Some("regcred-source".into()),
            ..Default::default()
        };
        match access.allows(&client, list_source).await {
            false => Ok(()),
            true => Err("still allowed"),
        }
    })
    .await;
    let ns =
        controlplane::namespace(&client, "e2e-repl-early", &[(&opt_in_label(id), "enabled")]).await;
    let replicator = Instance::start(|dir| {
        Injector::start(Options {
            kubeconfig: Some(&access.kubeconfig),
            ..Options::new(&config, dir)
        })
    });
    let _injector_logs = replicator.injector.logs_on_failure();
    let tls = test_support::client::TlsClient::new(&replicator.ca_pem);
    let review = || {
        test_support::pods::admission_review("early", &ns, &format!("{registry}/app:1")).to_string()
    };

    // Not answered without the source's registries: after half the apiserver's timeout, a
    // 503 that names why, which the apiserver turns into its failurePolicy.
    let started = Instant::now();
    let refused = tls
        .post(
            replicator.injector.addr,
            "/mutate?timeout=2s",
            "application/json",
            review(),
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(refused.json()["reason"], "sources_not_listed");
    assert_eq!(refused.headers["retry-after"], "1");
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(2),
        "refused after {waited:?}, not after the budget of 1 s"
    );
    let ready = replicator.injector.admin_get("/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert_eq!(
        metric(
            &replicator.injector.metrics().await,
            "pullsecret_injector_bad_requests_total{reason=\"sources_not_listed\"}"
        ),
        1.0
    );

    // Granted again while a review waits: it is answered once the source has listed, with
    // the secret its image needs (and the copy made), not as if no registry matched.
    apply_access(&client, &access.docs).await;
    let answered = tls
        .post(
            replicator.injector.addr,
            "/mutate?timeout=30s",
            "application/json",
            review(),
        )
        .await;
    assert_eq!(
        answered.status,
        200,
        "{}",
        String::from_utf8_lossy(&answered.body)
    );
    let response = &answered.json()["response"];
    let patch: k8s_openapi::ByteString =
        serde_json::from_value(response["patch"].clone()).expect("a base64 patch");
    let patch: Value = serde_json::from_slice(&patch.0).expect("a JSON patch");
    assert!(
        patch.to_string().contains(r#"{"name":"regcred"}"#),
        "{patch}"
    );
    assert!(response["warnings"].is_null(), "{response}");
    get_secret(&client, &ns, "regcred")
        .await
        .expect("the copy exists once the pod is admitted");
}

#[tokio::test]
async fn removed_entry_or_unlabelled_namespace_loses_only_its_own_copies() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "removal";
    let key = opt_in_label(id);
    let source_ns = controlplane::namespace(&client, "e2e-repl-removal-src", &[]).await;
    let a = create_source(
        &client,
        &source_ns,
        "a-source",
        &[Credentials::new("a.example", "robot", "a")],
    )
    .await;
    let b = create_source(
        &client,
        &source_ns,
        "b-source",
        &[Credentials::new("b.example", "robot", "b")],
    )
    .await;
    let entry_a = "  - name: regcred-a\n    source: {name: a-source}\n";
    let entry_b = "  - name: regcred-b\n    source: {name: b-source}\n";
    let both = config(id, &source_ns, &format!("{entry_a}{entry_b}"));
    let first = start_leader(&both).await;

    let one = controlplane::namespace(&client, "e2e-repl-removal-1", &[(&key, "enabled")]).await;
    let two = controlplane::namespace(&client, "e2e-repl-removal-2", &[(&key, "enabled")]).await;
    // Next to the copies: a user's Secret of another name, and a copy made by another
    // installation (managed-by label, another source).
    let user = create_secret(
        &client,
        &one,
        &user_secret("team-own", "Opaque", &[("k", b"v")]),
    )
    .await;
    let mut foreign = secret(
        "regcred-foreign",
        DOCKERCONFIGJSON,
        &[(
            DOCKERCONFIGJSON_KEY,
            &dockerconfigjson(&[Credentials::new("c.example", "x", "y")]),
        )],
    );
    foreign.metadata.labels = Some(BTreeMap::from([(
        MANAGED_BY.to_string(),
        "pullsecret-injector".to_string(),
    )]));
    foreign.metadata.annotations = Some(BTreeMap::from([
        (
            SOURCE_ANNOTATION.to_string(),
            "elsewhere/c-source".to_string(),
        ),
        (HASH_ANNOTATION.to_string(), "0123".to_string()),
        (
            "pullsecret-injector.io/owner".to_string(),
            "elsewhere/other-lease".to_string(),
        ),
    ]));
    let foreign = create_secret(&client, &one, &foreign).await;
    // In the injector's own namespace (never opted in), a Secret with the managed-by label
    // and no owner, as the self-managed certificate keeper writes its certificate.
    let mut certificate = secret(
        "webhook-tls",
        "kubernetes.io/tls",
        &[("tls.crt", b"c"), ("tls.key", b"k")],
    );
    certificate.metadata.labels = Some(BTreeMap::from([(
        MANAGED_BY.to_string(),
        "pullsecret-injector".to_string(),
    )]));
    let certificate = create_secret(&client, &source_ns, &certificate).await;
    let mut copies_a = BTreeMap::new();
    {
        let _injector_logs = first.injector.logs_on_failure().named("first");
        for ns in [&one, &two] {
            copies_a.insert(
                ns.clone(),
                wait_copy(&client, ns, "regcred-a", &a, CONVERGE).await,
            );
            wait_copy(&client, ns, "regcred-b", &b, CONVERGE).await;
        }
    }

    // The entry is removed from config, its name retired: its copies go, the rest stays as
    // it was.
    let Instance { injector, dir, .. } = first;
    injector.stop_cleanly();
    let retired = format!(
        "{}retiredSecrets: [regcred-b]\n",
        config(id, &source_ns, entry_a)
    );
    let second = start_in(&retired, "127.0.0.1:0", dir.path());
    wait_leader(&second).await;
    let _injector_logs = second.logs_on_failure().named("second");
    for ns in [&one, &two] {
        wait_absent(&client, ns, "regcred-b", CONVERGE).await;
    }
    for ns in [&one, &two] {
        assert_untouched(&client, ns, "regcred-a", &Snapshot::of(&copies_a[ns])).await;
    }
    assert_untouched(&client, &one, "team-own", &Snapshot::of(&user)).await;
    assert_untouched(&client, &one, "regcred-foreign", &Snapshot::of(&foreign)).await;
    assert_untouched(
        &client,
        &source_ns,
        "webhook-tls",
        &Snapshot::of(&certificate),
    )
    .await;
    // The source of the removed entry is not a copy: never touched.
    assert_untouched(&client, &source_ns, "b-source", &Snapshot::of(&b)).await;

    // A namespace that stops applying loses its copies; the other namespace keeps its own.
    set_label(&client, &two, &key, None).await;
    wait_absent(&client, &two, "regcred-a", CONVERGE).await;
    assert_untouched(&client, &one, "regcred-a", &Snapshot::of(&copies_a[&one])).await;
    assert_untouched(&client, &one, "team-own", &Snapshot::of(&user)).await;
    assert_untouched(&client, &one, "regcred-foreign", &Snapshot::of(&foreign)).await;
    let metrics = second.metrics().await;
    assert!(copies_metric(&metrics, "deleted") >= 3.0, "{metrics}");
}

/// Warning Events about `name` in `namespace` with `reason`.
async fn source_events(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    reason: &str,
) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Secret,involvedObject.name={name},reason={reason}"
        )))
        .await
        .expect("list events")
        .items
}

/// A missing or unusable source is reported where its owners look: an Event on the source
/// Secret, in its namespace. Once it is fixed, its copies' last sync shows in the metrics.
#[tokio::test]
async fn missing_or_invalid_source_is_reported_on_the_source_secret() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "srcevents";
    let key = opt_in_label(id);
    let source_ns = controlplane::namespace(&client, "e2e-repl-srcevents-src", &[]).await;
    let replicator = start_leader(&config(id, &source_ns, REGCRED)).await;
    let _injector_logs = replicator.injector.logs_on_failure();

    let missing = eventually("a SourceSecretMissing Event", CONVERGE, || async {
        source_events(&client, &source_ns, "regcred-source", "SourceSecretMissing")
            .await
            .into_iter()
            .next()
            .ok_or("no Event yet")
    })
    .await;
    assert_eq!(missing.type_.as_deref(), Some("Warning"));
    assert_eq!(missing.involved_object.kind.as_deref(), Some("Secret"));
    assert_eq!(
        missing.involved_object.namespace.as_deref(),
        Some(source_ns.as_str())
    );
    println!("missing source: {:?}", missing.message);

    // An Opaque Secret of that name is not a pull secret.
    let opaque = create_secret(
        &client,
        &source_ns,
        &secret("regcred-source", "Opaque", &[("token", b"hunter2")]),
    )
    .await;
    let invalid = eventually("a SourceSecretInvalid Event", CONVERGE, || async {
        source_events(&client, &source_ns, "regcred-source", "SourceSecretInvalid")
            .await
            .into_iter()
            .next()
            .ok_or("no Event yet")
    })
    .await;
    assert_eq!(
        invalid.involved_object.uid, opaque.metadata.uid,
        "about the Secret that is there"
    );
    let note = invalid.message.clone().unwrap_or_default();
    assert!(note.contains("Opaque"), "{note}");
    assert!(!note.contains("hunter2"), "never the data: {note}");
    println!("invalid source: {note}");

    // Fixed: copies follow, and the last sync of the source is in the metrics.
    Api::<Secret>::namespaced(client.clone(), &source_ns)
        .delete("regcred-source", &DeleteParams::default())
        .await
        .expect("delete the Opaque Secret");
    let source = create_source(
        &client,
        &source_ns,
        "regcred-source",
        &[Credentials::new("registry.example.com", "robot", "s3cret")],
    )
    .await;
    let source_ref = format!("{source_ns}/regcred-source");
    let ns = controlplane::namespace(&client, "e2e-repl-srcevents", &[(&key, "enabled")]).await;
    wait_copy(&client, &ns, "regcred", &source, CONVERGE).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let synced = metric(
        &replicator.injector.metrics().await,
        &format!(
            "pullsecret_injector_source_last_sync_timestamp_seconds{{source=\"{source_ref}\"}}"
        ),
    );
    assert!(
        (now - 60.0..=now + 1.0).contains(&synced),
        "last sync {synced}, now {now}"
    );

    // Nothing about a Namespace, ever.
    for reason in [
        "SourceSecretMissing",
        "SourceSecretInvalid",
        "PullSecretConflict",
    ] {
        let about_namespaces = Api::<Event>::all(client.clone())
            .list(
                &ListParams::default()
                    .fields(&format!("involvedObject.kind=Namespace,reason={reason}")),
            )
            .await
            .expect("list events")
            .items;
        assert!(
            about_namespaces.is_empty(),
            "{reason}: {about_namespaces:?}"
        );
    }
}

/// The sample names a scrape allows: each `# TYPE` family's series (`_total` of a counter,
/// `_bucket`/`_sum`/`_count` of a histogram, `_info` of an info), so that a family with no
/// sample yet (no error counted so far) still counts as exported.
fn exported_series(scrape: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        } else if !line.starts_with('#')
            && let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty())
        {
            names.insert(name.to_string());
        }
    }
    names
}

/// The metric names a PromQL expression selects: every identifier before a `{` selector,
/// and every identifier of our families or the process collector's wherever it stands.
fn selected_metrics(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric()
                    || bytes[i] == b'_'
                    || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &expr[start..i];
            let before_selector = bytes.get(i) == Some(&b'{');
            let ours = word.starts_with("pullsecret_injector_") || word.starts_with("process_");
            // `$job`, `$__rate_interval`: variables, not metrics.
            let variable = start > 0 && bytes[start - 1] == b'$';
            if (before_selector || ours) && !variable {
                names.push(word.to_string());
            }
        } else if c == '"' {
            // Label values are not metric names.
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += 1;
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    names
}

/// The Grafana dashboard of the chart reads only metrics the binary exports: a replicating
/// leader that has admitted a pod and refused a request is scraped, and every name in every
/// panel's query and variable must be in the scrape.
#[tokio::test]
async fn every_dashboard_query_names_a_metric_the_binary_exports() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "dashboard";
    let key = opt_in_label(id);
    let (source_ns, source) = regcred_source(
        &client,
        "e2e-repl-dashboard-src",
        &[Credentials::new(
            "registry.example.com:5000",
            "robot",
            "s3cret",
        )],
    )
    .await;
    let replicator = start_leader(&config(id, &source_ns, REGCRED)).await;
    let _injector_logs = replicator.injector.logs_on_failure();
    let registration = register(&client, &registration(id, &replicator)).await;
    let ns = controlplane::namespace(&client, "e2e-repl-dashboard", &[(&key, "enabled")]).await;
    wait_copy(&client, &ns, "regcred", &source, CONVERGE).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    wait_dry_run(
        &pods,
        "registry.example.com:5000/app:1",
        &["regcred"],
        PROPAGATION,
    )
    .await;
    let created = pods
        .create(
            &PostParams::default(),
            &pod("web", &["registry.example.com:5000/app:1"]),
        )
        .await
        .expect("create pod");
    assert_eq!(secret_names(&created), ["regcred"]);
    let refused = test_support::client::TlsClient::new(&replicator.ca_pem)
        .post(
            replicator.injector.addr,
            "/mutate",
            "application/json",
            "not json",
        )
        .await;
    assert_eq!(refused.status, 400);

    let scrape = replicator.injector.metrics().await;
    let exported = exported_series(&scrape);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/pullsecret-injector/dashboards/pullsecret-injector.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            queries.push((
                panel["title"].as_str().unwrap_or("?").to_string(),
                expr.to_string(),
            ));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push((
                format!("${}", variable["name"].as_str().unwrap_or("?")),
                query.to_string(),
            ));
        }
    }
    let mut named = std::collections::BTreeSet::new();
    let mut missing = Vec::new();
    for (title, expr) in &queries {
        let metrics = selected_metrics(expr);
        assert!(!metrics.is_empty(), "{title}: no metric found in {expr}");
        for name in metrics {
            if !exported.contains(&name) {
                missing.push(format!("{title}: {name} (in {expr})"));
            }
            named.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard names metrics the binary does not export:\n{}\nexported: {exported:?}",
        missing.join("\n")
    );
    // What the dashboard is for: each of these is on it.
    for needed in [
        "pullsecret_injector_admissions_total",
        "pullsecret_injector_skipped_admissions_total",
        "pullsecret_injector_injected_secrets_total",
        "pullsecret_injector_admission_duration_seconds_bucket",
        "pullsecret_injector_replicated_copies_total",
        "pullsecret_injector_replication_conflicts_total",
        "pullsecret_injector_certificate_expiry_timestamp_seconds",
        "pullsecret_injector_source_last_sync_timestamp_seconds",
        "pullsecret_injector_certificate_errors_total",
        "pullsecret_injector_leader",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            named.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
    println!(
        "dashboard: {} queries over {} metrics, every one exported by the binary",
        queries.len(),
        named.len()
    );

    // The checker itself: it finds names where they stand, and a misspelt one fails.
    assert_eq!(
        selected_metrics(
            "histogram_quantile(0.9, sum by (le) (rate(pullsecret_injector_x_bucket{job=~\"$job\"}[$__rate_interval])))"
        ),
        ["pullsecret_injector_x_bucket"]
    );
    assert_eq!(
        selected_metrics("up{job=\"a\"} + process_open_fds"),
        ["up", "process_open_fds"]
    );
    assert!(!exported.contains("pullsecret_injector_admission_total"));
    registration.delete().await;
}
