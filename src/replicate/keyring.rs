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
            } => write!(
                f,
                "secret {secret}: source {source}: auths keys {keys:?} are not registry patterns and were skipped, as the kubelet skips them"
            ),
        }
    }
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
