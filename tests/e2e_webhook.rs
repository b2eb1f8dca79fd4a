//! End to end through a real kube-apiserver (crates/test-support, `controlplane`): the apiserver
//! calls the real `pullsecret-injector serve` binary as a mutating admission webhook, and the
//! tests look at what the apiserver stores and returns.
//!
//! Isolation: the tests share one control plane and run in parallel. Each one starts its own
//! injector, registers its own MutatingWebhookConfiguration whose namespaceSelector matches
//! only a label unique to the test (`pullsecret-injector.io/e2e-<id>: enabled`), works in
//! its own namespaces and deletes its configuration at the end (or, if it panics, on drop).
//!
//! The apiserver picks up a new or changed webhook configuration asynchronously, so after
//! every change the tests poll with dry-run pod creates until the new behaviour shows.
//!
//! Needs `make controlplane` once.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LocalObjectReference, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::Value;
use test_support::controlplane::{self, eventually};
use test_support::injector::{EXAMPLE_SECRETS, Injector, Instance, Options, mutate_url};
use test_support::logs::LogsOnFailure;
use test_support::metrics::metric;
use test_support::pods::{
    self, container, dry_run, message, pod, secret_names, wait_dry_run, wait_dry_run_refused,
};
use test_support::ports::free_port;
use test_support::webhook::{self, Registration, register};

/// The injector's secrets: examples/config.yaml's, and one more.
fn config() -> String {
    format!("{EXAMPLE_SECRETS}  - name: quay-tools\n    registries: [quay.io/tools/]\n")
}

/// An image that gets `PROBE_SECRET` (and only it): used by the dry-run probes.
const PROBE_IMAGE: &str = "ghcr.io/acme/probe:1";
const PROBE_SECRET: &str = "acme-ghcr";
/// The protocol the apiserver's webhook client (Go net/http) uses with the injector. Go's
/// transport would take h2 if offered; the injector offers only `http/1.1` by ALPN so that
/// pooled connections spread reviews over replicas.
const APISERVER_HTTP_VERSION: &str = "HTTP/1.1";
/// How long the apiserver may take to act on a created or changed webhook configuration.
const PROPAGATION: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The opt-in namespace label of test `id`.
fn opt_in_label(id: &str) -> String {
    format!("pullsecret-injector.io/e2e-{id}")
}

/// A MutatingWebhookConfiguration for test `id`: Pods CREATE, sent to `url`, only in
/// namespaces labelled `opt_in_label(id)=enabled`.
fn webhook_configuration(
    id: &str,
    url: &str,
    ca_pem: &str,
    failure_policy: &str,
) -> MutatingWebhookConfiguration {
    let (name, webhook, label) = (
        format!("pullsecret-injector-e2e-{id}"),
        webhook_name(id),
        opt_in_label(id),
    );
    webhook::Spec {
        ca_pem: Some(ca_pem),
        failure_policy,
        ..webhook::Spec::new(&name, &webhook, url, &label)
    }
    .configuration()
}

fn webhook_name(id: &str) -> String {
    format!("{id}.e2e.pullsecret-injector.io")
}

/// An injector serving `config()` on `listen`, with its own CA and certificate directory.
fn start_webhook(listen: &str) -> Instance {
    Instance::start(|dir| {
        Injector::start(Options {
            listen,
            ..Options::new(&config(), dir)
        })
    })
}

/// What most tests start from: an injector, a namespace `e2e-<id>` that opts in, and a
/// webhook configuration (failurePolicy Fail) that is in effect for it. The fields drop in
/// the order of a test's locals: the configuration is deleted first, then the logs guards
/// print if the test panics.
struct Setup {
    registration: Registration,
    pods: Api<Pod>,
    ns: String,
    _injector_logs: LogsOnFailure<'static>,
    webhook: Instance,
    client: kube::Client,
    _logs: LogsOnFailure<'static>,
}

async fn set_up(id: &str) -> Setup {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let webhook = start_webhook("127.0.0.1:0");
    let _injector_logs = webhook.injector.logs_on_failure();
    let ns = controlplane::namespace(
        &client,
        &format!("e2e-{id}"),
        &[(&opt_in_label(id), "enabled")],
    )
    .await;
    let registration = register(
        &client,
        &webhook_configuration(id, &webhook.url(), &webhook.ca_pem, "Fail"),
    )
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    wait_until_mutating(&pods).await;
    Setup {
        registration,
        pods,
        ns,
        _injector_logs,
        webhook,
        client,
        _logs,
    }
}

