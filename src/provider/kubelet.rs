//! The kubelet's side of credential provider plugins, as data: the `CredentialProviderConfig`
//! file (kubelet.config.k8s.io), the `CredentialProviderRequest` a plugin reads on stdin and
//! the `CredentialProviderResponse` it writes on stdout (credentialprovider.kubelet.k8s.io),
//! and Go's duration strings that both use. Pure functions: nothing here runs a plugin, and
//! nothing a plugin returns is ever quoted in an error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::FieldError;
use crate::matching::Pattern;

pub const REQUEST_KIND: &str = "CredentialProviderRequest";
pub const RESPONSE_KIND: &str = "CredentialProviderResponse";
pub const CONFIG_KIND: &str = "CredentialProviderConfig";
/// The versions of the config file the kubelet reads.
pub const CONFIG_API_VERSIONS: [&str; 3] = [
    "kubelet.config.k8s.io/v1",
    "kubelet.config.k8s.io/v1beta1",
    "kubelet.config.k8s.io/v1alpha1",
];
/// The versions of the plugin protocol: the same fields in each, only the name changes.
pub const PLUGIN_API_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];
const CACHE_KEY_TYPES: [&str; 3] = ["Image", "Registry", "Global"];
/// How much of a value a plugin returned may be shown in an error (apiVersion, kind,
/// cacheKeyType): enough to recognise a typo, too little to carry a credential.
const SHOWN_CHARS: usize = 64;

/// The config file as the kubelet reads it (`--image-credential-provider-config`). Fields the
/// kubelet requires are optional here, so that a missing one is reported with its path.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    #[serde(default)]
    pub providers: Vec<ProviderEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderEntry {
    pub name: Option<String>,
    #[serde(default)]
    pub match_images: Vec<String>,
    pub default_cache_duration: Option<String>,
    pub api_version: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Service account tokens for the plugin (kubelet 1.33+): they are minted for the pod
    /// being pulled, and the injector pulls for no pod.
    #[serde(default)]
    pub token_attributes: Option<serde_json::Value>,
}

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// Values may be credentials (AWS_SECRET_ACCESS_KEY): only names are shown.
impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=<{} bytes>", self.name, self.value.len())
    }
}

/// A provider of the file, validated: what running its plugin needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub name: String,
    pub match_images: Vec<Pattern>,
    pub default_cache_duration: Duration,
    pub api_version: String,
    pub args: Vec<String>,
    /// Set over the injector's own environment, as the kubelet sets it over its own.
    pub env: Vec<EnvVar>,
    pub token_attributes: bool,
}

impl Provider {
    /// Whether the kubelet would call this plugin for `image` (its `matchImages`).
    pub fn serves(&self, image: &crate::image::ImageName) -> bool {
        self.match_images.iter().any(|p| p.matches_directly(image))
    }
}

