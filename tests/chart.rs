//! The Helm chart (`charts/pullsecret-injector`), rendered by the pinned helm: `helm lint` for
//! the defaults and every certificate mode, the rendered objects parsed into k8s-openapi
//! types and checked, deterministic output, values refused by values.schema.json, and the
//! rendered config file accepted by the binary. Needs `make controlplane` once (for helm).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use serde_json::Value;
use test_support::helm;
use test_support::injector;
use test_support::pki::TestCa;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/pullsecret-injector");
const RELEASE: &str = "psi";
const NAMESPACE: &str = "pullsecret-system";
const FULLNAME: &str = "psi-pullsecret-injector";
const OPT_IN_LABEL: &str = "pullsecret-injector.io/inject-pull-secrets";
/// Secrets as a user would configure them: patterns only, and a replicated source.
const SECRETS: &str = r#"secrets=[
  {"name": "acme-ghcr", "registries": ["ghcr.io/acme/", "*.azurecr.io"]},
  {"name": "corp", "source": {"name": "corp-source"},
   "namespaceSelector": {"matchLabels": {"team": "corp"}},
   "excludeNamespaces": ["sandbox"], "overwriteExisting": false}
]"#;

// ---------------------------------------------------------------------------------------
// helm
// ---------------------------------------------------------------------------------------

fn helm(args: &[&str]) -> Output {
    helm::command().args(args).output().expect("running helm")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A CA bundle (PEM) for certs.mode=external, made once per test binary.
fn ca_pem() -> &'static str {
    static CA: OnceLock<String> = OnceLock::new();
    CA.get_or_init(|| TestCa::new("chart test CA").cert_pem)
}

fn ca_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chart-test-ca.crt");
        std::fs::write(&path, ca_pem()).expect("writing the test CA");
        path
    })
}

/// The values that select a certificate mode (`default`: none at all).
fn mode_args(mode: &str) -> Vec<String> {
    let set = |kv: &str| ["--set".to_string(), kv.to_string()];
    match mode {
        "default" => Vec::new(),
        "self" | "certManager" => set(&format!("certs.mode={mode}")).to_vec(),
        "external" => [
            set("certs.mode=external").to_vec(),
            set("certs.external.secretName=webhook-tls").to_vec(),
            vec![
                "--set-file".into(),
                format!("certs.external.caBundle={}", ca_file().display()),
            ],
        ]
        .concat(),
        other => panic!("no such mode {other}"),
    }
}

const MODES: [&str; 4] = ["default", "self", "certManager", "external"];

/// `self` is the default mode.
fn self_managed(mode: &str) -> bool {
    matches!(mode, "default" | "self")
}

/// `helm template` output, as text and as parsed documents.
struct Rendered {
    text: String,
    docs: Vec<Value>,
}

fn render(args: &[String]) -> Rendered {
    let mut all = vec!["template", RELEASE, CHART, "--namespace", NAMESPACE];
    all.extend(args.iter().map(String::as_str));
    let out = helm(&all);
    assert!(
        out.status.success(),
        "helm {} failed:\n{}",
        all.join(" "),
        text(&out.stderr)
    );
    let text = text(&out.stdout);
    let docs = serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("helm template output is not YAML: {e}\n{text}"))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect();
    Rendered { text, docs }
}

fn render_mode(mode: &str, extra: &[&str]) -> Rendered {
    let mut args = mode_args(mode);
    args.extend(extra.iter().map(|s| s.to_string()));
    render(&args)
}

/// `helm template` that must fail; returns its error output.
fn render_error(args: &[&str]) -> String {
    let mut all = vec!["template", RELEASE, CHART, "--namespace", NAMESPACE];
    all.extend(args);
    let out = helm(&all);
    assert!(
        !out.status.success(),
        "helm {} should have failed, rendered:\n{}",
        all.join(" "),
        text(&out.stdout)
    );
    text(&out.stderr)
}

