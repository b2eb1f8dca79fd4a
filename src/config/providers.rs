//! The config of credential provider plugins: `credentialProviders` (the kubelet's two
//! flags: its CredentialProviderConfig file and the plugins' directory) and the entries'
//! `provider` (which plugin, asked for which images). What can be checked without the file
//! system is checked with the rest of the config; [`Settings::credential_plans`] then reads
//! the kubelet's file and looks for the plugins, before `serve` starts.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, FieldError, Settings, SourceRef};
use crate::image::ImageName;
use crate::provider::CredentialPlan;
use crate::provider::kubelet::{ConfigFile, Provider};
use crate::provider::plugin::Plugin;

/// The kubelet's own timeout for a plugin run.
const DEFAULT_TIMEOUT_SECONDS: u64 = 60;

/// Where the plugins and their config are, as the kubelet's `--image-credential-provider-*`
/// flags say it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialProvidersConfig {
    /// A kubelet `CredentialProviderConfig` (kubelet.config.k8s.io/v1, v1beta1 or v1alpha1).
    pub config_file: PathBuf,
    /// Where each provider's plugin is, as an executable named like the provider.
    pub bin_dir: PathBuf,
    /// A plugin run that takes longer is killed and counted as a failure.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
}

fn default_timeout_seconds() -> u64 {
    DEFAULT_TIMEOUT_SECONDS
}

/// An entry's `provider`: the plugin that issues its credentials.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    /// A provider of the CredentialProviderConfig file, by name.
    pub name: String,
    /// One image per registry to ask credentials for, as the kubelet asks for the image it
    /// pulls: each must match the provider's `matchImages`.
    pub images: Vec<String>,
}

/// Checks an entry's `provider` at `secrets[i]`, reporting through `error`.
pub(crate) fn check_entry(
    at: &str,
    provider: &ProviderConfig,
    configured: bool,
    error: &mut impl FnMut(String, String),
) {
    if !configured {
        error(
            format!("{at}.provider"),
            "needs credentialProviders (configFile and binDir) at the top level".into(),
        );
    }
    if provider.name.is_empty() || provider.name.contains(['/', '\\']) {
        error(
            format!("{at}.provider.name"),
            format!("{:?} is not a provider name", provider.name),
        );
    }
    if provider.images.is_empty() {
        error(
            format!("{at}.provider.images"),
            "must name at least one image (one per registry the plugin serves)".into(),
        );
    }
    for (j, image) in provider.images.iter().enumerate() {
        if let Err(e) = ImageName::parse(image) {
            error(
                format!("{at}.provider.images[{j}]"),
                format!("{image:?}: {e}"),
            );
        }
    }
}

/// Checks `credentialProviders` itself.
pub(crate) fn check_top_level(
    config: &CredentialProvidersConfig,
    error: &mut impl FnMut(String, String),
) {
    if config.timeout_seconds == 0 {
        error(
            "credentialProviders.timeoutSeconds".into(),
            "must be at least 1".into(),
        );
    }
}

