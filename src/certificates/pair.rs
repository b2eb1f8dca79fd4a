//! The pure part of self-managed certificates: the CA and serving pair, its renewal, and its
//! form in a Secret.
//!
//! The leader creates the pair, renews the serving certificate well before it expires (same
//! CA, so the webhook's caBundle stays valid through a renewal), and keeps the caBundle of
//! its MutatingWebhookConfiguration current. Every replica serves what the Secret holds.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use thiserror::Error;

pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const CERT_NOT_AFTER_ANNOTATION: &str = "pullsecret-injector.io/cert-not-after";
pub const CA_NOT_AFTER_ANNOTATION: &str = "pullsecret-injector.io/ca-not-after";
const CA_COMMON_NAME: &str = "pullsecret-injector CA";

#[derive(Debug, Error)]
pub enum PairError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("secret {0} lacks {1}")]
    Missing(String, &'static str),
    #[error("secret {0} holds a key that is not valid PEM")]
    BadKey(String),
}

/// Validity of what the leader generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub ca: Duration,
    pub serving: Duration,
}

impl Lifetimes {
    /// Renew once two thirds of the serving certificate's life have passed.
    pub fn renew_after(&self) -> Duration {
        self.serving * 2 / 3
    }
}

/// A CA and a serving pair, as PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
    pub ca_not_after: u64,
    pub cert_not_after: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ca_params(not_after: u64) -> Result<CertificateParams, PairError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = to_time(unix_now().saturating_sub(60));
    params.not_after = to_time(not_after);
    Ok(params)
}

fn to_time(unix: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A new CA and a serving certificate for `dns_names`.
pub fn generate(dns_names: &[String], lifetimes: Lifetimes) -> Result<Pair, PairError> {
    let ca_not_after = unix_now() + lifetimes.ca.as_secs();
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params(ca_not_after)?.self_signed(&ca_key)?;
    let mut pair = Pair {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        cert: String::new(),
        key: String::new(),
        ca_not_after,
        cert_not_after: 0,
    };
    renew_serving(&mut pair, dns_names, lifetimes)?;
    Ok(pair)
}

/// A new serving certificate from the same CA: the caBundle needs no change.
pub fn renew_serving(
    pair: &mut Pair,
    dns_names: &[String],
    lifetimes: Lifetimes,
) -> Result<(), PairError> {
    let ca_key = KeyPair::from_pem(&pair.ca_key).map_err(|_| PairError::BadKey("CA".into()))?;
    // Signing needs the issuer's name and key; the name is fixed, so the CA is rebuilt from them.
    let issuer = Issuer::new(ca_params(pair.ca_not_after)?, ca_key);
    let not_after = (unix_now() + lifetimes.serving.as_secs()).min(pair.ca_not_after);
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        dns_names
            .first()
            .map_or("pullsecret-injector", String::as_str),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = to_time(unix_now().saturating_sub(60));
    params.not_after = to_time(not_after);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    pair.cert = cert.pem();
    pair.key = key.serialize_pem();
    pair.cert_not_after = not_after;
    Ok(())
}

/// The DNS names the apiserver uses for a Service: `name.namespace.svc` and shorter forms.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// What a renewal should do now, given the stored pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing stored (or unusable): generate a CA and a serving certificate.
    Generate,
    /// The serving certificate is past two thirds of its life: renew it from the same CA.
    RenewServing,
    Keep,
}

pub fn renewal(stored: Option<&Pair>, lifetimes: Lifetimes, now: u64) -> Renewal {
    let Some(pair) = stored else {
        return Renewal::Generate;
    };
    // A CA in its last serving lifetime cannot sign a full-length certificate: start over.
    if pair.ca_not_after <= now + lifetimes.serving.as_secs() {
        return Renewal::Generate;
    }
    let renew_at = pair
        .cert_not_after
        .saturating_sub(lifetimes.serving.as_secs() - lifetimes.renew_after().as_secs());
    if now >= renew_at {
        Renewal::RenewServing
    } else {
        Renewal::Keep
    }
}

pub fn now() -> u64 {
    unix_now()
}

/// The Secret that stores `pair`.
pub fn to_secret(
    name: &str,
    namespace: &str,
    pair: &Pair,
    labels: BTreeMap<String, String>,
) -> Secret {
    let data = BTreeMap::from([
        (
            CA_CERT_KEY.to_string(),
            ByteString(pair.ca_cert.clone().into_bytes()),
        ),
        (
            CA_KEY_KEY.to_string(),
            ByteString(pair.ca_key.clone().into_bytes()),
        ),
        (
            TLS_CERT_KEY.to_string(),
            ByteString(pair.cert.clone().into_bytes()),
        ),
        (
            TLS_KEY_KEY.to_string(),
            ByteString(pair.key.clone().into_bytes()),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (
                    CERT_NOT_AFTER_ANNOTATION.to_string(),
                    pair.cert_not_after.to_string(),
                ),
                (
                    CA_NOT_AFTER_ANNOTATION.to_string(),
                    pair.ca_not_after.to_string(),
                ),
            ])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// Reads a pair back from its Secret; `None` when any part is missing.
pub fn from_secret(secret: &Secret) -> Option<Pair> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let annotations = secret.metadata.annotations.as_ref()?;
    let number = |key: &str| annotations.get(key).and_then(|v| v.parse::<u64>().ok());
    Some(Pair {
        ca_cert: text(CA_CERT_KEY)?,
        ca_key: text(CA_KEY_KEY)?,
        cert: text(TLS_CERT_KEY)?,
        key: text(TLS_KEY_KEY)?,
        ca_not_after: number(CA_NOT_AFTER_ANNOTATION)?,
        cert_not_after: number(CERT_NOT_AFTER_ANNOTATION)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Lifetimes = Lifetimes {
        ca: Duration::from_secs(10 * 365 * 86400),
        serving: Duration::from_secs(90 * 86400),
    };

    #[test]
    fn a_generated_pair_round_trips_through_its_secret_and_loads_in_rustls() {
        let names = service_dns_names("psi", "infra");
        let pair = generate(&names, LIFE).unwrap();
        let secret = to_secret("psi-tls", "infra", &pair, BTreeMap::new());
        assert_eq!(from_secret(&secret).as_ref(), Some(&pair));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c"), &pair.cert).unwrap();
        std::fs::write(dir.path().join("k"), &pair.key).unwrap();
        crate::tls::CertificateFiles::load(&dir.path().join("c"), &dir.path().join("k"))
            .expect("rustls accepts the pair");
    }

    #[test]
    fn renewal_keeps_the_ca_and_changes_the_serving_certificate() {
        let names = service_dns_names("psi", "infra");
        let mut pair = generate(&names, LIFE).unwrap();
        let before = pair.clone();
        renew_serving(&mut pair, &names, LIFE).unwrap();
        assert_eq!(pair.ca_cert, before.ca_cert);
        assert_eq!(pair.ca_key, before.ca_key);
        assert_ne!(pair.cert, before.cert);
    }

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_serving_life() {
        let pair = generate(&["x".to_string()], LIFE).unwrap();
        let issued = pair.cert_not_after - LIFE.serving.as_secs();
        assert_eq!(renewal(None, LIFE, issued), Renewal::Generate);
        assert_eq!(renewal(Some(&pair), LIFE, issued + 1), Renewal::Keep);
        assert_eq!(
            renewal(Some(&pair), LIFE, issued + 61 * 86400),
            Renewal::RenewServing
        );
        assert_eq!(
            renewal(Some(&pair), LIFE, pair.ca_not_after - 86400),
            Renewal::Generate
        );
    }
}
