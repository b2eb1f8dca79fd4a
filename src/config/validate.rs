//! The validated configuration (`Settings`, as the hot path wants it: patterns parsed,
//! addresses resolved, sources' namespaces filled in), checked once at start-up with every
//! problem reported at its field path.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use kube::core::Selector;

use super::providers::{self, CredentialProvidersConfig, ProviderConfig};
use super::schema::{ApiRate, CertificatesConfig, Config, LeaderElectionConfig, Limits, TlsConfig};
use super::selection::{DEFAULT_OPT_IN_LABEL, DEFAULT_OPT_IN_VALUE};
use super::{ConfigError, FieldError};
use crate::matching::{Keyring, Pattern};

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
    /// For an entry with a `provider`, the Secret its credentials are kept in.
    pub source: Option<SourceRef>,
    pub provider: Option<ProviderConfig>,
    pub namespace_selector: Option<Selector>,
    pub exclude_namespaces: Vec<String>,
    pub overwrite_existing: bool,
}

impl SecretSpec {
    /// The patterns come from the source secret rather than from config.
    pub fn patterns_from_source(&self) -> bool {
        self.patterns.is_empty() && self.source.is_some()
    }
}

/// Where `serve` takes its certificate from (see [`Settings::check_serving_files`]).
#[derive(Debug, Clone, Copy)]
pub enum ServingCertificate<'a> {
    Files(&'a TlsConfig),
    SelfManaged(&'a CertificatesConfig),
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
    pub replication_rate_limit: ApiRate,
    pub certificates: Option<CertificatesConfig>,
    pub credential_providers: Option<CredentialProvidersConfig>,
    pub secrets: Vec<SecretSpec>,
    /// Copies to delete wherever this installation made them (`retiredSecrets`).
    pub retired_secrets: Vec<String>,
    /// The patterns written in config; the replicator adds those read from sources.
    pub keyring: Keyring,
}

impl Config {
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
        let rate = self.replication_rate_limit;
        if !(rate.qps.is_finite() && rate.qps > 0.0) {
            error(
                "replicationRateLimit.qps".into(),
                "must be a number greater than 0".into(),
            );
        }
        if rate.burst == 0 {
            error(
                "replicationRateLimit.burst".into(),
                "must be at least 1".into(),
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
            if secret.registries.is_empty() && secret.source.is_none() && secret.provider.is_none()
            {
                error(
                    format!("secrets[{i}].registries"),
                    "must list at least one registry pattern (or name a source or provider whose auths keys are the patterns)".into(),
                );
            }
            if let Some(provider) = &secret.provider {
                if secret.source.is_some() {
                    error(
                        format!("secrets[{i}].provider"),
                        "set either source (a Secret) or provider (a credential provider plugin), not both".into(),
                    );
                }
                providers::check_entry(
                    &format!("secrets[{i}]"),
                    provider,
                    self.credential_providers.is_some(),
                    &mut error,
                );
            }
            // A provider's credentials are kept in a Secret of the entry's name in our
            // namespace: its source, to every replica and to replication.
            let source = match (&secret.source, &secret.provider) {
                (Some(s), _) => Some(SourceRef {
                    namespace: s.namespace.clone().unwrap_or_else(|| namespace.clone()),
                    name: s.name.clone(),
                }),
                (None, Some(_)) => Some(SourceRef {
                    namespace: namespace.clone(),
                    name: secret.name.clone(),
                }),
                (None, None) => None,
            };
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
                provider: secret.provider.clone(),
                namespace_selector: selector,
                exclude_namespaces: secret.exclude_namespaces.clone(),
                overwrite_existing: secret.overwrite_existing,
            });
        }

        if let Some(credential_providers) = &self.credential_providers {
            providers::check_top_level(credential_providers, &mut error);
        }
        for (i, name) in self.retired_secrets.iter().enumerate() {
            if let Err(reason) = check_dns1123_subdomain(name) {
                error(format!("retiredSecrets[{i}]"), reason);
            } else if let Some(live) = self.secrets.iter().position(|s| &s.name == name) {
                error(
                    format!("retiredSecrets[{i}]"),
                    format!("{name:?} is in use at secrets[{live}]; a retired name must not be"),
                );
            }
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
                    replication_rate_limit: self.replication_rate_limit,
                    certificates: self.certificates,
                    credential_providers: self.credential_providers,
                    secrets,
                    retired_secrets: self.retired_secrets,
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
            || !self.retired_secrets.is_empty()
            || self
                .secrets
                .iter()
                .any(|s| s.source.is_some() || s.namespace_selector.is_some())
    }

    /// The names the injector's copies may have: entries with a source, and retired ones.
    /// Each is watched on its own (RBAC grants Secrets by name only).
    pub fn copy_names(&self) -> std::collections::BTreeSet<&str> {
        self.secrets
            .iter()
            .filter(|s| s.source.is_some())
            .map(|s| s.name.as_str())
            .chain(self.retired_secrets.iter().map(String::as_str))
            .collect()
    }

    /// What `serve` needs beyond a valid config: a certificate to serve, from files that
    /// exist or self-managed in the cluster.
    pub fn check_serving_files(&self) -> Result<ServingCertificate<'_>, ConfigError> {
        let Some(tls) = &self.tls else {
            if let Some(certificates) = &self.certificates {
                return Ok(ServingCertificate::SelfManaged(certificates));
            }
            return Err(ConfigError::Invalid(vec![FieldError {
                path: "tls".into(),
                reason: "serve needs tls.certFile and tls.keyFile (or a certificates block)".into(),
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
            Ok(ServingCertificate::Files(tls))
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
pub(super) mod tests {
    use super::*;
    use crate::config::schema::DEFAULT_OPT_OUT_ANNOTATION;

    /// The settings of a config file's text, as `serve` would validate them.
    pub(in crate::config) fn settings(yaml: &str) -> Result<Settings, ConfigError> {
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
    fn the_replication_rate_limit_is_positive() {
        let s = settings("secrets: []").unwrap();
        assert_eq!(
            (s.replication_rate_limit.qps, s.replication_rate_limit.burst),
            (
                super::super::schema::DEFAULT_REPLICATION_QPS,
                super::super::schema::DEFAULT_REPLICATION_BURST
            )
        );
        let err = settings("replicationRateLimit: {qps: 0, burst: 0}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("replicationRateLimit.qps: must be a number greater than 0"),
            "{err}"
        );
        assert!(
            err.contains("replicationRateLimit.burst: must be at least 1"),
            "{err}"
        );
        let s = settings("replicationRateLimit: {qps: 2.5}").unwrap();
        assert_eq!(s.replication_rate_limit.qps, 2.5);
    }

    #[test]
    fn retired_names_are_secret_names_not_in_use() {
        let err = settings(
            "secrets: [{name: live, source: {name: s}}]\nretiredSecrets: [old, Bad_Name, live]",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("retiredSecrets[1]: \"Bad_Name\" is not a valid Secret name"),
            "{err}"
        );
        assert!(
            err.contains("retiredSecrets[2]: \"live\" is in use at secrets[0]"),
            "{err}"
        );
        let s = settings("namespace: infra\nsecrets: [{name: live, source: {name: s}}, {name: p, registries: [x.io]}]\nretiredSecrets: [old]")
            .unwrap();
        assert_eq!(
            s.copy_names().into_iter().collect::<Vec<_>>(),
            ["live", "old"]
        );
        assert!(settings("retiredSecrets: [old]").unwrap().needs_cluster());
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