/// The injector's "admission reviewed" log lines.
fn reviews(injector: &Injector) -> Vec<Value> {
    injector
        .json_logs()
        .into_iter()
        .filter(|l| l["message"] == "admission reviewed")
        .collect()
}

/// Waits for the "admission reviewed" line of pod `name` in `namespace`.
async fn review_of(injector: &Injector, namespace: &str, name: &str) -> Value {
    eventually(
        &format!("the injector's log line for pod {namespace}/{name}"),
        Duration::from_secs(10),
        || async {
            reviews(injector)
                .into_iter()
                .find(|l| l["namespace"] == namespace && l["pod"] == name)
                .ok_or_else(|| format!("not logged yet; logs:\n{}", injector.logs().join("\n")))
        },
    )
    .await
}

/// Polls with dry-run creates of a probe pod until the apiserver returns it mutated, i.e.
/// until the webhook configuration is in effect for this namespace.
async fn wait_until_mutating(pods: &Api<Pod>) {
    wait_dry_run(pods, PROBE_IMAGE, &[PROBE_SECRET], PROPAGATION).await;
}

/// Polls with dry-run creates of a probe pod until the apiserver refuses it, and returns the
/// apiserver's error message.
async fn wait_until_refused(pods: &Api<Pod>) -> String {
    wait_dry_run_refused(pods, PROBE_IMAGE, PROPAGATION).await
}

/// Checks that each of the apiserver's refusals names webhook `id` at `url` and a refused
/// connection.
fn assert_connection_refused(messages: [&str; 2], id: &str, url: &str) {
    for message in messages {
        assert!(
            message.contains(&format!("failed calling webhook \"{}\"", webhook_name(id))),
            "{message}"
        );
        assert!(message.contains(url), "{message}");
        assert!(message.contains("connection refused"), "{message}");
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pod_in_opted_in_namespace_gets_matching_secrets_only() {
    let t = set_up("matching").await;

    let mut app = pod(
        "app",
        &[
            "ghcr.io/acme/api:1.2",       // acme-ghcr
            "corp/worker:2",              // docker.io/corp/worker: corp, already listed
            "gcr.io/elsewhere/sidecar:3", // no configured registry
        ],
    );
    app.spec.as_mut().unwrap().image_pull_secrets = Some(vec![
        LocalObjectReference {
            name: "team-own".into(),
        },
        LocalObjectReference {
            name: "corp".into(),
        },
    ]);
    let created = t
        .pods
        .create(&PostParams::default(), &app)
        .await
        .expect("create pod");
    assert_eq!(secret_names(&created), ["team-own", "corp", "acme-ghcr"]);

    let stored = t.pods.get("app").await.expect("get pod");
    assert_eq!(secret_names(&stored), ["team-own", "corp", "acme-ghcr"]);
    // The rest of the spec is the user's.
    let images: Vec<_> = stored
        .spec
        .unwrap()
        .containers
        .into_iter()
        .filter_map(|c| c.image)
        .collect();
    assert_eq!(
        images,
        [
            "ghcr.io/acme/api:1.2",
            "corp/worker:2",
            "gcr.io/elsewhere/sidecar:3"
        ]
    );

    let line = review_of(&t.webhook.injector, &t.ns, "app").await;
    assert_eq!(line["operation"], "CREATE", "{line}");
    assert_eq!(line["result"], "patched", "{line}");
    assert_eq!(line["injected"], "acme-ghcr", "{line}");
    assert_eq!(line["dry_run"], false, "{line}");

    t.registration.delete().await;
}

#[tokio::test]
async fn pod_in_namespace_without_the_label_is_untouched() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let webhook = start_webhook("127.0.0.1:0");
    let _injector_logs = webhook.injector.logs_on_failure();
    let id = "unlabelled";
    let opted_in = controlplane::namespace(
        &client,
        "e2e-unlabelled-in",
        &[(&opt_in_label(id), "enabled")],
    )
    .await;
    let other_value = controlplane::namespace(
        &client,
        "e2e-unlabelled-off",
        &[(&opt_in_label(id), "disabled")],
    )
    .await;
    let plain = controlplane::namespace(&client, "e2e-unlabelled-plain", &[]).await;
    let registration = register(
        &client,
        &webhook_configuration(id, &webhook.url(), &webhook.ca_pem, "Fail"),
    )
    .await;
    let opted_in_pods = Api::<Pod>::namespaced(client.clone(), &opted_in);
    wait_until_mutating(&opted_in_pods).await;

    for ns in [&plain, &other_value] {
        let pods = Api::<Pod>::namespaced(client.clone(), ns);
        pods.create(&PostParams::default(), &pod("app", &["ghcr.io/acme/api:1"]))
            .await
            .expect("create pod");
        let stored = pods.get("app").await.expect("get pod");
        assert_eq!(secret_names(&stored), Vec::<String>::new(), "pod in {ns}");
    }
    // A pod in the opted-in namespace, created afterwards, is logged: by then the others
    // would have been too if the apiserver had sent them.
    opted_in_pods
        .create(
            &PostParams::default(),
            &pod("marker", &["ghcr.io/acme/api:1"]),
        )
        .await
        .expect("create pod");
    review_of(&webhook.injector, &opted_in, "marker").await;
    let sent: Vec<_> = reviews(&webhook.injector)
        .into_iter()
        .filter(|l| l["namespace"] != opted_in.as_str())
        .collect();
    assert!(
        sent.is_empty(),
        "the webhook was called for other namespaces: {sent:?}"
    );

    registration.delete().await;
}

#[tokio::test]
async fn deployment_pods_created_by_the_replicaset_controller_carry_the_secrets() {
    let t = set_up("deployment").await;

    let deployment = pods::deployment("app", "e2e-deployment", 2, &["myteam.azurecr.io/app:1"]);
    let deployments = Api::<Deployment>::namespaced(t.client.clone(), &t.ns);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");

    // No nodes: the pods stay Pending, but the controllers create them.
    let created = pods::wait_app_pods(&t.pods, "e2e-deployment", 2, Duration::from_secs(60)).await;
    for p in &created {
        assert_eq!(secret_names(p), ["acme-ghcr"], "pod {:?}", p.metadata.name);
        let owner = &p.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "ReplicaSet");
    }
    // The webhook mutates the pods, not the template.
    let stored = deployments.get("app").await.expect("get deployment");
    let template = stored.spec.unwrap().template.spec.unwrap();
    assert_eq!(template.image_pull_secrets, None);

    let from_controller: Vec<_> = reviews(&t.webhook.injector)
        .into_iter()
        .filter(|l| l["namespace"] == t.ns.as_str() && l["dry_run"] == false)
        .collect();
    assert_eq!(from_controller.len(), 2, "{from_controller:?}");

    t.registration.delete().await;
}

