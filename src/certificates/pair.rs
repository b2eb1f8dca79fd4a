//! The pure part of self-managed certificates: the CA and serving pair, its renewal, and its
//! form in a Secret.
//!
//! The leader creates the pair, renews the serving certificate well before it expires (same
//! CA, so the webhook's caBundle stays valid through a renewal), and keeps the caBundle of
//! its MutatingWebhookConfiguration current. Every replica serves what the Secret holds.
//!
//! A CA is replaced without a refused call: the next CA joins the caBundle first
//! (`next-ca.crt`); only once the bundle has had time to reach every apiserver does it sign
//! the serving certificate, and the CA it replaces stays in the bundle (`old-ca.crt`) until it
//! expires, by when nothing it signed can still be valid. This module decides (`plan`) and
//! makes (`apply`) each step; `keeper` writes them in that order.

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
pub const NEXT_CA_CERT_KEY: &str = "next-ca.crt";
pub const NEXT_CA_KEY_KEY: &str = "next-ca.key";
pub const OLD_CA_CERT_KEY: &str = "old-ca.crt";
pub const CERT_NOT_AFTER_ANNOTATION: &str = "pullsecret-injector.io/cert-not-after";
pub const CA_NOT_AFTER_ANNOTATION: &str = "pullsecret-injector.io/ca-not-after";
pub const NEXT_CA_NOT_AFTER_ANNOTATION: &str = "pullsecret-injector.io/next-ca-not-after";
/// When the caBundle carrying the next CA was written: it signs nothing before `settle` later.
pub const NEXT_CA_TRUSTED_SINCE_ANNOTATION: &str = "pullsecret-injector.io/next-ca-trusted-since";
pub const OLD_CA_NOT_AFTER_ANNOTATION: &str = "pullsecret-injector.io/old-ca-not-after";
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

/// The CA that takes over at the next rollover: in the caBundle before anything it signs is
/// served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextCa {
    pub cert: String,
    pub key: String,
    pub not_after: u64,
    /// When a caBundle with this CA was written; `None` until then.
    pub trusted_since: Option<u64>,
}

/// The CA replaced at the last rollover: in the caBundle until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredCa {
    pub cert: String,
    pub not_after: u64,
}

/// What the certificate Secret holds: the pair served, and the CAs around a rollover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificates {
    pub pair: Pair,
    pub next_ca: Option<NextCa>,
    pub old_ca: Option<RetiredCa>,
}

impl Certificates {
    /// The PEM bundle the webhook must trust: the current CA, the next one and the retired
    /// one, so that the apiserver accepts whichever a replica serves.
    pub fn ca_bundle(&self) -> String {
        let mut bundle = self.pair.ca_cert.clone();
        for ca in [
            self.next_ca.as_ref().map(|c| &c.cert),
            self.old_ca.as_ref().map(|c| &c.cert),
        ]
        .into_iter()
        .flatten()
        {
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(ca);
        }
        bundle
    }