impl ConfigFile {
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// The kubelet's checks of the file, every problem with its path (`providers[1].name`);
    /// the providers by name when there is none.
    pub fn validate(self) -> Result<BTreeMap<String, Provider>, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut error = |path: String, reason: String| errors.push(FieldError { path, reason });
        match self.api_version.as_deref() {
            None => error("apiVersion".into(), "is required".into()),
            Some(v) if !CONFIG_API_VERSIONS.contains(&v) => error(
                "apiVersion".into(),
                format!("{v:?} is not one of {CONFIG_API_VERSIONS:?}"),
            ),
            Some(_) => {}
        }
        if self.kind.as_deref() != Some(CONFIG_KIND) {
            error(
                "kind".into(),
                format!(
                    "must be {CONFIG_KIND:?}, not {:?}",
                    self.kind.unwrap_or_default()
                ),
            );
        }
        if self.providers.is_empty() {
            error("providers".into(), "must list at least one provider".into());
        }
        let mut providers = BTreeMap::new();
        for (i, entry) in self.providers.into_iter().enumerate() {
            let at = |field: &str| format!("providers[{i}].{field}");
            let name = entry.name.unwrap_or_default();
            if let Err(reason) = check_plugin_name(&name) {
                error(at("name"), reason);
            } else if providers.contains_key(&name) {
                error(at("name"), format!("duplicate provider name {name:?}"));
            }
            if entry.match_images.is_empty() {
                error(
                    at("matchImages"),
                    "must list at least one image pattern".into(),
                );
            }
            let mut match_images = Vec::with_capacity(entry.match_images.len());
            for (j, raw) in entry.match_images.iter().enumerate() {
                match Pattern::parse(raw) {
                    Ok(pattern) => match_images.push(pattern),
                    Err(e) => error(at(&format!("matchImages[{j}]")), format!("{raw:?}: {e}")),
                }
            }
            let default_cache_duration = match entry.default_cache_duration.as_deref() {
                None => {
                    error(at("defaultCacheDuration"), "is required".into());
                    Duration::ZERO
                }
                Some(text) => parse_go_duration(text).unwrap_or_else(|reason| {
                    error(at("defaultCacheDuration"), format!("{text:?}: {reason}"));
                    Duration::ZERO
                }),
            };
            let api_version = entry.api_version.unwrap_or_default();
            if !PLUGIN_API_VERSIONS.contains(&api_version.as_str()) {
                error(
                    at("apiVersion"),
                    format!("{api_version:?} is not one of {PLUGIN_API_VERSIONS:?}"),
                );
            }
            let mut env_names = BTreeSet::new();
            for (j, var) in entry.env.iter().enumerate() {
                if var.name.is_empty() || var.name.contains('=') || var.name.contains('\0') {
                    error(
                        at(&format!("env[{j}].name")),
                        "must be a non-empty name without '=' or NUL".into(),
                    );
                } else if !env_names.insert(var.name.as_str()) {
                    error(
                        at(&format!("env[{j}].name")),
                        format!("duplicate name {:?}", var.name),
                    );
                }
            }
            providers.insert(
                name.clone(),
                Provider {
                    name,
                    match_images,
                    default_cache_duration,
                    api_version,
                    args: entry.args,
                    env: entry.env,
                    token_attributes: entry.token_attributes.is_some(),
                },
            );
        }
        if errors.is_empty() {
            Ok(providers)
        } else {
            Err(errors)
        }
    }
}

/// The kubelet runs `<binDir>/<name>`: a name that is not a plain file name could leave it.
fn check_plugin_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required".into());
    }
    if name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(format!(
            "{name:?} is not a file name in the plugin directory (no '/', '\\', '.' or '..')"
        ));
    }
    Ok(())
}

/// What a plugin is sent on stdin.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    api_version: &'a str,
    kind: &'static str,
    image: &'a str,
}

/// The request for `image` in the provider's protocol version, as JSON.
pub fn request(api_version: &str, image: &str) -> Vec<u8> {
    let request = Request {
        api_version,
        kind: REQUEST_KIND,
        image,
    };
    // A struct of strings always serializes.
    serde_json::to_vec(&request).unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    api_version: Option<String>,
    kind: Option<String>,
    cache_key_type: Option<String>,
    cache_duration: Option<String>,
    #[serde(default)]
    auth: Option<BTreeMap<String, AuthConfig>>,
}

/// One registry's credentials, as a plugin returns them.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct AuthConfig {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthConfig(<redacted>)")
    }
}

/// Why a plugin's answer was refused. Values are shown shortened, and never the `auth`
/// map's contents: only its keys, which are registry patterns.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResponseError {
    #[error("the response is not a CredentialProviderResponse in JSON: {0}")]
    Malformed(String),
    #[error("the response's kind is {0}, expected {RESPONSE_KIND:?}")]
    WrongKind(String),
    #[error("the response's apiVersion is {found}, expected {expected:?} (the request's)")]
    WrongApiVersion { expected: String, found: String },
    #[error("the response's cacheKeyType is {0}, expected one of {CACHE_KEY_TYPES:?}")]
    InvalidCacheKeyType(String),
    #[error("the response's cacheDuration {0} is not a duration: {1}")]
    InvalidCacheDuration(String, String),
    #[error(
        "the response's cacheDuration is 0: the credentials must not be kept, so they cannot be copied"
    )]
    NotCacheable,
    #[error("the response has no credentials (empty auth)")]
    NoCredentials,
    #[error("the response's auth key {key:?} is not a registry pattern: {reason}")]
    InvalidKey { key: String, reason: String },
}

impl ResponseError {
    /// The `reason` label of the failure metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::WrongKind(_) => "wrong_kind",
            Self::WrongApiVersion { .. } => "wrong_api_version",
            Self::InvalidCacheKeyType(_) | Self::InvalidCacheDuration(..) | Self::NotCacheable => {
                "invalid_cache"
            }
            Self::NoCredentials => "no_credentials",
            Self::InvalidKey { .. } => "invalid_key",
        }
    }
}

/// Credentials a plugin issued, checked: every key a registry pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Issued {
    pub auths: BTreeMap<String, AuthConfig>,
    /// How long they may be used: the response's cacheDuration, or the provider's default.
    pub valid_for: Duration,
}