impl Rendered {
    fn raw(&self, api_version: &str, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|d| d["apiVersion"] == api_version && d["kind"] == kind)
            .collect()
    }

    fn all<K: Resource + DeserializeOwned>(&self) -> Vec<K> {
        self.raw(K::API_VERSION, K::KIND)
            .into_iter()
            .map(|doc| {
                serde_json::from_value(doc.clone())
                    .unwrap_or_else(|e| panic!("{} does not parse: {e}\n{doc:#}", K::KIND))
            })
            .collect()
    }

    /// The only object of this kind, which must be named `FULLNAME`.
    fn one<K: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned>(&self) -> K {
        let mut all = self.all::<K>();
        assert_eq!(all.len(), 1, "expected one {}", K::KIND);
        let object = all.remove(0);
        assert_eq!(
            object.metadata().name.as_deref(),
            Some(FULLNAME),
            "{}",
            K::KIND
        );
        object
    }

    fn names(&self, api_version: &str, kind: &str) -> Vec<String> {
        self.raw(api_version, kind)
            .iter()
            .map(|d| {
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    fn webhook(&self) -> MutatingWebhook {
        let config = self.one::<MutatingWebhookConfiguration>();
        let mut webhooks = config.webhooks.expect("webhooks");
        assert_eq!(webhooks.len(), 1);
        webhooks.remove(0)
    }

    fn container(&self) -> Container {
        let deployment = self.one::<Deployment>();
        let mut containers = deployment.spec.unwrap().template.spec.unwrap().containers;
        assert_eq!(containers.len(), 1);
        containers.remove(0)
    }

    fn config_yaml(&self) -> String {
        self.one::<ConfigMap>()
            .data
            .and_then(|mut d| d.remove("config.yaml"))
            .expect("ConfigMap has config.yaml")
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn rule_for<'a>(rules: &'a [PolicyRule], group: &str, resource: &str) -> Vec<&'a PolicyRule> {
    rules
        .iter()
        .filter(|r| {
            r.api_groups
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|g| g == group)
                && r.resources
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|x| x == resource)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// lint, determinism, schema
// ---------------------------------------------------------------------------------------

#[test]
fn helm_lint_passes_for_the_defaults_and_every_certificate_mode() {
    for mode in MODES {
        let args = mode_args(mode);
        let mut all = vec!["lint", "--strict", CHART];
        all.extend(args.iter().map(String::as_str));
        let out = helm(&all);
        assert!(
            out.status.success(),
            "helm lint ({mode}) failed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn template_renders_the_same_bytes_every_time() {
    for mode in MODES {
        let first = render_mode(mode, &["--set-json", SECRETS]);
        let second = render_mode(mode, &["--set-json", SECRETS]);
        assert!(!first.docs.is_empty(), "{mode}: nothing rendered");
        assert!(first.text == second.text, "{mode}: two renders differ");
    }
}

/// No `lookup` (cluster state), no generated keys or random values, no clock: what GitOps
/// tools render is the same on every sync, so they never see a false diff.
#[test]
fn templates_use_no_cluster_lookups_generated_keys_or_randomness() {
    const FORBIDDEN: [&str; 12] = [
        "lookup",
        "genCA",
        "genCAWithKey",
        "genPrivateKey",
        "genSelfSignedCert",
        "genSignedCert",
        "randAlphaNum",
        "randAlpha",
        "randAscii",
        "randNumeric",
        "uuidv4",
        "now",
    ];
    let mut files = Vec::new();
    let mut dirs = vec![Path::new(CHART).join("templates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 10, "templates found: {files:?}");
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        // The template actions, without comments (which are prose).
        for action in source
            .split("{{")
            .skip(1)
            .filter_map(|s| s.split_once("}}"))
        {
            let action = action.0.trim_start_matches('-').trim();
            if action.starts_with("/*") {
                continue;
            }
            for word in action.split(|c: char| !c.is_ascii_alphanumeric()) {
                assert!(
                    !FORBIDDEN.contains(&word),
                    "{} uses `{word}` in {{{{{action}}}}}",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn schema_refuses_bad_values_naming_the_field() {
    for (set, expected) in [
        ("webhook.failurePolicy=Sometimes", "/webhook/failurePolicy"),
        ("webhook.timeoutSeconds=-1", "/webhook/timeoutSeconds"),
        ("webhook.timeoutSeconds=31", "/webhook/timeoutSeconds"),
        ("webhook.timeoutSeconds=0", "/webhook/timeoutSeconds"),
        ("certs.mode=vault", "/certs/mode"),
        (
            "webhook.namespaceSelector.mode=everything",
            "/webhook/namespaceSelector/mode",
        ),
        ("logFormat=xml", "/logFormat"),
        ("replicaCount=0", "/replicaCount"),
        (
            "webhok.timeoutSeconds=5",
            "additional properties 'webhok' not allowed",
        ),
        ("retiredSecrets[0]=Bad_Name", "/retiredSecrets/0"),
        ("secretPolicy.enabled=maybe", "/secretPolicy/enabled"),
    ] {
        let err = render_error(&["--set", set]);
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(expected),
            "--set {set}: expected an error naming {expected:?}, got:\n{err}"
        );
    }
    // The enum's choices and the range are in the message.
    let err = render_error(&["--set", "webhook.failurePolicy=Sometimes"]);
    assert!(err.contains("'Ignore', 'Fail'"), "{err}");
    let err = render_error(&["--set", "webhook.timeoutSeconds=-1"]);
    assert!(err.contains("minimum") && err.contains("-1"), "{err}");
    // helm lint applies the same schema.
    let out = helm(&["lint", CHART, "--set", "webhook.failurePolicy=Sometimes"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("/webhook/failurePolicy"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn external_mode_requires_a_secret_and_a_ca_bundle() {
    let err = render_error(&["--set", "certs.mode=external"]);
    assert!(err.contains("/certs/external/caBundle"), "{err}");
    assert!(err.contains("/certs/external/secretName"), "{err}");
    let err = render_error(&[
        "--set",
        "certs.mode=external",
        "--set",
        "certs.external.secretName=tls",
    ]);
    assert!(err.contains("/certs/external/caBundle"), "{err}");
}

#[test]
fn secret_entries_need_patterns_or_a_source() {
    let err = render_error(&["--set-json", r#"secrets=[{"name": "x"}]"#]);
    assert!(err.contains("/secrets/0"), "{err}");
    let err = render_error(&[
        "--set-json",
        r#"secrets=[{"name": "Bad_Name", "registries": ["a.io"]}]"#,
    ]);
    assert!(err.contains("/secrets/0/name"), "{err}");
}

#[test]
fn termination_grace_must_cover_the_drain() {
    let err = render_error(&["--set", "limits.shutdownTimeoutSeconds=40"]);
    assert!(
        err.contains("terminationGracePeriodSeconds (30) must exceed preStopSleepSeconds (5) + limits.shutdownTimeoutSeconds (40)"),
        "{err}"
    );
    render_mode(
        "default",
        &[
            "--set",
            "limits.shutdownTimeoutSeconds=40",
            "--set",
            "terminationGracePeriodSeconds=60",
        ],
    );
}

// ---------------------------------------------------------------------------------------
// the rendered objects
// ---------------------------------------------------------------------------------------

#[test]
fn every_object_carries_the_recommended_labels() {
    for mode in MODES {
        let rendered = render_mode(mode, &[]);
        for doc in &rendered.docs {
            let labels = &doc["metadata"]["labels"];
            let what = format!("{mode}: {} {}", doc["kind"], doc["metadata"]["name"]);
            for key in [
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/version",
                "app.kubernetes.io/component",
                "app.kubernetes.io/managed-by",
                "app.kubernetes.io/part-of",
                "helm.sh/chart",
            ] {
                assert!(labels[key].is_string(), "{what} lacks label {key}");
            }
            assert_eq!(labels["app.kubernetes.io/instance"], RELEASE, "{what}");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{what}");
            assert_eq!(labels["app.kubernetes.io/version"], "0.1.0", "{what}");
            let cluster_scoped = [
                "ClusterRole",
                "ClusterRoleBinding",
                "MutatingWebhookConfiguration",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding",
            ];
            if !cluster_scoped.contains(&doc["kind"].as_str().unwrap()) {
                assert_eq!(doc["metadata"]["namespace"], NAMESPACE, "{what}");
            }
        }
    }
}

#[test]
fn deployment_is_hardened_probed_and_spread() {
    let rendered = render_mode("default", &[]);
    let deployment = rendered.one::<Deployment>();
    let spec = deployment.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let selector = spec.selector.match_labels.clone().unwrap();
    let template = spec.template.clone();
    let pod_labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (k, v) in &selector {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "pod template lacks selector label {k}"
        );
    }
    assert!(
        template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["checksum/config"]
            .len()
            == 64,
        "checksum/config annotation"
    );

    let pod = template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(FULLNAME));
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    let pod_security = pod.security_context.clone().unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(pod_security.run_as_user, Some(65532));
    assert_eq!(
        pod_security.seccomp_profile.unwrap().type_,
        "RuntimeDefault"
    );

    let spread = pod.topology_spread_constraints.clone().unwrap();
    assert_eq!(spread.len(), 1);
    assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
    assert_eq!(
        spread[0]
            .label_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref(),
        Some(&selector),
        "the spread counts this release's pods"
    );

    let container = rendered.container();
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/pullsecret-injector/pullsecret-injector:0.1.0")
    );
    assert_eq!(
        container.args.clone().unwrap(),
        strings(&[
            "serve",
            "--config",
            "/etc/pullsecret-injector/config.yaml",
            "--log-format",
            "json",
            "--log-level",
            "info",
        ])
    );
    let security = container.security_context.clone().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.run_as_user, Some(65532));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.capabilities.unwrap().drop, Some(strings(&["ALL"])));
    assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");

    let ports: BTreeMap<String, i32> = container
        .ports
        .clone()
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([("https".into(), 8443), ("metrics".into(), 8080)])
    );
    for (probe, path) in [
        (container.readiness_probe.clone(), "/readyz"),
        (container.liveness_probe.clone(), "/healthz"),
    ] {
        let get = probe.and_then(|p| p.http_get).expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("metrics".into()));
        assert_eq!(
            get.scheme.as_deref(),
            Some("HTTP"),
            "probes use the plain port"
        );
    }
    let sleep = container
        .lifecycle
        .clone()
        .unwrap()
        .pre_stop
        .unwrap()
        .sleep
        .unwrap();
    assert_eq!(sleep.seconds, 5);

    let env = container.env.clone().unwrap();
    let pod_namespace = env
        .iter()
        .find(|e| e.name == "PULLSECRET_INJECTOR_POD_NAMESPACE")
        .expect("PULLSECRET_INJECTOR_POD_NAMESPACE");
    assert_eq!(
        pod_namespace
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.namespace"
    );

    let resources = container.resources.clone().unwrap();
    let requests = resources.requests.unwrap();
    assert_eq!(requests["cpu"].0, "50m");
    assert_eq!(requests["memory"].0, "32Mi");
    assert_eq!(resources.limits.unwrap()["memory"].0, "128Mi");

    // self mode (the default): the certificate lives in memory, nothing is mounted but the config.
    let mounts: Vec<String> = container
        .volume_mounts
        .unwrap()
        .into_iter()
        .map(|m| m.mount_path)
        .collect();
    assert_eq!(mounts, strings(&["/etc/pullsecret-injector"]));
}

#[test]
fn config_changes_roll_the_pods() {
    let checksum = |rendered: &Rendered| {
        rendered
            .one::<Deployment>()
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()["checksum/config"]
            .clone()
    };
    let before = checksum(&render_mode("default", &[]));
    let after = checksum(&render_mode("default", &["--set-json", SECRETS]));
    assert_ne!(before, after);
}

#[test]
fn service_disruption_budget_and_account_select_the_webhook_pods() {
    let rendered = render_mode("default", &[]);
    let deployment = rendered.one::<Deployment>();
    let selector = deployment.spec.unwrap().selector.match_labels.unwrap();

    let service = rendered.one::<Service>().spec.unwrap();
    assert_eq!(service.selector.as_ref(), Some(&selector));
    let ports: Vec<(String, i32, IntOrString)> = service
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port, p.target_port.unwrap()))
        .collect();
    assert_eq!(
        ports,
        vec![
            ("https".into(), 443, IntOrString::String("https".into())),
            (
                "metrics".into(),
                8080,
                IntOrString::String("metrics".into())
            ),
        ]
    );

    let pdb = rendered.one::<PodDisruptionBudget>().spec.unwrap();
    assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
    assert_eq!(pdb.selector.unwrap().match_labels.as_ref(), Some(&selector));
    rendered.one::<ServiceAccount>();

    // One replica: no budget, which would only block node drains.
    let single = render_mode("default", &["--set", "replicaCount=1"]);
    assert!(single.all::<PodDisruptionBudget>().is_empty());
}

#[test]
fn webhook_registration_is_pods_create_only_and_fails_open() {
    let rendered = render_mode("default", &[]);
    let webhook = rendered.webhook();
    assert_eq!(webhook.name, "pods.pullsecret-injector.io");
    assert_eq!(webhook.admission_review_versions, strings(&["v1"]));
    assert_eq!(webhook.side_effects, "NoneOnDryRun");
    assert_eq!(webhook.reinvocation_policy.as_deref(), Some("IfNeeded"));
    assert_eq!(webhook.match_policy.as_deref(), Some("Equivalent"));
    assert_eq!(webhook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(webhook.timeout_seconds, Some(5));
    let rules = webhook.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].operations.as_deref(),
        Some(&strings(&["CREATE"])[..])
    );
    assert_eq!(rules[0].resources.as_deref(), Some(&strings(&["pods"])[..]));
    assert_eq!(rules[0].api_groups.as_deref(), Some(&strings(&[""])[..]));

    let service = webhook.client_config.service.unwrap();
    assert_eq!(service.name, FULLNAME);
    assert_eq!(service.namespace, NAMESPACE);
    assert_eq!(service.path.as_deref(), Some("/mutate"));
    assert_eq!(service.port, Some(443));

    // Per-pod opt-out by label.
    assert_eq!(
        webhook.object_selector.unwrap().match_expressions.unwrap(),
        vec![LabelSelectorRequirement {
            key: "pullsecret-injector.io/inject".into(),
            operator: "NotIn".into(),
            values: Some(strings(&["false"])),
        }]
    );

    let custom = render_mode(
        "default",
        &[
            "--set",
            "webhook.failurePolicy=Fail",
            "--set",
            "webhook.timeoutSeconds=2",
        ],
    )
    .webhook();
    assert_eq!(custom.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(custom.timeout_seconds, Some(2));
}

fn not_in_names(webhook: &MutatingWebhook) -> Vec<String> {
    let expressions = webhook
        .namespace_selector
        .clone()
        .unwrap()
        .match_expressions
        .unwrap();
    assert_eq!(expressions.len(), 1);
    assert_eq!(expressions[0].key, "kubernetes.io/metadata.name");
    assert_eq!(expressions[0].operator, "NotIn");
    expressions[0].values.clone().unwrap()
}

#[test]
fn namespace_selector_opts_in_and_always_excludes_system_and_own_namespaces() {
    let opt_in = render_mode(
        "default",
        &[
            "--set",
            "webhook.namespaceSelector.excludeNamespaces={legacy}",
        ],
    )
    .webhook();
    assert_eq!(
        opt_in.namespace_selector.clone().unwrap().match_labels,
        Some(BTreeMap::from([(
            OPT_IN_LABEL.to_string(),
            "enabled".to_string()
        )]))
    );
    assert_eq!(
        not_in_names(&opt_in),
        strings(&["kube-system", "kube-node-lease", NAMESPACE, "legacy"])
    );

    let all_except = render_mode(
        "default",
        &["--set", "webhook.namespaceSelector.mode=allExcept"],
    )
    .webhook();
    assert_eq!(
        all_except.namespace_selector.clone().unwrap().match_labels,
        None
    );
    assert_eq!(
        not_in_names(&all_except),
        strings(&["kube-system", "kube-node-lease", NAMESPACE])
    );
}

#[test]
fn replication_targets_the_namespaces_the_webhook_selects() {
    let config = |args: &[&str]| -> Value {
        serde_saphyr::from_str(&render_mode("default", args).config_yaml()).unwrap()
    };
    let opt_in = config(&[
        "--set",
        "webhook.namespaceSelector.excludeNamespaces={legacy}",
    ]);
    assert_eq!(
        opt_in["namespaceSelector"],
        serde_json::json!({"matchLabels": {OPT_IN_LABEL: "enabled"}})
    );
    assert_eq!(
        opt_in["excludeNamespaces"],
        serde_json::json!(["kube-system", "kube-node-lease", NAMESPACE, "legacy"])
    );
    let all_except = config(&["--set", "webhook.namespaceSelector.mode=allExcept"]);
    assert_eq!(all_except["namespaceSelector"], serde_json::json!({}));
    assert_eq!(
        opt_in["leaderElection"],
        serde_json::json!({"leaseName": FULLNAME})
    );
}

#[test]
fn self_mode_has_no_ca_bundle_and_may_patch_only_its_own_configuration() {
    let rendered = render_mode("self", &[]);
    let configuration = rendered.one::<MutatingWebhookConfiguration>();
    assert_eq!(configuration.metadata.annotations, None);
    let webhook = rendered.webhook();
    assert_eq!(
        webhook.client_config.ca_bundle, None,
        "the injector patches it in at run time"
    );
    let raw = rendered.raw(
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
    );
    assert!(!raw[0].to_string().contains("caBundle"), "{}", raw[0]);

    let config: Value = serde_saphyr::from_str(&rendered.config_yaml()).unwrap();
    assert_eq!(
        config["certificates"],
        serde_json::json!({
            "secretName": format!("{FULLNAME}-tls"),
            "webhookConfigurationName": FULLNAME,
            "serviceName": FULLNAME,
        })
    );
    assert!(config.get("tls").is_none());

    let rules = rendered.one::<ClusterRole>().rules.unwrap();
    let webhook_rules = rule_for(
        &rules,
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    );
    assert_eq!(webhook_rules.len(), 1);
    assert_eq!(
        webhook_rules[0].resource_names.as_deref(),
        Some(&strings(&[FULLNAME])[..])
    );
    assert_eq!(
        webhook_rules[0].verbs,
        strings(&["get", "list", "watch", "patch", "update"])
    );
}

#[test]
fn cert_manager_mode_injects_the_ca_of_its_certificate() {
    let rendered = render_mode("certManager", &[]);
    let configuration = rendered.one::<MutatingWebhookConfiguration>();
    let serving = format!("{FULLNAME}-serving");
    assert_eq!(
        configuration.metadata.annotations.unwrap()["cert-manager.io/inject-ca-from"],
        format!("{NAMESPACE}/{serving}")
    );
    assert_eq!(rendered.webhook().client_config.ca_bundle, None);

    let certificates = rendered.raw("cert-manager.io/v1", "Certificate");
    let serving_cert = certificates
        .iter()
        .find(|c| c["metadata"]["name"] == serving.as_str())
        .expect("serving Certificate");
    assert_eq!(
        serving_cert["spec"]["secretName"],
        format!("{FULLNAME}-tls")
    );
    assert_eq!(
        serving_cert["spec"]["issuerRef"]["name"],
        format!("{FULLNAME}-ca")
    );
    let dns = serving_cert["spec"]["dnsNames"].as_array().unwrap();
    assert!(
        dns.contains(&Value::from(format!("{FULLNAME}.{NAMESPACE}.svc"))),
        "{dns:?}"
    );
    // The default chain: self-signed Issuer -> CA Certificate -> CA Issuer.
    assert_eq!(
        rendered.names("cert-manager.io/v1", "Issuer"),
        [format!("{FULLNAME}-selfsigned"), format!("{FULLNAME}-ca")]
    );
    assert_eq!(certificates.len(), 2);

    assert_mounts_tls_secret(&rendered, &format!("{FULLNAME}-tls"));
    assert_no_webhook_patching(&rendered);

    // A given issuer replaces the chain.
    let with_issuer = render_mode(
        "certManager",
        &[
            "--set",
            "certs.certManager.issuerRef.name=corp",
            "--set",
            "certs.certManager.issuerRef.kind=ClusterIssuer",
        ],
    );
    assert!(with_issuer.raw("cert-manager.io/v1", "Issuer").is_empty());
    let certificates = with_issuer.raw("cert-manager.io/v1", "Certificate");
    assert_eq!(certificates.len(), 1);
    assert_eq!(
        certificates[0]["spec"]["issuerRef"],
        serde_json::json!({"name": "corp", "kind": "ClusterIssuer"})
    );
}

#[test]
fn external_mode_carries_the_given_ca_bundle() {
    let rendered = render_mode("external", &[]);
    let bundle = rendered
        .webhook()
        .client_config
        .ca_bundle
        .expect("caBundle");
    assert_eq!(String::from_utf8(bundle.0).unwrap(), ca_pem());
    assert_mounts_tls_secret(&rendered, "webhook-tls");
    assert_no_webhook_patching(&rendered);
    assert!(rendered.raw("cert-manager.io/v1", "Certificate").is_empty());

    // The bundle may be given already base64-encoded, as in a caBundle field.
    let encoded = render_mode(
        "default",
        &[
            "--set",
            "certs.mode=external",
            "--set",
            "certs.external.secretName=webhook-tls",
            "--set",
            "certs.external.caBundle=Zm9v",
        ],
    );
    assert_eq!(encoded.webhook().client_config.ca_bundle.unwrap().0, b"foo");
}

fn assert_mounts_tls_secret(rendered: &Rendered, secret: &str) {
    let deployment = rendered.one::<Deployment>();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "certs")
        .expect("certs volume");
    assert_eq!(volume.secret.unwrap().secret_name.as_deref(), Some(secret));
    let mount = pod.containers[0]
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "certs")
        .unwrap();
    assert_eq!(mount.mount_path, "/certs");
    assert_eq!(mount.read_only, Some(true));
    let config: Value = serde_saphyr::from_str(&rendered.config_yaml()).unwrap();
    assert_eq!(
        config["tls"],
        serde_json::json!({"certFile": "/certs/tls.crt", "keyFile": "/certs/tls.key"})
    );
    assert!(config.get("certificates").is_none());
}

fn assert_no_webhook_patching(rendered: &Rendered) {
    let rules = rendered.one::<ClusterRole>().rules.unwrap();
    assert!(
        rule_for(
            &rules,
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations"
        )
        .is_empty()
    );
}

#[test]
fn rbac_is_least_privilege() {
    for mode in MODES {
        let rendered = render_mode(mode, &[]);
        let rules = rendered.one::<ClusterRole>().rules.unwrap();
        for rule in &rules {
            assert!(
                !rule.verbs.iter().any(|v| v == "*"),
                "{mode}: wildcard verb in {rule:?}"
            );
            assert!(
                !rule.resources.iter().flatten().any(|r| r == "*"),
                "{mode}: wildcard resource"
            );
            assert!(
                !rule.api_groups.iter().flatten().any(|g| g == "*"),
                "{mode}: wildcard group"
            );
        }
        let verbs = |group: &str, resource: &str| -> Vec<String> {
            let found = rule_for(&rules, group, resource);
            assert_eq!(found.len(), 1, "{mode}: one rule for {group}/{resource}");
            found[0].verbs.clone()
        };
        assert_eq!(verbs("", "namespaces"), strings(&["get", "list", "watch"]));
        // Nothing to copy, nothing to read: no Secret at all outside the release namespace.
        assert!(
            rule_for(&rules, "", "secrets").is_empty(),
            "{mode}: {rules:?}"
        );
        assert_eq!(verbs("", "events"), strings(&["create", "patch"]));
        assert_eq!(
            verbs("events.k8s.io", "events"),
            strings(&["create", "patch"])
        );

        let role = rendered.one::<Role>().rules.unwrap();
        let secrets = rule_for(&role, "", "secrets");
        if self_managed(mode) {
            // The certificate Secret, by name; and its creation, which the policy narrows.
            assert_eq!(secrets.len(), 2, "{secrets:?}");
            assert_eq!(
                secrets[0].resource_names.as_deref(),
                Some(&strings(&[&format!("{FULLNAME}-tls")])[..])
            );
            assert_eq!(
                secrets[0].verbs,
                strings(&["get", "list", "watch", "update"])
            );
            assert_eq!(secrets[1].resource_names, None);
            assert_eq!(secrets[1].verbs, strings(&["create"]));
        } else {
            assert!(secrets.is_empty(), "{mode}: {secrets:?}");
        }
        let leases = rule_for(&role, "coordination.k8s.io", "leases");
        assert_eq!(leases.len(), 2);
        assert_eq!(
            leases[0].resource_names.as_deref(),
            Some(&strings(&[FULLNAME])[..])
        );
        assert_eq!(leases[0].verbs, strings(&["get", "update", "patch"]));
        assert_eq!(
            leases[1].resource_names, None,
            "create cannot be limited by name"
        );
        assert_eq!(leases[1].verbs, strings(&["create"]));

        for subjects in [
            rendered.one::<ClusterRoleBinding>().subjects.unwrap(),
            rendered.one::<RoleBinding>().subjects.unwrap(),
        ] {
            assert_eq!(subjects.len(), 1);
            assert_eq!(subjects[0].kind, "ServiceAccount");
            assert_eq!(subjects[0].name, FULLNAME);
            assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
        }
    }
    // Every rule says why.
    let source = std::fs::read_to_string(Path::new(CHART).join("templates/rbac.yaml")).unwrap();
    let lines: Vec<&str> = source.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") {
            assert!(
                lines[i - 1].trim_start().starts_with('#'),
                "rbac.yaml line {}: rule without a comment",
                i + 1
            );
        }
    }
}

/// Entries that replicate: a source in the release namespace, one in another namespace
/// (with overwriteExisting), a patterns-only entry, and a retired entry.
const REPLICATED: [&str; 4] = [
    "--set-json",
    r#"secrets=[
  {"name": "regcred", "source": {"name": "regcred-source"}},
  {"name": "corp", "source": {"namespace": "shared", "name": "corp-src"}, "overwriteExisting": true},
  {"name": "acme-ghcr", "registries": ["ghcr.io/acme/"]}
]"#,
    "--set-json",
    r#"retiredSecrets=["old-regcred"]"#,
];

fn replicated(mode: &str) -> Rendered {
    render_mode(mode, &REPLICATED)
}

#[test]
fn rbac_reads_and_writes_secrets_only_by_name() {
    for mode in MODES {
        let rendered = replicated(mode);
        let cluster = rendered.one::<ClusterRole>().rules.unwrap();
        let secrets = rule_for(&cluster, "", "secrets");
        assert_eq!(secrets.len(), 3, "{mode}: {secrets:?}");
        // The copies, in any namespace, under their configured names only.
        assert_eq!(
            secrets[0].resource_names.as_deref(),
            Some(&strings(&["regcred", "corp"])[..])
        );
        assert_eq!(
            secrets[0].verbs,
            strings(&["get", "list", "watch", "update", "delete"])
        );
        // create cannot be limited by name: the Secret policy narrows it.
        assert_eq!(secrets[1].resource_names, None);
        assert_eq!(secrets[1].verbs, strings(&["create"]));
        // A retired entry's copies: found and deleted, never written.
        assert_eq!(
            secrets[2].resource_names.as_deref(),
            Some(&strings(&["old-regcred"])[..])
        );
        assert_eq!(
            secrets[2].verbs,
            strings(&["get", "list", "watch", "delete"])
        );

        let roles = rendered.all::<Role>();
        let in_namespace = |namespace: &str| -> Vec<PolicyRule> {
            let found: Vec<&Role> = roles
                .iter()
                .filter(|r| r.metadata.namespace.as_deref() == Some(namespace))
                .collect();
            assert_eq!(found.len(), 1, "{mode}: one Role in {namespace}");
            assert_eq!(found[0].metadata.name.as_deref(), Some(FULLNAME));
            found[0].rules.clone().unwrap()
        };
        assert_eq!(roles.len(), 2, "{mode}");
        let release = in_namespace(NAMESPACE);
        let release_secrets = rule_for(&release, "", "secrets");
        assert_eq!(
            release_secrets[0].resource_names.as_deref(),
            Some(&strings(&["regcred-source"])[..])
        );
        assert_eq!(release_secrets[0].verbs, strings(&["get", "list", "watch"]));
        assert_eq!(
            release_secrets.len(),
            if self_managed(mode) { 3 } else { 1 },
            "{mode}: {release_secrets:?}"
        );
        let shared = in_namespace("shared");
        assert_eq!(shared.len(), 1, "{mode}: {shared:?}");
        assert_eq!(
            shared[0].resource_names.as_deref(),
            Some(&strings(&["corp-src"])[..])
        );
        assert_eq!(shared[0].verbs, strings(&["get", "list", "watch"]));

        let bindings = rendered.all::<RoleBinding>();
        assert_eq!(bindings.len(), 2, "{mode}");
        for binding in bindings {
            assert_eq!(binding.role_ref.kind, "Role");
            assert_eq!(binding.role_ref.name, FULLNAME);
            let subjects = binding.subjects.unwrap();
            assert_eq!(subjects.len(), 1);
            assert_eq!(subjects[0].name, FULLNAME);
            assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
        }

        // Whatever the rule, Secrets are read only by name.
        let every_rule = cluster
            .iter()
            .chain(roles.iter().flat_map(|r| r.rules.iter().flatten()));
        for rule in
            every_rule.filter(|r| !rule_for(std::slice::from_ref(*r), "", "secrets").is_empty())
        {
            if rule.resource_names.is_none() {
                assert_eq!(rule.verbs, strings(&["create"]), "{mode}: {rule:?}");
            }
        }
    }
}

/// The policy's CEL reads its names from variables the chart fills in; what it allows is
/// proven on a real apiserver in e2e_least_privilege.
#[test]
fn secret_policy_holds_the_service_account_to_the_secrets_it_manages() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let name = format!("{FULLNAME}-secrets");
    for mode in MODES {
        let rendered = replicated(mode);
        let policies = rendered.all::<ValidatingAdmissionPolicy>();
        assert_eq!(policies.len(), 1, "{mode}: on by default");
        let policy = &policies[0];
        assert_eq!(policy.metadata.name.as_deref(), Some(name.as_str()));
        let spec = policy.spec.clone().unwrap();
        assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
        let rules = spec.match_constraints.unwrap().resource_rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&strings(&["secrets"])[..])
        );
        assert_eq!(
            rules[0].operations.as_deref(),
            Some(&strings(&["CREATE", "UPDATE", "DELETE"])[..])
        );
        let conditions = spec.match_conditions.unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(
            conditions[0].expression,
            format!(
                r#"request.userInfo.username == "system:serviceaccount:{NAMESPACE}:{FULLNAME}""#
            )
        );
        let variables: BTreeMap<String, String> = spec
            .variables
            .unwrap()
            .into_iter()
            .map(|v| (v.name, v.expression))
            .collect();
        // The owner the binary writes: the Lease's namespace/name, from the chart's config.
        let config: Value = serde_saphyr::from_str(&rendered.config_yaml()).unwrap();
        assert_eq!(config["leaderElection"]["leaseName"], FULLNAME);
        assert_eq!(variables["owner"], format!(r#""{NAMESPACE}/{FULLNAME}""#));
        assert_eq!(variables["copyNames"], r#"["regcred","corp"]"#);
        assert_eq!(variables["retiredNames"], r#"["old-regcred"]"#);
        assert_eq!(variables["overwriteNames"], r#"["corp"]"#);
        assert_eq!(config["retiredSecrets"], serde_json::json!(["old-regcred"]));
        let certificate = if self_managed(mode) {
            format!(r#"request.namespace == "{NAMESPACE}" && request.name == "{FULLNAME}-tls""#)
        } else {
            "false".to_string()
        };
        assert_eq!(variables["certificate"], certificate, "{mode}");
        let validations = spec.validations.unwrap();
        assert_eq!(validations.len(), 2);
        for validation in &validations {
            assert_eq!(validation.reason.as_deref(), Some("Forbidden"));
            assert!(
                validation
                    .message
                    .as_deref()
                    .unwrap_or_default()
                    .contains(FULLNAME),
                "{validation:?}"
            );
        }

        let bindings = rendered.all::<ValidatingAdmissionPolicyBinding>();
        assert_eq!(bindings.len(), 1);
        let binding = bindings[0].spec.clone();
        assert_eq!(binding.policy_name, name);
        assert_eq!(binding.validation_actions, strings(&["Deny"]));
    }
    // A retired name that is in use again is a live copy, not a retired one.
    let reused = render_mode(
        "self",
        &[
            "--set-json",
            r#"secrets=[{"name": "regcred", "source": {"name": "s"}}]"#,
            "--set-json",
            r#"retiredSecrets=["regcred"]"#,
        ],
    );
    let policy = reused.all::<ValidatingAdmissionPolicy>().remove(0);
    let retired = policy
        .spec
        .unwrap()
        .variables
        .unwrap()
        .into_iter()
        .find(|v| v.name == "retiredNames")
        .unwrap();
    assert_eq!(retired.expression, "[]");

    let off = render_mode("self", &["--set", "secretPolicy.enabled=false"]);
    assert!(off.all::<ValidatingAdmissionPolicy>().is_empty());
    assert!(off.all::<ValidatingAdmissionPolicyBinding>().is_empty());
}

#[test]
fn source_secret_is_built_like_kubectl_create_secret_docker_registry() {
    let rendered = render_mode(
        "default",
        &[
            "--set",
            "sourceSecret.create=true",
            "--set",
            "sourceSecret.name=registry-credentials",
            "--set",
            "sourceSecret.registry=ghcr.io",
            "--set",
            "sourceSecret.username=robot",
            "--set",
            "sourceSecret.password=s3cr3t-Pa55",
        ],
    );
    let secrets = rendered.all::<Secret>();
    assert_eq!(secrets.len(), 1);
    let secret = &secrets[0];
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some("registry-credentials")
    );
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let config: Value =
        serde_json::from_slice(&secret.data.as_ref().unwrap()[".dockerconfigjson"].0).unwrap();
    assert_eq!(
        config,
        serde_json::json!({"auths": {"ghcr.io": {
            "username": "robot", "password": "s3cr3t-Pa55", "auth": "cm9ib3Q6czNjcjN0LVBhNTU=",
        }}})
    );
    assert!(
        !rendered.text.contains("s3cr3t-Pa55"),
        "the password appears only encoded"
    );

    let whole = r#"{"auths":{"registry.example.com:5000":{"auth":"dTpw"}}}"#;
    let rendered = render_mode(
        "default",
        &[
            "--set",
            "sourceSecret.create=true",
            "--set",
            "sourceSecret.name=whole",
            "--set-json",
            &format!("sourceSecret.dockerconfigjson={}", Value::from(whole)),
        ],
    );
    let secret = rendered.all::<Secret>().remove(0);
    assert_eq!(
        secret.data.unwrap()[".dockerconfigjson"].0,
        whole.as_bytes()
    );

    let err = render_error(&[
        "--set",
        "sourceSecret.create=true",
        "--set",
        "sourceSecret.name=x",
        "--set",
        "sourceSecret.registry=ghcr.io",
    ]);
    assert!(
        err.contains("/sourceSecret/password") && err.contains("/sourceSecret/dockerconfigjson"),
        "{err}"
    );
    assert!(render_mode("default", &[]).all::<Secret>().is_empty());

    // NOTES.txt never shows the password or the document.
    let notes = std::fs::read_to_string(Path::new(CHART).join("templates/NOTES.txt")).unwrap();
    for field in ["password", "dockerconfigjson", "username"] {
        assert!(
            !notes.contains(&format!("sourceSecret.{field}")),
            "NOTES.txt shows sourceSecret.{field}"
        );
    }
}

#[test]
fn optional_service_monitor_and_network_policy() {
    let rendered = render_mode("default", &[]);
    assert!(
        rendered
            .raw("monitoring.coreos.com/v1", "ServiceMonitor")
            .is_empty()
    );
    assert!(rendered.all::<NetworkPolicy>().is_empty());

    let rendered = render_mode(
        "default",
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.serviceMonitor.labels.release=prometheus",
            "--set",
            "networkPolicy.enabled=true",
        ],
    );
    let selector = rendered
        .one::<Deployment>()
        .spec
        .unwrap()
        .selector
        .match_labels
        .unwrap();
    let monitors = rendered.raw("monitoring.coreos.com/v1", "ServiceMonitor");
    assert_eq!(monitors.len(), 1);
    assert_eq!(monitors[0]["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitors[0]["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitors[0]["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        serde_json::to_value(&selector).unwrap(),
        monitors[0]["spec"]["selector"]["matchLabels"]
    );

    let policy = rendered.one::<NetworkPolicy>().spec.unwrap();
    assert_eq!(policy.pod_selector.unwrap().match_labels, Some(selector));
    let ports: Vec<IntOrString> = policy
        .ingress
        .unwrap()
        .into_iter()
        .inspect(|rule| {
            assert_eq!(
                rule.from, None,
                "from anywhere: the apiserver's address is unknown"
            )
        })
        .flat_map(|rule| rule.ports.unwrap())
        .map(|p| p.port.unwrap())
        .collect();
    assert_eq!(
        ports,
        vec![
            IntOrString::String("https".into()),
            IntOrString::String("metrics".into())
        ]
    );
}

#[test]
fn helm_test_hook_runs_the_image_with_the_release_config_outside_the_service() {
    let rendered = render_mode("default", &[]);
    let pods = rendered.all::<Pod>();
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap()["helm.sh/hook"],
        "test"
    );
    let service_selector = rendered.one::<Service>().spec.unwrap().selector.unwrap();
    let labels = pod.metadata.labels.clone().unwrap();
    assert!(
        !service_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v)),
        "the Service must not route the apiserver to the test pod"
    );
    let spec = pod.spec.clone().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let container = &spec.containers[0];
    assert_eq!(container.image, rendered.container().image);
    assert_eq!(
        container.args.as_ref().unwrap()[..3],
        strings(&["match", "--config", "/etc/pullsecret-injector/config.yaml"])
    );
    assert_eq!(
        container.security_context,
        rendered.container().security_context
    );
}

// ---------------------------------------------------------------------------------------
// values people reach for (issue 13 §8) and the dashboard (§9)
// ---------------------------------------------------------------------------------------

fn pod_spec(rendered: &Rendered) -> k8s_openapi::api::core::v1::PodSpec {
    rendered
        .one::<Deployment>()
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec")
}

#[test]
fn extra_args_env_volumes_and_history_reach_the_pod() {
    let rendered = render_mode(
        "default",
        &[
            "--set",
            "revisionHistoryLimit=2",
            "--set-json",
            r#"extraArgs=["--log-level=debug"]"#,
            "--set-json",
            r#"extraEnv=[{"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
              {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]"#,
            "--set-json",
            r#"extraVolumes=[{"name": "corp-ca", "configMap": {"name": "corp-ca"}}]"#,
            "--set-json",
            r#"extraVolumeMounts=[{"name": "corp-ca", "mountPath": "/etc/ssl/corp", "readOnly": true}]"#,
        ],
    );
    let deployment = rendered.one::<Deployment>().spec.unwrap();
    assert_eq!(deployment.revision_history_limit, Some(2));
    let container = rendered.container();
    let args = container.args.clone().unwrap();
    assert_eq!(
        args[args.len() - 3..],
        strings(&["--log-level", "info", "--log-level=debug"]),
        "extra arguments come last, so that a repeated flag wins"
    );
    let env: Vec<String> = container
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        env,
        strings(&[
            "PULLSECRET_INJECTOR_POD_NAMESPACE",
            "PULLSECRET_INJECTOR_POD_NAME",
            "HTTPS_PROXY",
            "NODE"
        ])
    );
    let node = container.env.unwrap().pop().unwrap();
    assert_eq!(
        node.value_from.unwrap().field_ref.unwrap().field_path,
        "spec.nodeName"
    );
    let mounts: Vec<(String, String)> = container
        .volume_mounts
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.mount_path))
        .collect();
    assert_eq!(
        mounts,
        vec![
            ("config".to_string(), "/etc/pullsecret-injector".to_string()),
            ("corp-ca".to_string(), "/etc/ssl/corp".to_string()),
        ]
    );
    let volumes = pod_spec(&rendered).volumes.unwrap();
    let corp = volumes
        .iter()
        .find(|v| v.name == "corp-ca")
        .expect("corp-ca volume");
    assert_eq!(corp.config_map.as_ref().unwrap().name, "corp-ca");

    // In certManager mode the extra mount comes beside the certificate's.
    let with_certs = render_mode(
        "certManager",
        &[
            "--set-json",
            r#"extraVolumes=[{"name": "scratch", "emptyDir": {}}]"#,
            "--set-json",
            r#"extraVolumeMounts=[{"name": "scratch", "mountPath": "/scratch"}]"#,
        ],
    );
    let names: Vec<String> = pod_spec(&with_certs)
        .volumes
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, strings(&["config", "certs", "scratch"]));
}

