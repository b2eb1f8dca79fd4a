//! Secrets never leak: a full replication run through the real control plane, two replicas
//! with debug logging and JSON logs, and then every line they logged and every metric they
//! exposed is searched for the registry passwords, for the base64 of `user:password` (the
//! `auth` field), for the base64 of each whole `.dockerconfigjson` (how the API carries Secret
//! data) and for the bytes as Rust's `Debug` prints them. Zero hits.
//!
//! The replicas run with the access the chart grants for their config (test_support::access).
//! The run: copies into opted-in namespaces, pods admitted (copies made at admission too),
//! dry runs, a user's Secret in the way (conflict), a rotation, a source that is not a docker
//! config, a source whose `auths` key carries credentials in a URL, a missing source, bad
//! requests, and a leader hand-over.
//!
//! Needs `make controlplane` once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use test_support::access;
use test_support::client::TlsClient;
use test_support::controlplane::{self, set_label};
use test_support::pods::{admitted_pod, dry_run, pod, secret_names};
use test_support::replication::{CONVERGE, replication_config, wait_copy};
use test_support::secrets::{Credentials, base64, create_secret, pull_secret, rotate};
use test_support::webhook::{self, register};

const LABEL: &str = "leaks.pullsecret-injector.io/opt-in";
const REGISTRY: &str = "registry.example.com";
const IMAGE: &str = "registry.example.com/team/app:1";
const LEASE_SECONDS: u64 = 15;
/// How long a replicator may take to win a free Lease.
const LEADER: Duration = Duration::from_secs(4 * LEASE_SECONDS);

/// What must never appear in a log line or a metric.
struct Needles(Vec<(String, String)>);

impl Needles {
    fn add_password(&mut self, what: &str, password: &str) {
        self.0
            .push((format!("{what} password"), password.to_string()));
        // `{:?}` of the bytes (a Vec<u8> or a ByteString): "[108, 101, ...]".
        let debug = format!("{:?}", password.as_bytes());
        self.0.push((
            format!("{what} password as Debug bytes"),
            debug.trim_matches(['[', ']']).to_string(),
        ));
    }

    fn add_credentials(&mut self, what: &str, credentials: &Credentials) {
        self.add_password(what, &credentials.password);
        self.0.push((format!("{what} auth"), credentials.auth()));
        self.add_blob(what, &credentials.dockerconfigjson());
    }

    fn add_blob(&mut self, what: &str, blob: &[u8]) {
        self.0
            .push((format!("{what} .dockerconfigjson base64"), base64(blob)));
    }