#[tokio::test]
async fn dry_run_create_returns_the_mutated_pod_and_leaves_nothing_behind() {
    let t = set_up("dryrun").await;

    let returned = t
        .pods
        .create(
            &dry_run(),
            &pod("dry", &["quay.io/tools/jq:1", "corp/api:2"]),
        )
        .await
        .expect("dry-run create");
    assert_eq!(secret_names(&returned), ["corp", "quay-tools"]);
    assert_eq!(returned.metadata.name.as_deref(), Some("dry"));

    assert!(
        t.pods.get_opt("dry").await.expect("get").is_none(),
        "dry-run pod was stored"
    );
    let left: Vec<_> = t
        .pods
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(left.is_empty(), "pods left behind: {left:?}");

    let line = review_of(&t.webhook.injector, &t.ns, "dry").await;
    assert_eq!(line["dry_run"], true, "{line}");
    assert_eq!(line["injected"], "corp,quay-tools", "{line}");

    t.registration.delete().await;
}

#[tokio::test]
async fn init_containers_and_multiple_registries_are_matched() {
    let t = set_up("init").await;

    // Four images, three registries of one secret and two others; each secret once, in
    // config order.
    let mut many = pod("many", &["registry.example.com:5000/app:3", "corp/app:4"]);
    many.spec.as_mut().unwrap().init_containers = Some(vec![
        container(10, "myteam.azurecr.io/init:1"),
        container(11, "quay.io/tools/migrate:2"),
    ]);
    t.pods
        .create(&PostParams::default(), &many)
        .await
        .expect("create pod");
    assert_eq!(
        secret_names(&t.pods.get("many").await.expect("get")),
        ["acme-ghcr", "corp", "quay-tools"]
    );

    // The only matching image is an init container's.
    let mut init_only = pod("init-only", &["gcr.io/elsewhere/app:1"]);
    init_only.spec.as_mut().unwrap().init_containers =
        Some(vec![container(10, "quay.io/tools/migrate:2")]);
    t.pods
        .create(&PostParams::default(), &init_only)
        .await
        .expect("create pod");
    assert_eq!(
        secret_names(&t.pods.get("init-only").await.expect("get")),
        ["quay-tools"]
    );

    t.registration.delete().await;
}

