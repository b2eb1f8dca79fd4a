//! Reading a `kubernetes.io/dockerconfigjson` Secret: its registry keys and a stable hash of
//! its data. Pure functions; nothing from the data is ever logged.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use serde::Deserialize;
use thiserror::Error;

use crate::matching::Pattern;

pub const DOCKERCONFIGJSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
pub const DOCKERCONFIGJSON_KEY: &str = ".dockerconfigjson";

#[derive(Debug, Error, PartialEq)]
pub enum DockerConfigError {
    #[error("type is {0:?}, expected {DOCKERCONFIGJSON_TYPE:?}")]
    WrongType(String),
    #[error("has no {DOCKERCONFIGJSON_KEY:?} key")]
    MissingKey,
    #[error("{DOCKERCONFIGJSON_KEY:?} is not a JSON object with \"auths\": {0}")]
    NotDockerConfig(String),
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, serde::de::IgnoredAny>,
}

/// The patterns of a source Secret: its `auths` keys, normalized as the kubelet does. A key
/// that does not parse is skipped, as the kubelet skips it; it is returned to be reported.
pub fn auth_patterns(
    secret_type: Option<&str>,
    data: Option<&BTreeMap<String, ByteString>>,
) -> Result<(Vec<Pattern>, Vec<String>), DockerConfigError> {
    let secret_type = secret_type.unwrap_or_default();
    if secret_type != DOCKERCONFIGJSON_TYPE {
        return Err(DockerConfigError::WrongType(secret_type.to_string()));
    }
    let bytes = data
        .and_then(|d| d.get(DOCKERCONFIGJSON_KEY))
        .ok_or(DockerConfigError::MissingKey)?;
    // serde_json's messages can quote the offending value, a credential here: keep only
    // the kind of error and its position.
    let config: DockerConfig = serde_json::from_slice(&bytes.0).map_err(|e| {
        DockerConfigError::NotDockerConfig(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let mut patterns = Vec::new();
    let mut skipped = Vec::new();
    for key in config.auths.keys() {
        match Pattern::parse(key) {
            Ok(p) => patterns.push(p),
            Err(_) => skipped.push(key.clone()),
        }
    }
    Ok((patterns, skipped))
}

/// A stable hash of a Secret's type and data: copies carry it to tell whether they are
/// current without comparing (or logging) the data itself.
pub fn data_hash(secret_type: Option<&str>, data: Option<&BTreeMap<String, ByteString>>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(secret_type.unwrap_or_default().as_bytes());
    for (key, value) in data.into_iter().flatten() {
        ctx.update(&(key.len() as u64).to_be_bytes());
        ctx.update(key.as_bytes());
        ctx.update(&(value.0.len() as u64).to_be_bytes());
        ctx.update(&value.0);
    }
    let digest = ctx.finish();
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(json: &str) -> BTreeMap<String, ByteString> {
        BTreeMap::from([(
            DOCKERCONFIGJSON_KEY.to_string(),
            ByteString(json.as_bytes().to_vec()),
        )])
    }

    #[test]
    fn auths_keys_become_patterns_as_the_kubelet_normalizes_them() {
        let d = data(
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "eDp5"}, "ghcr.io/acme/": {}, "bad key": {}}}"#,
        );
        let (patterns, skipped) = auth_patterns(Some(DOCKERCONFIGJSON_TYPE), Some(&d)).unwrap();
        let keys: Vec<&str> = patterns.iter().map(Pattern::key).collect();
        assert_eq!(keys, ["ghcr.io/acme/", "index.docker.io"]);
        assert_eq!(skipped, ["bad key"]);
    }

    #[test]
    fn wrong_type_missing_key_and_bad_json_are_errors_that_do_not_echo_the_data() {
        assert_eq!(
            auth_patterns(Some("Opaque"), Some(&data("{}"))).unwrap_err(),
            DockerConfigError::WrongType("Opaque".into())
        );
        assert_eq!(
            auth_patterns(Some(DOCKERCONFIGJSON_TYPE), None).unwrap_err(),
            DockerConfigError::MissingKey
        );
        let err = auth_patterns(
            Some(DOCKERCONFIGJSON_TYPE),
            Some(&data("{\"auths\": \"hunter2\"}")),
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn hash_changes_with_the_data_and_only_with_it() {
        let a = data(r#"{"auths": {"x.io": {"auth": "a"}}}"#);
        let b = data(r#"{"auths": {"x.io": {"auth": "b"}}}"#);
        let t = Some(DOCKERCONFIGJSON_TYPE);
        assert_eq!(data_hash(t, Some(&a)), data_hash(t, Some(&a.clone())));
        assert_ne!(data_hash(t, Some(&a)), data_hash(t, Some(&b)));
        assert!(data_hash(t, Some(&a)).starts_with("sha256:"));
    }
}
