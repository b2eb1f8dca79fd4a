//! Building blocks for the replication scenarios of the robustness suites (e2e_faults,
//! e2e_least_privilege, e2e_leaks): source Secrets with known credentials, copies, webhook
//! registration, pods, ServiceAccount tokens and kubeconfigs, and the injector's metrics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Container, Event, Namespace, Pod, PodSpec, Secret, ServiceAccount,
};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::controlplane::eventually;
use super::injector::{self, Injector, Options, metric};
use super::webhook::Spec;

pub const DOCKERCONFIGJSON: &str = "kubernetes.io/dockerconfigjson";
pub const DOCKERCONFIGJSON_KEY: &str = ".dockerconfigjson";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Bound for convergence that has no latency target of its own.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// Registry credentials as `kubectl create secret docker-registry` writes them.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn new(registry: &str, username: &str, password: &str) -> Self {
        Self {
            registry: registry.into(),
            username: username.into(),
            password: password.into(),
        }
    }

    /// `base64(user:password)`, the `auth` field.
    pub fn auth(&self) -> String {
        base64(format!("{}:{}", self.username, self.password).as_bytes())
    }

    /// The `.dockerconfigjson` bytes.
    pub fn dockerconfigjson(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({"auths": {&self.registry: {
            "username": self.username,
            "password": self.password,
            "auth": self.auth(),
        }}}))
        .expect("JSON")
    }
}

/// Standard base64 with padding (what the API uses for Secret data).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A dockerconfigjson Secret (without namespace) holding `credentials`.
pub fn pull_secret(name: &str, credentials: &Credentials) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        type_: Some(DOCKERCONFIGJSON.into()),
        data: Some(BTreeMap::from([(
            DOCKERCONFIGJSON_KEY.to_string(),
            ByteString(credentials.dockerconfigjson()),
        )])),
        ..Secret::default()
    }
}

pub async fn create_secret(client: &kube::Client, namespace: &str, secret: &Secret) -> Secret {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), secret)
        .await
        .unwrap_or_else(|e| panic!("creating a Secret in {namespace}: {e}"))
}

/// Replaces the source's `.dockerconfigjson`; returns the stored Secret.
pub async fn rotate(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    credentials: &Credentials,
) -> Secret {
    let patch = json!({"data": {DOCKERCONFIGJSON_KEY: ByteString(credentials.dockerconfigjson())}});
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("rotating {namespace}/{name}: {e}"))
}

pub async fn get_secret(client: &kube::Client, namespace: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("getting Secret {namespace}/{name}: {e}"))
}

pub async fn set_label(client: &kube::Client, namespace: &str, key: &str, value: Option<&str>) {
    let patch = json!({"metadata": {"labels": {key: value}}});
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("labelling namespace {namespace}: {e}"));
}

/// Waits until `namespace` holds a managed copy `name` with exactly `source`'s data.
pub async fn wait_copy(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    source: &Secret,
    timeout: Duration,
) -> Secret {
    eventually(
        &format!("an up-to-date copy {namespace}/{name}"),
        timeout,
        || async {
            let copy = get_secret(client, namespace, name)
                .await
                .ok_or_else(|| "no such Secret".to_string())?;
            let managed = copy
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY));
            if managed.map(String::as_str) != Some("pullsecret-injector") {
                return Err(format!("not a managed copy: {:?}", copy.metadata.labels));
            }
            if copy.data != source.data || copy.type_ != source.type_ {
                return Err("data differ from the source's".to_string());
            }
            Ok::<_, String>(copy)
        },
    )
    .await
}

pub async fn wait_absent(client: &kube::Client, namespace: &str, name: &str, timeout: Duration) {
    eventually(
        &format!("Secret {namespace}/{name} to be deleted"),
        timeout,
        || async {
            match get_secret(client, namespace, name).await {
                None => Ok(()),
                Some(_) => Err("still there"),
            }
        },
    )
    .await
}

/// The PullSecretConflict Events in namespace `ns`: about the Secret in the way.
pub async fn conflict_events(client: &kube::Client, ns: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Secret,involvedObject.namespace={ns},reason=PullSecretConflict"
        )))
        .await
        .expect("list events")
        .items
}

// ---------------------------------------------------------------------------
// Injectors
// ---------------------------------------------------------------------------

/// A replication config: sources and the Lease in `namespace`, copies into namespaces
/// labelled `label=enabled`, and `secrets` (a YAML list indented by two spaces).
pub fn replication_config(namespace: &str, label: &str, lease: &str, secrets: &str) -> String {
    format!(
        "namespace: {namespace}\n\
         namespaceSelector:\n  matchLabels: {{\"{label}\": enabled}}\n\
         excludeNamespaces: []\n\
         leaderElection: {{leaseName: {lease}, leaseDurationSeconds: 15}}\n\
         secrets:\n{secrets}"
    )
}

/// An injector with certificates in its own directory, talking to the cluster through
/// `kubeconfig`, with extra environment `env`.
pub struct Running {
    pub injector: Injector,
    pub ca_pem: String,
    pub dir: tempfile::TempDir,
}

impl Running {
    /// Starts `serve` (JSON logs) and waits until its caches have synced.
    pub fn start(config: &str, kubeconfig: &Path, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = injector::certificates(dir.path());
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        let mut injector = Injector::start(Options {
            env,
            ..Options::new(config, dir.path())
        });
        injector.wait_for_log(Duration::from_secs(60), |l| l["message"] == "caches synced");
        Self {
            injector,
            ca_pem: ca.cert_pem,
            dir,
        }
    }

