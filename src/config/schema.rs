//! The configuration file as users write it: one YAML document, camelCase keys, unknown keys
//! refused by name, defaults filled in. `validate` turns it into `Settings`.

use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;

use super::ConfigError;
use super::providers::{CredentialProvidersConfig, ProviderConfig};

pub const DEFAULT_OPT_OUT_ANNOTATION: &str = "pullsecret-injector.io/inject";
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
    /// `main` sets it from $PULLSECRET_INJECTOR_POD_NAMESPACE when the file leaves it out; else `default`.
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
    /// How fast the leader's replication may call the apiserver.
    #[serde(default)]
    pub replication_rate_limit: ApiRate,
    /// Certificates the injector manages itself (the chart's `certs.mode: self`), instead
    /// of `tls` files.
    #[serde(default)]
    pub certificates: Option<CertificatesConfig>,
    /// Kubelet credential provider plugins, for entries with a `provider`.
    #[serde(default)]
    pub credential_providers: Option<CredentialProvidersConfig>,
    #[serde(default)]
    pub secrets: Vec<SecretConfig>,
    /// Names of entries taken out of `secrets` whose copies this installation still deletes:
    /// with RBAC by name, the injector cannot find the copies of a name it no longer knows.
    #[serde(default)]
    pub retired_secrets: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificatesConfig {
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

/// A client-side rate limit, as client-go's: `qps` requests a second on average, up to
/// `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ApiRate {
    pub qps: f64,
    pub burst: u32,
}

/// README, "Replication at scale": why these numbers.
pub const DEFAULT_REPLICATION_QPS: f64 = 500.0;
pub const DEFAULT_REPLICATION_BURST: u32 = 1000;

impl Default for ApiRate {
    fn default() -> Self {
        Self {
            qps: DEFAULT_REPLICATION_QPS,
            burst: DEFAULT_REPLICATION_BURST,
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
    /// A credential provider plugin whose credentials are kept in a Secret named like the
    /// entry in `namespace`, which is then copied as a `source` is.
    #[serde(default)]
    pub provider: Option<ProviderConfig>,
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
}
