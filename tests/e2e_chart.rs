//! `helm install` of the chart into the real control plane (crates/test-support, `controlplane`):
//! every object the chart renders passes helm's OpenAPI validation and the apiserver's own,
//! RBAC grants what the injector needs and no more (asked of the apiserver's authorizer;
//! Secrets by name only), the Secret policy is accepted and bound,
//! and `helm uninstall` removes it all. There are no nodes, so the injector's pods never
//! run: the tests do not wait for them (`--wait=false`).
//!
//! The webhook's Service has a ClusterIP the apiserver would dial if it called the webhook.
//! It never does here: the chart's default opt-in mode selects only namespaces with the
//! opt-in label, and no namespace of this control plane has it (the release namespace is
//! also excluded by name). The only pods created are the Deployment's, in the release
//! namespace.
//!
//! cert-manager's and the Prometheus Operator's CRDs are not installed, so `certManager`
//! mode and the ServiceMonitor are checked by tests/chart.rs only.
//!
//! Needs `make controlplane` once.

use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::{ByteString, Resource};
use kube::api::{Api, ListParams, PostParams};
use test_support::access::service_account_allows;
use test_support::controlplane::{self, eventually};
use test_support::helm;
use test_support::pki::TestCa;
use test_support::secrets::secret;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/pullsecret-injector");
const PASSWORD: &str = "e2e-registry-password";

