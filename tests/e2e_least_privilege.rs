//! Least privilege, proven with the real credentials: the chart is rendered (`helm template`,
//! self-managed certificates), ITS ServiceAccount, ClusterRole, Roles, bindings and Secret
//! policy are applied to the real control plane, and the real binary runs with a token of
//! that ServiceAccount (TokenRequest API) and the chart's own config. Everything the
//! injector has to do then succeeds: the Lease, the certificate Secret, the caBundle, copies
//! created, updated and deleted, the conflict Event, pods admitted through the webhook. And
//! the same token is refused (403) what is outside the injector's job.
//!
//! Secrets: the authorizer (SubjectAccessReview) and real requests with the token show that
//! no Secret but the managed ones can be read, by name or by listing; the
//! ValidatingAdmissionPolicy refuses every write that is not one of the injector's (an Opaque
//! or token Secret under a copy's name, a copy without our label or of another owner, a
//! user's Secret of the same name) and lets the injector's own writes through.
//!
//! Needs `make controlplane` once.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy,
};
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use test_support::access::ChartAccess;
use test_support::accounts::{client_from, status_of};
use test_support::controlplane::{self, eventually, set_label};
use test_support::injector::{Injector, Options};
use test_support::metrics::{conflicts_metric, copies_metric, errors_metric};
use test_support::pods::{admitted_pod, pod};
use test_support::ports::free_port;
use test_support::replication::{
    CONVERGE, Snapshot, assert_untouched, conflict_events, wait_absent, wait_copy,
};
use test_support::secrets::{Credentials, create_secret, get_secret, pull_secret, rotate, secret};
use test_support::webhook::{self, register};

const FULLNAME: &str = "lp-pullsecret-injector";
const OPT_IN: &str = "least-privilege.pullsecret-injector.io/opt-in";
const IMAGE: &str = "registry.example.com/team/app:1";
const POD_NAME: &str = "lp-pullsecret-injector-5d4f8-abcde";

/// The chart's values in self mode: one replicated entry; the apiserver calls the injector on
/// 127.0.0.1 here, not through its Service.
fn values() -> Vec<String> {
    [
        "--set",
        "certs.mode=self",
        "--set-json",
        r#"secrets=[{"name":"regcred","source":{"name":"regcred-source"}}]"#,
        "--set",
        &format!("webhook.namespaceSelector.optInLabel={OPT_IN}"),
        "--set-json",
        r#"certs.self={"extraHosts":["127.0.0.1"],"checkIntervalSeconds":1}"#,
    ]
    .map(String::from)
    .to_vec()
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
    let pp = PostParams::default();

    // The chart's identity and permissions, exactly as rendered: ServiceAccount, RBAC and
    // the Secret policy.
    let dir = tempfile::tempdir().expect("tempdir");
    let access = ChartAccess::grant(&admin, &namespace, FULLNAME, &values(), dir.path()).await;
    let docs = &access.docs;
    let sa: ServiceAccount = one_of(docs, "ServiceAccount");
    let sa_name = sa.metadata.name.clone().expect("ServiceAccount name");
    assert_eq!(
        access.of_kind("ValidatingAdmissionPolicy").len(),
        1,
        "the Secret policy is on by default"
    );

    // The chart's webhook configuration, calling the injector on loopback instead of its
    // Service (no caBundle: the injector writes it).
    let port = free_port();
    let mut webhook: MutatingWebhookConfiguration = one_of(docs, "MutatingWebhookConfiguration");
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
    let kubeconfig = access.kubeconfig.clone();
    let configmap: ConfigMap = one_of(docs, "ConfigMap");
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

// ---------------------------------------------------------------------------------------
// Reading by name only, and the Secret policy
// ---------------------------------------------------------------------------------------

const POLICY_FULLNAME: &str = "lpp-pullsecret-injector";
const OWNER_ANNOTATION: &str = "pullsecret-injector.io/owner";

/// A SubjectAccessReview to make: verb, what it is about, namespace, name, the answer expected.
type Check<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, bool);

