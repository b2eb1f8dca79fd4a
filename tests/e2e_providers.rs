//! End to end through a real kube-apiserver (crates/test-support, `controlplane`): entries
//! whose credentials come from a kubelet credential provider plugin. The plugin is
//! crates/fake-credential-provider, a real executable speaking
//! credentialprovider.kubelet.k8s.io/v1 on stdin and stdout, which issues numbered tokens
//! valid for a few seconds and fails, hangs or answers badly on demand
//! (test_support::providers).
//!
//! The real `pullsecret-injector serve` binary runs the plugin on the Lease holder, keeps the
//! answer in a Secret named like the entry in its namespace and copies it into the opted-in
//! namespaces; every injector runs with the access the chart grants for its config (a
//! ServiceAccount token, test_support::access), Secret policy included.
//!
//! Isolation as in e2e_replication: each test has its own namespaces, opt-in label
//! (`pullsecret-injector.io/e2e-prov-<id>`), Lease and plugin directory.
//!
//! Needs `make controlplane` once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use serde_json::Value;
use test_support::access;
use test_support::controlplane::{self, eventually};
use test_support::injector::Instance;
use test_support::metrics::{leader_metric, metric};
use test_support::pods::wait_dry_run;
use test_support::providers::{FakeProvider, auths_of, password_of};
use test_support::replication::{MANAGED_BY, annotation, label, replication_config};
use test_support::secrets::get_secret;
use test_support::webhook::{self, register};

/// The Lease duration every test configures.
const LEASE_SECONDS: u64 = 4;
/// How long a replicator may take to win a free Lease.
const LEADER: Duration = Duration::from_secs(4 * LEASE_SECONDS);
/// How long the apiserver may take to act on a new webhook configuration.
const PROPAGATION: Duration = Duration::from_secs(30);
/// The image the entry asks credentials for, and its registry: the plugin's auth key.
const IMAGE: &str = "registry.example.com/team/app:1";
const REGISTRY: &str = "registry.example.com";
const PROVIDER: &str = "fake-registry-provider";
const ISSUED_ANNOTATION: &str = "pullsecret-injector.io/issued-at";
const EXPIRES_ANNOTATION: &str = "pullsecret-injector.io/expires-at";

fn opt_in_label(id: &str) -> String {
    format!("pullsecret-injector.io/e2e-prov-{id}")
}

/// A fake provider matching [`REGISTRY`] whose tokens are valid for `cache_duration`.
fn provider(cache_duration: &str) -> FakeProvider {
    FakeProvider::new(PROVIDER, &[REGISTRY], Some(cache_duration), "1h")
}

/// The config of test `id`: the entry `regcred` from `provider`, kept in `namespace` (also
/// the Lease's), copied into namespaces labelled `opt_in_label(id)=enabled`.
fn config(id: &str, namespace: &str, provider: &FakeProvider, timeout_seconds: u64) -> String {
    let entry =
        format!("  - name: regcred\n    provider: {{name: {PROVIDER}, images: [\"{IMAGE}\"]}}\n");
    format!(
        "{}{}",
        provider.config_block(timeout_seconds),
        replication_config(
            namespace,
            &opt_in_label(id),
            &format!("e2e-prov-{id}"),
            LEASE_SECONDS,
            &entry
        )
    )
}

async fn start_leader(config: &str) -> Instance {
    let replicator = access::replicator(config, &[]).await;
    replicator.injector.wait_leader(LEADER).await;
    replicator
}

/// A time annotation of the credentials Secret.
fn time_of(secret: &Secret, key: &str) -> SystemTime {
    let stamp: Timestamp = annotation(secret, key)
        .unwrap_or_else(|| panic!("no {key} on {:?}", secret.metadata.name))
        .parse()
        .expect("RFC 3339");
    SystemTime::from(stamp)
}

/// Waits until `namespace/regcred` holds credentials for [`REGISTRY`] other than `not`;
/// returns the Secret and its password.
async fn wait_token(
    client: &kube::Client,
    namespace: &str,
    not: Option<&str>,
    timeout: Duration,
) -> (Secret, String) {
    eventually(
        &format!("{namespace}/regcred with a token other than {not:?}"),
        timeout,
        || async {
            let secret = get_secret(client, namespace, "regcred")
                .await
                .ok_or("no such Secret")?;
            match password_of(&secret, REGISTRY) {
                Some(token) if Some(token.as_str()) != not => Ok((secret, token)),
                other => Err(format!("token {other:?}")),
            }
        },
    )
    .await
}