#[test]
fn probes_are_values() {
    let rendered = render_mode(
        "default",
        &[
            "--set",
            "readinessProbe.periodSeconds=3",
            "--set",
            "livenessProbe.failureThreshold=6",
        ],
    );
    let container = rendered.container();
    let readiness = container.readiness_probe.unwrap();
    assert_eq!(readiness.period_seconds, Some(3));
    assert_eq!(readiness.failure_threshold, Some(2), "the rest stays");
    assert_eq!(readiness.http_get.unwrap().path.as_deref(), Some("/readyz"));
    let liveness = container.liveness_probe.unwrap();
    assert_eq!(liveness.failure_threshold, Some(6));
    assert_eq!(liveness.http_get.unwrap().path.as_deref(), Some("/healthz"));

    // A probe replaced whole: another handler, no HTTP left over.
    let replaced = render_mode(
        "default",
        &[
            "--set-json",
            r#"livenessProbe={"tcpSocket": {"port": "https"}, "periodSeconds": 20}"#,
            "--set-json",
            "livenessProbe.httpGet=null",
        ],
    )
    .container()
    .liveness_probe
    .unwrap();
    assert_eq!(
        replaced.tcp_socket.unwrap().port,
        IntOrString::String("https".into())
    );
    assert!(replaced.http_get.is_none());
    assert_eq!(replaced.period_seconds, Some(20));

    // null drops a probe.
    let container = render_mode("default", &["--set", "livenessProbe=null"]).container();
    assert!(container.liveness_probe.is_none());
    assert!(container.readiness_probe.is_some());

    let err = render_error(&["--set", "readinessProbe.periodSeconds=0"]);
    assert!(err.contains("/readinessProbe/periodSeconds"), "{err}");
    let err = render_error(&["--set", "livenessProbe.periodSecs=5"]);
    assert!(err.contains("/livenessProbe"), "{err}");
}

