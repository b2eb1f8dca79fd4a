//! Least privilege, proven with the real credentials: the chart is rendered (`helm template`,
//! self-managed certificates), ITS ServiceAccount, ClusterRole, Role and bindings are applied
//! to the real control plane, and the real binary runs with a token of that ServiceAccount
//! (TokenRequest API) and the chart's own config. Everything the injector has to do then
//! succeeds: the Lease, the certificate Secret, the caBundle, copies created, updated and
//! deleted, the conflict Event, pods admitted through the webhook. And the same token is
//! refused (403) what is outside the injector's job.
//!
//! What RBAC cannot express is not claimed: the ClusterRole lets the injector write any
//! Secret (it cannot be scoped by label, and the namespaces are not known in advance); that
//! the injector never touches a Secret it does not own is the code's guarantee, checked here
//! on a user's Secret and in e2e_replication.
//!
//! Needs `make controlplane` once.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use test_support::accounts::{client_from, service_account_token, status_of, token_kubeconfig};
use test_support::controlplane::{self, eventually, set_label};
use test_support::helm;
use test_support::injector::{Injector, Options};
use test_support::metrics::{conflicts_metric, copies_metric, errors_metric};
use test_support::pods::{admitted_pod, pod};
use test_support::ports::free_port;
use test_support::replication::{
    CONVERGE, Snapshot, assert_untouched, conflict_events, wait_absent, wait_copy,
};
use test_support::secrets::{Credentials, create_secret, get_secret, pull_secret, rotate};
use test_support::webhook::{self, register};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/pullsecret-injector");
const RELEASE: &str = "lp";
const FULLNAME: &str = "lp-pullsecret-injector";
const OPT_IN: &str = "least-privilege.pullsecret-injector.io/opt-in";
const IMAGE: &str = "registry.example.com/team/app:1";
const POD_NAME: &str = "lp-pullsecret-injector-5d4f8-abcde";

/// `helm template` of the chart in self mode, as the documents it renders.
fn render(namespace: &str) -> Vec<Value> {
    let out = helm::command()
        .args(["template", RELEASE, CHART, "--namespace", namespace])
        .args(["--set", "certs.mode=self"])
        .args([
            "--set-json",
            r#"secrets=[{"name":"regcred","source":{"name":"regcred-source"}}]"#,
        ])
        .args([
            "--set",
            &format!("webhook.namespaceSelector.optInLabel={OPT_IN}"),
        ])
        // The apiserver calls the injector on 127.0.0.1 here, not through its Service.
        .args([
            "--set-json",
            r#"certs.self={"extraHosts":["127.0.0.1"],"checkIntervalSeconds":1}"#,
        ])
        .output()
        .expect("running helm template");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    serde_saphyr::from_multiple::<Value>(&text)
        .expect("rendered YAML")
        .into_iter()
        .filter(|d| d.is_object())
        .collect()
}

fn one_of<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> T {
    let doc = docs
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("the chart renders no {kind}"));
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

