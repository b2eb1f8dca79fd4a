//! The configuration: `schema` (the file as users write it), `validate` (into `Settings`,
//! as the hot path wants it, every problem reported with its field path) and `selection`
//! (which namespaces an entry serves).

pub mod providers;
pub mod schema;
pub mod selection;
pub mod validate;

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

pub use providers::{CredentialProvidersConfig, ProviderConfig};
pub use schema::{
    ApiRate, CertificatesConfig, Config, LeaderElectionConfig, Limits, SecretConfig, SourceConfig,
    TlsConfig,
};
pub use selection::{DEFAULT_OPT_IN_LABEL, DEFAULT_OPT_IN_VALUE};
pub use validate::{SecretSpec, ServingCertificate, Settings, SourceRef};

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