/// Reads a plugin's stdout as the kubelet does, and refuses what the kubelet would not use,
/// and what cannot be kept in a Secret (no credentials, a cacheDuration of 0).
pub fn parse_response(
    stdout: &[u8],
    api_version: &str,
    default_cache_duration: Duration,
) -> Result<Issued, ResponseError> {
    // serde_json's messages can quote the input, a credential here: keep only the kind of
    // error and its position.
    let response: Response = serde_json::from_slice(stdout).map_err(|e| {
        ResponseError::Malformed(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if response.kind.as_deref() != Some(RESPONSE_KIND) {
        return Err(ResponseError::WrongKind(shown(response.kind.as_deref())));
    }
    if response.api_version.as_deref() != Some(api_version) {
        return Err(ResponseError::WrongApiVersion {
            expected: api_version.to_string(),
            found: shown(response.api_version.as_deref()),
        });
    }
    if !response
        .cache_key_type
        .as_deref()
        .is_some_and(|t| CACHE_KEY_TYPES.contains(&t))
    {
        return Err(ResponseError::InvalidCacheKeyType(shown(
            response.cache_key_type.as_deref(),
        )));
    }
    let valid_for = match response.cache_duration.as_deref() {
        None => default_cache_duration,
        Some(text) => parse_go_duration(text)
            .map_err(|reason| ResponseError::InvalidCacheDuration(shown(Some(text)), reason))?,
    };
    if valid_for.is_zero() {
        return Err(ResponseError::NotCacheable);
    }
    let auths = response.auth.unwrap_or_default();
    if auths.is_empty() {
        return Err(ResponseError::NoCredentials);
    }
    for key in auths.keys() {
        if let Err(e) = Pattern::parse(key) {
            return Err(ResponseError::InvalidKey {
                key: crate::replicate::keyring::redact_user_info(key),
                reason: e.to_string(),
            });
        }
    }
    Ok(Issued { auths, valid_for })
}

/// A value for an error message: quoted, at most [`SHOWN_CHARS`] characters.
fn shown(value: Option<&str>) -> String {
    match value {
        None => "missing".to_string(),
        Some(v) if v.chars().count() > SHOWN_CHARS => {
            let cut: String = v.chars().take(SHOWN_CHARS).collect();
            format!("{cut:?}…")
        }
        Some(v) => format!("{v:?}"),
    }
}

/// The `.dockerconfigjson` of `auths`: keys as the plugin returned them, so that the keyring
/// matches with the plugin's own patterns, and `auth` beside username and password, as
/// `kubectl create secret docker-registry` writes it.
pub fn dockerconfigjson(auths: &BTreeMap<String, AuthConfig>) -> Vec<u8> {
    let entries: serde_json::Map<String, serde_json::Value> = auths
        .iter()
        .map(|(key, auth)| {
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", auth.username, auth.password));
            (
                key.clone(),
                serde_json::json!({
                    "username": auth.username,
                    "password": auth.password,
                    "auth": basic,
                }),
            )
        })
        .collect();
    // A map of strings always serializes.
    serde_json::to_vec(&serde_json::json!({ "auths": entries })).unwrap_or_default()
}

/// Go's `time.ParseDuration` (what metav1.Duration reads): `300ms`, `1.5h`, `2h45m`, `0`.
/// Negative durations are refused: nothing here can be cached for less than nothing.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let body = text.strip_prefix('+').unwrap_or(text);
    if body.starts_with('-') {
        return Err("must not be negative".into());
    }
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err("is empty".into());
    }
    let mut total: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("{text:?} has a number without a unit (ns, us, ms, s, m, h)"))?;
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => return Err(format!("unknown unit {other:?} (ns, us, ms, s, m, h)")),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(format!("{number:?} is not a number"));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| format!("{number:?} is too large"))?
        };
        let mut value = whole
            .checked_mul(nanos_per_unit)
            .ok_or_else(|| "is too large".to_string())?;
        // Fractions are exact to the nanosecond, as in Go.
        let mut scale = nanos_per_unit;
        for digit in fraction.bytes().take(30) {
            scale /= 10;
            value += u128::from(digit - b'0') * scale;
        }
        total = total
            .checked_add(value)
            .ok_or_else(|| "is too large".to_string())?;
        rest = after;
    }
    // Go's limit: an int64 of nanoseconds, about 292 years.
    if total > i64::MAX as u128 {
        return Err("is too large".into());
    }
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("0", 0)]
    #[case("0s", 0)]
    #[case("12h", 12 * 3_600_000_000_000)]
    #[case("12h0m0s", 12 * 3_600_000_000_000)]
    #[case("1h30m", 5_400_000_000_000)]
    #[case("1.5h", 5_400_000_000_000)]
    #[case("300ms", 300_000_000)]
    #[case("2.5s", 2_500_000_000)]
    #[case(".5s", 500_000_000)]
    #[case("1us", 1_000)]
    #[case("1µs", 1_000)]
    #[case("+3s", 3_000_000_000)]
    #[case("1m0.000000001s", 60_000_000_001)]
    fn go_durations_parse_as_go_parses_them(#[case] text: &str, #[case] nanos: u128) {
        assert_eq!(parse_go_duration(text).unwrap().as_nanos(), nanos, "{text}");
    }

    #[rstest]
    #[case("")]
    #[case("5")]
    #[case("-5s")]
    #[case("5 s")]
    #[case("5d")]
    #[case("s")]
    #[case("1..5s")]
    #[case("3000000h")]
    fn bad_go_durations_are_refused(#[case] text: &str) {
        assert!(parse_go_duration(text).is_err(), "{text:?} parsed");
    }

    const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

    fn response(body: &str) -> Result<Issued, ResponseError> {
        parse_response(body.as_bytes(), V1, Duration::from_secs(600))
    }

    #[test]
    fn a_good_response_gives_its_auths_and_duration() {
        let issued = response(
            r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse",
                "cacheKeyType":"Registry","cacheDuration":"6s",
                "auth":{"*.dkr.ecr.*.amazonaws.com":{"username":"AWS","password":"tok"},"registry.io:8080/path":{"username":"","password":""}}}"#,
        )
        .unwrap();
        assert_eq!(issued.valid_for, Duration::from_secs(6));
        assert_eq!(
            issued.auths.keys().collect::<Vec<_>>(),
            ["*.dkr.ecr.*.amazonaws.com", "registry.io:8080/path"]
        );
        assert_eq!(issued.auths["*.dkr.ecr.*.amazonaws.com"].password, "tok");
    }

    #[test]
    fn without_a_cache_duration_the_providers_default_applies() {
        let issued = response(
            r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse",
                "cacheKeyType":"Image","auth":{"r.io":{"username":"u","password":"p"}}}"#,
        )
        .unwrap();
        assert_eq!(issued.valid_for, Duration::from_secs(600));
    }

    #[rstest]
    #[case::not_json("hunter2-not-json", "malformed")]
    #[case::truncated(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","auth":{"r.io":{"password":"hunter2"#, "malformed")]
    #[case::auth_not_a_map(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":"hunter2"}"#, "malformed")]
    #[case::wrong_kind(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","cacheKeyType":"Image","auth":{"r.io":{"password":"hunter2"}}}"#, "wrong_kind")]
    #[case::no_kind(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Image","auth":{"r.io":{"password":"hunter2"}}}"#, "wrong_kind")]
    #[case::wrong_version(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":{"r.io":{"password":"hunter2"}}}"#, "wrong_api_version")]
    #[case::bad_cache_key(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Pod","auth":{"r.io":{"password":"hunter2"}}}"#, "invalid_cache")]
    #[case::no_cache_key(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","auth":{"r.io":{"password":"hunter2"}}}"#, "invalid_cache")]
    #[case::zero_duration(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","cacheDuration":"0s","auth":{"r.io":{"password":"hunter2"}}}"#, "invalid_cache")]
    #[case::bad_duration(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","cacheDuration":"soon","auth":{"r.io":{"password":"hunter2"}}}"#, "invalid_cache")]
    #[case::null_auth(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":null}"#, "no_credentials")]
    #[case::empty_auth(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":{}}"#, "no_credentials")]
    #[case::bad_key(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":{"https://robot:hunter2@r.io":{"password":"x"}}}"#, "invalid_key")]
    fn bad_responses_are_refused_without_quoting_credentials(
        #[case] body: &str,
        #[case] label: &str,
    ) {
        let error = response(body).unwrap_err();
        assert_eq!(error.metric_label(), label, "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn long_values_are_shortened_in_errors() {
        let kind = "K".repeat(500);
        let error = response(&format!(
            r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"{kind}"}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(error.len() < 200, "{error}");
    }

    #[test]
    fn the_request_names_the_image_in_the_providers_version() {
        let request: serde_json::Value =
            serde_json::from_slice(&request(V1, "r.io/app:1")).unwrap();
        assert_eq!(
            request,
            serde_json::json!({"apiVersion": V1, "kind": "CredentialProviderRequest", "image": "r.io/app:1"})
        );
    }

    #[test]
    fn dockerconfigjson_holds_each_key_with_username_password_and_auth() {
        let auths = BTreeMap::from([(
            "*.azurecr.io".to_string(),
            AuthConfig {
                username: "00000000-0000-0000-0000-000000000000".into(),
                password: "tok".into(),
            },
        )]);
        let json: serde_json::Value = serde_json::from_slice(&dockerconfigjson(&auths)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"auths": {"*.azurecr.io": {
                "username": "00000000-0000-0000-0000-000000000000",
                "password": "tok",
                "auth": "MDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAwOnRvaw==",
            }}})
        );
        let (patterns, skipped) = crate::replicate::dockerconfig::auth_patterns(
            Some(crate::replicate::dockerconfig::DOCKERCONFIGJSON_TYPE),
            Some(&BTreeMap::from([(
                crate::replicate::dockerconfig::DOCKERCONFIGJSON_KEY.to_string(),
                k8s_openapi::ByteString(dockerconfigjson(&auths)),
            )])),
        )
        .unwrap();
        assert_eq!(
            patterns.iter().map(Pattern::key).collect::<Vec<_>>(),
            ["*.azurecr.io"]
        );
        assert!(skipped.is_empty());
    }

    const ECR: &str = r#"
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ecr-credential-provider
    matchImages: ["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn"]
    defaultCacheDuration: "12h"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: [get-credentials]
    env:
      - {name: AWS_PROFILE, value: default}