/// What the apiserver's authorizer answers for `access`'s ServiceAccount.
async fn may(
    admin: &kube::Client,
    access: &ChartAccess,
    verb: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let attributes = ResourceAttributes {
        verb: Some(verb.into()),
        resource: Some("secrets".into()),
        version: Some("v1".into()),
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        ..ResourceAttributes::default()
    };
    access.allows(admin, attributes).await
}

/// A Secret for the policy to judge: `type_`, with our label and `owner` when given.
fn candidate(name: &str, type_: &str, labelled: bool, owner: Option<&str>) -> Secret {
    let mut candidate = secret(name, type_, &[]);
    match type_ {
        "kubernetes.io/dockerconfigjson" => {
            candidate.data = pull_secret(
                name,
                &Credentials::new("r.example", "u", "p").dockerconfigjson(),
            )
            .data;
        }
        "kubernetes.io/tls" => {
            candidate = secret(name, type_, &[("tls.crt", b"c"), ("tls.key", b"k")]);
        }
        "kubernetes.io/service-account-token" => {
            candidate.metadata.annotations = Some(
                [(
                    "kubernetes.io/service-account.name".to_string(),
                    "default".to_string(),
                )]
                .into(),
            );
        }
        _ => {}
    }
    if labelled {
        candidate.metadata.labels = Some(
            [(
                "app.kubernetes.io/managed-by".to_string(),
                "pullsecret-injector".to_string(),
            )]
            .into(),
        );
    }
    if let Some(owner) = owner {
        candidate
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(OWNER_ANNOTATION.to_string(), owner.to_string());
    }
    candidate
}

/// Whether a write was refused by the Secret policy: 403 with the policy's name.
fn refused_by_policy<T: std::fmt::Debug>(result: &Result<T, kube::Error>) -> Result<(), String> {
    match result {
        Err(kube::Error::Api(status))
            if status.code == 403
                && status
                    .message
                    .contains(&format!("{POLICY_FULLNAME}-secrets")) =>
        {
            Ok(())
        }
        other => Err(format!("not refused by the policy: {other:?}")),
    }
}