#[test]
fn listens_on_both_families_at_the_container_ports_and_on_the_host_network() {
    // Defaults: [::] (IPv4 and IPv6), no host network.
    let rendered = render_mode("default", &[]);
    let config: Value = serde_saphyr::from_str(&rendered.config_yaml()).unwrap();
    assert_eq!(config["listen"], "[::]:8443");
    assert_eq!(config["metricsListen"], "[::]:8080");
    let pod = pod_spec(&rendered);
    assert_eq!(pod.host_network, None);
    assert_eq!(pod.dns_policy, None);

    let rendered = render_mode(
        "default",
        &[
            "--set",
            "hostNetwork=true",
            "--set",
            "containerPorts.webhook=10443",
            "--set",
            "containerPorts.metrics=10080",
        ],
    );
    let pod = pod_spec(&rendered);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.dns_policy.as_deref(),
        Some("ClusterFirstWithHostNet"),
        "the API server's name still resolves through cluster DNS"
    );
    let ports: BTreeMap<String, i32> = rendered
        .container()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([("https".into(), 10443), ("metrics".into(), 10080)])
    );
    let config: Value = serde_saphyr::from_str(&rendered.config_yaml()).unwrap();
    assert_eq!(config["listen"], "[::]:10443");
    assert_eq!(config["metricsListen"], "[::]:10080");
    // The Service and the probes follow by port name.
    let service_ports: Vec<IntOrString> = rendered
        .one::<Service>()
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| p.target_port.unwrap())
        .collect();
    assert_eq!(
        service_ports,
        vec![
            IntOrString::String("https".into()),
            IntOrString::String("metrics".into())
        ]
    );

    let err = render_error(&["--set", "containerPorts.webhook=0"]);
    assert!(err.contains("/containerPorts/webhook"), "{err}");
    let err = render_error(&["--set", "hostNetwork=yes"]);
    assert!(err.contains("/hostNetwork"), "{err}");
}