    /// Records that a caBundle carrying the next CA has been written at `now`.
    pub fn mark_next_ca_trusted(&mut self, now: u64) -> bool {
        match &mut self.next_ca {
            Some(next) if next.trusted_since.is_none() => {
                next.trusted_since = Some(now);
                true
            }
            _ => false,
        }
    }
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

/// A new CA, valid for `lifetime`: (certificate PEM, key PEM, not after).
fn new_ca(lifetime: Duration) -> Result<(String, String, u64), PairError> {
    let not_after = unix_now() + lifetime.as_secs();
    let key = KeyPair::generate()?;
    let cert = ca_params(not_after)?.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

/// A new CA and a serving certificate for `dns_names`.
pub fn generate(dns_names: &[String], lifetimes: Lifetimes) -> Result<Pair, PairError> {
    let (ca_cert, ca_key, ca_not_after) = new_ca(lifetimes.ca)?;
    let mut pair = Pair {
        ca_cert,
        ca_key,
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

/// One change to the stored certificates; a check may make several, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing usable stored (or its CA has expired): a new CA and serving certificate.
    Generate,
    /// The retired CA has expired: out of the bundle.
    DropOldCa,
    /// The CA nears its end: make the next one, to be trusted before it signs anything.
    PrepareCa,
    /// The next CA has been trusted long enough: it signs a new serving certificate, and
    /// the current CA is retired.
    PromoteCa,
    /// The serving certificate is past two thirds of its life: renew it from the same CA.
    RenewServing,
}

/// What to change now. `settle` is how long a caBundle takes to reach every apiserver: the
/// next CA signs nothing before then.
pub fn plan(
    stored: Option<&Certificates>,
    lifetimes: Lifetimes,
    settle: Duration,
    now: u64,
) -> Vec<Step> {
    let Some(stored) = stored else {
        return vec![Step::Generate];
    };
    // Nothing chains to an expired CA any more: there is no rollover to protect.
    if stored.pair.ca_not_after <= now {
        return vec![Step::Generate];
    }
    let mut steps = Vec::new();
    if stored
        .old_ca
        .as_ref()
        .is_some_and(|old| old.not_after <= now)
    {
        steps.push(Step::DropOldCa);
    }
    match &stored.next_ca {
        Some(next)
            if next
                .trusted_since
                .is_some_and(|since| now >= since + settle.as_secs()) =>
        {
            steps.push(Step::PromoteCa);
            return steps;
        }
        // Not trusted long enough yet: it waits.
        Some(_) => {}
        // Early enough that, after `settle`, the next CA still takes over before the current
        // one is too short-lived to sign a full serving certificate.
        None if stored.pair.ca_not_after
            <= now + lifetimes.serving.as_secs() + settle.as_secs() =>
        {
            steps.push(Step::PrepareCa);
        }
        None => {}
    }
    let renew_at = stored
        .pair
        .cert_not_after
        .saturating_sub(lifetimes.serving.as_secs() - lifetimes.renew_after().as_secs());
    if now >= renew_at {
        steps.push(Step::RenewServing);
    }
    steps
}

/// Makes the planned steps: the certificates to store (unchanged when `steps` is empty).
pub fn apply(
    stored: Option<Certificates>,
    steps: &[Step],
    dns_names: &[String],
    lifetimes: Lifetimes,
) -> Result<Certificates, PairError> {
    let mut certificates = match stored {
        Some(stored) if !steps.contains(&Step::Generate) => stored,
        _ => Certificates {
            pair: generate(dns_names, lifetimes)?,
            next_ca: None,
            old_ca: None,
        },
    };
    for step in steps {
        match step {
            Step::Generate => {}
            Step::DropOldCa => certificates.old_ca = None,
            Step::PrepareCa => {
                let (cert, key, not_after) = new_ca(lifetimes.ca)?;
                certificates.next_ca = Some(NextCa {
                    cert,
                    key,
                    not_after,
                    trusted_since: None,
                });
            }
            Step::PromoteCa => {
                let Some(next) = certificates.next_ca.take() else {
                    continue;
                };
                let pair = &mut certificates.pair;
                certificates.old_ca = Some(RetiredCa {
                    cert: std::mem::replace(&mut pair.ca_cert, next.cert),
                    not_after: pair.ca_not_after,
                });
                pair.ca_key = next.key;
                pair.ca_not_after = next.not_after;
                renew_serving(pair, dns_names, lifetimes)?;
            }
            Step::RenewServing => renew_serving(&mut certificates.pair, dns_names, lifetimes)?,
        }
    }
    Ok(certificates)
}

/// The SHA-256 fingerprints of the certificates in a PEM bundle (as `openssl x509 -fingerprint
/// -sha256` prints them, lowercase without colons): which CAs a bundle or a pair involves,
/// fit for logs.
pub fn fingerprints(pem: &str) -> Vec<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|der| {
            ring::digest::digest(&ring::digest::SHA256, der.as_ref())
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect()
}

pub fn now() -> u64 {
    unix_now()
}

/// The Secret that stores `certificates`.
pub fn to_secret(
    name: &str,
    namespace: &str,
    certificates: &Certificates,
    labels: BTreeMap<String, String>,
) -> Secret {
    let pair = &certificates.pair;
    let bytes = |text: &str| ByteString(text.as_bytes().to_vec());
    let mut data = BTreeMap::from([
        (CA_CERT_KEY.to_string(), bytes(&pair.ca_cert)),
        (CA_KEY_KEY.to_string(), bytes(&pair.ca_key)),
        (TLS_CERT_KEY.to_string(), bytes(&pair.cert)),
        (TLS_KEY_KEY.to_string(), bytes(&pair.key)),
    ]);
    let mut annotations = BTreeMap::from([
        (
            CERT_NOT_AFTER_ANNOTATION.to_string(),
            pair.cert_not_after.to_string(),
        ),
        (
            CA_NOT_AFTER_ANNOTATION.to_string(),
            pair.ca_not_after.to_string(),
        ),
    ]);
    if let Some(next) = &certificates.next_ca {
        data.insert(NEXT_CA_CERT_KEY.to_string(), bytes(&next.cert));
        data.insert(NEXT_CA_KEY_KEY.to_string(), bytes(&next.key));
        annotations.insert(
            NEXT_CA_NOT_AFTER_ANNOTATION.to_string(),
            next.not_after.to_string(),
        );
        if let Some(since) = next.trusted_since {
            annotations.insert(
                NEXT_CA_TRUSTED_SINCE_ANNOTATION.to_string(),
                since.to_string(),
            );
        }
    }
    if let Some(old) = &certificates.old_ca {
        data.insert(OLD_CA_CERT_KEY.to_string(), bytes(&old.cert));
        annotations.insert(
            OLD_CA_NOT_AFTER_ANNOTATION.to_string(),
            old.not_after.to_string(),
        );
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// Reads the certificates back from their Secret; `None` when any part of the served pair is
/// missing. A next or retired CA with a part missing is left out.
pub fn from_secret(secret: &Secret) -> Option<Certificates> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let annotations = secret.metadata.annotations.as_ref()?;
    let number = |key: &str| annotations.get(key).and_then(|v| v.parse::<u64>().ok());
    let pair = Pair {
        ca_cert: text(CA_CERT_KEY)?,
        ca_key: text(CA_KEY_KEY)?,
        cert: text(TLS_CERT_KEY)?,
        key: text(TLS_KEY_KEY)?,
        ca_not_after: number(CA_NOT_AFTER_ANNOTATION)?,
        cert_not_after: number(CERT_NOT_AFTER_ANNOTATION)?,
    };
    let next_ca = (|| {
        Some(NextCa {
            cert: text(NEXT_CA_CERT_KEY)?,
            key: text(NEXT_CA_KEY_KEY)?,
            not_after: number(NEXT_CA_NOT_AFTER_ANNOTATION)?,
            trusted_since: number(NEXT_CA_TRUSTED_SINCE_ANNOTATION),
        })
    })();
    let old_ca = (|| {
        Some(RetiredCa {
            cert: text(OLD_CA_CERT_KEY)?,
            not_after: number(OLD_CA_NOT_AFTER_ANNOTATION)?,
        })
    })();
    Some(Certificates {
        pair,
        next_ca,
        old_ca,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    const LIFE: Lifetimes = Lifetimes {
        ca: Duration::from_secs(10 * 365 * 86400),
        serving: Duration::from_secs(90 * 86400),
    };
    const SETTLE: Duration = Duration::from_secs(30);
    const DAY: u64 = 86400;

    fn fresh(pair: Pair) -> Certificates {
        Certificates {
            pair,
            next_ca: None,
            old_ca: None,
        }
    }

    /// Whether a client trusting `bundle` (PEM) accepts `cert` (PEM) for `name`, now.
    fn verifies(bundle: &str, cert: &str, name: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(ca.expect("bundle PEM")).expect("a CA");
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let end_entity = CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert PEM");
        verifier
            .verify_server_cert(
                &end_entity,
                &[],
                &ServerName::try_from(name.to_string()).expect("name"),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }

    #[test]
    fn certificates_round_trip_through_their_secret_and_the_pair_loads_in_rustls() {
        let names = service_dns_names("psi", "infra");
        let plain = fresh(generate(&names, LIFE).unwrap());
        let secret = to_secret("psi-tls", "infra", &plain, BTreeMap::new());
        assert_eq!(from_secret(&secret).as_ref(), Some(&plain));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c"), &plain.pair.cert).unwrap();
        std::fs::write(dir.path().join("k"), &plain.pair.key).unwrap();
        crate::tls::CertificateFiles::load(&dir.path().join("c"), &dir.path().join("k"))
            .expect("rustls accepts the pair");

        // In the middle of a rollover: both a next and a retired CA.
        let mut rolling = apply(Some(plain), &[Step::PrepareCa], &names, LIFE).unwrap();
        rolling.mark_next_ca_trusted(1234);
        rolling.old_ca = Some(RetiredCa {
            cert: rolling.pair.ca_cert.clone(),
            not_after: 99,
        });
        let secret = to_secret("psi-tls", "infra", &rolling, BTreeMap::new());
        let data = secret.data.as_ref().unwrap();
        for key in [NEXT_CA_CERT_KEY, NEXT_CA_KEY_KEY, OLD_CA_CERT_KEY] {
            assert!(data.contains_key(key), "{key}");
        }
        assert_eq!(from_secret(&secret).as_ref(), Some(&rolling));
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
    fn the_plan_follows_the_certificates_through_their_life() {
        let stored = fresh(generate(&["x".to_string()], LIFE).unwrap());
        let issued = stored.pair.cert_not_after - LIFE.serving.as_secs();
        let ca_end = stored.pair.ca_not_after;
        let plan_at =
            |certificates: &Certificates, now| plan(Some(certificates), LIFE, SETTLE, now);
        assert_eq!(plan(None, LIFE, SETTLE, issued), [Step::Generate]);
        assert_eq!(plan_at(&stored, issued + 1), []);
        // Renewal after two thirds of the serving life, from the same CA.
        assert_eq!(plan_at(&stored, issued + 61 * DAY), [Step::RenewServing]);
        // The CA nears its end: the next one is made while a full serving life and the
        // settling time are left.
        let prepare_at = ca_end - LIFE.serving.as_secs() - SETTLE.as_secs();
        let mut late = stored.clone();
        late.pair.cert_not_after = prepare_at + LIFE.serving.as_secs() / 2;
        assert_eq!(plan_at(&late, prepare_at - 1), []);
        assert_eq!(plan_at(&late, prepare_at), [Step::PrepareCa]);
        // Not trusted yet (no caBundle written with it): it waits, however long.
        let mut waiting = late.clone();
        waiting.next_ca = Some(NextCa {
            cert: "next".into(),
            key: "key".into(),
            not_after: ca_end + LIFE.ca.as_secs(),
            trusted_since: None,
        });
        assert_eq!(plan_at(&waiting, prepare_at + 60), []);
        // Trusted: promoted once the bundle has settled, with a serving certificate of its own.
        let mut trusted = waiting.clone();
        assert!(trusted.mark_next_ca_trusted(prepare_at + 5));
        assert!(!trusted.mark_next_ca_trusted(prepare_at + 6), "marked once");
        assert_eq!(plan_at(&trusted, prepare_at + 5 + SETTLE.as_secs() - 1), []);
        assert_eq!(
            plan_at(&trusted, prepare_at + 5 + SETTLE.as_secs()),
            [Step::PromoteCa]
        );
        // The retired CA leaves the bundle when it expires, not before.
        let mut retired = stored.clone();
        retired.old_ca = Some(RetiredCa {
            cert: "old".into(),
            not_after: issued + 10,
        });
        assert_eq!(plan_at(&retired, issued + 9), []);
        assert_eq!(plan_at(&retired, issued + 10), [Step::DropOldCa]);
        assert_eq!(
            plan_at(&retired, issued + 61 * DAY),
            [Step::DropOldCa, Step::RenewServing]
        );
        // An expired CA protects nothing: start over.
        assert_eq!(plan_at(&trusted, ca_end), [Step::Generate]);
    }

    /// Through a whole rollover, every caBundle an apiserver may still hold accepts every
    /// certificate a replica may still serve.
    #[test]
    fn a_ca_rollover_never_leaves_a_served_certificate_untrusted() {
        let names = service_dns_names("psi", "infra");
        let name = names[0].as_str();
        let start = fresh(generate(&names, LIFE).unwrap());
        let prepared = apply(Some(start.clone()), &[Step::PrepareCa], &names, LIFE).unwrap();
        let mut trusted = prepared.clone();
        trusted.mark_next_ca_trusted(now());
        let promoted = apply(Some(trusted.clone()), &[Step::PromoteCa], &names, LIFE).unwrap();
        let dropped = apply(Some(promoted.clone()), &[Step::DropOldCa], &names, LIFE).unwrap();

        let next = prepared.next_ca.as_ref().expect("a next CA");
        assert_eq!(
            prepared.pair, start.pair,
            "preparing changes nothing served"
        );
        assert_eq!(promoted.pair.ca_cert, next.cert);
        assert_eq!(promoted.pair.ca_key, next.key);
        assert_eq!(
            promoted.old_ca.as_ref().map(|c| &c.cert),
            Some(&start.pair.ca_cert)
        );
        assert_ne!(promoted.pair.cert, start.pair.cert);
        assert_eq!(promoted.next_ca, None);
        assert_eq!(dropped.old_ca, None);
        assert_eq!(dropped.ca_bundle(), promoted.pair.ca_cert);

        // While the bundle moves from `before` to `after`, replicas serve `served`.
        let phases = [
            ("prepare", &start, &prepared, vec![&start.pair.cert]),
            (
                "promote",
                &trusted,
                &promoted,
                vec![&start.pair.cert, &promoted.pair.cert],
            ),
            ("drop", &promoted, &dropped, vec![&promoted.pair.cert]),
        ];
        for (phase, before, after, served) in phases {
            for bundle in [before.ca_bundle(), after.ca_bundle()] {
                for cert in &served {
                    assert!(
                        verifies(&bundle, cert, name),
                        "{phase}: a served certificate is not trusted by a bundle in force"
                    );
                }
            }
        }
        let cas = fingerprints(&promoted.ca_bundle());
        assert_eq!(cas.len(), 2);
        assert_eq!(cas[0], fingerprints(&next.cert)[0]);
        assert_eq!(cas[1], fingerprints(&start.pair.ca_cert)[0]);
        assert_eq!(cas[0].len(), 64);
        // The checks can fail: the new CA alone does not trust the old serving certificate.
        assert!(!verifies(&dropped.ca_bundle(), &start.pair.cert, name));
    }
}
