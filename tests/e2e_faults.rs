//! Control-plane faults, through the real control plane (crates/test-support, `controlplane`) and the
//! real `pullsecret-injector serve` binary: kube-apiserver killed and started again while the
//! replicator watches, kube-apiserver down when the injector starts, etcd frozen while pods
//! are admitted, RBAC refusing the replicator's writes, and the source Secret deleted.
//!
//! The injectors run with the access the chart grants for their config (a ServiceAccount
//! token, RBAC by name, the Secret policy: test_support::access), except in the RBAC test,
//! which takes write access away on purpose.
//!
//! Each test binary has a control plane of its own, so breaking it here disturbs no other
//! suite. Within this binary, the tests that break it hold `FAULTS` for writing and the others
//! for reading: nothing runs while the control plane is broken but the test that broke it.
//!
//! Needs `make controlplane` once.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde_json::Value;
use test_support::access::{self, ChartAccess};
use test_support::accounts::{service_account_token, token_kubeconfig};
use test_support::client::TlsClient;
use test_support::controlplane::{self, NamespaceName, eventually, set_label};
use test_support::injector::{self, Injector, Instance, Options};
use test_support::logs::LogsOnFailure;
use test_support::metrics::{conflicts_metric, ensured_metric, errors_metric, leader_metric};
use test_support::pods::{admission_review, admitted_pod, pod, secret_names};
use test_support::replication::{
    CONVERGE, Snapshot, assert_untouched, replication_config, user_secret, wait_copy,
};
use test_support::secrets::{
    Credentials, DOCKERCONFIGJSON, DOCKERCONFIGJSON_KEY, create_secret, get_secret, pull_secret,
    rotate,
};
use test_support::webhook::{self, register};
use tokio::sync::RwLock;

static FAULTS: RwLock<()> = RwLock::const_new(());

/// The usual entry: `regcred`, copied from `regcred-source`, patterns from its auths.
const REGCRED: &str = "  - name: regcred\n    source: {name: regcred-source}\n";
const REGISTRY: &str = "registry.example.com";
const IMAGE: &str = "registry.example.com/team/app:1";
const LEASE_SECONDS: u64 = 15;
/// How long a replicator may take to win a free Lease.
const LEADER: Duration = Duration::from_secs(4 * LEASE_SECONDS);
/// How long the replicator may take to resume after an outage: its watches retry with
/// client-go's backoff capped at 5 s (`replicate::watch_backoff`), so a few seconds, plus
/// the control plane's own start; the bound leaves room for a loaded machine.
const RESUME: Duration = Duration::from_secs(30);

fn label(id: &str) -> String {
    format!("faults.pullsecret-injector.io/{id}")
}

/// Where every test here begins: the shared control plane (its logs printed if the test
/// fails), an opt-in label of the test's own, and a namespace `faults-<id>-src…` holding the
/// source Secret `regcred-source` for REGISTRY with `password`.
struct Start {
    cp: &'static controlplane::ControlPlane,
    _logs: LogsOnFailure<'static>,
    client: kube::Client,
    label: String,
    source_ns: String,
    source: Secret,
}

async fn start(id: &str, password: &str) -> Start {
    let cp = controlplane::shared();
    let logs = cp.logs_on_failure();
    let client = cp.client();
    let source_ns = controlplane::namespace(&client, &format!("faults-{id}-src"), &[]).await;
    let credentials = Credentials::new(REGISTRY, "robot", password);
    let source = create_secret(
        &client,
        &source_ns,
        &pull_secret("regcred-source", &credentials.dockerconfigjson()),
    )
    .await;
    Start {
        cp,
        _logs: logs,
        client,
        label: label(id),
        source_ns,
        source,
    }
}

/// A replicator of the source in `source_ns` into namespaces labelled `label`, holding Lease
/// `lease`, talking to the cluster through `kubeconfig`; returned once it leads.
async fn leader(source_ns: &str, label: &str, lease: &str, kubeconfig: Option<&Path>) -> Instance {
    let config = replication_config(source_ns, label, lease, LEASE_SECONDS, REGCRED);
    let replicator = match kubeconfig {
        Some(kubeconfig) => Instance::replicator(&config, kubeconfig, &[]).await,
        None => access::replicator(&config, &[]).await,
    };
    replicator.injector.wait_leader(LEADER).await;
    replicator
}