#[test]
fn webhook_annotations_match_conditions_and_selectors_pass_through() {
    let rendered = render_mode(
        "default",
        &[
            "--set",
            "webhook.annotations.team=platform",
            "--set-json",
            r#"webhook.matchConditions=[{"name": "not-from-ci",
              "expression": "!request.userInfo.username.startsWith('system:serviceaccount:ci:')"}]"#,
            "--set",
            "webhook.namespaceSelector.matchLabels.tier=apps",
            "--set-json",
            r#"webhook.namespaceSelector.matchExpressions=[{"key": "environment", "operator": "In", "values": ["staging", "production"]}]"#,
            "--set",
            "webhook.objectSelector.matchLabels.pull-secrets=inject",
            "--set-json",
            r#"webhook.objectSelector.matchExpressions=[{"key": "job-name", "operator": "DoesNotExist"}]"#,
        ],
    );
    let configuration = rendered.one::<MutatingWebhookConfiguration>();
    assert_eq!(
        configuration.metadata.annotations,
        Some(BTreeMap::from([("team".into(), "platform".into())]))
    );
    let webhook = rendered.webhook();
    let conditions = webhook.match_conditions.clone().expect("matchConditions");
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0].name, "not-from-ci");
    assert!(conditions[0].expression.starts_with("!request.userInfo"));

    let namespaces = webhook.namespace_selector.clone().unwrap();
    assert_eq!(
        namespaces.match_labels,
        Some(BTreeMap::from([
            (OPT_IN_LABEL.to_string(), "enabled".to_string()),
            ("tier".to_string(), "apps".to_string()),
        ])),
        "added to the opt-in label"
    );
    let expressions = namespaces.match_expressions.unwrap();
    assert_eq!(expressions.len(), 2);
    assert_eq!(
        expressions[0].key, "kubernetes.io/metadata.name",
        "the exclusions stay"
    );
    assert_eq!(
        expressions[1],
        LabelSelectorRequirement {
            key: "environment".into(),
            operator: "In".into(),
            values: Some(strings(&["staging", "production"])),
        }
    );

    let pods = webhook.object_selector.unwrap();
    assert_eq!(
        pods.match_labels,
        Some(BTreeMap::from([("pull-secrets".into(), "inject".into())]))
    );
    let keys: Vec<String> = pods
        .match_expressions
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(
        keys,
        strings(&["pullsecret-injector.io/inject", "job-name"]),
        "the opt-out stays"
    );

    // Copies go to the same namespaces: the config's selector is the webhook's.
    let config: Value = serde_saphyr::from_str(&rendered.config_yaml()).unwrap();
    assert_eq!(
        config["namespaceSelector"],
        serde_json::json!({
            "matchLabels": {OPT_IN_LABEL: "enabled", "tier": "apps"},
            "matchExpressions": [{"key": "environment", "operator": "In", "values": ["staging", "production"]}],
        })
    );

    // cert-manager's annotation is kept beside the user's.
    let annotations = render_mode(
        "certManager",
        &["--set", "webhook.annotations.team=platform"],
    )
    .one::<MutatingWebhookConfiguration>()
    .metadata
    .annotations
    .unwrap();
    assert_eq!(annotations["team"], "platform");
    assert_eq!(
        annotations["cert-manager.io/inject-ca-from"],
        format!("{NAMESPACE}/{FULLNAME}-serving")
    );

    // Defaults: no matchConditions, no annotations.
    let defaults = render_mode("default", &[]);
    assert_eq!(defaults.webhook().match_conditions, None);
    assert_eq!(
        defaults
            .one::<MutatingWebhookConfiguration>()
            .metadata
            .annotations,
        None
    );

    for (set, field) in [
        (
            r#"webhook.matchConditions=[{"name": "x"}]"#,
            "/webhook/matchConditions/0",
        ),
        (
            r#"webhook.namespaceSelector.matchExpressions=[{"key": "a", "operator": "Near"}]"#,
            "/webhook/namespaceSelector/matchExpressions/0/operator",
        ),
        (
            r#"extraVolumeMounts=[{"name": "x"}]"#,
            "/extraVolumeMounts/0",
        ),
        (r#"extraEnv=[{"value": "x"}]"#, "/extraEnv/0"),
    ] {
        let err = render_error(&["--set-json", set]);
        assert!(err.contains(field), "--set-json {set}: {err}");
    }
}

