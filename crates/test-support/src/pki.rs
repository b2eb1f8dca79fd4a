//! Test certificates made with rcgen (ECDSA P-256): a CA, the serving and client
//! certificates it signs, and a Secret mounted the way the kubelet mounts one.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    /// The CA's private key, for servers that sign with it (kube-controller-manager).
    pub key_pem: String,
}

/// A certificate and its private key, in PEM.
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A serving certificate for `names` (DNS names or IP addresses), with `cn` to tell
    /// certificates apart in rotation tests.
    pub fn serving(&self, cn: &str, names: &[&str]) -> CertifiedKey {
        self.leaf(
            names.iter().map(|n| n.to_string()).collect(),
            cn,
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate for user `cn` in group `organization` (how the apiserver reads
    /// them).
    pub fn client(&self, cn: &str, organization: &str) -> CertifiedKey {
        self.leaf(
            Vec::new(),
            cn,
            Some(organization),
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn leaf(
        &self,
        names: Vec<String>,
        cn: &str,
        organization: Option<&str>,
        usage: ExtendedKeyUsagePurpose,
    ) -> CertifiedKey {
        let mut params = CertificateParams::new(names).expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(organization) = organization {
            params
                .distinguished_name
                .push(DnType::OrganizationName, organization);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("certificate key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing a certificate");
        CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl CertifiedKey {
    /// Writes `tls.crt` and `tls.key` into `dir`.
    pub fn write_to(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

/// A key pair that signs rather than serves (ServiceAccount tokens): private and public PEM.
pub fn signing_key() -> (String, String) {
    let key = KeyPair::generate().expect("signing key");
    (key.serialize_pem(), key.public_key_pem())
}

/// DER of the first certificate in a PEM chain, as a TLS peer presents it.
pub fn der(cert_pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .expect("certificate PEM")
        .to_vec()
}

/// `tls.crt` and `tls.key` in a directory as the kubelet mounts a Secret:
/// `tls.crt -> ..data/tls.crt`, `..data -> ..v<N>`. A rotation writes a new version
/// directory, swaps `..data` by rename and removes the old directory, so a reader that
/// watches the file paths (not their contents) misses it.
pub struct MountedSecret {
    dir: PathBuf,
    version: u32,
}

impl MountedSecret {
    pub fn new(dir: &Path, pair: &CertifiedKey) -> Self {
        let mut mounted = Self {
            dir: dir.to_path_buf(),
            version: 0,
        };
        mounted.rotate(pair);
        symlink("..data/tls.crt", dir.join("tls.crt")).expect("tls.crt symlink");
        symlink("..data/tls.key", dir.join("tls.key")).expect("tls.key symlink");
        mounted
    }

    pub fn rotate(&mut self, pair: &CertifiedKey) {
        let previous = self.version;
        self.version += 1;
        let versioned = self.dir.join(format!("..v{}", self.version));
        std::fs::create_dir(&versioned).expect("version dir");
        pair.write_to(&versioned);
        let tmp = self.dir.join("..data_tmp");
        symlink(format!("..v{}", self.version), &tmp).expect("..data_tmp symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        if previous > 0 {
            let _ = std::fs::remove_dir_all(self.dir.join(format!("..v{previous}")));
        }
    }
}