/// The Events about Secret `namespace/regcred` with `reason`.
async fn secret_events(client: &kube::Client, namespace: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Secret,involvedObject.name=regcred,reason={reason}"
        )))
        .await
        .expect("list events")
        .items
}

/// Waits for a `credential refresh failed` log line with `reason`; returns it.
async fn wait_failure(replicator: &Instance, reason: &str, timeout: Duration) -> Value {
    replicator
        .injector
        .wait_for_log(timeout, |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("credential refresh failed"))
                && l["reason"] == reason
        })
        .await
}

fn provider_metric(text: &str, family: &str, extra: &str) -> f64 {
    metric(
        text,
        &format!(
            "pullsecret_injector_{family}{{secret=\"regcred\",provider=\"{PROVIDER}\"{extra}}}"
        ),
    )
}

/// Asserts that no token appears in the injector's logs, its metrics or the Events of
/// `namespace`.
async fn assert_no_token_leaked(
    client: &kube::Client,
    replicator: &Instance,
    namespace: &str,
    tokens: &[String],
) {
    assert!(!tokens.is_empty());
    let logs = replicator.injector.logs().join("\n");
    let metrics = replicator.injector.metrics().await;
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list events");
    let events = serde_json::to_string(&events.items).expect("JSON");
    for token in tokens {
        assert!(!logs.contains(token.as_str()), "a log line holds {token}");
        assert!(
            !metrics.contains(token.as_str()),
            "the metrics hold {token}"
        );
        assert!(!events.contains(token.as_str()), "an Event holds {token}");
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn copies_appear_in_opted_in_namespaces_and_are_refreshed_before_expiry_again_and_again() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "refresh";
    let key = opt_in_label(id);
    let home = controlplane::namespace(&client, "e2e-prov-refresh-home", &[]).await;
    let provider = provider("6s");
    let replicator = start_leader(&config(id, &home, &provider, 10)).await;
    let _injector_logs = replicator.injector.logs_on_failure();
    let namespaces = [
        controlplane::namespace(&client, "e2e-prov-refresh", &[(&key, "enabled")]).await,
        controlplane::namespace(&client, "e2e-prov-refresh", &[(&key, "enabled")]).await,
    ];
    let other = controlplane::namespace(&client, "e2e-prov-refresh-other", &[]).await;

    // The first credentials: kept in our namespace, ours, and copied into both namespaces.
    let (kept, first) = wait_token(&client, &home, None, Duration::from_secs(30)).await;
    assert_eq!(
        kept.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    assert_eq!(label(&kept, MANAGED_BY), Some("pullsecret-injector"));
    assert_eq!(
        annotation(&kept, "pullsecret-injector.io/owner"),
        Some(format!("{home}/e2e-prov-{id}").as_str())
    );
    assert_eq!(
        annotation(&kept, "pullsecret-injector.io/provider"),
        Some(PROVIDER)
    );
    let auths = auths_of(&kept);
    assert_eq!(auths[REGISTRY]["username"], "fake");
    assert!(auths[REGISTRY]["auth"].is_string());
    for ns in &namespaces {
        let (copy, token) = wait_token(&client, ns, None, Duration::from_secs(10)).await;
        assert_eq!(
            annotation(&copy, "pullsecret-injector.io/source"),
            Some(format!("{home}/regcred").as_str())
        );
        assert_eq!(label(&copy, MANAGED_BY), Some("pullsecret-injector"));
        assert!(token.starts_with("fake-"), "{token}");
    }
    assert!(
        get_secret(&client, &other, "regcred").await.is_none(),
        "not opted in"
    );

    // Pods that pull from the registry get the entry, as for any source.
    let registration = register(
        &client,
        &webhook::replicating(
            &format!("pullsecret-injector-e2e-prov-{id}"),
            &key,
            &replicator.url(),
            &replicator.ca_pem,
            5,
        ),
    )
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), &namespaces[0]);
    wait_dry_run(&pods, IMAGE, &["regcred"], PROPAGATION).await;
    wait_dry_run(&pods, "ghcr.io/acme/app:1", &[], PROPAGATION).await;

    // Refreshes: watch the kept Secret and a copy until the copy has seen six tokens (five
    // refreshes), noting when each token was issued, when it expires, and when the copy
    // first held it.
    let mut issued: BTreeMap<String, (SystemTime, SystemTime)> = BTreeMap::new();
    let mut seen_in_copy: Vec<(String, SystemTime)> = Vec::new();
    let started = Instant::now();
    while seen_in_copy.len() < 6 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} tokens in a minute: {seen_in_copy:?}",
            seen_in_copy.len()
        );
        if let Some(kept) = get_secret(&client, &home, "regcred").await
            && let Some(token) = password_of(&kept, REGISTRY)
        {
            issued.entry(token).or_insert_with(|| {
                (
                    time_of(&kept, ISSUED_ANNOTATION),
                    time_of(&kept, EXPIRES_ANNOTATION),
                )
            });
        }
        if let Some(copy) = get_secret(&client, &namespaces[0], "regcred").await
            && let Some(token) = password_of(&copy, REGISTRY)
            && seen_in_copy.last().is_none_or(|(last, _)| *last != token)
        {
            seen_in_copy.push((token, SystemTime::now()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen_in_copy[0].0, first,
        "the copy started with the first token"
    );
    let mut report = Vec::new();
    for pair in seen_in_copy.windows(2) {
        let ((old, _), (new, arrived)) = (&pair[0], &pair[1]);
        let (old_issued, old_expires) = issued[old];
        let (new_issued, new_expires) = issued[new];
        let interval = new_issued
            .duration_since(old_issued)
            .expect("issued in order");
        let margin = old_expires
            .duration_since(*arrived)
            .unwrap_or_else(|_| panic!("{new} reached the copy after {old} expired"));
        assert_eq!(
            new_expires
                .duration_since(new_issued)
                .expect("expires after issue"),
            Duration::from_secs(6),
            "valid for the plugin's cacheDuration"
        );
        // Two thirds of 6 s less up to a tenth of that; never on every watch event.
        assert!(
            interval >= Duration::from_millis(3_500) && interval <= Duration::from_millis(4_500),
            "refreshed {interval:?} after the previous one"
        );
        report.push(format!(
            "issued {:.2} s after the previous, in the copy {:.2} s before the previous expired",
            interval.as_secs_f64(),
            margin.as_secs_f64()
        ));
    }
    println!("{} refreshes:\n  {}", report.len(), report.join("\n  "));
    let refreshes = (seen_in_copy.len() - 1) as f64;
    assert!(refreshes >= 5.0);

    // Every copy ends up with the latest token.
    let latest = provider.token().expect("a token");
    for ns in &namespaces {
        eventually(
            &format!("{ns}/regcred to hold the latest token"),
            Duration::from_secs(5),
            || async {
                let copy = get_secret(&client, ns, "regcred").await.ok_or("gone")?;
                match password_of(&copy, REGISTRY) {
                    Some(t) if t == latest || provider.token().as_deref() == Some(&t) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }

    // The plugin was asked as the kubelet asks it, once per refresh.
    let requests = provider.requests();
    assert!(requests.len() as f64 >= refreshes + 1.0, "{requests:?}");
    for request in &requests {
        assert_eq!(
            request,
            &serde_json::json!({
                "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                "kind": "CredentialProviderRequest",
                "image": IMAGE,
            })
        );
    }
    assert_eq!(provider.issued() as usize, requests.len());

    let metrics = replicator.injector.metrics().await;
    assert!(
        provider_metric(&metrics, "provider_refreshes_total", ",result=\"success\"")
            >= refreshes + 1.0,
        "{metrics}"
    );
    assert_eq!(
        provider_metric(&metrics, "provider_refreshes_total", ",result=\"failure\""),
        0.0
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64();
    let expiry = provider_metric(
        &metrics,
        "provider_credentials_expiry_timestamp_seconds",
        "",
    );
    let last = provider_metric(&metrics, "provider_last_refresh_timestamp_seconds", "");
    assert!(
        expiry > now && expiry <= now + 7.0,
        "expiry {expiry}, now {now}"
    );
    assert!(
        last <= now + 1.0 && last > now - 5.0,
        "last refresh {last}, now {now}"
    );
    assert_eq!(leader_metric(&metrics), 1.0);
    let tokens: Vec<String> = issued.keys().cloned().collect();
    assert_no_token_leaked(&client, &replicator, &home, &tokens).await;
    registration.delete().await;
}

#[tokio::test]
async fn a_failing_plugin_keeps_the_last_good_copy_and_reports_the_failure() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "failing";
    let key = opt_in_label(id);
    let home = controlplane::namespace(&client, "e2e-prov-failing-home", &[]).await;
    let provider = provider("4s");
    let replicator = start_leader(&config(id, &home, &provider, 10)).await;
    let _injector_logs = replicator.injector.logs_on_failure();
    let ns = controlplane::namespace(&client, "e2e-prov-failing", &[(&key, "enabled")]).await;
    let (_, good) = wait_token(&client, &ns, None, Duration::from_secs(30)).await;

    // From now on the plugin fails. The copy must hold its last good token, past expiry.
    provider.set_mode("fail");
    let before = provider.issued();
    let line = wait_failure(&replicator, "exit", Duration::from_secs(15)).await;
    assert_eq!(line["provider"], PROVIDER, "{line}");
    assert_eq!(line["secret"], "regcred", "{line}");
    let stderr = "fake-credential-provider: AccessDenied: not authorized to issue tokens for registry.example.com/team/app:1";
    assert_eq!(line["stderr"], stderr, "{line}");
    let message = line["message"].as_str().expect("a message");
    assert!(
        message.contains(&format!(
            "credential provider plugin {PROVIDER} failed for image {IMAGE}: exit status: 1"
        )),
        "{message}"
    );
    assert!(
        message.contains("the copies keep the credentials that expire at"),
        "{message}"
    );

    let kept = get_secret(&client, &home, "regcred").await.expect("kept");
    let (current, kept) = match password_of(&kept, REGISTRY) {
        // The last good token may be newer than the one first copied.
        Some(token) => (token, kept),
        None => panic!("the kept Secret lost its credentials"),
    };
    let expires = time_of(&kept, EXPIRES_ANNOTATION);
    let events = eventually(
        "a CredentialProviderFailed Event about the Secret",
        Duration::from_secs(10),
        || async {
            let events = secret_events(&client, &home, "CredentialProviderFailed").await;
            if events.is_empty() {
                Err("none".to_string())
            } else {
                Ok(events)
            }
        },
    )
    .await;
    let note = events[0].message.clone().unwrap_or_default();
    assert!(note.contains(PROVIDER) && note.contains(stderr), "{note}");
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));

    // Wait until the kept credentials have expired: nothing was replaced or removed.
    let past = expires + Duration::from_secs(1);
    if let Ok(wait) = past.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let copy = get_secret(&client, &ns, "regcred")
        .await
        .expect("the copy is kept");
    assert_eq!(
        password_of(&copy, REGISTRY).as_deref(),
        Some(current.as_str())
    );
    let still = get_secret(&client, &home, "regcred").await.expect("kept");
    assert_eq!(
        still.metadata.resource_version,
        kept.metadata.resource_version
    );
    assert!(
        provider.issued() == before,
        "the failing plugin issued nothing"
    );
    let metrics = replicator.injector.metrics().await;
    let failures = provider_metric(&metrics, "provider_refreshes_total", ",result=\"failure\"");
    assert!(failures >= 2.0, "retried with backoff: {metrics}");
    assert!(provider_metric(&metrics, "provider_errors_total", ",reason=\"exit\"") >= 2.0);
    let epoch = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .expect("epoch")
            .as_secs() as f64
    };
    assert_eq!(
        provider_metric(
            &metrics,
            "provider_credentials_expiry_timestamp_seconds",
            ""
        ),
        epoch(expires),
        "the expiry metric says the copies hold expired credentials"
    );

    // A plugin that prints a token on stderr: the token is redacted everywhere.
    provider.set_mode("leak");
    let line = wait_failure(&replicator, "exit", Duration::from_secs(30)).await;
    let line = if line["stderr"]
        .as_str()
        .is_some_and(|s| s.contains("cannot answer"))
    {
        line
    } else {
        replicator
            .injector
            .wait_for_log(Duration::from_secs(30), |l| {
                l["stderr"]
                    .as_str()
                    .is_some_and(|s| s.contains("cannot answer"))
            })
            .await
    };
    assert_eq!(
        line["stderr"], "fake-credential-provider: cannot answer; the last token was <redacted>",
        "{line}"
    );

    // The plugin recovers: new credentials reach the copy.
    provider.set_mode("ok");
    let (_, fresh) = wait_token(&client, &ns, Some(&current), Duration::from_secs(40)).await;
    assert_ne!(fresh, good);
    replicator
        .injector
        .wait_for_log(Duration::from_secs(5), |l| {
            l["message"] == "credentials refreshed"
        })
        .await;
    assert_no_token_leaked(&client, &replicator, &home, &[good, current, fresh]).await;
    println!(
        "{failures} failed refreshes while the plugin failed; the copy kept its token past expiry"
    );
}

#[tokio::test]
async fn bad_plugin_output_is_refused_with_a_clear_error_and_the_injector_keeps_serving() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "refused";
    let key = opt_in_label(id);
    let home = controlplane::namespace(&client, "e2e-prov-refused-home", &[]).await;
    let provider = provider("1h");
    provider.set_mode("malformed");
    let replicator = start_leader(&config(id, &home, &provider, 2)).await;
    let _injector_logs = replicator.injector.logs_on_failure();
    let ns = controlplane::namespace(&client, "e2e-prov-refused", &[(&key, "enabled")]).await;

    // Each bad answer in turn: refused with what was wrong, nothing written.
    let cases = [
        (
            "malformed",
            "malformed",
            "CredentialProviderRefused",
            "the response is not a CredentialProviderResponse in JSON",
            None,
        ),
        (
            "wrong-api-version",
            "wrong_api_version",
            "CredentialProviderRefused",
            "the response's apiVersion is \"credentialprovider.kubelet.k8s.io/v1alpha1\", expected \"credentialprovider.kubelet.k8s.io/v1\" (the request's)",
            None,
        ),
        (
            "wrong-kind",
            "wrong_kind",
            "CredentialProviderRefused",
            "the response's kind is \"CredentialProviderRequest\", expected \"CredentialProviderResponse\"",
            None,
        ),
        (
            "empty",
            "no_credentials",
            "CredentialProviderRefused",
            "the response has no credentials (empty auth)",
            None,
        ),
        (
            "hang",
            "timeout",
            "CredentialProviderFailed",
            "did not answer for image registry.example.com/team/app:1 within 2 s and was killed",
            Some("fake-credential-provider: waiting for the token service"),
        ),
    ];
    for (mode, reason, event_reason, expected, stderr) in cases {
        provider.set_mode(mode);
        let line = wait_failure(&replicator, reason, Duration::from_secs(40)).await;
        let message = line["message"].as_str().expect("a message");
        assert!(message.contains(PROVIDER), "{mode}: {message}");
        assert!(message.contains(expected), "{mode}: {message}");
        assert!(
            message.contains("there are no credentials to copy yet"),
            "{mode}: {message}"
        );
        if let Some(stderr) = stderr {
            assert_eq!(line["stderr"], stderr, "{mode}: {line}");
        }
        let events = eventually(
            &format!("an Event {event_reason} ({mode})"),
            Duration::from_secs(10),
            || async {
                let events = secret_events(&client, &home, event_reason).await;
                if events.is_empty() {
                    Err("none".to_string())
                } else {
                    Ok(events)
                }
            },
        )
        .await;
        assert!(
            events[0]
                .message
                .as_deref()
                .is_some_and(|m| m.contains(PROVIDER))
        );
        assert!(
            get_secret(&client, &home, "regcred").await.is_none(),
            "{mode}: written"
        );
        assert!(
            get_secret(&client, &ns, "regcred").await.is_none(),
            "{mode}: copied"
        );
        assert!(
            replicator.injector.is_running(),
            "{mode}: the injector exited"
        );
    }
    // Only the refresher reports: no "source missing" for credentials not issued yet.
    assert!(
        secret_events(&client, &home, "SourceSecretMissing")
            .await
            .is_empty(),
        "a SourceSecretMissing Event about credentials the plugin never issued"
    );
    let metrics = replicator.injector.metrics().await;
    for (_, reason, ..) in cases {
        assert!(
            provider_metric(
                &metrics,
                "provider_errors_total",
                &format!(",reason=\"{reason}\"")
            ) >= 1.0,
            "{reason}: {metrics}"
        );
    }
    // Still serving (readyz through the metrics listener), and a good answer is taken.
    provider.set_mode("ok");
    let (_, token) = wait_token(&client, &ns, None, Duration::from_secs(40)).await;
    assert!(token.starts_with("fake-"));
}