fn helm(args: &[&str]) -> Output {
    helm::command()
        .args(args)
        .arg("--kubeconfig")
        .arg(controlplane::shared().kubeconfig_path())
        .output()
        .expect("running helm")
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "helm {} failed:\n{stdout}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Whether the release's ServiceAccount may do `verb` on `resource` (`group`, in
/// `namespace`, named `name`), by the apiserver's RBAC authorizer.
#[allow(clippy::too_many_arguments)]
async fn allowed(
    client: &kube::Client,
    service_account: (&str, &str),
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let (sa_namespace, sa_name) = service_account;
    let attributes = ResourceAttributes {
        verb: Some(verb.into()),
        group: Some(group.into()),
        resource: Some(resource.into()),
        namespace: namespace.map(String::from),
        name: name.map(String::from),
        ..ResourceAttributes::default()
    };
    service_account_allows(client, sa_namespace, sa_name, attributes).await
}

/// The (only) webhook of the MutatingWebhookConfiguration `name`.
async fn webhook_of(client: &kube::Client, name: &str) -> MutatingWebhook {
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await
        .expect("the MutatingWebhookConfiguration")
        .webhooks
        .expect("webhooks")
        .remove(0)
}

/// Cluster-scoped objects of the release are gone after `helm uninstall`.
async fn assert_uninstalled(client: &kube::Client, release: &str, namespace: &str) {
    let fullname = format!("{release}-pullsecret-injector");
    helm_ok(&["uninstall", release, "--namespace", namespace, "--wait"]);
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let roles = Api::<ClusterRole>::all(client.clone());
    let policies = Api::<ValidatingAdmissionPolicy>::all(client.clone());
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    eventually(
        &format!("the objects of release {release} to be deleted"),
        Duration::from_secs(30),
        || async {
            let left = [
                webhooks
                    .get_opt(&fullname)
                    .await
                    .map(|o| o.map(|_| MutatingWebhookConfiguration::KIND)),
                roles
                    .get_opt(&fullname)
                    .await
                    .map(|o| o.map(|_| ClusterRole::KIND)),
                policies
                    .get_opt(&format!("{fullname}-secrets"))
                    .await
                    .map(|o| o.map(|_| ValidatingAdmissionPolicy::KIND)),
                deployments
                    .get_opt(&fullname)
                    .await
                    .map(|o| o.map(|_| Deployment::KIND)),
            ];
            let left: Vec<_> = left
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still there: {left:?}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn chart_installs_in_external_mode_with_every_optional_object() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let namespace = controlplane::namespace(&client, "chart-external", &[]).await;
    let release = "ext";
    let fullname = format!("{release}-pullsecret-injector");

    // The serving certificate the user brings: a kubernetes.io/tls Secret and its CA.
    let ca = TestCa::new("chart e2e CA");
    let service = format!("{fullname}.{namespace}.svc");
    let pair = ca.serving("webhook", &[&service]);
    let tls = secret(
        "webhook-tls",
        "kubernetes.io/tls",
        &[
            ("tls.crt", pair.cert_pem.as_bytes()),
            ("tls.key", pair.key_pem.as_bytes()),
        ],
    );
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &tls)
        .await
        .expect("creating the TLS Secret");
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &ca.cert_pem).unwrap();
    let ca_arg = format!("certs.external.caBundle={}", ca_file.path().display());

    let notes = helm_ok(&[
        "install",
        release,
        CHART,
        "--namespace",
        &namespace,
        "--wait=false",
        "--set",
        "certs.mode=external",
        "--set",
        "certs.external.secretName=webhook-tls",
        "--set-file",
        &ca_arg,
        "--set",
        "sourceSecret.create=true",
        "--set",
        "sourceSecret.name=registry-credentials",
        "--set",
        "sourceSecret.registry=ghcr.io",
        "--set",
        "sourceSecret.username=robot",
        "--set",
        &format!("sourceSecret.password={PASSWORD}"),
        "--set-json",
        r#"secrets=[{"name": "acme-ghcr", "source": {"name": "registry-credentials"}, "registries": ["ghcr.io/acme/"]}]"#,
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "limits.maxConnections=512",
    ]);
    assert!(notes.contains("STATUS: deployed"), "{notes}");
    assert!(
        notes.contains(
            "kubectl label namespace my-app pullsecret-injector.io/inject-pull-secrets=enabled"
        ),
        "NOTES say how to opt a namespace in:\n{notes}"
    );
    assert!(notes.contains("acme-ghcr for ghcr.io/acme/"), "{notes}");
    assert!(
        !notes.contains(PASSWORD),
        "the password is printed:\n{notes}"
    );

    // What the apiserver stored.
    let webhook = webhook_of(&client, &fullname).await;
    assert_eq!(
        webhook.client_config.ca_bundle,
        Some(ByteString(ca.cert_pem.clone().into_bytes()))
    );
    let target = webhook.client_config.service.expect("service reference");
    assert_eq!(
        (target.name.as_str(), target.namespace.as_str()),
        (fullname.as_str(), namespace.as_str())
    );
    assert_eq!(webhook.side_effects, "NoneOnDryRun");

    let source = Api::<Secret>::namespaced(client.clone(), &namespace)
        .get("registry-credentials")
        .await
        .expect("the source Secret");
    assert_eq!(
        source.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let config = Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .get(&fullname)
        .await
        .expect("the ConfigMap");
    assert!(config.data.unwrap()["config.yaml"].contains("maxConnections: 512"));
    Api::<NetworkPolicy>::namespaced(client.clone(), &namespace)
        .get(&fullname)
        .await
        .expect("NetworkPolicy");
    Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace)
        .get(&fullname)
        .await
        .expect("PodDisruptionBudget");
    let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .get(&fullname)
        .await
        .expect("the Deployment");
    assert_eq!(deployment.spec.unwrap().replicas, Some(2));

    // The controller-manager creates the injector's pods (never scheduled: no nodes); their
    // namespace is not selected, so the apiserver admits them without calling the webhook.
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    let selector =
        format!("app.kubernetes.io/instance={release},app.kubernetes.io/component=webhook");
    let created = eventually(
        "the Deployment's 2 pods",
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?;
            if list.items.len() == 2 {
                Ok(list.items)
            } else {
                Err(format!("{} pods", list.items.len()))
            }
        },
    )
    .await;
    for pod in created {
        let spec = pod.spec.unwrap();
        assert_eq!(
            spec.image_pull_secrets, None,
            "the injector's own pods are not mutated"
        );
        let env = spec.containers[0].env.clone().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "PULLSECRET_INJECTOR_POD_NAMESPACE")
        );
    }

    // No webhook-configuration rights outside self mode.
    let sa = (namespace.as_str(), fullname.as_str());
    assert!(
        !allowed(
            &client,
            sa,
            "patch",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            None,
            Some(&fullname)
        )
        .await
    );
    assert!(allowed(&client, sa, "create", "", "secrets", Some("default"), None).await);

    assert_uninstalled(&client, release, &namespace).await;
}