    /// `(needle, line)` for every hit.
    fn find(&self, text: &str) -> Vec<(String, String)> {
        text.lines()
            .flat_map(|line| {
                self.0
                    .iter()
                    .filter(|(_, needle)| line.contains(needle.as_str()))
                    .map(|(what, _)| (what.clone(), line.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn canary(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!("{what}-canary-{:x}{nanos:08x}", std::process::id())
}

#[tokio::test]
async fn no_password_or_auth_in_any_log_line_or_metric_of_a_full_run() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let source_ns = controlplane::namespace(&client, "leaks-src", &[]).await;
    let mut needles = Needles(Vec::new());

    // The sources: a good one, one that is not a docker config at all (its parse error must
    // not quote it), one whose auths keys are URLs with credentials in them (the kubelet
    // drops the user information and uses the first for the registry; it ignores the second,
    // whose port is no number, which is reported), and one that is never created.
    let first = Credentials::new(REGISTRY, "robot", &canary("first"));
    needles.add_credentials("first", &first);
    let source = create_secret(
        &client,
        &source_ns,
        &pull_secret("regcred-source", &first.dockerconfigjson()),
    )
    .await;
    let broken_password = canary("broken");
    needles.add_password("broken source", &broken_password);
    let broken = serde_json::to_vec(&json!({"auths": broken_password})).expect("JSON");
    needles.add_blob("broken source", &broken);
    create_secret(&client, &source_ns, &pull_secret("broken-source", &broken)).await;
    let url_password = canary("url");
    needles.add_password("credentials in an auths key", &url_password);
    let url_key = format!("https://robot:{url_password}@{REGISTRY}");
    let ignored_url_key = format!("https://robot:{url_password}@{REGISTRY}:none");
    let url_config = serde_json::to_vec(&json!({"auths": {
        url_key: {"auth": base64(format!("robot:{url_password}").as_bytes())},
        ignored_url_key: {"auth": base64(format!("robot:{url_password}").as_bytes())},
        "quay.io": {"auth": base64(format!("robot:{url_password}").as_bytes())},
    }}))
    .expect("JSON");
    needles.add_blob("credentials in an auths key", &url_config);
    create_secret(&client, &source_ns, &pull_secret("url-source", &url_config)).await;
    let secrets = "  - name: regcred\n    source: {name: regcred-source}\n\
                   \x20 - name: broken\n    source: {name: broken-source}\n\
                   \x20 - name: urlcred\n    source: {name: url-source}\n\
                   \x20 - name: ghost\n    source: {name: ghost-source}\n    registries: [ghost.example.com]\n";
    let config = replication_config(&source_ns, LABEL, "leaks", LEASE_SECONDS, secrets);

    // Two replicas, debug logs for everything (kube, hyper, rustls included).
    let debug = [("PULLSECRET_INJECTOR_LOG_LEVEL", "debug")];
    let a = access::replicator(&config, &debug).await;
    a.injector.wait_leader(LEADER).await;
    let b = access::replicator(&config, &debug).await;
    let _a_logs = a.injector.logs_on_failure();
    let _b_logs = b.injector.logs_on_failure();
    let _webhook = register(
        &client,
        &webhook::replicating("leaks", LABEL, &a.url(), &a.ca_pem, 10),
    )
    .await;

    // Copies, pods (with the copy there, and made at admission), dry runs.
    let app = controlplane::namespace(&client, "leaks-app", &[(LABEL, "enabled")]).await;
    wait_copy(&client, &app, "regcred", &source, CONVERGE).await;
    admitted_pod(&client, &app, "web", IMAGE, &["regcred", "urlcred"]).await;
    let fresh = controlplane::namespace(&client, "leaks-fresh", &[(LABEL, "enabled")]).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &fresh);
    let created = pods
        .create(&PostParams::default(), &pod("at-once", &[IMAGE]))
        .await
        .expect("a pod right after its namespace");
    assert_eq!(secret_names(&created), ["regcred", "urlcred"]);
    pods.create(&dry_run(), &pod("dry", &["quay.io/team/app:1"]))
        .await
        .expect("dry run");
    // The missing source: admitted, with a warning.
    pods.create(
        &PostParams::default(),
        &pod("ghost", &["ghost.example.com/app:1"]),
    )
    .await
    .expect("a pod whose secret's source is missing");

    // A user's Secret in the way.
    let users = controlplane::namespace(&client, "leaks-users", &[]).await;
    let own = Credentials::new(REGISTRY, "me", &canary("user"));
    needles.add_credentials("user's own", &own);
    create_secret(
        &client,
        &users,
        &pull_secret("regcred", &own.dockerconfigjson()),
    )
    .await;
    set_label(&client, &users, LABEL, Some("enabled")).await;
    a.injector
        .wait_for_log(CONVERGE, |l| {
            l["namespace"] == users.as_str() && l["level"] == "WARN"
        })
        .await;

    // Rotation.
    let second = Credentials::new(REGISTRY, "robot", &canary("second"));
    needles.add_credentials("rotated", &second);
    let rotated = rotate(&client, &source_ns, "regcred-source", &[second]).await;
    wait_copy(&client, &app, "regcred", &rotated, CONVERGE).await;
    wait_copy(&client, &fresh, "regcred", &rotated, CONVERGE).await;

    // Bad requests.
    let tls = TlsClient::new(&a.ca_pem);
    for (content_type, body) in [
        ("application/json", "{not json".to_string()),
        (
            "application/json",
            json!({"kind": "AdmissionReview"}).to_string(),
        ),
        ("text/plain", "hello".to_string()),
    ] {
        let answer = tls
            .post(a.injector.addr, "/mutate", content_type, body)
            .await;
        assert!(answer.status.is_client_error());
    }

    // Hand-over: a stops, b takes over and writes.
    let metrics_a = a.injector.metrics().await;
    a.injector.signal("TERM");
    controlplane::eventually("replica a to exit", Duration::from_secs(30), || async {
        if a.injector.is_running() {
            Err("running")
        } else {
            Ok(())
        }
    })
    .await;
    // Its last lines: the log reader drains stderr to the end.
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.injector.wait_leader(LEADER).await;
    let late = controlplane::namespace(&client, "leaks-late", &[(LABEL, "enabled")]).await;
    wait_copy(&client, &late, "regcred", &rotated, CONVERGE).await;
    let metrics_b = b.injector.metrics().await;

    // The search.
    let logs_a = a.injector.logs().join("\n");
    let logs_b = b.injector.logs().join("\n");
    let debug_lines = [&a, &b]
        .iter()
        .map(|r| {
            r.injector
                .json_logs()
                .iter()
                .filter(|l| l["level"] == "DEBUG")
                .count()
        })
        .sum::<usize>();
    assert!(debug_lines > 0, "debug logging was not on");
    for expected in [
        "copy created",
        "copy updated",
        "admission reviewed",
        "request refused",
        "source secret gives no patterns",
    ] {
        assert!(
            logs_a.contains(expected) || logs_b.contains(expected),
            "the run did not log {expected:?}"
        );
    }
    let mut hits = Vec::new();
    for (whose, text) in [
        ("logs of a", &logs_a),
        ("logs of b", &logs_b),
        ("metrics of a", &metrics_a),
        ("metrics of b", &metrics_b),
    ] {
        hits.extend(
            needles
                .find(text)
                .into_iter()
                .map(|(what, line)| format!("{whose}: {what}: {line}")),
        );
    }
    eprintln!(
        "searched {} log lines ({debug_lines} debug) and {} metric lines for {} needles",
        logs_a.lines().count() + logs_b.lines().count(),
        metrics_a.lines().count() + metrics_b.lines().count(),
        needles.0.len()
    );
    assert!(hits.is_empty(), "secrets leaked:\n{}", hits.join("\n"));
}