#[test]
fn grafana_dashboard_is_an_optional_configmap_for_the_sidecar() {
    let dashboard_of = |rendered: &Rendered| -> Vec<ConfigMap> {
        rendered
            .all::<ConfigMap>()
            .into_iter()
            .filter(|c| c.metadata.name.as_deref() == Some(&format!("{FULLNAME}-dashboard")))
            .collect()
    };
    assert!(dashboard_of(&render_mode("default", &[])).is_empty());

    let rendered = render_mode(
        "default",
        &["--set", "metrics.grafanaDashboard.enabled=true"],
    );
    let mut found = dashboard_of(&rendered);
    assert_eq!(found.len(), 1);
    let map = found.remove(0);
    assert_eq!(map.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(
        map.metadata.labels.as_ref().unwrap()["grafana_dashboard"],
        "1"
    );
    let json = &map.data.as_ref().unwrap()["pullsecret-injector.json"];
    let file =
        std::fs::read_to_string(Path::new(CHART).join("dashboards/pullsecret-injector.json"))
            .unwrap();
    assert_eq!(json.trim(), file.trim(), "the dashboard file, unchanged");
    let dashboard: Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "pullsecret-injector");
    assert!(dashboard["panels"].as_array().unwrap().len() > 10);

    let rendered = render_mode(
        "default",
        &[
            "--set",
            "metrics.grafanaDashboard.enabled=true",
            "--set",
            "metrics.grafanaDashboard.namespace=monitoring",
            "--set-json",
            r#"metrics.grafanaDashboard.labels={"dashboards": "platform"}"#,
            "--set",
            "metrics.grafanaDashboard.annotations.grafana_folder=Kubernetes",
        ],
    );
    let map = dashboard_of(&rendered).remove(0);
    assert_eq!(map.metadata.namespace.as_deref(), Some("monitoring"));
    let labels = map.metadata.labels.unwrap();
    assert_eq!(labels["dashboards"], "platform");
    assert_eq!(labels["app.kubernetes.io/instance"], RELEASE);
    assert_eq!(
        map.metadata.annotations.unwrap()["grafana_folder"],
        "Kubernetes"
    );
}