#[tokio::test]
async fn chart_installs_in_self_mode_with_least_privilege() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let namespace = controlplane::namespace(&client, "chart-self", &[]).await;
    let release = "self";
    let fullname = format!("{release}-pullsecret-injector");

    helm_ok(&[
        "install",
        release,
        CHART,
        "--namespace",
        &namespace,
        "--wait=false",
        "--set-json",
        r#"secrets=[{"name":"regcred","source":{"name":"regcred-source"}}]"#,
    ]);

    let webhook = webhook_of(&client, &fullname).await;
    assert_eq!(
        webhook.client_config.ca_bundle, None,
        "the injector patches it in at run time"
    );
    // The Secret policy is installed (the apiserver validated it) and bound.
    let policy = Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .get(&format!("{fullname}-secrets"))
        .await
        .expect("the Secret policy");
    assert!(policy.spec.is_some());
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .get(&format!("{fullname}-secrets"))
        .await
        .expect("the Secret policy's binding");

    // What the injector's ServiceAccount may do, by the apiserver's authorizer.
    let sa = (namespace.as_str(), fullname.as_str());
    let webhooks = (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    );
    let leases = ("coordination.k8s.io", "leases");
    let ns = Some(namespace.as_str());
    for (verb, (group, resource), in_namespace, name, expected) in [
        // its own webhook configuration, and no other
        ("get", webhooks, None, Some(fullname.as_str()), true),
        ("patch", webhooks, None, Some(fullname.as_str()), true),
        ("update", webhooks, None, Some(fullname.as_str()), true),
        (
            "patch",
            webhooks,
            None,
            Some("someone-elses-webhook"),
            false,
        ),
        ("delete", webhooks, None, Some(fullname.as_str()), false),
        ("create", webhooks, None, None, false),
        ("list", webhooks, None, None, false),
        // its Lease, in its namespace only
        ("get", leases, ns, Some(fullname.as_str()), true),
        ("update", leases, ns, Some(fullname.as_str()), true),
        ("update", leases, ns, Some("kube-controller-manager"), false),
        ("create", leases, ns, None, true),
        ("create", leases, Some("kube-system"), None, false),
        (
            "update",
            leases,
            Some("kube-system"),
            Some(fullname.as_str()),
            false,
        ),
        // replication: Secrets by name only (create cannot be; the Secret policy narrows it)
        ("list", ("", "namespaces"), None, None, true),
        ("watch", ("", "secrets"), None, None, false),
        ("watch", ("", "secrets"), None, Some("regcred"), true),
        ("get", ("", "secrets"), ns, Some("regcred-source"), true),
        ("get", ("", "secrets"), ns, Some("other"), false),
        (
            "get",
            ("", "secrets"),
            Some("kube-system"),
            Some("bootstrap-token-abc"),
            false,
        ),
        ("create", ("", "secrets"), Some("default"), None, true),
        (
            "delete",
            ("", "secrets"),
            Some("default"),
            Some("regcred"),
            true,
        ),
        (
            "delete",
            ("", "secrets"),
            Some("default"),
            Some("copy"),
            false,
        ),
        ("create", ("", "events"), Some("default"), None, true),
        (
            "create",
            ("events.k8s.io", "events"),
            Some("default"),
            None,
            true,
        ),
        // nothing else
        ("create", ("", "pods"), Some("default"), None, false),
        ("delete", ("", "namespaces"), None, Some("default"), false),
        ("update", ("", "namespaces"), None, Some("default"), false),
        (
            "create",
            ("", "serviceaccounts/token"),
            Some("default"),
            None,
            false,
        ),
        (
            "escalate",
            ("rbac.authorization.k8s.io", "clusterroles"),
            None,
            None,
            false,
        ),
    ] {
        assert_eq!(
            allowed(&client, sa, verb, group, resource, in_namespace, name).await,
            expected,
            "{verb} {group}/{resource} in {in_namespace:?} named {name:?}"
        );
    }

    // An upgrade with changed values is accepted too, and keeps the configuration.
    helm_ok(&[
        "upgrade",
        release,
        CHART,
        "--namespace",
        &namespace,
        "--wait=false",
        "--reuse-values",
        "--set",
        "webhook.timeoutSeconds=3",
    ]);
    let webhook = webhook_of(&client, &fullname).await;
    assert_eq!(webhook.timeout_seconds, Some(3));

    assert_uninstalled(&client, release, &namespace).await;
}