#[tokio::test]
async fn chart_rbac_reads_only_the_managed_secrets_and_the_policy_allows_only_their_writes() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let admin = cp.client();
    let release = controlplane::namespace(&admin, "lpp-release", &[]).await;
    let shared = controlplane::namespace(&admin, "lpp-shared", &[]).await;
    let app = controlplane::namespace(&admin, "app", &[]).await;
    let users = controlplane::namespace(&admin, "lpp-users", &[]).await;
    let values = [
        "--set-json".to_string(),
        format!(
            r#"secrets=[{{"name":"regcred","source":{{"name":"regcred-source"}}}},
                {{"name":"corp","source":{{"namespace":"{shared}","name":"corp-src"}},"overwriteExisting":true}}]"#
        ),
        "--set-json".to_string(),
        r#"retiredSecrets=["old-regcred"]"#.to_string(),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let access = ChartAccess::grant(&admin, &release, POLICY_FULLNAME, &values, dir.path()).await;
    let owner = format!("{release}/{POLICY_FULLNAME}");
    let tls = format!("{POLICY_FULLNAME}-tls");

    // RBAC, as the authorizer answers for the ServiceAccount (SubjectAccessReview).
    eventually("the chart's RBAC in force", CONVERGE, || async {
        may(&admin, &access, "get", Some(&app), Some("regcred"))
            .await
            .then_some(())
            .ok_or("not yet")
    })
    .await;
    let (all, rel, sh) = (None, Some(release.as_str()), Some(shared.as_str()));
    let app_ns = Some(app.as_str());
    let checks: Vec<Check> = vec![
        // What the issue names, and more: nothing the injector does not manage.
        (
            "get",
            "kube-system/bootstrap-token-abc",
            Some("kube-system"),
            Some("bootstrap-token-abc"),
            false,
        ),
        (
            "get",
            "app/db-password",
            Some("app"),
            Some("db-password"),
            false,
        ),
        (
            "get",
            "<app>/db-password",
            app_ns,
            Some("db-password"),
            false,
        ),
        ("list", "all Secrets, cluster-wide", all, None, false),
        ("watch", "all Secrets, cluster-wide", all, None, false),
        ("list", "all Secrets of <app>", app_ns, None, false),
        (
            "list",
            "all Secrets of the release namespace",
            rel,
            None,
            false,
        ),
        (
            "get",
            "another Secret of the release namespace",
            rel,
            Some("db-password"),
            false,
        ),
        (
            "get",
            "the release namespace's source name in <shared>",
            sh,
            Some("regcred-source"),
            false,
        ),
        (
            "get",
            "<shared>'s source name in the release namespace",
            rel,
            Some("corp-src"),
            false,
        ),
        ("update", "a source", rel, Some("regcred-source"), false),
        ("delete", "a source", sh, Some("corp-src"), false),
        (
            "update",
            "a retired copy",
            app_ns,
            Some("old-regcred"),
            false,
        ),
        ("patch", "a copy", app_ns, Some("regcred"), false),
        ("deletecollection", "Secrets of <app>", app_ns, None, false),
        // What the injector's job needs.
        (
            "get",
            "a copy, in any namespace",
            app_ns,
            Some("regcred"),
            true,
        ),
        (
            "list",
            "a copy's name, cluster-wide",
            all,
            Some("regcred"),
            true,
        ),
        (
            "watch",
            "a copy's name, cluster-wide",
            all,
            Some("corp"),
            true,
        ),
        ("update", "a copy", app_ns, Some("corp"), true),
        ("delete", "a copy", app_ns, Some("regcred"), true),
        (
            "watch",
            "a retired copy's name, cluster-wide",
            all,
            Some("old-regcred"),
            true,
        ),
        (
            "delete",
            "a retired copy",
            app_ns,
            Some("old-regcred"),
            true,
        ),
        (
            "watch",
            "the source in the release namespace",
            rel,
            Some("regcred-source"),
            true,
        ),
        (
            "watch",
            "the source in <shared>",
            sh,
            Some("corp-src"),
            true,
        ),
        ("watch", "the certificate Secret", rel, Some(&tls), true),
        ("update", "the certificate Secret", rel, Some(&tls), true),
        // RBAC cannot limit create by name: the policy does (below).
        ("create", "Secrets in <app>", app_ns, None, true),
    ];
    let mut wrong = Vec::new();
    for (verb, what, namespace, name, expected) in &checks {
        let allowed = may(&admin, &access, verb, *namespace, *name).await;
        eprintln!("SubjectAccessReview {verb} {what}: allowed={allowed}");
        if allowed != *expected {
            wrong.push(format!(
                "{verb} {what}: allowed={allowed}, expected {expected}"
            ));
        }
    }
    assert!(wrong.is_empty(), "RBAC answers:\n{}", wrong.join("\n"));

    // The same, with the ServiceAccount's token against real Secrets.
    let token = client_from(&access.kubeconfig).await;
    let pp = PostParams::default();
    let opaque = |name: &str| secret(name, "Opaque", &[("password", b"hunter2")]);
    let kube_system = Api::<Secret>::namespaced(admin.clone(), "kube-system");
    kube_system
        .create(
            &pp,
            &secret(
                "bootstrap-token-abc",
                "bootstrap.kubernetes.io/token",
                &[
                    ("token-id", b"abc".as_slice()),
                    ("token-secret", b"0123456789abcdef"),
                ],
            ),
        )
        .await
        .expect("a bootstrap token");
    Api::<Secret>::namespaced(admin.clone(), &app)
        .create(&pp, &opaque("db-password"))
        .await
        .expect("a user's Secret");
    let mut reads = Vec::new();
    reads.push((
        "get kube-system/bootstrap-token-abc",
        status_of(
            &Api::<Secret>::namespaced(token.clone(), "kube-system")
                .get("bootstrap-token-abc")
                .await,
        ),
    ));
    reads.push((
        "get <app>/db-password",
        status_of(
            &Api::<Secret>::namespaced(token.clone(), &app)
                .get("db-password")
                .await,
        ),
    ));
    reads.push((
        "list all Secrets",
        status_of(
            &Api::<Secret>::all(token.clone())
                .list(&ListParams::default())
                .await,
        ),
    ));
    reads.push((
        "list Secrets named db-password",
        status_of(
            &Api::<Secret>::all(token.clone())
                .list(&ListParams::default().fields("metadata.name=db-password"))
                .await,
        ),
    ));
    let refused: Vec<_> = reads.iter().filter(|(_, status)| *status != 403).collect();
    assert!(
        refused.is_empty(),
        "reads not refused with 403: {refused:?}"
    );
    Api::<Secret>::all(token.clone())
        .list(&ListParams::default().fields("metadata.name=regcred"))
        .await
        .expect("listing a copy's name, as the injector's watch does");

    // The Secret policy: the apiserver loads it asynchronously; a dry run shows when.
    let in_app = Api::<Secret>::namespaced(token.clone(), &app);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually("the Secret policy in force", CONVERGE, || async {
        refused_by_policy(
            &in_app
                .create(
                    &dry_run,
                    &candidate("regcred", "Opaque", true, Some(&owner)),
                )
                .await,
        )
    })
    .await;
    // The apiserver type-checked every expression against the Secret schema.
    let policies = Api::<ValidatingAdmissionPolicy>::all(admin.clone());
    let checked = eventually("the policy's type check", CONVERGE, || async {
        let policy = policies
            .get(&format!("{POLICY_FULLNAME}-secrets"))
            .await
            .map_err(|e| e.to_string())?;
        let status = policy.status.ok_or("no status yet")?;
        if status.observed_generation != policy.metadata.generation {
            return Err("not checked yet".to_string());
        }
        Ok(status.type_checking)
    })
    .await;
    let warnings = checked
        .and_then(|t| t.expression_warnings)
        .unwrap_or_default();
    assert!(warnings.is_empty(), "type-check warnings: {warnings:?}");
    let in_release = Api::<Secret>::namespaced(token.clone(), &release);
    let mut writes: Vec<(&str, Result<(), String>)> = Vec::new();
    for (what, secret) in [
        (
            "an Opaque Secret under a copy's name",
            candidate("regcred", "Opaque", true, Some(&owner)),
        ),
        (
            "a copy without our label",
            candidate(
                "regcred",
                "kubernetes.io/dockerconfigjson",
                false,
                Some(&owner),
            ),
        ),
        (
            "a copy of another installation",
            candidate(
                "regcred",
                "kubernetes.io/dockerconfigjson",
                true,
                Some("elsewhere/other"),
            ),
        ),
        (
            "a service-account-token Secret under a copy's name",
            candidate(
                "regcred",
                "kubernetes.io/service-account-token",
                true,
                Some(&owner),
            ),
        ),
        (
            "a labelled copy under a name not configured",
            candidate(
                "db-password2",
                "kubernetes.io/dockerconfigjson",
                true,
                Some(&owner),
            ),
        ),
        (
            "a labelled copy under a retired name",
            candidate(
                "old-regcred",
                "kubernetes.io/dockerconfigjson",
                true,
                Some(&owner),
            ),
        ),
    ] {
        writes.push((what, refused_by_policy(&in_app.create(&pp, &secret).await)));
    }
    for (what, secret) in [
        (
            "another kubernetes.io/tls Secret",
            candidate("other-tls", "kubernetes.io/tls", true, None),
        ),
        (
            "an Opaque certificate Secret",
            candidate(&tls, "Opaque", true, None),
        ),
        (
            "an unlabelled certificate Secret",
            candidate(&tls, "kubernetes.io/tls", false, None),
        ),
    ] {
        writes.push((
            what,
            refused_by_policy(&in_release.create(&pp, &secret).await),
        ));
    }
    // A user's Secret under a copy's name (the policy does not judge the admin's writes).
    let in_users_admin = Api::<Secret>::namespaced(admin.clone(), &users);
    let users_regcred = in_users_admin
        .create(
            &pp,
            &candidate("regcred", "kubernetes.io/dockerconfigjson", false, None),
        )
        .await
        .expect("a user's Secret named like a copy");
    let in_users = Api::<Secret>::namespaced(token.clone(), &users);
    let mut takeover = candidate(
        "regcred",
        "kubernetes.io/dockerconfigjson",
        true,
        Some(&owner),
    );
    takeover.metadata.resource_version = users_regcred.metadata.resource_version.clone();
    writes.push((
        "replacing a user's Secret named like a copy",
        refused_by_policy(&in_users.replace("regcred", &pp, &takeover).await),
    ));
    writes.push((
        "deleting a user's Secret named like a copy",
        refused_by_policy(&in_users.delete("regcred", &DeleteParams::default()).await),
    ));
    for (what, result) in &writes {
        eprintln!(
            "policy: {what}: {}",
            if result.is_ok() {
                "refused (403)"
            } else {
                "NOT refused"
            }
        );
    }
    let let_through: Vec<_> = writes.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        let_through.is_empty(),
        "the policy let through: {let_through:#?}"
    );

    // What the injector writes goes through.
    let copy = in_app
        .create(
            &pp,
            &candidate(
                "regcred",
                "kubernetes.io/dockerconfigjson",
                true,
                Some(&owner),
            ),
        )
        .await
        .expect("creating a copy");
    let mut updated = copy.clone();
    updated.data = pull_secret(
        "regcred",
        &Credentials::new("r.example", "u", "rotated").dockerconfigjson(),
    )
    .data;
    let updated = in_app
        .replace("regcred", &pp, &updated)
        .await
        .expect("updating a copy");
    let mut unlabelled = updated.clone();
    unlabelled.metadata.labels = None;
    refused_by_policy(&in_app.replace("regcred", &pp, &unlabelled).await)
        .expect("a copy cannot lose its label");
    in_app
        .delete("regcred", &DeleteParams::default())
        .await
        .expect("deleting a copy");
    let leftover = Api::<Secret>::namespaced(admin.clone(), &app)
        .create(
            &pp,
            &candidate(
                "old-regcred",
                "kubernetes.io/dockerconfigjson",
                true,
                Some(&owner),
            ),
        )
        .await
        .expect("a retired entry's copy");
    assert!(leftover.metadata.uid.is_some());
    in_app
        .delete("old-regcred", &DeleteParams::default())
        .await
        .expect("deleting a retired entry's copy");
    // overwriteExisting: a user's Secret of that name may be replaced, by delete and create.
    in_users_admin
        .create(&pp, &opaque("corp"))
        .await
        .expect("a user's Secret for an overwriting entry");
    in_users
        .delete("corp", &DeleteParams::default())
        .await
        .expect("deleting it for overwriteExisting");
    in_users
        .create(
            &pp,
            &candidate("corp", "kubernetes.io/dockerconfigjson", true, Some(&owner)),
        )
        .await
        .expect("creating the copy in its place");
    let certificate = in_release
        .create(&pp, &candidate(&tls, "kubernetes.io/tls", true, None))
        .await
        .expect("creating the certificate Secret");
    in_release
        .replace(&tls, &pp, &certificate)
        .await
        .expect("updating the certificate Secret");
}
