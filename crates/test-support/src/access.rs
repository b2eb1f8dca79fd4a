//! The chart's own access for an injector under test: `helm template` of the chart with the
//! values that match the injector's config, its ServiceAccount, ClusterRole, Roles,
//! bindings and Secret policy applied to the control plane, and a kubeconfig with a token
//! of that ServiceAccount (TokenRequest API). An injector started with it has exactly what
//! an installation has, and nothing the admin credentials would add.

use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::Value;

use crate::accounts::{service_account_token, token_kubeconfig};
use crate::controlplane::{self, eventually};
use crate::injector::{Injector, Instance, Options};

/// The chart, in the repository.
pub fn chart() -> PathBuf {
    crate::repo_root().join("charts/pullsecret-injector")
}

/// What the chart grants one installation, applied to the shared control plane.
pub struct ChartAccess {
    /// The release namespace: the ServiceAccount's, the Lease's, the sources' by default.
    pub namespace: String,
    /// The chart's full name: ServiceAccount, ClusterRole, Lease, webhook configuration.
    pub fullname: String,
    /// Everything `helm template` rendered.
    pub docs: Vec<Value>,
    /// A kubeconfig that authenticates as the ServiceAccount.
    pub kubeconfig: PathBuf,
}

impl ChartAccess {
    /// Renders the chart as release `fullname` (its `fullnameOverride`) in `namespace` with
    /// `helm_args`, applies the access objects (server-side apply, so granting again, as a
    /// `helm upgrade` would, replaces them) and writes a kubeconfig with a new token into
    /// `dir`.
    pub async fn grant(
        admin: &kube::Client,
        namespace: &str,
        fullname: &str,
        helm_args: &[String],
        dir: &Path,
    ) -> Self {
        let docs = render(namespace, fullname, helm_args);
        apply_access(admin, &docs).await;
        let access = Self {
            namespace: namespace.to_string(),
            fullname: fullname.to_string(),
            docs,
            kubeconfig: PathBuf::new(),
        };
        access.wait_in_force(admin).await;
        let token = service_account_token(admin, namespace, fullname).await;
        let cp = controlplane::shared();
        Self {
            kubeconfig: token_kubeconfig(dir, cp.apiserver_url(), cp.ca_pem(), &token),
            ..access
        }
    }

    /// Waits until the authorizer grants the ServiceAccount every rule just applied (RBAC
    /// reaches the apiserver through its informers), so that a request made at once is not
    /// refused for a moment.
    async fn wait_in_force(&self, admin: &kube::Client) {
        for role in self
            .of_kind("ClusterRole")
            .into_iter()
            .chain(self.of_kind("Role"))
        {
            let namespace = role["metadata"]["namespace"]
                .as_str()
                .unwrap_or(&self.namespace);
            for rule in role["rules"].as_array().into_iter().flatten() {
                let first = |key: &str| rule[key][0].as_str().map(str::to_string);
                let attributes = ResourceAttributes {
                    namespace: Some(namespace.to_string()),
                    verb: first("verbs"),
                    group: first("apiGroups"),
                    resource: first("resources"),
                    name: first("resourceNames"),
                    ..ResourceAttributes::default()
                };
                eventually(
                    &format!("RBAC in force: {attributes:?}"),
                    Duration::from_secs(30),
                    || async {
                        let review = service_account_review(
                            admin,
                            &self.namespace,
                            &self.fullname,
                            attributes.clone(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        match review {
                            Some(status) if status.allowed => Ok(()),
                            other => Err(format!("{other:?}")),
                        }
                    },
                )
                .await;
            }
        }
    }

    /// [`Self::for_config`] from synchronous code, on a runtime of its own.
    pub fn for_config_blocking(config: &str, dir: &Path) -> Self {
        let (config, dir) = (config.to_string(), dir.to_path_buf());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let admin = controlplane::shared().client();
                Self::for_config(&admin, &config, &dir).await
            })
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// The access an installation whose chart values match `config` (an injector config file)
    /// would have: the release namespace is `namespace`, the full name `leaderElection.leaseName`,
    /// and `secrets`, `retiredSecrets`, the credential providers and self-managed certificates
    /// come from the config.
    /// Panics when the config names what the chart cannot: a certificate Secret or webhook
    /// configuration named otherwise than the chart names them.
    pub async fn for_config(admin: &kube::Client, config: &str, dir: &Path) -> Self {
        let config: Value = serde_saphyr::from_str(config).expect("the injector config is YAML");
        let namespace = config["namespace"]
            .as_str()
            .expect("the config names its namespace (the release namespace)");
        let fullname = config["leaderElection"]["leaseName"]
            .as_str()
            .expect("the config names its Lease (the chart's full name)");
        let mut args = vec![
            "--set-json".to_string(),
            format!(
                "secrets={}",
                config
                    .get("secrets")
                    .cloned()
                    .unwrap_or(Value::Array(vec![]))
            ),
        ];
        // Entries with a provider: the chart wants the kubelet file's providers and a way to
        // put the plugins in the pod, neither of which changes what it grants.
        if let Some(file) = config["credentialProviders"]["configFile"].as_str() {
            let text = std::fs::read_to_string(file)
                .unwrap_or_else(|e| panic!("reading the kubelet config {file}: {e}"));
            let kubelet: Value = serde_saphyr::from_str(&text).expect("the kubelet config is YAML");
            args.extend([
                "--set-json".to_string(),
                format!("credentialProviders.providers={}", kubelet["providers"]),
                "--set".to_string(),
                "credentialProviders.initContainer.image=unused".to_string(),
                "--set-json".to_string(),
                r#"credentialProviders.initContainer.command=["unused"]"#.to_string(),
            ]);
        }
        if let Some(retired) = config.get("retiredSecrets") {
            args.extend([
                "--set-json".to_string(),
                format!("retiredSecrets={retired}"),
            ]);
        }
        match config.get("certificates") {
            Some(certificates) => {
                assert_eq!(
                    certificates["secretName"].as_str(),
                    Some(format!("{fullname}-tls").as_str()),
                    "the chart keeps the certificate in <fullname>-tls"
                );
                assert_eq!(
                    certificates["webhookConfigurationName"].as_str(),
                    Some(fullname),
                    "the chart's webhook configuration is named <fullname>"
                );
                args.extend(["--set".to_string(), "certs.mode=self".to_string()]);
            }
            // Certificate files: the chart's `external` mode, which grants nothing for them.
            None => args.extend(
                [
                    "--set",
                    "certs.mode=external",
                    "--set",
                    "certs.external.secretName=unused",
                    "--set",
                    "certs.external.caBundle=dW51c2Vk",
                ]
                .map(String::from),
            ),
        }
        Self::grant(admin, namespace, fullname, &args, dir).await
    }

    /// Whether the apiserver's authorizer lets this installation's ServiceAccount do what
    /// `attributes` describe.
    pub async fn allows(&self, admin: &kube::Client, attributes: ResourceAttributes) -> bool {
        service_account_allows(admin, &self.namespace, &self.fullname, attributes).await
    }

    /// The rendered documents of `kind`.
    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }
}

