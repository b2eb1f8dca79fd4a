//! The subcommands: `serve` starts the webhook (`crate::run`), `mutate` and `match` print
//! what it would do. `main` parses the flags and calls one of them.

pub mod match_images;
pub mod mutate;
pub mod serve;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use thiserror::Error;

use crate::RunError;
use crate::config::{Config, Settings};
use crate::matching::Keyring;
use crate::replicate::keyring;

#[derive(Debug, Error)]
pub enum CommandError {
    /// Input the user must fix: a bad config, flag or document (exit code 2).
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Kubeconfig {
        what: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("rendering {what}: {reason}")]
    Render { what: &'static str, reason: String },
    #[error(transparent)]
    Run(#[from] RunError),
}

impl CommandError {
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Usage(_))
    }

    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Self::Kube { what, source }
    }
}

/// What the process environment says, read once by `main`.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$PULLSECRET_INJECTOR_POD_NAMESPACE` (the chart sets it from the downward API): the
    /// injector's namespace when the config file does not name one.
    pub pod_namespace: Option<String>,
    /// `$PULLSECRET_INJECTOR_POD_NAME`, else the hostname (a pod's hostname is its name).
    pub pod_name: Option<String>,
}

impl Environment {
    /// This replica's name in the leader-election Lease: the pod's name, with the process id
    /// to tell apart several processes on one machine.
    pub fn identity(&self) -> String {
        let host = self
            .pod_name
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .unwrap_or("pullsecret-injector");
        format!("{host}-{}", std::process::id())
    }
}

/// Reads and validates the config file, with the pod's namespace as the default namespace and
/// `overrides` (command-line flags) applied.
fn load_settings(
    path: &Path,
    environment: &Environment,
    overrides: impl FnOnce(&mut Config),
) -> Result<Settings, CommandError> {
    let mut config = Config::from_file(path).map_err(|e| CommandError::Usage(e.to_string()))?;
    if config.namespace.is_none() {
        config.namespace = environment.pod_namespace.clone();
    }
    overrides(&mut config);
    config
        .validate()
        .map_err(|e| CommandError::Usage(e.to_string()))
}

/// Where `match` and `mutate` read source secrets from: `--kubeconfig`, else `$KUBECONFIG`,
/// else the in-cluster configuration (`kubectl exec` into an injector pod).
enum ClusterAccess {
    Kubeconfig(Box<kube::config::Kubeconfig>, String),
    InCluster(Box<kube::Config>),
    None,
}

fn cluster_access(kubeconfig: Option<&Path>) -> Result<ClusterAccess, CommandError> {
    if let Some(path) = kubeconfig {
        let config = kube::config::Kubeconfig::read_from(path).map_err(|source| {
            CommandError::Kubeconfig {
                what: format!("reading kubeconfig {}", path.display()),
                source,
            }
        })?;
        return Ok(ClusterAccess::Kubeconfig(
            Box::new(config),
            path.display().to_string(),
        ));
    }
    let from_env =
        kube::config::Kubeconfig::from_env().map_err(|source| CommandError::Kubeconfig {
            what: "reading the kubeconfig in $KUBECONFIG".into(),
            source,
        })?;
    if let Some(from_env) = from_env {
        return Ok(ClusterAccess::Kubeconfig(
            Box::new(from_env),
            "$KUBECONFIG".into(),
        ));
    }
    Ok(
        kube::Config::incluster().map_or(ClusterAccess::None, |config| {
            ClusterAccess::InCluster(Box::new(config))
        }),
    )
}

/// The keyring for `match` and `mutate`: config patterns, plus the sources' `auths` keys
/// read from the cluster when there is one to read from.
fn keyring_with_sources(
    settings: &Settings,
    kubeconfig: Option<&Path>,
) -> Result<Keyring, CommandError> {
    let from_sources: Vec<&str> = settings
        .secrets
        .iter()
        .filter(|s| s.patterns_from_source())
        .map(|s| s.name.as_str())
        .collect();
    if from_sources.is_empty() {
        return Ok(settings.keyring.clone());
    }
    let access = cluster_access(kubeconfig)?;
    if let ClusterAccess::None = access {
        eprintln!(
            "note: {} take their patterns from source secrets; pass --kubeconfig (or set $KUBECONFIG) to read them (they match nothing here)",
            from_sources.join(", ")
        );
        return Ok(settings.keyring.clone());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CommandError::io("starting the async runtime"))?;
    let sources = runtime.block_on(async {
        let config = match access {
            ClusterAccess::Kubeconfig(kubeconfig, origin) => {
                kube::Config::from_custom_kubeconfig(*kubeconfig, &Default::default())
                    .await
                    .map_err(|source| CommandError::Kubeconfig {
                        what: format!("loading the kubeconfig from {origin}"),
                        source,
                    })?
            }
            ClusterAccess::InCluster(config) => *config,
            ClusterAccess::None => return Ok(BTreeMap::new()),
        };
        let client = kube::Client::try_from(config)
            .map_err(CommandError::kube("creating the Kubernetes client"))?;
        let mut sources = BTreeMap::new();
        for source in settings.secrets.iter().filter_map(|s| s.source.as_ref()) {
            let api = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
                client.clone(),
                &source.namespace,
            );
            let secret = api
                .get_opt(&source.name)
                .await
                .map_err(CommandError::kube(format!(
                    "reading source secret {source}"
                )))?;
            if let Some(secret) = secret {
                sources.insert(source.clone(), Arc::new(secret));
            }
        }
        Ok::<_, CommandError>(sources)
    })?;
    let (keyring, problems) = keyring::build(settings, |source| sources.get(source).cloned());
    for problem in problems {
        eprintln!("note: {problem}");
    }
    Ok(keyring)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str, pod_namespace: Option<&str>) -> Settings {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), yaml).expect("write config");
        let environment = Environment {
            pod_namespace: pod_namespace.map(String::from),
            pod_name: None,
        };
        load_settings(file.path(), &environment, |_| {}).expect("valid config")
    }

    #[test]
    fn the_namespace_comes_from_the_file_then_pod_namespace_then_default() {
        let named = "namespace: infra\nsecrets: [{name: a, source: {name: b}}]\n";
        let unnamed = "secrets: [{name: a, source: {name: b}}]\n";
        assert_eq!(load(named, Some("from-env")).namespace, "infra");
        let from_env = load(unnamed, Some("from-env"));
        assert_eq!(from_env.namespace, "from-env");
        assert_eq!(
            from_env.secrets[0].source.as_ref().map(ToString::to_string),
            Some("from-env/b".to_string())
        );
        assert_eq!(load(unnamed, None).namespace, "default");
    }

    #[test]
    fn the_identity_is_the_pod_name_and_the_process_id() {
        let pid = std::process::id();
        let named = Environment {
            pod_namespace: None,
            pod_name: Some("web-5d4f8-abcde\n".into()),
        };
        assert_eq!(named.identity(), format!("web-5d4f8-abcde-{pid}"));
        assert_eq!(
            Environment::default().identity(),
            format!("pullsecret-injector-{pid}")
        );
    }
}
