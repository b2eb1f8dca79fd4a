//! Self-managed certificates (a `certificates` block) through the real control plane: two replicas with the chart's
//! access; the leader creates its own CA and serving certificate and sets the caBundle, and
//! the apiserver calls both replicas (one webhook each, failurePolicy Fail) for every pod.
//! With short validities, pods are created through a serving-certificate renewal and a whole
//! CA rollover (the next CA joins the bundle, signs after the bundle has settled, the old CA
//! leaves the bundle when it expires), with the CA so short-lived that the next rollover
//! begins before the first ends: not one admission may fail.

use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use pullsecret_injector::certificates::pair::fingerprints;
use serde_json::Value;
use test_support::access::ChartAccess;
use test_support::client::TlsClient;
use test_support::controlplane::{self, eventually};
use test_support::injector::{Injector, Options, mutate_url};
use test_support::pods::{pod, secret_names, wait_dry_run};
use test_support::ports::free_ports;
use test_support::webhook::{self, register};

const SERVING_VALIDITY_S: u64 = 60;
/// Little more than the config allows (twice the serving validity): each CA is replaced a
/// minute after it is made (serving validity and the 10 s settling time before its end), and
/// the first one leaves the bundle as the second is replaced.
const CA_VALIDITY_S: u64 = 130;
const CHECK_INTERVAL_S: u64 = 5;
/// From the first pod until the first CA has left the bundle: its validity, and slack.
const ROLLOVER_DEADLINE: Duration = Duration::from_secs(CA_VALIDITY_S + 60);
const IMAGE: &str = "ghcr.io/acme/app:1";

/// One webhook per replica, so that every pod creation calls both of them.
fn configuration(name: &str, ports: [u16; 2], label: &str) -> MutatingWebhookConfiguration {
    let webhooks: Vec<MutatingWebhook> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let (hook, url) = (
                format!("r{i}.{name}.pullsecret-injector.io"),
                mutate_url(*port),
            );
            webhook::Spec {
                // Fail: a pod created while a replica cannot be called is refused and counted.
                failure_policy: "Fail",
                reinvocation_policy: None,
                ..webhook::Spec::new(name, &hook, &url, label)
            }
            .configuration()
            .webhooks
            .expect("a webhook")
            .remove(0)
        })
        .collect();
    MutatingWebhookConfiguration {
        webhooks: Some(webhooks),
        ..webhook::Spec::new(name, "unused", "https://unused", label).configuration()
    }
}

fn app_pod(i: usize) -> Pod {
    let mut pod = pod(&format!("p{i}"), &[IMAGE]);
    pod.spec
        .as_mut()
        .expect("spec")
        .automount_service_account_token = Some(false);
    pod
}

fn data(secret: &Secret, key: &str) -> Option<ByteString> {
    secret.data.as_ref().and_then(|d| d.get(key)).cloned()
}

fn pem(bytes: &ByteString) -> String {
    String::from_utf8(bytes.0.clone()).expect("PEM")
}

/// The caBundle of every webhook of the configuration (they are kept equal).
async fn bundles(webhooks: &Api<MutatingWebhookConfiguration>, name: &str) -> Vec<Vec<u8>> {
    webhooks
        .get(name)
        .await
        .expect("the webhook configuration")
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| w.client_config.ca_bundle.map(|b| b.0).unwrap_or_default())
        .collect()
}

/// Sum of a labelled counter over its series.
fn counter_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Seconds since the epoch of a JSON log line's timestamp (RFC 3339, UTC, as
/// "2026-11-28T05:21:34.058811Z").
fn log_time(line: &Value) -> f64 {
    let stamp = line["timestamp"].as_str().expect("a timestamp");
    let number = |range: std::ops::Range<usize>| -> i64 {
        stamp[range]
            .parse()
            .unwrap_or_else(|_| panic!("timestamp {stamp}"))
    };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let seconds: f64 = stamp[17..stamp.len() - 1]
        .parse()
        .unwrap_or_else(|_| panic!("timestamp {stamp}"));
    (days * 86_400 + number(11..13) * 3_600 + number(14..16) * 60) as f64 + seconds
}

/// Where the rollover of the first CA stands, as the certificate Secret shows it.
#[derive(Default, Debug)]
struct Seen {
    renewed: bool,
    next_ca: Option<ByteString>,
    promoted: bool,
    first_ca_gone: bool,
}