/// POSTs a review for a Pod CREATE in `namespace` straight to the injector; returns the
/// `response` part and how long the answer took.
async fn review_directly(running: &Instance, namespace: &str) -> (Value, Duration) {
    let body = admission_review("direct-review", namespace, IMAGE).to_string();
    let started = Instant::now();
    let answer = TlsClient::new(&running.ca_pem)
        .post(
            running.injector.addr,
            "/mutate?timeout=10s",
            "application/json",
            body,
        )
        .await;
    let took = started.elapsed();
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    (answer.json()["response"].clone(), took)
}

#[tokio::test]
async fn apiserver_killed_and_restarted_replicator_resumes_and_converges() {
    let _serial = FAULTS.write().await;
    let Start {
        cp,
        _logs,
        client,
        label,
        source_ns,
        source,
    } = start("restart", "before-the-outage").await;
    let replicator = leader(&source_ns, &label, "faults-restart", None).await;
    let _injector_logs = replicator.injector.logs_on_failure();
    let before =
        controlplane::namespace(&client, "faults-restart-before", &[(&label, "enabled")]).await;
    let later = controlplane::namespace(&client, "faults-restart-later", &[]).await;
    wait_copy(&client, &before, "regcred", &source, CONVERGE).await;
    let pid = replicator.injector.pid();

    // The outage: the replicator's watches break and retry with backoff; it stays up.
    let stopped = tokio::task::spawn_blocking(move || cp.kill_apiserver())
        .await
        .expect("kill kube-apiserver");
    let down_at = Instant::now();
    let failures = |injector: &Injector| {
        injector
            .json_logs()
            .iter()
            .filter(|l| l["message"] == "watch failed; retrying with backoff")
            .count()
    };
    while failures(&replicator.injector) == 0 {
        assert!(down_at.elapsed() < CONVERGE, "no watch failure logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(down_at.elapsed())).await;
    assert!(
        replicator.injector.is_running(),
        "the injector exited during the outage"
    );
    let metrics = replicator.injector.metrics().await;
    assert!(metrics.contains("pullsecret_injector_leader"), "{metrics}");
    tokio::task::spawn_blocking(move || stopped.start())
        .await
        .expect("start kube-apiserver");
    eprintln!(
        "kube-apiserver down for {:.1}s; {} watch failures logged",
        down_at.elapsed().as_secs_f64(),
        failures(&replicator.injector)
    );

    // Changes made the moment the apiserver is back, while the replicator's watches are
    // still waiting out their backoff: a namespace opts in, a new one is created opted in,
    // and the source is rotated. The re-listed caches must pick all of them up.
    let client = cp.client();
    set_label(&client, &later, &label, Some("enabled")).await;
    // (Not `controlplane::namespace`: kube-controller-manager, which makes its ServiceAccount,
    // is still in its own backoff; no pod is created there.)
    let created = controlplane::create_namespace(
        &client,
        NamespaceName::Generated("faults-restart-new-"),
        &[(&label, "enabled")],
    )
    .await;
    let second = Credentials::new(REGISTRY, "robot", "after-the-outage");
    let rotated = rotate(&client, &source_ns, "regcred-source", &[second]).await;
    let back_at = Instant::now();
    for ns in [&before, &later, &created] {
        wait_copy(&client, ns, "regcred", &rotated, RESUME).await;
    }
    eprintln!(
        "converged {:.1}s after kube-apiserver was back",
        back_at.elapsed().as_secs_f64()
    );
    assert!(replicator.injector.is_running(), "the injector restarted");
    assert_eq!(replicator.injector.pid(), pid);

    // And it admits as before.
    let (response, _) = review_directly(&replicator, &created).await;
    assert_eq!(response["allowed"], true);
    assert!(response["patch"].is_string(), "{response}");
    let metrics = replicator.injector.metrics().await;
    assert_eq!(leader_metric(&metrics), 1.0, "{metrics}");
    cp.wait_recovered().await;
}

#[tokio::test]
async fn apiserver_down_when_the_injector_starts_it_replicates_once_the_apiserver_is_back() {
    let _serial = FAULTS.write().await;
    let Start {
        cp,
        _logs,
        client,
        label,
        source_ns,
        source,
    } = start("cold", "cold-start").await;
    let opted_in = controlplane::namespace(&client, "faults-cold", &[(&label, "enabled")]).await;

    // The chart's access is granted while the apiserver is up, as an install would.
    let dir = tempfile::tempdir().expect("tempdir");
    injector::certificates(dir.path());
    let config = replication_config(&source_ns, &label, "faults-cold", LEASE_SECONDS, REGCRED);
    let access = ChartAccess::for_config(&client, &config, dir.path()).await;
    let stopped = tokio::task::spawn_blocking(move || cp.kill_apiserver())
        .await
        .expect("kill kube-apiserver");
    let injector = Injector::start(Options {
        kubeconfig: Some(&access.kubeconfig),
        ..Options::new(&config, dir.path())
    });
    let _injector_logs = injector.logs_on_failure();
    // Serving, but nothing to replicate from yet: the Lease cannot be created or read.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        injector.is_running(),
        "the injector exited without the apiserver"
    );
    tokio::task::spawn_blocking(move || stopped.start())
        .await
        .expect("start kube-apiserver");

    injector
        .wait_for_log(RESUME, |l| l["message"] == "caches synced")
        .await;
    injector.wait_leader(RESUME).await;
    wait_copy(&cp.client(), &opted_in, "regcred", &source, CONVERGE).await;
    // The failed attempts were counted.
    let metrics = injector.metrics().await;
    assert!(errors_metric(&metrics, "lease") >= 1.0, "{metrics}");
    cp.wait_recovered().await;
}

#[tokio::test]
async fn etcd_paused_admission_answers_from_caches_and_the_pod_is_created_when_it_resumes() {
    let _serial = FAULTS.write().await;
    let Start {
        cp,
        _logs,
        client,
        label,
        source_ns,
        source,
    } = start("etcd", "frozen").await;
    let replicator = leader(&source_ns, &label, "faults-etcd", None).await;
    let _injector_logs = replicator.injector.logs_on_failure();
    let ns = controlplane::namespace(&client, "faults-etcd", &[(&label, "enabled")]).await;
    wait_copy(&client, &ns, "regcred", &source, CONVERGE).await;
    // 10 s: the apiserver waits for the answer while etcd is frozen below.
    let _webhook = register(
        &client,
        &webhook::replicating(
            "faults-etcd",
            &label,
            &replicator.url(),
            &replicator.ca_pem,
            10,
        ),
    )
    .await;
    admitted_pod(&client, &ns, "warm-up", IMAGE, &["regcred"]).await;

    let paused = cp.pause_etcd();
    let frozen_at = Instant::now();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let creation = tokio::spawn(async move {
        pods.create(&PostParams::default(), &pod("frozen", &[IMAGE]))
            .await
    });

    // The apiserver calls the webhook before it writes: the injector answers from its caches.
    let admitted = |injector: &Injector| {
        injector
            .json_logs()
            .into_iter()
            .find(|l| l["message"] == "admission reviewed" && l["pod"] == "frozen")
    };
    while admitted(&replicator.injector).is_none() {
        assert!(
            frozen_at.elapsed() < Duration::from_secs(10),
            "the webhook was not called while etcd was frozen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = admitted(&replicator.injector).expect("admission line");
    assert_eq!(line["injected"], "regcred", "{line}");
    let (response, took) = review_directly(&replicator, &ns).await;
    assert!(response["patch"].is_string(), "{response}");
    assert!(response["warnings"].is_null(), "{response}");
    assert!(
        took < Duration::from_secs(1),
        "a direct review took {took:?}"
    );
    assert!(
        !creation.is_finished(),
        "the pod was stored while etcd was frozen"
    );
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(frozen_at.elapsed())).await;
    let frozen_for = frozen_at.elapsed();
    paused.resume();

    let created = tokio::time::timeout(CONVERGE, creation)
        .await
        .expect("the pod creation finishes once etcd resumes")
        .expect("task")
        .expect("the pod is created");
    assert_eq!(secret_names(&created), ["regcred"]);
    eprintln!(
        "etcd frozen for {:.1}s; admission answered in the meantime, direct review in {took:?}",
        frozen_for.as_secs_f64()
    );
    assert!(replicator.injector.is_running(), "the injector exited");
    let metrics = replicator.injector.metrics().await;
    assert_eq!(ensured_metric(&metrics, "failed"), 0.0, "{metrics}");
}

/// RBAC for a replicator that may read everything it watches, hold its Lease and publish
/// Events, but not write Secrets.
async fn read_only_replicator(client: &kube::Client, namespace: &str, name: &str) {
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..PolicyRule::default()
    };
    let meta = |name: &str, namespace: Option<&str>| ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(String::from),
        ..ObjectMeta::default()
    };
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(namespace.into()),
        ..Subject::default()
    };
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(
            &pp,
            &ServiceAccount {
                metadata: meta(name, None),
                ..Default::default()
            },
        )
        .await
        .expect("ServiceAccount");
    let cluster_name = format!("{namespace}-{name}");
    Api::<ClusterRole>::all(client.clone())
        .create(
            &pp,
            &ClusterRole {
                metadata: meta(&cluster_name, None),
                rules: Some(vec![
                    rule(&[""], &["namespaces"], &["get", "list", "watch"]),
                    // no create, update, patch or delete
                    rule(&[""], &["secrets"], &["get", "list", "watch"]),
                    rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
                ]),
                ..ClusterRole::default()
            },
        )
        .await
        .expect("ClusterRole");
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(
            &pp,
            &ClusterRoleBinding {
                metadata: meta(&cluster_name, None),
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "ClusterRole".into(),
                    name: cluster_name.clone(),
                },
                subjects: Some(vec![subject.clone()]),
            },
        )
        .await
        .expect("ClusterRoleBinding");
    Api::<Role>::namespaced(client.clone(), namespace)
        .create(
            &pp,
            &Role {
                metadata: meta(name, None),
                rules: Some(vec![rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["get", "create", "update", "patch"],
                )]),
            },
        )
        .await
        .expect("Role");
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .create(
            &pp,
            &RoleBinding {
                metadata: meta(name, None),
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: name.into(),
                },
                subjects: Some(vec![subject]),
            },
        )
        .await
        .expect("RoleBinding");
}