/// The user name of ServiceAccount `namespace/name`'s tokens.
fn service_account_username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The groups the apiserver gives the tokens of a ServiceAccount in `namespace`.
fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".to_string(),
    ]
}

/// Whether the apiserver's authorizer lets ServiceAccount `namespace/name` do what
/// `attributes` describe.
pub async fn service_account_allows(
    admin: &kube::Client,
    namespace: &str,
    name: &str,
    attributes: ResourceAttributes,
) -> bool {
    service_account_review(admin, namespace, name, attributes)
        .await
        .expect("SubjectAccessReview")
        .expect("SubjectAccessReview status")
        .allowed
}

/// The apiserver's authorizer's answer (a SubjectAccessReview's status) for ServiceAccount
/// `namespace/name`.
async fn service_account_review(
    admin: &kube::Client,
    namespace: &str,
    name: &str,
    attributes: ResourceAttributes,
) -> kube::Result<Option<SubjectAccessReviewStatus>> {
    let review = SubjectAccessReview {
        metadata: ObjectMeta::default(),
        spec: SubjectAccessReviewSpec {
            user: Some(service_account_username(namespace, name)),
            groups: Some(service_account_groups(namespace)),
            resource_attributes: Some(attributes),
            ..SubjectAccessReviewSpec::default()
        },
        status: None,
    };
    Ok(Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await?
        .status)
}

/// `helm template` of the chart as the documents it renders.
pub fn render(namespace: &str, fullname: &str, helm_args: &[String]) -> Vec<Value> {
    let out = crate::helm::command()
        .arg("template")
        .arg(fullname)
        .arg(chart())
        .args(["--namespace", namespace])
        .args(["--set", &format!("fullnameOverride={fullname}")])
        .args(helm_args)
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

/// `serve` with `config` and the access the chart grants for it (the token's kubeconfig in
/// the instance's own directory), with extra environment `env`; returns once its caches have
/// synced.
pub async fn replicator(config: &str, env: &[(&str, &str)]) -> Instance {
    let instance = Instance::start(|dir| {
        let access = ChartAccess::for_config_blocking(config, dir);
        Injector::start(Options {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            kubeconfig: Some(&access.kubeconfig),
            ..Options::new(config, dir)
        })
    });
    instance.injector.wait_synced().await;
    instance
}

/// Applies the rendered identity and permissions: the ServiceAccount, ClusterRole, Roles,
/// their bindings, and the Secret policy with its binding.
pub async fn apply_access(admin: &kube::Client, docs: &[Value]) {
    use k8s_openapi::Resource;
    let kinds = [
        (
            ApiResource::erase::<ServiceAccount>(&()),
            ServiceAccount::KIND,
        ),
        (ApiResource::erase::<ClusterRole>(&()), ClusterRole::KIND),
        (
            ApiResource::erase::<ClusterRoleBinding>(&()),
            ClusterRoleBinding::KIND,
        ),
        (ApiResource::erase::<Role>(&()), Role::KIND),
        (ApiResource::erase::<RoleBinding>(&()), RoleBinding::KIND),
        (
            ApiResource::erase::<ValidatingAdmissionPolicy>(&()),
            ValidatingAdmissionPolicy::KIND,
        ),
        (
            ApiResource::erase::<ValidatingAdmissionPolicyBinding>(&()),
            ValidatingAdmissionPolicyBinding::KIND,
        ),
    ];
    let params = PatchParams::apply("e2e-chart-access").force();
    for (resource, kind) in &kinds {
        for doc in docs.iter().filter(|d| d["kind"] == *kind) {
            let name = doc["metadata"]["name"].as_str().expect("a name");
            let api: Api<DynamicObject> = match doc["metadata"]["namespace"].as_str() {
                Some(namespace) => Api::namespaced_with(admin.clone(), namespace, resource),
                None => Api::all_with(admin.clone(), resource),
            };
            api.patch(name, &params, &Patch::Apply(doc))
                .await
                .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
        }
    }
}
