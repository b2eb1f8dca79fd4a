//! Kubelet credential provider plugins as a source of pull secrets.
//!
//! An entry with a `provider` gets its credentials from a plugin (ecr-credential-provider,
//! acr-credential-provider, auth-provider-gcp, …) run the way the kubelet runs it
//! ([`kubelet`], [`plugin`]). The Lease holder runs it ([`refresh`]) and keeps the answer in
//! a `kubernetes.io/dockerconfigjson` Secret named like the entry in the injector's
//! namespace, written under the same ownership rules as copies. That Secret is the entry's
//! source: every replica watches it, the keyring takes its `auths` keys (the plugin's own
//! patterns), and replication copies it into the opted-in namespaces like any source. It
//! also says when the credentials were issued and when they expire, so that a new leader
//! resumes the schedule ([`schedule`]) instead of calling the plugin at once.

pub mod kubelet;
pub mod plugin;
pub mod refresh;
pub mod schedule;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::config::SourceRef;
use crate::kubernetes::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::replicate::dockerconfig::{self, DOCKERCONFIGJSON_KEY, DOCKERCONFIGJSON_TYPE};
use crate::replicate::{HASH_ANNOTATION, OWNER_ANNOTATION};
use kubelet::Issued;
use plugin::Plugin;

/// The plugin (provider name) whose credentials a Secret holds.
pub const PROVIDER_ANNOTATION: &str = "pullsecret-injector.io/provider";
/// A hash of what the plugin was asked (see [`CredentialPlan::request_hash`]).
pub const REQUEST_ANNOTATION: &str = "pullsecret-injector.io/provider-request";
/// When the plugin issued the credentials, RFC 3339.
pub const ISSUED_ANNOTATION: &str = "pullsecret-injector.io/issued-at";
/// When they stop being valid (issue time plus the response's cacheDuration), RFC 3339.
pub const EXPIRES_ANNOTATION: &str = "pullsecret-injector.io/expires-at";

/// An entry with a `provider`, resolved against the kubelet's config file: what the leader
/// runs, and where it keeps the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialPlan {
    /// The entry's name: the Secret the credentials are kept in, and every copy's name.
    pub secret: String,
    /// Where they are kept: the entry's source.
    pub keep_in: SourceRef,
    pub plugin: Plugin,
    pub images: Vec<String>,
    pub timeout: Duration,
}

impl CredentialPlan {
    /// A fingerprint of what the plugin is asked (provider, protocol, arguments, environment,
    /// images): credentials asked for otherwise, under an older config, are refreshed at once.
    pub fn request_hash(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        };
        field(self.plugin.name.as_bytes());
        field(self.plugin.api_version.as_bytes());
        for arg in &self.plugin.args {
            field(arg.as_bytes());
        }
        for var in &self.plugin.env {
            field(var.name.as_bytes());
            field(var.value.as_bytes());
        }
        for image in &self.images {
            field(image.as_bytes());
        }
        let digest = ctx.finish();
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

/// The Secret that keeps credentials `issued` at `issued_at` by `plan`'s plugin for
/// installation `owner`: our label and owner like a copy, and when they expire.
pub fn credentials_secret(
    plan: &CredentialPlan,
    owner: &str,
    issued: &Issued,
    issued_at: SystemTime,
) -> Secret {
    let data = BTreeMap::from([(
        DOCKERCONFIGJSON_KEY.to_string(),
        ByteString(kubelet::dockerconfigjson(&issued.auths)),
    )]);
    let hash = dockerconfig::data_hash(Some(DOCKERCONFIGJSON_TYPE), Some(&data));
    Secret {
        metadata: ObjectMeta {
            name: Some(plan.secret.clone()),
            namespace: Some(plan.keep_in.namespace.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY_VALUE.to_string(),
            )])),
            annotations: Some(BTreeMap::from([
                (OWNER_ANNOTATION.to_string(), owner.to_string()),
                (HASH_ANNOTATION.to_string(), hash),
                (PROVIDER_ANNOTATION.to_string(), plan.plugin.name.clone()),
                (REQUEST_ANNOTATION.to_string(), plan.request_hash()),
                (ISSUED_ANNOTATION.to_string(), rfc3339(issued_at)),
                (
                    EXPIRES_ANNOTATION.to_string(),
                    rfc3339(issued_at + issued.valid_for),
                ),
            ])),
            ..Default::default()
        },
        type_: Some(DOCKERCONFIGJSON_TYPE.to_string()),
        data: Some(data),
        immutable: None,
        string_data: None,
    }
}