#[tokio::test]
async fn forbidden_by_rbac_is_logged_and_counted_and_retried_slowly_without_a_crash() {
    let _serial = FAULTS.read().await;
    let Start {
        cp,
        _logs,
        client,
        label,
        source_ns,
        ..
    } = start("forbidden", "not-allowed").await;
    read_only_replicator(&client, &source_ns, "replicator").await;
    let token = service_account_token(&client, &source_ns, "replicator").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = token_kubeconfig(dir.path(), cp.apiserver_url(), cp.ca_pem(), &token);
    let replicator = leader(&source_ns, &label, "faults-403", Some(&kubeconfig)).await;
    let _injector_logs = replicator.injector.logs_on_failure();
    let ns = controlplane::namespace(&client, "faults-403", &[(&label, "enabled")]).await;
    let line = replicator
        .injector
        .wait_for_log(CONVERGE, |l| {
            l["level"] == "ERROR"
                && l["message"] == "sync failed; retrying"
                && l["namespace"] == ns.as_str()
        })
        .await;
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("forbidden") && error.contains("secrets") && error.contains("create"),
        "the log line says what was refused: {line}"
    );
    eprintln!("logged: {line}");
    let first = errors_metric(&replicator.injector.metrics().await, "forbidden");
    assert!(
        first >= 1.0,
        "replication_errors_total{{reason=\"forbidden\"}} is {first}"
    );

    // At admission the copy cannot be created either: the pod is still admitted, with its
    // patch and a warning that names the problem.
    let (response, _) = review_directly(&replicator, &ns).await;
    assert_eq!(response["allowed"], true);
    assert!(response["patch"].is_string(), "{response}");
    let warnings = response["warnings"].to_string();
    assert!(warnings.contains("forbidden"), "{response}");

    // No crash loop, no hot loop: the process stays up and ready, and retries slowly.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(replicator.injector.is_running(), "the injector exited");
    let metrics = replicator.injector.metrics().await;
    let later = errors_metric(&metrics, "forbidden");
    assert!(
        later - first <= 1.0,
        "{} forbidden errors in 8 s: not backing off",
        later - first
    );
    assert_eq!(leader_metric(&metrics), 1.0, "{metrics}");
    assert!(get_secret(&client, &ns, "regcred").await.is_none());
    let restarts = replicator
        .injector
        .json_logs()
        .iter()
        .filter(|l| l["message"] == "serving")
        .count();
    assert_eq!(restarts, 1);
}