#[tokio::test]
async fn pod_opted_out_by_annotation_is_untouched() {
    let t = set_up("optout").await;

    let mut opted_out = pod("opted-out", &["ghcr.io/acme/api:1"]);
    opted_out.metadata.annotations = Some(BTreeMap::from([(
        "pullsecret-injector.io/inject".to_string(),
        "false".to_string(),
    )]));
    t.pods
        .create(&PostParams::default(), &opted_out)
        .await
        .expect("create pod");
    assert_eq!(
        secret_names(&t.pods.get("opted-out").await.expect("get")),
        Vec::<String>::new()
    );
    // It was sent to the webhook, which chose to leave it alone.
    let line = review_of(&t.webhook.injector, &t.ns, "opted-out").await;
    assert_eq!(line["result"], "skipped", "{line}");

    let mut opted_in = opted_out.clone();
    opted_in.metadata.name = Some("opted-in".into());
    opted_in.metadata.annotations = Some(BTreeMap::from([(
        "pullsecret-injector.io/inject".to_string(),
        "true".to_string(),
    )]));
    t.pods
        .create(&PostParams::default(), &opted_in)
        .await
        .expect("create pod");
    assert_eq!(
        secret_names(&t.pods.get("opted-in").await.expect("get")),
        ["acme-ghcr"]
    );

    t.registration.delete().await;
}

#[tokio::test]
async fn stopped_injector_with_failure_policy_ignore_lets_pods_through_and_fail_refuses_them() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let webhook = start_webhook("127.0.0.1:0");
    let id = "stopped";
    let ns =
        controlplane::namespace(&client, "e2e-stopped", &[(&opt_in_label(id), "enabled")]).await;
    let registration = register(
        &client,
        &webhook_configuration(id, &webhook.url(), &webhook.ca_pem, "Ignore"),
    )
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    {
        let _injector_logs = webhook.injector.logs_on_failure();
        wait_until_mutating(&pods).await;
    }
    let url = webhook.url();
    webhook.injector.stop_cleanly();

    // Ignore: admitted, unmodified.
    let created = pods
        .create(
            &PostParams::default(),
            &pod("ignored", &["ghcr.io/acme/api:1"]),
        )
        .await
        .expect("with failurePolicy Ignore the pod is admitted");
    assert_eq!(secret_names(&created), Vec::<String>::new());
    assert_eq!(
        secret_names(&pods.get("ignored").await.expect("get")),
        Vec::<String>::new()
    );
    let apiserver_log = cp.log_dir().join("kube-apiserver.log");
    let failing_open = eventually(
        "the apiserver to log that it failed open",
        Duration::from_secs(15),
        || async {
            let log = std::fs::read_to_string(&apiserver_log).map_err(|e| e.to_string())?;
            log.lines()
                .find(|l| l.contains("failing open") && l.contains(&webhook_name(id)))
                .map(str::to_string)
                .ok_or_else(|| "not logged yet".to_string())
        },
    )
    .await;
    println!("kube-apiserver with failurePolicy Ignore: {failing_open}");
    // What the README tells operators to watch: the apiserver counts every fail-open.
    let counted = eventually(
        "the apiserver to count the fail-open",
        Duration::from_secs(15),
        || async {
            let request = axum::http::Request::get("/metrics")
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            let text = client
                .request_text(request)
                .await
                .map_err(|e| e.to_string())?;
            text.lines()
                .find(|l| {
                    l.starts_with("apiserver_admission_webhook_fail_open_count{")
                        && l.contains(&format!("name=\"{}\"", webhook_name(id)))
                })
                .map(str::to_string)
                .ok_or_else(|| "not counted yet".to_string())
        },
    )
    .await;
    let count: f64 = counted
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(count >= 1.0, "{counted}");
    println!("kube-apiserver metric: {counted}");

    // Fail: refused, with the webhook named in the error.
    registration.set_failure_policy("Fail").await;
    let dry_error = wait_until_refused(&pods).await;
    let error = pods
        .create(
            &PostParams::default(),
            &pod("refused", &["ghcr.io/acme/api:1"]),
        )
        .await
        .expect_err("with failurePolicy Fail the pod is refused");
    let error = message(error);
    println!("pod create refused with failurePolicy Fail: {error}");
    assert_connection_refused([&dry_error, &error], id, &url);
    assert!(pods.get_opt("refused").await.expect("get").is_none());

    registration.delete().await;
}