#[tokio::test]
async fn a_new_leader_resumes_the_schedule_instead_of_calling_the_plugin_at_once() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "handover";
    let key = opt_in_label(id);
    let home = controlplane::namespace(&client, "e2e-prov-handover-home", &[]).await;
    let provider = provider("9s");
    let config = config(id, &home, &provider, 10);
    let first = start_leader(&config).await;
    let _first_logs = first.injector.logs_on_failure();
    let second = access::replicator(&config, &[]).await;
    let _second_logs = second.injector.logs_on_failure();
    let ns = controlplane::namespace(&client, "e2e-prov-handover", &[(&key, "enabled")]).await;
    let (_, token) = wait_token(&client, &ns, None, Duration::from_secs(30)).await;
    let follower_metrics = second.injector.metrics().await;
    assert_eq!(leader_metric(&follower_metrics), 0.0);
    assert_eq!(
        provider_metric(
            &follower_metrics,
            "provider_refreshes_total",
            ",result=\"success\""
        ),
        0.0,
        "only the leader runs the plugin"
    );

    // The leader goes; the follower takes over and resumes the schedule it finds.
    let kept = get_secret(&client, &home, "regcred").await.expect("kept");
    let issued_before = provider.issued();
    first.injector.signal("TERM");
    let resumed = second
        .injector
        .wait_for_log(LEADER, |l| {
            l["message"] == "resuming the refresh of credentials issued under an earlier Lease term"
        })
        .await;
    let kept_now = get_secret(&client, &home, "regcred").await.expect("kept");
    let refresh_at: Timestamp = resumed["refresh_at"]
        .as_str()
        .expect("refresh_at")
        .parse()
        .expect("RFC 3339");
    let issued_at = time_of(&kept_now, ISSUED_ANNOTATION);
    let planned = SystemTime::from(refresh_at)
        .duration_since(issued_at)
        .expect("after issue");
    assert!(
        planned >= Duration::from_millis(5_300) && planned <= Duration::from_secs(6),
        "two thirds of 9 s after issue: {planned:?}"
    );
    // Until then, no call: the token in force is the one the old leader got.
    if kept_now.metadata.resource_version == kept.metadata.resource_version {
        assert_eq!(
            provider.issued(),
            issued_before,
            "the new leader called the plugin at once"
        );
    }
    let (_, next) = wait_token(&client, &ns, Some(&token), Duration::from_secs(20)).await;
    let (_, after) = wait_token(&client, &ns, Some(&next), Duration::from_secs(20)).await;
    assert!(after.starts_with("fake-"));
    let metrics = second.injector.metrics().await;
    assert_eq!(leader_metric(&metrics), 1.0);
    assert!(provider_metric(&metrics, "provider_refreshes_total", ",result=\"success\"") >= 1.0);
}