"#;

    #[test]
    fn a_kubelet_config_file_reads_as_the_kubelet_reads_it() {
        let providers = ConfigFile::from_yaml(ECR).unwrap().validate().unwrap();
        let ecr = &providers["ecr-credential-provider"];
        assert_eq!(ecr.default_cache_duration, Duration::from_secs(12 * 3600));
        assert_eq!(ecr.args, ["get-credentials"]);
        assert_eq!(
            ecr.env,
            [EnvVar {
                name: "AWS_PROFILE".into(),
                value: "default".into()
            }]
        );
        assert!(!ecr.token_attributes);
        let image =
            crate::image::ImageName::parse("123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1")
                .unwrap();
        assert!(ecr.serves(&image));
        assert!(!ecr.serves(&crate::image::ImageName::parse("ghcr.io/app").unwrap()));
    }

    #[test]
    fn every_problem_of_the_file_is_reported_with_its_path() {
        let errors = ConfigFile::from_yaml(
            r#"
apiVersion: kubelet.config.k8s.io/v2
kind: KubeletConfiguration
providers:
  - name: ../escape
    matchImages: []
    apiVersion: credentialprovider.kubelet.k8s.io/v2
  - name: ok
    matchImages: ["bad host/x", "r.io"]
    defaultCacheDuration: "-1s"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env: [{name: "", value: x}, {name: A, value: x}, {name: A, value: y}]
  - name: ok
    matchImages: [r.io]
    defaultCacheDuration: 1m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
"#,
        )
        .unwrap()
        .validate()
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let text = text.join("\n");
        for expected in [
            "apiVersion: \"kubelet.config.k8s.io/v2\" is not one of",
            "kind: must be \"CredentialProviderConfig\", not \"KubeletConfiguration\"",
            "providers[0].name: \"../escape\" is not a file name",
            "providers[0].matchImages: must list at least one image pattern",
            "providers[0].defaultCacheDuration: is required",
            "providers[0].apiVersion: \"credentialprovider.kubelet.k8s.io/v2\" is not one of",
            "providers[1].matchImages[0]: \"bad host/x\"",
            "providers[1].defaultCacheDuration: \"-1s\": must not be negative",
            "providers[1].env[0].name: must be a non-empty name",
            "providers[1].env[2].name: duplicate name \"A\"",
            "providers[2].name: duplicate provider name \"ok\"",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn unknown_fields_of_the_file_are_named() {
        let error = ConfigFile::from_yaml(&ECR.replace("args:", "argz:")).unwrap_err();
        assert!(error.contains("argz"), "{error}");
    }

    #[test]
    fn env_values_never_show_in_debug_output() {
        let file = ConfigFile::from_yaml(&ECR.replace("value: default", "value: s3cr3t")).unwrap();
        assert!(!format!("{file:?}").contains("s3cr3t"));
        let auth = AuthConfig {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
