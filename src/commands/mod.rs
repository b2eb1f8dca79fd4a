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

/// Reads and validates the config file after `overrides` (command-line flags) are applied.
fn load_settings(
    path: &Path,
    overrides: impl FnOnce(&mut Config),
) -> Result<Settings, CommandError> {
    let mut config = Config::from_file(path).map_err(|e| CommandError::Usage(e.to_string()))?;
    overrides(&mut config);
    config
        .validate()
        .map_err(|e| CommandError::Usage(e.to_string()))
}

/// The keyring for `match` and `mutate`: config patterns, plus the sources' `auths` keys
/// read through `kubeconfig` when given.
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
    let Some(path) = kubeconfig else {
        if !from_sources.is_empty() {
            eprintln!(
                "note: {} take their patterns from source secrets; pass --kubeconfig to read them (they match nothing here)",
                from_sources.join(", ")
            );
        }
        return Ok(settings.keyring.clone());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CommandError::io("starting the async runtime"))?;
    let sources = runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
            CommandError::Kubeconfig {
                what: format!("reading kubeconfig {}", path.display()),
                source,
            }
        })?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|source| CommandError::Kubeconfig {
                what: "loading the kubeconfig".into(),
                source,
            })?;
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
