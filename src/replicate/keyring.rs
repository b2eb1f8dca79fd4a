//! The keyring in force: patterns written in config, plus the `auths` keys of the sources of
//! entries that leave `registries` out.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

use super::dockerconfig;
use crate::config::{Settings, SourceRef};
use crate::matching::Keyring;

/// Why a source contributed no patterns, for logs and the `match` report; never its data.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceProblem {
    Missing {
        secret: String,
        source: SourceRef,
    },
    Unusable {
        secret: String,
        source: SourceRef,
        reason: String,
    },
    SkippedKeys {
        secret: String,
        source: SourceRef,
        keys: Vec<String>,
    },
}

impl std::fmt::Display for SourceProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing { secret, source } => write!(
                f,
                "secret {secret}: source {source} not found; it matches nothing"
            ),
            Self::Unusable {
                secret,
                source,
                reason,
            } => write!(f, "secret {secret}: source {source} {reason}"),
            Self::SkippedKeys {
                secret,
                source,
                keys,
            } => {
                let keys: Vec<String> = keys.iter().map(|k| redact_user_info(k)).collect();
                write!(
                    f,
                    "secret {secret}: source {source}: auths keys {keys:?} are ignored: the kubelet cannot read them as registry URLs"
                )
            }
        }
    }
}

/// An `auths` key fit to be shown: a key with `@` may carry `user:password@` (a URL pasted
/// with its credentials), so everything between the scheme and the last `@` is replaced.
/// Registry keys have no other use for `@`.
pub fn redact_user_info(key: &str) -> String {
    let Some(at) = key.rfind('@') else {
        return key.to_string();
    };
    let start = key.find("://").map_or(0, |i| i + 3).min(at);
    format!("{}<redacted>{}", &key[..start], &key[at..])
}

/// Builds the keyring from config and whatever `source` finds for each source reference.
pub fn build(
    settings: &Settings,
    source: impl Fn(&SourceRef) -> Option<Arc<Secret>>,
) -> (Keyring, Vec<SourceProblem>) {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (i, spec) in settings.secrets.iter().enumerate() {
        if !spec.patterns_from_source() {
            entries.extend(spec.patterns.iter().cloned().map(|p| (i, p)));
            continue;
        }
        let Some(source_ref) = &spec.source else {
            continue;
        };
        let Some(secret) = source(source_ref) else {
            problems.push(SourceProblem::Missing {
                secret: spec.name.clone(),
                source: source_ref.clone(),
            });
            continue;
        };
        match dockerconfig::auth_patterns(secret.type_.as_deref(), secret.data.as_ref()) {
            Ok((patterns, skipped)) => {
                if !skipped.is_empty() {
                    problems.push(SourceProblem::SkippedKeys {
                        secret: spec.name.clone(),
                        source: source_ref.clone(),
                        keys: skipped,
                    });
                }
                entries.extend(patterns.into_iter().map(|p| (i, p)));
            }
            Err(error) => problems.push(SourceProblem::Unusable {
                secret: spec.name.clone(),
                source: source_ref.clone(),
                reason: error.to_string(),
            }),
        }
    }
    (Keyring::new(entries), problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_keys_never_show_user_info() {
        for (key, shown) in [
            (
                "https://robot:s3cret@registry.example.com",
                "https://<redacted>@registry.example.com",
            ),
            (
                "robot:s3/cr@et@registry.example.com/v2/",
                "<redacted>@registry.example.com/v2/",
            ),
            ("http://@host", "http://<redacted>@host"),
            ("registry example.com", "registry example.com"),
        ] {
            assert_eq!(redact_user_info(key), shown);
        }
        let problem = SourceProblem::SkippedKeys {
            secret: "regcred".into(),
            source: SourceRef {
                namespace: "ns".into(),
                name: "src".into(),
            },
            keys: vec!["https://robot:s3cret@registry.example.com".into()],
        };
        assert!(!problem.to_string().contains("s3cret"), "{problem}");
    }
}