#[tokio::test]
async fn self_managed_certificates_renew_and_roll_over_the_ca_without_a_failed_admission() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let infra = controlplane::namespace(&client, "selfcert-infra", &[]).await;
    let label = "pullsecret-injector.io/e2e-selfcert";
    let apps = controlplane::namespace(&client, "selfcert-apps", &[(label, "enabled")]).await;
    let name = format!("selfcert-{}", std::process::id());
    let ports = free_ports::<2>();
    let registration = register(&client, &configuration(&name, ports, label)).await;
    let webhooks = &registration.api;

    let config = format!(
        r#"
namespace: {infra}
leaderElection: {{leaseName: {name}, leaseDurationSeconds: 4}}
certificates:
  secretName: {name}-tls
  webhookConfigurationName: {name}
  serviceName: pullsecret-injector
  extraHosts: ["127.0.0.1", localhost]
  servingValiditySeconds: {SERVING_VALIDITY_S}
  caValiditySeconds: {CA_VALIDITY_S}
  checkIntervalSeconds: {CHECK_INTERVAL_S}
secrets:
  - name: acme
    registries: [ghcr.io/acme/]
"#
    );
    // Two replicas with the chart's ServiceAccount, RBAC and Secret policy.
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let access = ChartAccess::for_config(&client, &config, dirs[0].path()).await;
    let listens = ports.map(|port| format!("127.0.0.1:{port}"));
    let replicas: Vec<Injector> = (0..2)
        .map(|i| {
            Injector::start(Options {
                listen: &listens[i],
                tls_files: false,
                kubeconfig: Some(&access.kubeconfig),
                ..Options::new(&config, dirs[i].path())
            })
        })
        .collect();
    let _replica_logs: Vec<_> = replicas.iter().map(Injector::logs_on_failure).collect();

    // The leader writes the Secret and the caBundle; every replica then serves the pair.
    let secrets = Api::<Secret>::namespaced(client.clone(), &infra);
    let secret_name = format!("{name}-tls");
    let first = eventually(
        "the certificate secret",
        Duration::from_secs(30),
        || async {
            secrets
                .get_opt(&secret_name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not created yet".to_string())
        },
    )
    .await;
    let first_ca = data(&first, "ca.crt").expect("ca.crt");
    eventually("the caBundle", Duration::from_secs(30), || async {
        let all = bundles(webhooks, &name).await;
        all.iter()
            .all(|b| *b == first_ca.0)
            .then_some(())
            .ok_or("caBundle not set yet".to_string())
    })
    .await;
    for replica in &replicas {
        replica
            .wait_for_log(Duration::from_secs(30), |l| {
                l["message"] == "serving certificate loaded"
            })
            .await;
    }

    // Pods, one after another, until the first CA has left the Secret (and then the bundle):
    // each one must be admitted and mutated by both replicas.
    let pods = Api::<Pod>::namespaced(client.clone(), &apps);
    let first_cert = data(&first, "tls.crt");
    // The apiserver may need a moment to act on the caBundle change: wait for the first pod.
    wait_dry_run(&pods, IMAGE, &["acme"], Duration::from_secs(30)).await;
    let started = Instant::now();
    let (mut created, mut failures, mut seen) = (0usize, Vec::new(), Seen::default());
    let mut milestones = Vec::new();
    while !seen.first_ca_gone && started.elapsed() < ROLLOVER_DEADLINE {
        created += 1;
        match pods.create(&PostParams::default(), &app_pod(created)).await {
            Ok(pod) => {
                let names = secret_names(&pod);
                if names != ["acme"] {
                    failures.push(format!("pod {created} not mutated: {names:?}"));
                }
            }
            Err(e) => failures.push(format!("pod {created} at {:?}: {e}", started.elapsed())),
        }
        let current = secrets.get(&secret_name).await.expect("secret");
        let (ca, next_ca, old_ca) = (
            data(&current, "ca.crt"),
            data(&current, "next-ca.crt"),
            data(&current, "old-ca.crt"),
        );
        if !seen.renewed && data(&current, "tls.crt") != first_cert {
            assert_eq!(ca.as_ref(), Some(&first_ca), "a renewal keeps the CA");
            seen.renewed = true;
            milestones.push(("serving certificate renewed", started.elapsed(), created));
        }
        if seen.next_ca.is_none()
            && let Some(next) = next_ca.clone()
        {
            assert_eq!(
                ca.as_ref(),
                Some(&first_ca),
                "the next CA does not sign yet"
            );
            seen.next_ca = Some(next);
            milestones.push(("next CA prepared", started.elapsed(), created));
        }
        if !seen.promoted && seen.next_ca.is_some() && ca.as_ref() != Some(&first_ca) {
            assert_eq!(ca, seen.next_ca, "the prepared CA takes over");
            assert_eq!(old_ca.as_ref(), Some(&first_ca), "the old CA is kept");
            seen.promoted = true;
            milestones.push(("next CA promoted", started.elapsed(), created));
        }
        if seen.promoted && ![&ca, &next_ca, &old_ca].contains(&&Some(first_ca.clone())) {
            seen.first_ca_gone = true;
            milestones.push(("first CA dropped", started.elapsed(), created));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    println!(
        "created {created} pods over {:?}, each through both replicas; milestones (at, pods \
         created by then): {milestones:?}; failures: {}",
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failed admissions:\n{}",
        failures.join("\n")
    );
    assert!(
        seen.renewed && seen.promoted && seen.first_ca_gone,
        "the rollover did not complete within {ROLLOVER_DEADLINE:?}: renewed {}, next CA {}, \
         promoted {}, first CA gone {}",
        seen.renewed,
        seen.next_ca.is_some(),
        seen.promoted,
        seen.first_ca_gone
    );

    // The bundle ends without the first CA, and both replicas serve a pair the bundle trusts
    // and the first CA alone does not.
    let first_pem = pem(&first_ca);
    let bundle = eventually(
        "the caBundle without the first CA",
        Duration::from_secs(30),
        || async {
            let all = bundles(webhooks, &name).await;
            let bundle = String::from_utf8(all[0].clone()).map_err(|e| e.to_string())?;
            if all.iter().any(|b| *b != all[0]) {
                return Err("the webhooks' bundles differ".to_string());
            }
            if bundle.contains(first_pem.trim()) {
                return Err("the first CA is still in the bundle".to_string());
            }
            Ok(bundle)
        },
    )
    .await;
    let trusting_bundle = TlsClient::without_resumption(&bundle);
    let first_only = TlsClient::without_resumption(&first_pem);
    for (i, replica) in replicas.iter().enumerate() {
        trusting_bundle
            .tls(replica.addr)
            .await
            .unwrap_or_else(|e| panic!("replica {i} serves a pair the bundle does not trust: {e}"));
        assert!(
            first_only.tls(replica.addr).await.is_err(),
            "replica {i} still serves a pair of the first CA"
        );
        let loads = replica
            .json_logs()
            .iter()
            .filter(|l| l["message"] == "serving certificate loaded")
            .count();
        assert!(
            loads >= 3,
            "replica {i} loaded {loads} pairs (created, renewed, promoted expected); logs:\n{}",
            replica.logs().join("\n")
        );
        let metrics = replica.metrics().await;
        assert_eq!(
            counter_sum(&metrics, "pullsecret_injector_certificate_errors_total"),
            0.0,
            "replica {i}: {metrics}"
        );
    }

    // The order, from the injectors' own logs: a replica serves a pair of a new CA only once a
    // bundle with that CA has been written and has had the settling time (10 s: a check
    // interval, at least 10 s; the leader counts it in whole seconds, hence 9 here) to reach
    // the apiserver, and no bundle leaves out a CA whose pair a replica still serves.
    let bundle_updates: Vec<(f64, String)> = replicas
        .iter()
        .flat_map(Injector::json_logs)
        .filter(|l| l["message"] == "caBundle updated")
        .map(|l| {
            (
                log_time(&l),
                l["ca_sha256"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let loads: Vec<Vec<(f64, String)>> = replicas
        .iter()
        .map(|r| {
            r.json_logs()
                .iter()
                .filter(|l| l["message"] == "serving certificate loaded")
                .map(|l| {
                    (
                        log_time(l),
                        l["ca_sha256"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .collect();
    let first_fingerprint = fingerprints(&first_pem).remove(0);
    let mut checked = (0, 0);
    for (i, replica_loads) in loads.iter().enumerate() {
        for (at, ca) in replica_loads
            .iter()
            .filter(|(_, ca)| *ca != first_fingerprint)
        {
            let trusted_since = bundle_updates
                .iter()
                .filter(|(_, cas)| cas.split(',').any(|c| c == ca))
                .map(|(t, _)| *t)
                .reduce(f64::min);
            match trusted_since {
                Some(since) if at - since >= 9.0 => checked.0 += 1,
                other => panic!(
                    "replica {i} served a pair of CA {ca} at {at}, bundle with it written at \
                     {other:?}; bundle updates: {bundle_updates:?}"
                ),
            }
        }
    }
    for (at, cas) in &bundle_updates {
        for (i, replica_loads) in loads.iter().enumerate() {
            // Loads are in the order logged: the last one before this update.
            if let Some((_, serving)) = replica_loads.iter().rev().find(|(t, _)| t < at) {
                assert!(
                    cas.split(',').any(|c| c == serving),
                    "the bundle written at {at} ({cas}) leaves out CA {serving}, which replica \
                     {i} serves"
                );
                checked.1 += 1;
            }
        }
    }
    println!(
        "order: {} loads of a new CA's pair came after its bundle had settled; {} (bundle, \
         replica) pairs kept the served CA",
        checked.0, checked.1
    );
    assert!(
        checked.0 >= 2,
        "no replica loaded the new CA's pair: {loads:?}"
    );

    registration.delete().await;
    for replica in replicas {
        replica.stop_cleanly();
    }
}
