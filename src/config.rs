//! The configuration file (`Config`, as users write it) and its validated form (`Settings`,
//! as the hot path wants it: patterns parsed, addresses resolved).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use serde::Deserialize;
use thiserror::Error;

use crate::matching::{Keyring, Pattern};

pub const DEFAULT_OPT_OUT_ANNOTATION: &str = "pullsecret-injector.io/inject";
/// The namespace label that opts a namespace in, as the chart's webhook selects it.
pub const DEFAULT_OPT_IN_LABEL: &str = "pullsecret-injector.io/inject-pull-secrets";
pub const DEFAULT_OPT_IN_VALUE: &str = "enabled";
/// Two 3 MiB objects (object and oldObject) plus the review envelope, as controller-runtime.
pub const DEFAULT_MAX_BODY_BYTES: usize = 7 * 1024 * 1024;
/// Request bodies held in memory at once, across connections: four of the largest, and far
/// under the chart's 128Mi memory limit.
pub const DEFAULT_MAX_BUFFERED_BODY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default = "default_opt_out_annotation")]
    pub opt_out_annotation: String,
    #[serde(default)]
    pub limits: Limits,
    /// The injector's own namespace: the default for `source.namespace` and the Lease's.
    /// Defaults to $PULLSECRET_INJECTOR_POD_NAMESPACE (the chart sets it), then `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Which namespaces get copies of source secrets: the webhook's own opt-in selector.
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// Namespaces that never get copies, whatever their labels.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    #[serde(default)]
    pub leader_election: LeaderElectionConfig,
    /// Certificates the injector manages itself (the chart's `certs.mode: self`), instead
    /// of `tls` files.
    #[serde(default)]
    pub certificates: Option<CertificatesConfig>,
    #[serde(default)]
    pub secrets: Vec<SecretConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CertificatesMode {
    #[serde(rename = "self")]
    SelfManaged,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificatesConfig {
    pub mode: CertificatesMode,
    /// The Secret (in `namespace`) that holds the CA and the serving pair.
    pub secret_name: String,
    /// The MutatingWebhookConfiguration whose caBundle is kept current.
    pub webhook_configuration_name: String,
    /// The Service the apiserver calls: the certificate is for `name.namespace.svc`.
    pub service_name: String,
    /// More names or IP addresses for the certificate.
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    #[serde(default = "default_serving_validity")]
    pub serving_validity_seconds: u64,
    #[serde(default = "default_ca_validity")]
    pub ca_validity_seconds: u64,
    #[serde(default = "default_check_interval")]
    pub check_interval_seconds: u64,
}

fn default_serving_validity() -> u64 {
    365 * 86400
}
fn default_ca_validity() -> u64 {
    10 * 365 * 86400
}
fn default_check_interval() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaderElectionConfig {
    pub lease_name: String,
    pub lease_duration_seconds: u64,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            lease_name: "pullsecret-injector".to_string(),
            lease_duration_seconds: 15,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// How often the files are re-read; mounted Secrets change by a symlink swap that
    /// file-change notifications on the path do not see.
    #[serde(default = "default_reload_interval_seconds")]
    pub reload_interval_seconds: u64,
}

/// Protective limits for the TLS listener; defaults are documented in the README.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Bodies being read or decoded, all connections together, by their announced length.
    pub max_buffered_body_bytes: usize,
    pub max_connections: usize,
    pub tls_handshake_timeout_seconds: u64,
    pub header_read_timeout_seconds: u64,
    pub body_read_timeout_seconds: u64,
    pub shutdown_timeout_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_buffered_body_bytes: DEFAULT_MAX_BUFFERED_BODY_BYTES,
            max_connections: 4096,
            tls_handshake_timeout_seconds: 10,
            // Idle keep-alive connections are closed after this too; the apiserver reopens
            // them, so it is kept well above a request's own header time.
            header_read_timeout_seconds: 30,
            body_read_timeout_seconds: 30,
            shutdown_timeout_seconds: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretConfig {
    pub name: String,
    /// Patterns; when omitted with a `source`, the source's `auths` keys are the patterns.
    #[serde(default)]
    pub registries: Vec<String>,
    /// A `kubernetes.io/dockerconfigjson` Secret copied into every namespace the entry applies to.
    #[serde(default)]
    pub source: Option<SourceConfig>,
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// Replace a Secret of the same name that the injector did not create.
    #[serde(default)]
    pub overwrite_existing: bool,
}

/// `[::]`: IPv6 and IPv4 on one socket (see `listen::bind`).
fn default_listen() -> String {
    "[::]:8443".to_string()
}
fn default_metrics_listen() -> String {
    "[::]:8080".to_string()
}
fn default_opt_out_annotation() -> String {
    DEFAULT_OPT_OUT_ANNOTATION.to_string()
}
fn default_reload_interval_seconds() -> u64 {
    2
}

/// One problem in the configuration, at a field path such as `secrets[1].registries[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config is not valid:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<FieldError>),
}