/// Credentials found in the cluster, as far as scheduling and redaction need them.
#[derive(Clone, PartialEq)]
pub struct Held {
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// The passwords in them: redacted if a plugin ever prints them.
    pub passwords: Vec<String>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("issued_at", &rfc3339(self.issued_at))
            .field("expires_at", &rfc3339(self.expires_at))
            .finish_non_exhaustive()
    }
}

impl Held {
    /// The credentials kept in `secret`, if it is ours (`owner`), holds credentials of this
    /// plan's plugin asked the way the plan asks, and says when they were issued and expire.
    pub fn read(secret: &Secret, plan: &CredentialPlan, owner: &str) -> Option<Self> {
        if !crate::replicate::is_managed(secret, owner) {
            return None;
        }
        let annotations = secret.annotations();
        if annotations.get(PROVIDER_ANNOTATION) != Some(&plan.plugin.name)
            || annotations.get(REQUEST_ANNOTATION) != Some(&plan.request_hash())
        {
            return None;
        }
        let time = |key: &str| -> Option<SystemTime> {
            let stamp: Timestamp = annotations.get(key)?.parse().ok()?;
            Some(SystemTime::from(stamp))
        };
        Some(Self {
            issued_at: time(ISSUED_ANNOTATION)?,
            expires_at: time(EXPIRES_ANNOTATION)?,
            passwords: passwords(secret),
        })
    }

    /// What a refresh of `issued` at `issued_at` holds.
    pub fn of(issued: &Issued, issued_at: SystemTime) -> Self {
        Self {
            issued_at,
            expires_at: issued_at + issued.valid_for,
            passwords: issued.auths.values().map(|a| a.password.clone()).collect(),
        }
    }
}

/// The passwords of a dockerconfigjson Secret's `auths`, for redaction only.
fn passwords(secret: &Secret) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        password: String,
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(DOCKERCONFIGJSON_KEY))
        .and_then(|bytes| serde_json::from_slice::<Config>(&bytes.0).ok())
        .map(|c| c.auths.into_values().map(|e| e.password).collect())
        .unwrap_or_default()
}

/// Whether `current` (from the cache) still is the Secret we `kept`: there, with its type,
/// data and every label and annotation we set.
pub fn still_kept(current: Option<&Secret>, kept: &Secret) -> bool {
    let Some(current) = current else {
        return false;
    };
    let includes = |have: &BTreeMap<String, String>, want: &BTreeMap<String, String>| {
        want.iter().all(|(k, v)| have.get(k) == Some(v))
    };
    current.type_ == kept.type_
        && current.data == kept.data
        && includes(current.labels(), kept.labels())
        && includes(current.annotations(), kept.annotations())
}

/// The asked-for images that none of the answer's keys matches: the kubelet would not use
/// these credentials for them either, so neither does the injector.
pub fn uncovered_images(images: &[String], issued: &Issued) -> Vec<String> {
    let patterns: Vec<crate::matching::Pattern> = issued
        .auths
        .keys()
        .filter_map(|key| crate::matching::Pattern::parse(key).ok())
        .collect();
    images
        .iter()
        .filter(|image| {
            crate::image::ImageName::parse(image)
                .is_ok_and(|name| !patterns.iter().any(|p| p.matches_directly(&name)))
        })
        .cloned()
        .collect()
}

/// RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(time: SystemTime) -> String {
    let millis = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_millisecond(millis)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