#[tokio::test]
async fn apiserver_calls_use_http1_with_the_timeout_parameter_and_survive_a_webhook_restart() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let listen = format!("127.0.0.1:{}", free_port());
    let first = start_webhook(&listen);
    assert_eq!(first.injector.addr.to_string(), listen);
    let id = "restart";
    let ns =
        controlplane::namespace(&client, "e2e-restart", &[(&opt_in_label(id), "enabled")]).await;
    // Fail: a pod that the webhook did not mutate cannot be created.
    let registration = register(
        &client,
        &webhook_configuration(id, &first.url(), &first.ca_pem, "Fail"),
    )
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    {
        let _injector_logs = first.injector.logs_on_failure();
        wait_until_mutating(&pods).await;
        let created = pods
            .create(
                &PostParams::default(),
                &pod("before-restart", &["ghcr.io/acme/api:1"]),
            )
            .await
            .expect("create pod");
        assert_eq!(secret_names(&created), ["acme-ghcr"]);

        // What the server saw: the protocol negotiated by ALPN and the apiserver's remaining
        // budget for us (the configured timeoutSeconds: 5).
        let line = review_of(&first.injector, &ns, "before-restart").await;
        println!("before restart: {line}");
        assert_eq!(line["http_version"], APISERVER_HTTP_VERSION, "{line}");
        assert_eq!(line["timeout"], "5s", "{line}");
        assert_eq!(line["dry_run"], false, "{line}");
        assert_eq!(line["injected"], "acme-ghcr", "{line}");
        let metrics = first.injector.metrics().await;
        let patched =
            "pullsecret_injector_admissions_total{operation=\"CREATE\",result=\"patched\"}";
        assert!(metric(&metrics, patched) >= 2.0, "{metrics}");
        // The apiserver keeps its connection open: the restart has to deal with it.
        assert_eq!(
            metric(&metrics, "pullsecret_injector_open_connections"),
            1.0,
            "{metrics}"
        );
    }

    // Restart on the same port, with the same CA (the Secret would not change either).
    let Instance { injector, dir, .. } = first;
    injector.stop_cleanly();
    let second = Injector::start(Options {
        listen: &listen,
        ..Options::new(&config(), dir.path())
    });
    let _injector_logs = second.logs_on_failure();
    assert_eq!(second.addr.to_string(), listen);

    let errors = Mutex::new(Vec::new());
    let started = Instant::now();
    let created = eventually(
        "a pod create after the restart",
        Duration::from_secs(30),
        || async {
            match pods
                .create(
                    &PostParams::default(),
                    &pod("after-restart", &["ghcr.io/acme/api:1"]),
                )
                .await
            {
                Ok(created) => Ok(created),
                Err(kube::Error::Api(e)) if e.is_already_exists() => {
                    pods.get("after-restart").await.map_err(|e| e.to_string())
                }
                Err(e) => {
                    let e = message(e);
                    errors.lock().unwrap().push(e.clone());
                    Err(e)
                }
            }
        },
    )
    .await;
    let errors = errors.into_inner().unwrap();
    println!(
        "after restart: pod created in {:?} after {} refused attempt(s): {errors:?}",
        started.elapsed(),
        errors.len()
    );
    assert_eq!(secret_names(&created), ["acme-ghcr"]);
    assert_eq!(
        secret_names(&pods.get("after-restart").await.expect("get")),
        ["acme-ghcr"]
    );
    let line = review_of(&second, &ns, "after-restart").await;
    assert_eq!(line["http_version"], APISERVER_HTTP_VERSION, "{line}");
    assert_eq!(line["timeout"], "5s", "{line}");

    registration.delete().await;
}

#[tokio::test]
async fn webhook_pointing_at_a_closed_port_with_fail_policy_refuses_pods() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let ca = test_support::pki::TestCa::new("nobody's CA");
    let url = mutate_url(free_port());
    let id = "closedport";
    let ns =
        controlplane::namespace(&client, "e2e-closedport", &[(&opt_in_label(id), "enabled")]).await;
    let registration = register(
        &client,
        &webhook_configuration(id, &url, &ca.cert_pem, "Fail"),
    )
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);

    let dry_error = wait_until_refused(&pods).await;
    let error = pods
        .create(&PostParams::default(), &pod("app", &["ghcr.io/acme/api:1"]))
        .await
        .expect_err("the apiserver must refuse the pod when it cannot call the webhook");
    let error = message(error);
    println!("pod create with the webhook at a closed port: {error}");
    assert_connection_refused([&dry_error, &error], id, &url);
    assert!(pods.get_opt("app").await.expect("get").is_none());

    registration.delete().await;
}