/// The source of a replicated secret, with its namespace resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A configured secret, ready for the hot path.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    pub name: String,
    /// Patterns from config; empty when they come from the source's `auths`.
    pub patterns: Vec<Pattern>,
    pub source: Option<SourceRef>,
    pub namespace_selector: Option<Selector>,
    pub exclude_namespaces: Vec<String>,
    pub overwrite_existing: bool,
}

impl SecretSpec {
    /// The patterns come from the source secret rather than from config.
    pub fn patterns_from_source(&self) -> bool {
        self.patterns.is_empty() && self.source.is_some()
    }

    /// Whether this entry applies to a namespace with these labels (its own selector and
    /// exclusions only; the webhook's opt-in is the apiserver's and the replicator's job).
    pub fn applies_to(
        &self,
        namespace: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        !self.exclude_namespaces.iter().any(|n| n == namespace)
            && self
                .namespace_selector
                .as_ref()
                .is_none_or(|s| s.matches(labels))
    }
}

/// The validated configuration, shared read-only.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub opt_out_annotation: String,
    pub limits: Limits,
    pub namespace: String,
    pub namespace_selector: Selector,
    pub exclude_namespaces: Vec<String>,
    pub leader_election: LeaderElectionConfig,
    pub certificates: Option<CertificatesConfig>,
    pub secrets: Vec<SecretSpec>,
    /// The patterns written in config; the replicator adds those read from sources.
    pub keyring: Keyring,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks everything that can be checked without touching the file system.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let mut errors = Vec::new();
        let mut error = |path: String, reason: String| errors.push(FieldError { path, reason });

        let listen = parse_addr(&self.listen).map_err(|r| error("listen".into(), r));
        let metrics_listen =
            parse_addr(&self.metrics_listen).map_err(|r| error("metricsListen".into(), r));
        if self.opt_out_annotation.is_empty() {
            error("optOutAnnotation".into(), "must not be empty".into());
        }
        if self.limits.max_body_bytes == 0 {
            error(
                "limits.maxBodyBytes".into(),
                "must be greater than 0".into(),
            );
        }
        if self.limits.max_buffered_body_bytes < self.limits.max_body_bytes {
            error(
                "limits.maxBufferedBodyBytes".into(),
                format!(
                    "must be at least limits.maxBodyBytes ({}), or a body of that size is never read",
                    self.limits.max_body_bytes
                ),
            );
        }
        if self.limits.max_connections == 0 {
            error(
                "limits.maxConnections".into(),
                "must be greater than 0".into(),
            );
        }
        if let Some(tls) = &self.tls
            && tls.reload_interval_seconds == 0
        {
            error(
                "tls.reloadIntervalSeconds".into(),
                "must be at least 1".into(),
            );
        }

        let namespace = self
            .namespace
            .clone()
            .or_else(|| {
                std::env::var("PULLSECRET_INJECTOR_POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or_else(|| "default".to_string());
        let namespace_selector = match self.namespace_selector.clone().map(Selector::try_from) {
            None => std::iter::once((
                DEFAULT_OPT_IN_LABEL.to_string(),
                DEFAULT_OPT_IN_VALUE.to_string(),
            ))
            .collect(),
            Some(Ok(selector)) => selector,
            Some(Err(e)) => {
                error("namespaceSelector".into(), e.to_string());
                Selector::default()
            }
        };
        if let Some(certs) = &self.certificates {
            if self.tls.is_some() {
                error(
                    "certificates".into(),
                    "set either tls (certificate files) or certificates (self-managed), not both"
                        .into(),
                );
            }
            for (field, value) in [
                ("secretName", &certs.secret_name),
                (
                    "webhookConfigurationName",
                    &certs.webhook_configuration_name,
                ),
                ("serviceName", &certs.service_name),
            ] {
                if let Err(reason) = check_dns1123_subdomain(value) {
                    error(format!("certificates.{field}"), reason);
                }
            }
            if certs.serving_validity_seconds < 60
                || certs.ca_validity_seconds < 2 * certs.serving_validity_seconds
            {
                error(
                    "certificates.servingValiditySeconds".into(),
                    "must be at least 60 and at most half of caValiditySeconds".into(),
                );
            }
            if certs.check_interval_seconds == 0
                || certs.check_interval_seconds * 3 > certs.serving_validity_seconds
            {
                error(
                    "certificates.checkIntervalSeconds".into(),
                    "must be at least 1 and at most a third of servingValiditySeconds".into(),
                );
            }
        }
        if self.leader_election.lease_duration_seconds < 2 {
            error(
                "leaderElection.leaseDurationSeconds".into(),
                "must be at least 2".into(),
            );
        }
        let mut secrets = Vec::with_capacity(self.secrets.len());
        for (i, secret) in self.secrets.iter().enumerate() {
            if let Err(reason) = check_dns1123_subdomain(&secret.name) {
                error(format!("secrets[{i}].name"), reason);
            } else if let Some(first) = self.secrets[..i].iter().position(|s| s.name == secret.name)
            {
                error(
                    format!("secrets[{i}].name"),
                    format!("duplicate name {:?}, also at secrets[{first}]", secret.name),
                );
            }
            if secret.registries.is_empty() && secret.source.is_none() {
                error(
                    format!("secrets[{i}].registries"),
                    "must list at least one registry pattern (or name a source whose auths keys are the patterns)".into(),
                );
            }
            let source = secret.source.as_ref().map(|s| SourceRef {
                namespace: s.namespace.clone().unwrap_or_else(|| namespace.clone()),
                name: s.name.clone(),
            });
            if let Some(source) = &source
                && let Err(reason) = check_dns1123_subdomain(&source.name)
            {
                error(format!("secrets[{i}].source.name"), reason);
            }
            let selector = match secret.namespace_selector.clone().map(Selector::try_from) {
                None => None,
                Some(Ok(selector)) => Some(selector),
                Some(Err(e)) => {
                    error(format!("secrets[{i}].namespaceSelector"), e.to_string());
                    None
                }
            };
            let mut patterns = Vec::with_capacity(secret.registries.len());
            for (j, raw) in secret.registries.iter().enumerate() {
                match Pattern::parse(raw) {
                    Ok(pattern) => patterns.push(pattern),
                    Err(e) => error(
                        format!("secrets[{i}].registries[{j}]"),
                        format!("{raw:?}: {e}"),
                    ),
                }
            }
            secrets.push(SecretSpec {
                name: secret.name.clone(),
                patterns,
                source,
                namespace_selector: selector,
                exclude_namespaces: secret.exclude_namespaces.clone(),
                overwrite_existing: secret.overwrite_existing,
            });
        }

        match (listen, metrics_listen) {
            (Ok(listen), Ok(metrics_listen)) if errors.is_empty() => {
                let keyring = Keyring::new(
                    secrets
                        .iter()
                        .enumerate()
                        .flat_map(|(i, s)| s.patterns.iter().cloned().map(move |p| (i, p))),
                );
                Ok(Settings {
                    listen,
                    metrics_listen,
                    tls: self.tls,
                    opt_out_annotation: self.opt_out_annotation,
                    limits: self.limits,
                    namespace,
                    namespace_selector,
                    exclude_namespaces: self.exclude_namespaces,
                    leader_election: self.leader_election,
                    certificates: self.certificates,
                    secrets,
                    keyring,
                })
            }
            _ => Err(ConfigError::Invalid(errors)),
        }
    }
}

impl Settings {
    /// Cluster access is needed only when an entry names a source or a namespace selector;
    /// otherwise `serve` runs standalone.
    pub fn needs_cluster(&self) -> bool {
        self.certificates.is_some()
            || self
                .secrets
                .iter()
                .any(|s| s.source.is_some() || s.namespace_selector.is_some())
    }

    /// Whether replicated copies belong in this namespace for `secret`.
    pub fn replicates_into(
        &self,
        secret: &SecretSpec,
        namespace: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        secret
            .source
            .as_ref()
            .is_some_and(|source| source.namespace != namespace || source.name != secret.name)
            && !self.exclude_namespaces.iter().any(|n| n == namespace)
            && self.namespace_selector.matches(labels)
            && secret.applies_to(namespace, labels)
    }

    /// What `serve` needs beyond a valid config: certificate files that exist, unless the
    /// certificates are self-managed (then `None`).
    pub fn check_serving_files(&self) -> Result<Option<&TlsConfig>, ConfigError> {
        let Some(tls) = &self.tls else {
            if self.certificates.is_some() {
                return Ok(None);
            }
            return Err(ConfigError::Invalid(vec![FieldError {
                path: "tls".into(),
                reason: "serve needs tls.certFile and tls.keyFile (or certificates.mode: self)"
                    .into(),
            }]));
        };
        let missing: Vec<FieldError> = [
            ("tls.certFile", &tls.cert_file),
            ("tls.keyFile", &tls.key_file),
        ]
        .into_iter()
        .filter(|(_, path)| !path.is_file())
        .map(|(field, path)| FieldError {
            path: field.into(),
            reason: format!("file {} does not exist", path.display()),
        })
        .collect();
        if missing.is_empty() {
            Ok(Some(tls))
        } else {
            Err(ConfigError::Invalid(missing))
        }
    }

    pub fn reload_interval(&self) -> Duration {
        Duration::from_secs(self.tls.as_ref().map_or(2, |t| t.reload_interval_seconds))
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not an IP:port address (for example [::]:8443 or 127.0.0.1:8443)")
    })
}