impl Settings {
    /// What the leader runs for entries with a `provider`: reads the kubelet's
    /// CredentialProviderConfig and finds each plugin, reporting every problem with its
    /// path, as `validate` does. Empty when no entry has a provider.
    pub fn credential_plans(&self) -> Result<Vec<CredentialPlan>, ConfigError> {
        let wanted: Vec<(usize, &ProviderConfig, &SourceRef)> = self
            .secrets
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.provider.as_ref()?, s.source.as_ref()?)))
            .collect();
        let Some(config) = &self.credential_providers else {
            return Ok(Vec::new());
        };
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let file = config.config_file.display().to_string();
        let invalid =
            |path: String, reason: String| ConfigError::Invalid(vec![FieldError { path, reason }]);
        let text = std::fs::read_to_string(&config.config_file).map_err(|e| {
            invalid(
                "credentialProviders.configFile".into(),
                format!("cannot read {file}: {e}"),
            )
        })?;
        let providers: BTreeMap<String, Provider> = ConfigFile::from_yaml(&text)
            .map_err(|message| {
                invalid(
                    "credentialProviders.configFile".into(),
                    format!("{file} is not a CredentialProviderConfig: {message}"),
                )
            })?
            .validate()
            .map_err(|errors| {
                ConfigError::Invalid(
                    errors
                        .into_iter()
                        .map(|e| FieldError {
                            path: format!("credentialProviders.configFile ({file}): {}", e.path),
                            reason: e.reason,
                        })
                        .collect(),
                )
            })?;

        let mut errors = Vec::new();
        let mut plans = Vec::new();
        for (i, provider_config, keep_in) in wanted {
            let at = format!("secrets[{i}].provider");
            let Some(provider) = providers.get(&provider_config.name) else {
                errors.push(FieldError {
                    path: format!("{at}.name"),
                    reason: format!(
                        "{file} has no provider {:?} (it has {:?})",
                        provider_config.name,
                        providers.keys().collect::<Vec<_>>()
                    ),
                });
                continue;
            };
            if provider.token_attributes {
                errors.push(FieldError {
                    path: format!("{at}.name"),
                    reason: format!(
                        "provider {:?} has tokenAttributes: its plugin wants the token of the pod being pulled, and the injector runs plugins for no pod",
                        provider.name
                    ),
                });
            }
            for (j, image) in provider_config.images.iter().enumerate() {
                if ImageName::parse(image).is_ok_and(|name| !provider.serves(&name)) {
                    errors.push(FieldError {
                        path: format!("{at}.images[{j}]"),
                        reason: format!(
                            "{image:?} matches none of provider {:?}'s matchImages {:?}: the kubelet would not ask its plugin for it",
                            provider.name,
                            provider.match_images.iter().map(|p| p.raw()).collect::<Vec<_>>()
                        ),
                    });
                }
            }
            let executable = config.bin_dir.join(&provider.name);
            let runnable = std::fs::metadata(&executable)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if !runnable {
                errors.push(FieldError {
                    path: "credentialProviders.binDir".into(),
                    reason: format!(
                        "{} is not an executable file (the plugin of provider {:?}, used at {at})",
                        executable.display(),
                        provider.name
                    ),
                });
            }
            plans.push(CredentialPlan {
                secret: self.secrets[i].name.clone(),
                keep_in: keep_in.clone(),
                plugin: Plugin {
                    name: provider.name.clone(),
                    executable,
                    args: provider.args.clone(),
                    env: provider.env.clone(),
                    api_version: provider.api_version.clone(),
                    default_cache_duration: provider.default_cache_duration,
                },
                images: provider_config.images.clone(),
                timeout: Duration::from_secs(config.timeout_seconds),
            });
        }
        if errors.is_empty() {
            Ok(plans)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::config::{Config, ConfigError, Settings};

    fn settings(yaml: &str) -> Result<Settings, ConfigError> {
        Config::from_yaml(yaml)
            .map_err(|message| ConfigError::Parse {
                path: "test".into(),
                message,
            })?
            .validate()
    }

    const KUBELET_CONFIG: &str = r#"
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ecr-credential-provider
    matchImages: ["*.dkr.ecr.*.amazonaws.com"]
    defaultCacheDuration: 12h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env: [{name: AWS_REGION, value: us-east-1}]
  - name: pod-token-provider
    matchImages: ["*.example.com"]
    defaultCacheDuration: 1m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    tokenAttributes: {serviceAccountTokenAudience: example, requireServiceAccount: true}
"#;

    /// A plugin directory with `ecr-credential-provider` (executable) and the kubelet's file.
    fn plugin_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("ecr-credential-provider");
        std::fs::write(&plugin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("not-executable"), "").unwrap();
        std::fs::write(dir.path().join("providers.yaml"), KUBELET_CONFIG).unwrap();
        dir
    }

    fn with_dir(dir: &std::path::Path, secrets: &str) -> String {
        format!(
            "namespace: infra\ncredentialProviders:\n  configFile: {0}/providers.yaml\n  binDir: {0}\n  timeoutSeconds: 7\nsecrets:\n{secrets}",
            dir.display()
        )
    }

    #[test]
    fn a_provider_entry_keeps_its_credentials_in_a_secret_of_its_name_in_our_namespace() {
        let dir = plugin_dir();
        let s = settings(&with_dir(
            dir.path(),
            "  - name: ecr\n    provider: {name: ecr-credential-provider, images: [1.dkr.ecr.us-east-1.amazonaws.com/app]}\n  - name: static\n    registries: [ghcr.io]\n",
        ))
        .unwrap();
        let ecr = &s.secrets[0];
        assert_eq!(ecr.source.as_ref().unwrap().to_string(), "infra/ecr");
        assert!(ecr.patterns_from_source());
        assert!(s.needs_cluster());
        assert_eq!(s.copy_names().into_iter().collect::<Vec<_>>(), ["ecr"]);
        let plans = s.credential_plans().unwrap();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].secret, "ecr");
        assert_eq!(plans[0].keep_in.to_string(), "infra/ecr");
        assert_eq!(
            plans[0].plugin.executable,
            dir.path().join("ecr-credential-provider")
        );
        assert_eq!(plans[0].plugin.env[0].name, "AWS_REGION");
        assert_eq!(plans[0].timeout, std::time::Duration::from_secs(7));
        // Our own namespace never gets a copy over the credentials themselves.
        let everywhere = std::collections::BTreeMap::from([(
            crate::config::DEFAULT_OPT_IN_LABEL.to_string(),
            crate::config::DEFAULT_OPT_IN_VALUE.to_string(),
        )]);
        assert!(!s.replicates_into(ecr, "infra", &everywhere));
        assert!(s.replicates_into(ecr, "app", &everywhere));
    }

    #[test]
    fn provider_entries_are_checked_with_the_rest_of_the_config() {
        let err = settings(
            r#"
credentialProviders: {configFile: /p.yaml, binDir: /p, timeoutSeconds: 0}
secrets:
  - name: both
    source: {name: s}
    provider: {name: p, images: [r.io/a]}
  - name: empty
    provider: {name: "../p", images: []}
  - name: bad-image
    provider: {name: p, images: ["R.IO/Upper"]}
"#,
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "secrets[0].provider: set either source (a Secret) or provider",
            "secrets[1].provider.name: \"../p\" is not a provider name",
            "secrets[1].provider.images: must name at least one image",
            "secrets[2].provider.images[0]: \"R.IO/Upper\"",
            "credentialProviders.timeoutSeconds: must be at least 1",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
        let err = settings("secrets: [{name: a, provider: {name: p, images: [r.io/a]}}]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("secrets[0].provider: needs credentialProviders (configFile and binDir)"),
            "{err}"
        );
    }

    #[test]
    fn the_kubelet_file_and_the_plugins_are_checked_before_serving() {
        let dir = plugin_dir();
        let s = settings(&with_dir(
            dir.path(),
            r#"  - name: a
    provider: {name: ecr-credential-provider, images: [ghcr.io/acme/app]}
  - name: b
    provider: {name: gcp-provider, images: [gcr.io/x/y]}
  - name: c
    provider: {name: pod-token-provider, images: [r.example.com/app]}
"#,
        ))
        .unwrap();
        let err = s.credential_plans().unwrap_err().to_string();
        for expected in [
            "secrets[0].provider.images[0]: \"ghcr.io/acme/app\" matches none of provider \"ecr-credential-provider\"'s matchImages",
            "secrets[1].provider.name: ",
            "has no provider \"gcp-provider\"",
            "secrets[2].provider.name: provider \"pod-token-provider\" has tokenAttributes",
            "credentialProviders.binDir: ",
            "pod-token-provider is not an executable file",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
        std::fs::write(dir.path().join("providers.yaml"), "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders: [{name: x}]\n").unwrap();
        let err = s.credential_plans().unwrap_err().to_string();
        assert!(
            err.contains("providers.yaml): providers[0].matchImages: must list at least one"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("providers.yaml")).unwrap();
        let err = s.credential_plans().unwrap_err().to_string();
        assert!(
            err.contains("credentialProviders.configFile: cannot read"),
            "{err}"
        );
    }
}