/// Seconds since the epoch, for the timestamp metrics.
pub fn epoch_seconds(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubelet::AuthConfig;

    fn plan() -> CredentialPlan {
        CredentialPlan {
            secret: "ecr".into(),
            keep_in: SourceRef {
                namespace: "infra".into(),
                name: "ecr".into(),
            },
            plugin: Plugin {
                name: "ecr-credential-provider".into(),
                executable: "/plugins/ecr-credential-provider".into(),
                args: vec![],
                env: vec![],
                api_version: "credentialprovider.kubelet.k8s.io/v1".into(),
                default_cache_duration: Duration::from_secs(43200),
            },
            images: vec!["1.dkr.ecr.us-east-1.amazonaws.com/app".into()],
            timeout: Duration::from_secs(60),
        }
    }

    fn issued() -> Issued {
        Issued {
            auths: BTreeMap::from([(
                "1.dkr.ecr.us-east-1.amazonaws.com".to_string(),
                AuthConfig {
                    username: "AWS".into(),
                    password: "token-one".into(),
                },
            )]),
            valid_for: Duration::from_secs(3600),
        }
    }

    #[test]
    fn the_kept_secret_is_ours_and_reads_back_its_schedule() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_300_000_123);
        let secret = credentials_secret(&plan(), "infra/injector", &issued(), at);
        assert_eq!(secret.type_.as_deref(), Some(DOCKERCONFIGJSON_TYPE));
        assert_eq!(
            secret
                .annotations()
                .get(EXPIRES_ANNOTATION)
                .map(String::as_str),
            Some("2025-11-28T04:20:00.123Z")
        );
        let held = Held::read(&secret, &plan(), "infra/injector").unwrap();
        assert_eq!(held.issued_at, at);
        assert_eq!(held.expires_at, at + Duration::from_secs(3600));
        assert_eq!(held.passwords, ["token-one"]);
        assert!(!format!("{held:?}").contains("token-one"));
        // Another installation's, or asked otherwise: not ours to resume.
        assert!(Held::read(&secret, &plan(), "infra/other").is_none());
        let mut other = plan();
        other
            .images
            .push("2.dkr.ecr.us-east-1.amazonaws.com/app".into());
        assert!(Held::read(&secret, &other, "infra/injector").is_none());
    }

    #[test]
    fn images_the_answer_does_not_cover_are_named() {
        let images = vec![
            "1.dkr.ecr.us-east-1.amazonaws.com/app:1".to_string(),
            "2.dkr.ecr.eu-west-1.amazonaws.com/app:1".to_string(),
        ];
        assert_eq!(uncovered_images(&images, &issued()), [images[1].clone()]);
    }

    #[test]
    fn a_deleted_or_edited_secret_is_no_longer_kept() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_300_000);
        let kept = credentials_secret(&plan(), "infra/injector", &issued(), at);
        let mut cached = kept.clone();
        cached.metadata.resource_version = Some("7".into());
        cached
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(
                "kubectl.kubernetes.io/last-applied-configuration".into(),
                "{}".into(),
            );
        assert!(
            still_kept(Some(&cached), &kept),
            "others' annotations do not matter"
        );
        assert!(!still_kept(None, &kept), "deleted");
        let mut edited = cached.clone();
        edited.data = Some(BTreeMap::new());
        assert!(!still_kept(Some(&edited), &kept), "data edited");
        let mut unlabelled = cached;
        unlabelled.metadata.labels = None;
        assert!(!still_kept(Some(&unlabelled), &kept), "label removed");
    }

    #[test]
    fn the_request_hash_follows_what_the_plugin_is_asked() {
        let base = plan();
        let mut env = plan();
        env.plugin.env.push(kubelet::EnvVar {
            name: "AWS_REGION".into(),
            value: "us-east-1".into(),
        });
        let mut timeout = plan();
        timeout.timeout = Duration::from_secs(5);
        assert_ne!(base.request_hash(), env.request_hash());
        assert_eq!(base.request_hash(), timeout.request_hash());
    }
}