/// Kubernetes' IsDNS1123Subdomain, which Secret names must satisfy.
fn check_dns1123_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    let label_ok = |label: &str| {
        let b = label.as_bytes();
        let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty()
            && b.first().is_some_and(edge)
            && b.last().is_some_and(edge)
            && b.iter().all(|c| edge(c) || *c == b'-')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid Secret name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> Result<Settings, ConfigError> {
        Config::from_yaml(yaml)
            .map_err(|m| ConfigError::Parse {
                path: "test".into(),
                message: m,
            })?
            .validate()
    }

    #[test]
    fn defaults_apply() {
        let s = settings("secrets: [{name: a, registries: [ghcr.io]}]").unwrap();
        assert_eq!(s.listen.to_string(), "[::]:8443");
        assert_eq!(s.metrics_listen.to_string(), "[::]:8080");
        assert_eq!(s.opt_out_annotation, DEFAULT_OPT_OUT_ANNOTATION);
        assert_eq!(s.limits.max_body_bytes, 7 * 1024 * 1024);
        assert_eq!(s.limits.max_buffered_body_bytes, 32 * 1024 * 1024);
        assert_eq!(s.keyring.len(), 1);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_yaml("secrets: []\nlisten: 0.0.0.0:1\nlisen: x\n").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
        let err = Config::from_yaml("secrets: [{name: a, registry: [x]}]").unwrap_err();
        assert!(err.contains("registry"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let err = settings(
            r#"
listen: "not an address"
secrets:
  - name: Bad_Name
    registries: ["ghcr .io"]
  - name: ok
    registries: []
  - name: ok
    registries: ["reg[istry"]
"#,
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "listen: \"not an address\" is not an IP:port address",
            "secrets[0].name: \"Bad_Name\" is not a valid Secret name",
            "secrets[0].registries[0]: \"ghcr .io\"",
            "secrets[1].registries: must list at least one registry pattern",
            "secrets[2].name: duplicate name \"ok\", also at secrets[1]",
            "secrets[2].registries[0]: \"reg[istry\"",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn the_body_budget_holds_at_least_one_body_of_the_maximum_size() {
        let err = settings("limits: {maxBodyBytes: 1000, maxBufferedBodyBytes: 999}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "limits.maxBufferedBodyBytes: must be at least limits.maxBodyBytes (1000)"
            ),
            "{err}"
        );
        settings("limits: {maxBodyBytes: 1000, maxBufferedBodyBytes: 1000}").unwrap();
    }

    #[test]
    fn empty_secret_name_is_refused() {
        let err = settings("secrets: [{name: '', registries: [x.io]}]").unwrap_err();
        assert!(
            err.to_string()
                .contains("secrets[0].name: must not be empty")
        );
    }

    #[test]
    fn serving_needs_existing_cert_files() {
        let s = settings("tls: {certFile: /nonexistent/tls.crt, keyFile: /nonexistent/tls.key}")
            .unwrap();
        let err = s.check_serving_files().unwrap_err().to_string();
        assert!(
            err.contains("tls.certFile: file /nonexistent/tls.crt does not exist"),
            "{err}"
        );
        assert!(
            err.contains("tls.keyFile: file /nonexistent/tls.key does not exist"),
            "{err}"
        );
        let none = settings("secrets: []").unwrap();
        assert!(
            none.check_serving_files()
                .unwrap_err()
                .to_string()
                .contains("tls:")
        );
    }

    #[test]
    fn a_source_may_stand_in_for_registries_and_defaults_to_our_namespace() {
        let s = settings(
            "namespace: infra\nsecrets:\n  - name: regcred\n    source: {name: regcred-source}\n  - name: other\n    source: {namespace: vault, name: other}\n    registries: [ghcr.io]\n",
        )
        .unwrap();
        assert!(s.needs_cluster());
        assert!(s.secrets[0].patterns_from_source());
        assert_eq!(
            s.secrets[0].source.as_ref().unwrap().to_string(),
            "infra/regcred-source"
        );
        assert!(!s.secrets[1].patterns_from_source());
        assert_eq!(
            s.secrets[1].source.as_ref().unwrap().to_string(),
            "vault/other"
        );
        assert!(
            !settings("secrets: [{name: a, registries: [x.io]}]")
                .unwrap()
                .needs_cluster()
        );
    }

    #[test]
    fn replication_follows_the_opt_in_selector_the_entry_selector_and_exclusions() {
        let s = settings(
            r#"
namespace: infra
namespaceSelector: {matchLabels: {team: "yes"}}
excludeNamespaces: [legacy]
secrets:
  - name: regcred
    source: {name: src}
    namespaceSelector:
      matchExpressions: [{key: tier, operator: In, values: [prod]}]
    excludeNamespaces: [prod-old]
  - name: src
    source: {name: src}
"#,
        )
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let entry = &s.secrets[0];
        assert!(s.replicates_into(entry, "app", &labels(&[("team", "yes"), ("tier", "prod")])));
        assert!(
            !s.replicates_into(entry, "app", &labels(&[("tier", "prod")])),
            "not opted in"
        );
        assert!(
            !s.replicates_into(entry, "app", &labels(&[("team", "yes"), ("tier", "dev")])),
            "entry selector"
        );
        assert!(
            !s.replicates_into(
                entry,
                "legacy",
                &labels(&[("team", "yes"), ("tier", "prod")])
            ),
            "global exclusion"
        );
        assert!(
            !s.replicates_into(
                entry,
                "prod-old",
                &labels(&[("team", "yes"), ("tier", "prod")])
            ),
            "entry exclusion"
        );
        // A copy never replaces its own source.
        assert!(!s.replicates_into(&s.secrets[1], "infra", &labels(&[("team", "yes")])));
    }

    #[test]
    fn the_default_opt_in_selector_is_the_charts_label() {
        let s = settings("secrets: [{name: a, source: {name: b}}]").unwrap();
        let on = std::collections::BTreeMap::from([(
            DEFAULT_OPT_IN_LABEL.to_string(),
            DEFAULT_OPT_IN_VALUE.to_string(),
        )]);
        assert!(s.replicates_into(&s.secrets[0], "app", &on));
        assert!(!s.replicates_into(&s.secrets[0], "app", &Default::default()));
    }

    #[test]
    fn an_entry_needs_registries_or_a_source_and_selectors_must_parse() {
        let err = settings("secrets: [{name: a}]").unwrap_err().to_string();
        assert!(
            err.contains("secrets[0].registries: must list at least one registry pattern"),
            "{err}"
        );
        let err = settings(
            "secrets: [{name: a, source: {name: b}, namespaceSelector: {matchExpressions: [{key: k, operator: Bogus}]}}]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("secrets[0].namespaceSelector"), "{err}");
    }
}