#[tokio::test]
async fn chart_rbac_token_does_every_job_and_nothing_else() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let admin = cp.client();
    let namespace = controlplane::namespace(&admin, "lp-release", &[]).await;
    let docs = render(&namespace);
    let pp = PostParams::default();

    // The chart's identity and permissions, exactly as rendered.
    let sa: ServiceAccount = one_of(&docs, "ServiceAccount");
    let sa_name = sa.metadata.name.clone().expect("ServiceAccount name");
    Api::<ServiceAccount>::namespaced(admin.clone(), &namespace)
        .create(&pp, &sa)
        .await
        .expect("ServiceAccount");
    Api::<ClusterRole>::all(admin.clone())
        .create(&pp, &one_of(&docs, "ClusterRole"))
        .await
        .expect("ClusterRole");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&pp, &one_of(&docs, "ClusterRoleBinding"))
        .await
        .expect("ClusterRoleBinding");
    Api::<Role>::namespaced(admin.clone(), &namespace)
        .create(&pp, &one_of(&docs, "Role"))
        .await
        .expect("Role");
    Api::<RoleBinding>::namespaced(admin.clone(), &namespace)
        .create(&pp, &one_of(&docs, "RoleBinding"))
        .await
        .expect("RoleBinding");

    // The chart's webhook configuration, calling the injector on loopback instead of its
    // Service (no caBundle: the injector writes it).
    let port = free_port();
    let mut webhook: MutatingWebhookConfiguration = one_of(&docs, "MutatingWebhookConfiguration");
    assert_eq!(webhook.metadata.name.as_deref(), Some(FULLNAME));
    for hook in webhook.webhooks.iter_mut().flatten() {
        hook.client_config.service = None;
        hook.client_config.url = Some(format!("https://127.0.0.1:{port}/mutate"));
    }
    let _webhook = register(&admin, &webhook).await;
    // Someone else's, which the injector's token may not change.
    let _other = register(
        &admin,
        &webhook::replicating(
            "lp-someone-else",
            "nobody-has-this-label",
            "https://127.0.0.1:1/x",
            "x",
            10,
        ),
    )
    .await;

    let first = Credentials::new("registry.example.com", "robot", "lp-first");
    let source = create_secret(
        &admin,
        &namespace,
        &pull_secret("regcred-source", &first.dockerconfigjson()),
    )
    .await;

    // A token of the chart's ServiceAccount, and the chart's config.
    let token = service_account_token(&admin, &namespace, &sa_name).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = token_kubeconfig(dir.path(), cp.apiserver_url(), cp.ca_pem(), &token);
    let configmap: ConfigMap = one_of(&docs, "ConfigMap");
    let config: String = configmap.data.expect("ConfigMap data")["config.yaml"]
        .lines()
        .filter(|l| !l.starts_with("listen:") && !l.starts_with("metricsListen:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let listen = format!("127.0.0.1:{port}");
    let injector = Injector::start(Options {
        listen: &listen,
        tls_files: false,
        kubeconfig: Some(&kubeconfig),
        env: vec![
            (
                "PULLSECRET_INJECTOR_POD_NAMESPACE".into(),
                namespace.clone(),
            ),
            ("PULLSECRET_INJECTOR_POD_NAME".into(), POD_NAME.into()),
        ],
        ..Options::new(&config, dir.path())
    });
    let _injector_logs = injector.logs_on_failure();
    injector.wait_synced().await;
    injector.wait_leader(CONVERGE).await;

    // Leader election: the Lease named like the release, held by this replica.
    let lease = Api::<Lease>::namespaced(admin.clone(), &namespace)
        .get(FULLNAME)
        .await
        .expect("the Lease");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(holder.starts_with(POD_NAME), "Lease held by {holder:?}");

    // Certificates: the Secret written, the caBundle patched.
    eventually("the certificate Secret", CONVERGE, || async {
        get_secret(&admin, &namespace, &format!("{FULLNAME}-tls"))
            .await
            .and_then(|s| s.data)
            .filter(|d| d.contains_key("tls.crt") && d.contains_key("ca.crt"))
            .ok_or("not written yet")
    })
    .await;
    let webhooks = Api::<MutatingWebhookConfiguration>::all(admin.clone());
    eventually("the caBundle", CONVERGE, || async {
        let current = webhooks.get(FULLNAME).await.map_err(|e| e.to_string())?;
        let bundle = current.webhooks.unwrap_or_default()[0]
            .client_config
            .ca_bundle
            .clone();
        match bundle {
            Some(b) if !b.0.is_empty() => Ok(()),
            _ => Err("no caBundle yet".to_string()),
        }
    })
    .await;

    // Replication: created, admitted, updated, deleted.
    let opted_in = controlplane::namespace(&admin, "lp-app", &[(OPT_IN, "enabled")]).await;
    wait_copy(&admin, &opted_in, "regcred", &source, CONVERGE).await;
    admitted_pod(&admin, &opted_in, "web", IMAGE, &["regcred"]).await;
    let second = Credentials::new("registry.example.com", "robot", "lp-second");
    let rotated = rotate(&admin, &namespace, "regcred-source", &[second]).await;
    wait_copy(&admin, &opted_in, "regcred", &rotated, CONVERGE).await;
    set_label(&admin, &opted_in, OPT_IN, None).await;
    wait_absent(&admin, &opted_in, "regcred", CONVERGE).await;

    // A user's Secret of the same name: left alone, reported by an Event.
    let users = controlplane::namespace(&admin, "lp-users", &[]).await;
    let own = create_secret(
        &admin,
        &users,
        &pull_secret(
            "regcred",
            &Credentials::new("registry.example.com", "me", "mine").dockerconfigjson(),
        ),
    )
    .await;
    set_label(&admin, &users, OPT_IN, Some("enabled")).await;
    eventually("a PullSecretConflict Event", CONVERGE, || async {
        match conflict_events(&admin, &users).await.first() {
            Some(_) => Ok(()),
            None => Err("no Event yet"),
        }
    })
    .await;
    assert_untouched(&admin, &users, "regcred", &Snapshot::of(&own)).await;

    let metrics = injector.metrics().await;
    for action in ["created", "updated", "deleted"] {
        assert!(
            copies_metric(&metrics, action) >= 1.0,
            "no copy {action}: {metrics}"
        );
    }
    assert_eq!(errors_metric(&metrics, "forbidden"), 0.0, "{metrics}");
    assert!(conflicts_metric(&metrics) >= 1.0);
    let refused: Vec<String> = injector
        .logs()
        .into_iter()
        // The status code as kube renders it: a bare "403" also occurs inside timestamps.
        .filter(|l| l.to_lowercase().contains("forbidden") || l.contains("code: 403"))
        .collect();
    assert!(
        refused.is_empty(),
        "refused with the chart's RBAC: {refused:#?}"
    );

    // The same token, used directly, is refused everything outside that job.
    let token_client = client_from(&kubeconfig).await;
    let merge = |value: Value| Patch::Merge(value);
    let pp_patch = PatchParams::default();
    let mut refusals = Vec::new();
    let other_webhook = Api::<MutatingWebhookConfiguration>::all(token_client.clone())
        .patch(
            "lp-someone-else",
            &pp_patch,
            &merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await;
    refusals.push((
        "patch another MutatingWebhookConfiguration",
        status_of(&other_webhook),
    ));
    let delete_own = Api::<MutatingWebhookConfiguration>::all(token_client.clone())
        .delete(FULLNAME, &DeleteParams::default())
        .await;
    refusals.push((
        "delete its own MutatingWebhookConfiguration",
        status_of(&delete_own),
    ));
    Api::<Lease>::namespaced(admin.clone(), &namespace)
        .create(
            &pp,
            &Lease {
                metadata: ObjectMeta {
                    name: Some("someone-else".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("someone-else-0".into()),
                    ..LeaseSpec::default()
                }),
            },
        )
        .await
        .expect("another Lease");
    let other_lease = Api::<Lease>::namespaced(token_client.clone(), &namespace)
        .patch(
            "someone-else",
            &pp_patch,
            &merge(json!({"spec": {"holderIdentity": POD_NAME}})),
        )
        .await;
    refusals.push(("take over a Lease of another name", status_of(&other_lease)));
    let lease_elsewhere = Api::<Lease>::namespaced(token_client.clone(), "default")
        .create(
            &pp,
            &Lease {
                metadata: ObjectMeta {
                    name: Some(FULLNAME.into()),
                    ..ObjectMeta::default()
                },
                spec: None,
            },
        )
        .await;
    refusals.push((
        "create a Lease in another namespace",
        status_of(&lease_elsewhere),
    ));
    let role = Api::<Role>::namespaced(token_client.clone(), &namespace)
        .create(
            &pp,
            &Role {
                metadata: ObjectMeta {
                    name: Some("escalate".into()),
                    ..ObjectMeta::default()
                },
                rules: None,
            },
        )
        .await;
    refusals.push(("create a Role", status_of(&role)));
    let binding = Api::<ClusterRoleBinding>::all(token_client.clone())
        .create(
            &pp,
            &ClusterRoleBinding {
                metadata: ObjectMeta {
                    name: Some("escalate".into()),
                    ..ObjectMeta::default()
                },
                role_ref: k8s_openapi::api::rbac::v1::RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "ClusterRole".into(),
                    name: "cluster-admin".into(),
                },
                subjects: None,
            },
        )
        .await;
    refusals.push(("bind cluster-admin", status_of(&binding)));
    let pod = Api::<Pod>::namespaced(token_client.clone(), &namespace)
        .create(&pp, &pod("intruder", &[IMAGE]))
        .await;
    refusals.push(("create a Pod", status_of(&pod)));
    let ns_delete = Api::<Namespace>::all(token_client.clone())
        .delete(&users, &DeleteParams::default())
        .await;
    refusals.push(("delete a namespace", status_of(&ns_delete)));
    let ns_label = Api::<Namespace>::all(token_client.clone())
        .patch(
            &users,
            &pp_patch,
            &merge(json!({"metadata": {"labels": {OPT_IN: null}}})),
        )
        .await;
    refusals.push(("relabel a namespace", status_of(&ns_label)));
    let configmap = Api::<ConfigMap>::namespaced(token_client.clone(), &namespace)
        .patch(
            FULLNAME,
            &pp_patch,
            &merge(json!({"data": {"config.yaml": ""}})),
        )
        .await;
    refusals.push(("rewrite its own config", status_of(&configmap)));
    let sa_token = Api::<ServiceAccount>::namespaced(token_client.clone(), &namespace)
        .create_token_request(
            &sa_name,
            &pp,
            &k8s_openapi::api::authentication::v1::TokenRequest {
                metadata: ObjectMeta::default(),
                spec: None,
                status: None,
            },
        )
        .await;
    refusals.push(("mint ServiceAccount tokens", status_of(&sa_token)));
    let wrong: Vec<_> = refusals
        .iter()
        .filter(|(_, status)| *status != 403)
        .collect();
    assert!(wrong.is_empty(), "not refused with 403: {wrong:?}");
    eprintln!(
        "refused with 403: {:?}",
        refusals.iter().map(|(what, _)| *what).collect::<Vec<_>>()
    );
}