// ---------------------------------------------------------------------------------------
// the binary reads what the chart writes
// ---------------------------------------------------------------------------------------

/// The ConfigMap's config.yaml, for each certificate mode, as the binary's `match` reads it.
/// (`self` needs the `certificates` key of the self-managed certificate work.)
#[test]
fn rendered_config_is_accepted_by_the_binary() {
    let mut failures = Vec::new();
    for mode in ["certManager", "external", "self"] {
        let providers = with_init_container();
        for extra in [
            &[][..],
            &["--set-json", SECRETS, "--set", "limits.maxConnections=100"][..],
            &REPLICATED[..],
            &providers[..],
            &[
                "--set",
                "webhook.namespaceSelector.matchLabels.tier=apps",
                "--set-json",
                r#"webhook.namespaceSelector.matchExpressions=[{"key": "env", "operator": "NotIn", "values": ["dev"]}]"#,
                "--set",
                "containerPorts.webhook=10443",
            ][..],
        ] {
            let config = render_mode(mode, extra).config_yaml();
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &config).unwrap();
            // The config is what is checked here, not whether the image matches.
            let out = Command::new(injector::binary())
                .args(["match", "--allow-unmatched", "--config"])
                .arg(file.path())
                .arg("ghcr.io/acme/web:1")
                .env("PULLSECRET_INJECTOR_POD_NAMESPACE", NAMESPACE)
                .env_remove("KUBECONFIG")
                .output()
                .expect("running pullsecret-injector");
            if !out.status.success() {
                failures.push(format!(
                    "certs.mode={mode} {extra:?}: exit {:?}\n{}\n--- config.yaml ---\n{config}",
                    out.status.code(),
                    text(&out.stderr)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the binary refused the chart's config:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// the chart's README
// ---------------------------------------------------------------------------------------

/// Every key of values.yaml down to the leaves the README documents: maps are descended,
/// except the structured Kubernetes fields, which are documented whole.
fn value_keys(prefix: &str, value: &Value, out: &mut Vec<String>) {
    const WHOLE: [&str; 6] = [
        "podSecurityContext",
        "securityContext",
        "resources",
        "readinessProbe",
        "livenessProbe",
        "metrics.grafanaDashboard.labels",
    ];
    match value {
        Value::Object(map) if !map.is_empty() && !WHOLE.contains(&prefix) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                value_keys(&key, v, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn chart_readme_documents_every_value_with_its_default() {
    let values_text = std::fs::read_to_string(Path::new(CHART).join("values.yaml")).unwrap();
    let values: Value = serde_saphyr::from_str(&values_text).unwrap();
    let readme = std::fs::read_to_string(Path::new(CHART).join("README.md")).unwrap();
    let mut keys = Vec::new();
    value_keys("", &values, &mut keys);
    assert!(keys.len() > 40, "{keys:?}");
    // Rows of the section "## Values": | `key` | `default` | description |
    let (_, table) = readme
        .split_once("\n## Values\n")
        .expect("a Values section");
    let rows: BTreeMap<&str, &str> = table
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split(" | ").map(str::trim).collect();
            let key = cells.first()?.strip_prefix("| `")?.strip_suffix('`')?;
            Some((key, *cells.get(1)?))
        })
        .collect();
    let mut problems = Vec::new();
    for key in &keys {
        let default = key.split('.').fold(&values, |v, k| &v[k]);
        let Some(cell) = rows.get(key.as_str()) else {
            problems.push(format!("{key}: no row"));
            continue;
        };
        let documented = cell
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .map(|c| serde_saphyr::from_str::<Value>(c).unwrap_or(Value::Null));
        if documented.as_ref() != Some(default) {
            problems.push(format!(
                "{key}: the README says {cell}, values.yaml has {default}"
            ));
        }
    }
    for key in rows.keys() {
        if !keys.iter().any(|k| k == key) {
            problems.push(format!("{key}: in the README, not in values.yaml"));
        }
    }
    assert!(
        problems.is_empty(),
        "the values table of charts/pullsecret-injector/README.md is out of date:\n{}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// credential provider plugins
// ---------------------------------------------------------------------------------------

/// An ECR entry whose credentials come from ecr-credential-provider, as on EKS nodes.
const PROVIDERS: [&str; 6] = [
    "--set-json",
    r#"secrets=[
  {"name": "ecr", "provider": {"name": "ecr-credential-provider",
   "images": ["123456789012.dkr.ecr.eu-west-1.amazonaws.com/app"]}},
  {"name": "regcred", "source": {"name": "regcred-source"}}
]"#,
    "--set-json",
    r#"credentialProviders.providers=[{"name": "ecr-credential-provider",
  "matchImages": ["*.dkr.ecr.*.amazonaws.com"], "defaultCacheDuration": "12h",
  "apiVersion": "credentialprovider.kubelet.k8s.io/v1", "args": ["get-credentials"],
  "env": [{"name": "AWS_PROFILE", "value": "default"}]}]"#,
    "--set-json",
    r#"extraEnv=[{"name": "AWS_REGION", "value": "eu-west-1"}]"#,
];

fn with_init_container() -> Vec<&'static str> {
    let mut args = PROVIDERS.to_vec();
    args.extend([
        "--set",
        "credentialProviders.initContainer.image=example.com/plugins:1.0",
        "--set-json",
        r#"credentialProviders.initContainer.command=["cp", "/ecr-credential-provider", "/plugins/"]"#,
    ]);
    args
}

#[test]
fn credential_providers_render_the_kubelet_config_and_an_init_container_for_the_plugins() {
    let rendered = render_mode("self", &with_init_container());
    let config: Value = serde_saphyr::from_str(&rendered.config_yaml()).unwrap();
    assert_eq!(
        config["credentialProviders"],
        serde_json::json!({
            "configFile": "/etc/pullsecret-injector/credential-providers.yaml",
            "binDir": "/var/lib/pullsecret-injector/plugins",
            "timeoutSeconds": 60,
        })
    );
    assert_eq!(
        config["secrets"][0]["provider"]["name"],
        "ecr-credential-provider"
    );
    // The kubelet's own file, as the binary reads it.
    let kubelet = rendered
        .one::<ConfigMap>()
        .data
        .and_then(|mut d| d.remove("credential-providers.yaml"))
        .expect("the ConfigMap holds the CredentialProviderConfig");
    let providers = pullsecret_injector::provider::kubelet::ConfigFile::from_yaml(&kubelet)
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(
        providers["ecr-credential-provider"].args,
        ["get-credentials"]
    );

    let deployment = rendered.one::<Deployment>();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let init = pod.init_containers.expect("an init container");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].image.as_deref(), Some("example.com/plugins:1.0"));
    assert_eq!(
        init[0].command.as_deref(),
        Some(&strings(&["cp", "/ecr-credential-provider", "/plugins/"])[..])
    );
    let container = &pod.containers[0];
    // The init container is as locked down as the injector.
    assert_eq!(init[0].security_context, container.security_context);
    let init_mount = &init[0].volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (init_mount.name.as_str(), init_mount.mount_path.as_str()),
        ("plugins", "/plugins")
    );
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "plugins")
        .expect("the plugins are mounted");
    assert_eq!(mount.mount_path, "/var/lib/pullsecret-injector/plugins");
    assert_eq!(mount.read_only, Some(true));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "plugins")
        .expect("a plugins volume");
    assert!(volume.empty_dir.is_some(), "{volume:?}");
    let env = container.env.as_ref().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "AWS_REGION" && e.value.as_deref() == Some("eu-west-1")),
        "{env:?}"
    );

    // The credentials are kept under the entry's name: granted and allowed like a copy.
    let cluster = rendered.one::<ClusterRole>().rules.unwrap();
    assert_eq!(
        rule_for(&cluster, "", "secrets")[0]
            .resource_names
            .as_deref(),
        Some(&strings(&["ecr", "regcred"])[..])
    );
    assert!(
        rendered.text.contains(r#"["ecr","regcred"]"#),
        "the Secret policy's copy names"
    );
}