    pub async fn wait_leader(&self) {
        wait_log(&self.injector, Duration::from_secs(60), |l| {
            l["message"] == "became the leader; replicating"
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.injector.addr.port())
    }
}

/// Waits for a JSON log line that satisfies `predicate`; panics on timeout or when the
/// process exits first. Unlike `Injector::wait_for_log`, it borrows the injector shared.
pub async fn wait_log(
    injector: &Injector,
    timeout: Duration,
    predicate: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(found) = injector.json_logs().into_iter().find(|l| predicate(l)) {
            return found;
        }
        assert!(alive(injector.pid()), "the injector exited");
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for a log line"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints an injector's logs if the test panics while the guard is alive.
pub struct LogsOnFailure<'a>(pub &'a Injector);

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== injector logs ====\n{}", self.0.logs().join("\n"));
        }
    }
}

pub fn errors_metric(text: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("pullsecret_injector_replication_errors_total{{reason=\"{reason}\"}}"),
    )
}

pub fn copies_metric(text: &str, action: &str) -> f64 {
    metric(
        text,
        &format!("pullsecret_injector_replicated_copies_total{{action=\"{action}\"}}"),
    )
}

/// Whether the process is still running (not exited, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Webhook registration and pods
// ---------------------------------------------------------------------------

/// A webhook for pods in namespaces labelled `label=enabled`, calling `url`.
pub fn webhook_configuration(
    name: &str,
    label: &str,
    url: &str,
    ca_pem: &str,
) -> MutatingWebhookConfiguration {
    Spec {
        ca_pem: Some(ca_pem),
        side_effects: "NoneOnDryRun",
        timeout_seconds: 10,
        ..Spec::new(name, &format!("{name}.pullsecret-injector.io"), url, label)
    }
    .configuration()
}

/// A cluster-scoped object created by a test, deleted on drop (also when the test panics).
pub struct Registration {
    config: kube::Config,
    name: String,
}

impl Registration {
    pub async fn create(
        config: kube::Config,
        configuration: &MutatingWebhookConfiguration,
    ) -> Self {
        let client = kube::Client::try_from(config.clone()).expect("client");
        let created = Api::<MutatingWebhookConfiguration>::all(client)
            .create(&PostParams::default(), configuration)
            .await
            .unwrap_or_else(|e| panic!("creating MutatingWebhookConfiguration: {e}"));
        Self {
            config,
            name: created.metadata.name.expect("name"),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let (name, config) = (self.name.clone(), self.config.clone());
        // Own thread and runtime: drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = kube::Client::try_from(config).ok()?;
                let api = Api::<MutatingWebhookConfiguration>::all(client);
                tokio::time::timeout(
                    Duration::from_secs(10),
                    api.delete(&name, &DeleteParams::default()),
                )
                .await
                .ok()?
                .ok()
            })
        })
        .join();
    }
}

pub fn pod(name: &str, image: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some(image.into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

pub fn pull_secret_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

/// Creates pods named `name` with `image` until the webhook (newly registered, so it may
/// take the apiserver a moment) has added `expected`; returns the pod.
pub async fn admitted_pod(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    image: &str,
    expected: &[&str],
) -> Pod {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    eventually(
        &format!("pod {namespace}/{name} admitted with {expected:?}"),
        CONVERGE,
        || async {
            let created = pods
                .create(&PostParams::default(), &pod(name, image))
                .await
                .map_err(|e| e.to_string())?;
            let names = pull_secret_names(&created);
            if names == expected {
                return Ok(created);
            }
            let _ = pods
                .delete(name, &DeleteParams::default().grace_period(0))
                .await;
            eventually("the probe pod to go", CONVERGE, || async {
                match pods.get_opt(name).await {
                    Ok(None) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            Err(format!("got {names:?}"))
        },
    )
    .await
}

/// An AdmissionReview for a Pod CREATE of `image` in `namespace`, as the apiserver sends it.
pub fn admission_review(uid: &str, namespace: &str, image: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "e2e"},
            "object": serde_json::to_value(pod("direct", image)).expect("pod JSON"),
            "dryRun": false
        }
    })
}

// ---------------------------------------------------------------------------
// ServiceAccount credentials
// ---------------------------------------------------------------------------

/// A token for `namespace/name` from the TokenRequest API (an hour).
pub async fn service_account_token(client: &kube::Client, namespace: &str, name: &str) -> String {
    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        status: None,
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
        .status
        .and_then(|s| s.token)
        .expect("TokenRequest status with a token")
}

/// Writes a kubeconfig for `server` (trusting `ca_pem`) that authenticates with `token`.
pub fn token_kubeconfig(dir: &Path, server: &str, ca_pem: &str, token: &str) -> PathBuf {
    let ca = dir.join("apiserver-ca.crt");
    std::fs::write(&ca, ca_pem).expect("write CA");
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: sa\n  user:\n    token: {token}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: sa\n\
         current-context: test\n",
        ca = ca.display()
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// A client that authenticates with the kubeconfig at `path`.
pub async fn client_from(path: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("load kubeconfig");
    kube::Client::try_from(config).expect("client")
}

/// The HTTP status of a failed API call (0 when it succeeded or failed otherwise).
pub fn status_of<T>(result: &Result<T, kube::Error>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        _ => 0,
    }
}
