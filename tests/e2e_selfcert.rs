//! `certificates.mode: self` through the real control plane: the injector creates its own
//! CA and serving certificate, sets the caBundle, and the apiserver calls it; renewals keep
//! every pod creation working.

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use test_support::controlplane::{self, eventually};
use test_support::injector::{Injector, Options, mutate_url};
use test_support::pods::{pod, secret_names, wait_dry_run};
use test_support::ports::free_port;
use test_support::webhook::{self, register};

const SERVING_VALIDITY_S: u64 = 60;
const IMAGE: &str = "ghcr.io/acme/app:1";

fn configuration(name: &str, port: u16, label: &str) -> MutatingWebhookConfiguration {
    let (webhook, url) = (format!("{name}.pullsecret-injector.io"), mutate_url(port));
    webhook::Spec {
        // Fail: a pod created while the webhook cannot be called is refused and counted.
        failure_policy: "Fail",
        reinvocation_policy: None,
        ..webhook::Spec::new(name, &webhook, &url, label)
    }
    .configuration()
}

fn app_pod(i: usize) -> Pod {
    let mut pod = pod(&format!("p{i}"), &[IMAGE]);
    pod.spec
        .as_mut()
        .expect("spec")
        .automount_service_account_token = Some(false);
    pod
}

#[tokio::test]
async fn self_managed_certificate_is_created_trusted_and_renewed_without_a_failed_admission() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let infra = controlplane::namespace(&client, "selfcert-infra", &[]).await;
    let label = "pullsecret-injector.io/e2e-selfcert";
    let apps = controlplane::namespace(&client, "selfcert-apps", &[(label, "enabled")]).await;
    let name = format!("selfcert-{}", std::process::id());
    let port = free_port();
    let registration = register(&client, &configuration(&name, port, label)).await;
    let webhooks = &registration.api;

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
namespace: {infra}
leaderElection: {{leaseName: {name}, leaseDurationSeconds: 4}}
certificates:
  mode: self
  secretName: {name}-tls
  webhookConfigurationName: {name}
  serviceName: pullsecret-injector
  extraHosts: ["127.0.0.1", localhost]
  servingValiditySeconds: {SERVING_VALIDITY_S}
  caValiditySeconds: 3600
  checkIntervalSeconds: 5
secrets:
  - name: acme
    registries: [ghcr.io/acme/]
"#
    );
    let listen = format!("127.0.0.1:{port}");
    let injector = Injector::start(Options {
        listen: &listen,
        tls_files: false,
        kubeconfig: Some(cp.kubeconfig_path()),
        ..Options::new(&config, dir.path())
    });

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
    let ca = first
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .expect("ca.crt")
        .clone();
    eventually("the caBundle", Duration::from_secs(30), || async {
        let current = webhooks.get(&name).await.map_err(|e| e.to_string())?;
        let bundle = current.webhooks.unwrap_or_default()[0]
            .client_config
            .ca_bundle
            .clone();
        (bundle.as_ref() == Some(&ca))
            .then_some(())
            .ok_or("caBundle not set yet".to_string())
    })
    .await;
    injector
        .wait_for_log(Duration::from_secs(30), |l| {
            l["message"] == "serving certificate loaded"
        })
        .await;

    // Pods created for longer than a renewal period, with failurePolicy Fail: each one must
    // be admitted and mutated.
    let pods = Api::<Pod>::namespaced(client.clone(), &apps);
    let first_cert = first.data.as_ref().and_then(|d| d.get("tls.crt")).cloned();
    let started = Instant::now();
    let (mut created, mut failures, mut renewed) = (0usize, Vec::new(), false);
    // The apiserver may need a moment to act on the caBundle change: wait for the first pod.
    wait_dry_run(&pods, IMAGE, &["acme"], Duration::from_secs(30)).await;
    // Renewal is due after two thirds of the validity, checked every 5 s.
    let deadline = Duration::from_secs(SERVING_VALIDITY_S * 2 / 3 + 15);
    while started.elapsed() < deadline {
        created += 1;
        match pods.create(&PostParams::default(), &app_pod(created)).await {
            Ok(pod) => {
                let names = secret_names(&pod);
                if names != ["acme"] {
                    failures.push(format!("pod {created} not mutated: {names:?}"));
                }
            }
            Err(e) => failures.push(format!("pod {created}: {e}")),
        }
        if !renewed {
            let current = secrets.get(&secret_name).await.expect("secret");
            renewed = current.data.as_ref().and_then(|d| d.get("tls.crt")) != first_cert.as_ref();
            let ca_now = current.data.as_ref().and_then(|d| d.get("ca.crt")).cloned();
            assert_eq!(ca_now.as_ref(), Some(&ca), "a renewal keeps the CA");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    println!(
        "created {created} pods over {:?}; renewed: {renewed}; failures: {}",
        started.elapsed(),
        failures.len()
    );
    assert!(
        renewed,
        "the serving certificate was not renewed within {deadline:?}"
    );
    assert!(
        failures.is_empty(),
        "failed admissions:\n{}",
        failures.join("\n")
    );
    let loads = injector
        .json_logs()
        .iter()
        .filter(|l| l["message"] == "serving certificate loaded")
        .count();
    assert!(
        loads >= 2,
        "expected the renewed certificate to be loaded; logs:\n{}",
        injector.logs().join("\n")
    );

    registration.delete().await;
    injector.stop_cleanly();
}