#[test]
fn credential_provider_plugins_may_come_from_an_image_volume() {
    let mut args = PROVIDERS.to_vec();
    args.extend([
        "--set",
        "credentialProviders.imageVolume.reference=example.com/plugins:1.0",
        "--set",
        "credentialProviders.imageVolume.subPath=bin",
    ]);
    let rendered = render_mode("self", &args);
    let pod = rendered
        .one::<Deployment>()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    assert!(pod.init_containers.is_none());
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "plugins")
        .expect("a plugins volume");
    let image = volume.image.as_ref().expect("an image volume");
    assert_eq!(image.reference.as_deref(), Some("example.com/plugins:1.0"));
    assert_eq!(image.pull_policy.as_deref(), Some("IfNotPresent"));
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "plugins")
        .unwrap();
    assert_eq!(mount.sub_path.as_deref(), Some("bin"));
    assert_eq!(mount.read_only, Some(true));
}

#[test]
fn credential_providers_refuse_what_would_leave_the_plugins_unusable() {
    // An entry with a provider and no providers.
    let err = render_error(&[
        "--set-json",
        r#"secrets=[{"name": "ecr", "provider": {"name": "p", "images": ["r.io/a"]}}]"#,
    ]);
    assert!(
        err.contains(
            "secrets entry ecr has a provider, but credentialProviders.providers is empty"
        ),
        "{err}"
    );
    // Providers, and no way to put the plugins in the pod, or two.
    let err = render_error(&PROVIDERS);
    assert!(err.contains("needs their plugins in the pod"), "{err}");
    let mut both = with_init_container();
    both.extend([
        "--set",
        "credentialProviders.imageVolume.reference=example.com/p:1",
    ]);
    assert!(render_error(&both).contains("not both"));
    let mut no_command = PROVIDERS.to_vec();
    no_command.extend([
        "--set",
        "credentialProviders.initContainer.image=example.com/p:1",
    ]);
    assert!(render_error(&no_command).contains("initContainer.command must copy"));
    // The schema: source and provider together, a provider without images, a bad provider.
    let err = render_error(&[
        "--set-json",
        r#"secrets=[{"name": "x", "source": {"name": "s"}, "provider": {"name": "p", "images": ["r.io/a"]}}]"#,
    ]);
    assert!(err.contains("/secrets/0"), "{err}");
    let err = render_error(&[
        "--set-json",
        r#"secrets=[{"name": "x", "provider": {"name": "p", "images": []}}]"#,
    ]);
    assert!(err.contains("/secrets/0"), "{err}");
    let err = render_error(&[
        "--set-json",
        r#"credentialProviders.providers=[{"name": "p", "matchImages": ["r.io"], "defaultCacheDuration": "12 hours", "apiVersion": "credentialprovider.kubelet.k8s.io/v1"}]"#,
    ]);
    assert!(err.contains("defaultCacheDuration"), "{err}");
}