#[tokio::test]
async fn deleted_source_leaves_copies_and_user_secrets_alone_until_it_is_back() {
    let _serial = FAULTS.read().await;
    let Start {
        cp: _,
        _logs,
        client,
        label,
        source_ns,
        source,
    } = start("deleted", "first").await;
    let replicator = leader(&source_ns, &label, "faults-deleted", None).await;
    let _injector_logs = replicator.injector.logs_on_failure();

    let with_copy =
        controlplane::namespace(&client, "faults-deleted-copy", &[(&label, "enabled")]).await;
    let copy = wait_copy(&client, &with_copy, "regcred", &source, CONVERGE).await;
    let users = controlplane::namespace(&client, "faults-deleted-user", &[]).await;
    let own = user_secret(
        "regcred",
        DOCKERCONFIGJSON,
        &[(
            DOCKERCONFIGJSON_KEY,
            &Credentials::new(REGISTRY, "me", "my-own").dockerconfigjson(),
        )],
    );
    let own = create_secret(&client, &users, &own).await;
    set_label(&client, &users, &label, Some("enabled")).await;

    // The source goes.
    Api::<Secret>::namespaced(client.clone(), &source_ns)
        .delete("regcred-source", &DeleteParams::default())
        .await
        .expect("delete the source");
    replicator
        .injector
        .wait_for_log(CONVERGE, |l| {
            l["message"] == "source secret gives no patterns"
        })
        .await;
    // The controller keeps running (a namespace opting in now is reconciled), but with no
    // source there is nothing to copy, and nothing is taken away.
    let newcomer =
        controlplane::namespace(&client, "faults-deleted-new", &[(&label, "enabled")]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = get_secret(&client, &with_copy, "regcred")
        .await
        .expect("the copy is kept while the source is gone");
    assert_eq!(
        kept.metadata.resource_version,
        copy.metadata.resource_version
    );
    assert!(get_secret(&client, &newcomer, "regcred").await.is_none());
    assert_untouched(&client, &users, "regcred", &Snapshot::of(&own)).await;

    // The source comes back, rotated: the copies follow, the user's Secret still does not.
    let second = Credentials::new(REGISTRY, "robot", "second");
    let back = create_secret(
        &client,
        &source_ns,
        &pull_secret("regcred-source", &second.dockerconfigjson()),
    )
    .await;
    wait_copy(&client, &with_copy, "regcred", &back, CONVERGE).await;
    wait_copy(&client, &newcomer, "regcred", &back, CONVERGE).await;
    eventually("the conflict to be reported", CONVERGE, || async {
        let metrics = replicator.injector.metrics().await;
        match conflicts_metric(&metrics) {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("{n} conflicts")),
        }
    })
    .await;
    assert_untouched(&client, &users, "regcred", &Snapshot::of(&own)).await;
}