#[tokio::test]
async fn credentials_deleted_or_edited_by_hand_are_put_back_without_asking_the_plugin() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "restore";
    let key = opt_in_label(id);
    let home = controlplane::namespace(&client, "e2e-prov-restore-home", &[]).await;
    let provider = provider("1h");
    let replicator = start_leader(&config(id, &home, &provider, 10)).await;
    let _injector_logs = replicator.injector.logs_on_failure();
    let ns = controlplane::namespace(&client, "e2e-prov-restore", &[(&key, "enabled")]).await;
    let (_, token) = wait_token(&client, &ns, None, Duration::from_secs(30)).await;
    assert_eq!(provider.issued(), 1);
    let secrets = Api::<Secret>::namespaced(client.clone(), &home);

    // Deleted: back with the same credentials, the plugin not asked.
    let started = Instant::now();
    secrets
        .delete("regcred", &Default::default())
        .await
        .expect("delete the credentials");
    let (back, restored) = wait_token(&client, &home, None, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_eq!(restored, token);
    assert_eq!(
        annotation(&back, "pullsecret-injector.io/provider"),
        Some(PROVIDER)
    );

    // Edited: put back too.
    let forged = test_support::secrets::Credentials::new(REGISTRY, "fake", "forged-password");
    test_support::secrets::rotate(&client, &home, "regcred", &[forged]).await;
    eventually(
        "the edited credentials to be put back",
        Duration::from_secs(10),
        || async {
            let kept = get_secret(&client, &home, "regcred").await.ok_or("gone")?;
            match password_of(&kept, REGISTRY) {
                Some(t) if t == token => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(provider.issued(), 1, "the plugin was not asked again");
    let (_, copied) = wait_token(&client, &ns, None, Duration::from_secs(10)).await;
    assert_eq!(copied, token);
    replicator
        .injector
        .wait_for_log(Duration::from_secs(5), |l| {
            l["message"] == "credentials put back"
        })
        .await;
    println!("deleted credentials were back after {took:?}");
}

/// `crane manifest` of `reference` logged in to `registry` as `user` with `password`.
fn manifest_as(
    registry: &test_support::registry::Registry,
    user: &str,
    password: &str,
    reference: &str,
) -> std::process::Output {
    registry
        .crane(test_support::registry::Login::As(user, password))
        .args(["manifest", reference])
        .output()
        .expect("running crane manifest")
}

#[tokio::test]
async fn a_registry_that_takes_only_the_newest_token_takes_what_the_copies_hold() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let id = "tokens";
    let key = opt_in_label(id);
    // A registry of its own (TLS, htpasswd) whose only login is the plugin's newest token.
    let ca = test_support::pki::TestCa::new("e2e-prov-tokens CA");
    let registry = test_support::registry::Registry::start("e2e-prov-tokens", "fake", &ca)
        .expect("start the registry");
    let _registry_log = registry.logs_on_failure();
    let image = test_support::images::push_test_image(&registry, "team/app", "v1");
    let htpasswd = registry.htpasswd_path().display().to_string();
    let provider = FakeProvider::with_args(
        PROVIDER,
        &[registry.host()],
        Some("4s"),
        "1h",
        &["--username", "fake", "--htpasswd", &htpasswd],
    );
    let home = controlplane::namespace(&client, "e2e-prov-tokens-home", &[]).await;
    let entry = format!(
        "  - name: regcred\n    provider: {{name: {PROVIDER}, images: [\"{}\"]}}\n",
        image.reference
    );
    let config = format!(
        "{}{}",
        provider.config_block(10),
        replication_config(
            &home,
            &key,
            &format!("e2e-prov-{id}"),
            LEASE_SECONDS,
            &entry
        )
    );
    let replicator = start_leader(&config).await;
    let _injector_logs = replicator.injector.logs_on_failure();
    let ns = controlplane::namespace(&client, "e2e-prov-tokens", &[(&key, "enabled")]).await;

    // Each token the copy holds pulls; once the plugin has issued the next one, it no longer
    // does, and the copy holds the next one.
    let host = registry.host();
    let mut tokens: Vec<String> = Vec::new();
    while tokens.len() < 4 {
        let token = eventually(
            "the copy to hold a token the registry takes",
            Duration::from_secs(20),
            || async {
                let copy = get_secret(&client, &ns, "regcred").await.ok_or("no copy")?;
                let token = password_of(&copy, host).ok_or("no credentials for the registry")?;
                if tokens.last() == Some(&token) {
                    return Err("not refreshed yet".to_string());
                }
                let pulled = manifest_as(&registry, "fake", &token, &image.reference);
                if pulled.status.success() {
                    Ok(token)
                } else {
                    Err(String::from_utf8_lossy(&pulled.stderr).into_owned())
                }
            },
        )
        .await;
        tokens.push(token);
    }
    let refused = manifest_as(&registry, "fake", &tokens[0], &image.reference);
    assert!(!refused.status.success(), "the first token still pulls");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401")
            || String::from_utf8_lossy(&refused.stderr).contains("UNAUTHORIZED"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    println!(
        "the copy held {} tokens in turn, each pulling from the registry while newest",
        tokens.len()
    );
}
