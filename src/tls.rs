//! The serving certificate: loaded from PEM files, swapped atomically when the files change.
//!
//! Mounted Secrets change by swapping a `..data` symlink, which notifications on the file
//! path miss, so the files' contents are polled and compared instead.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a PEM certificate chain: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path} is not a PEM private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("private key {key} does not match certificate {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider for every TLS stack in the process: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and key pair read from disk, with the bytes they came from.
struct Loaded {
    key: Arc<CertifiedKey>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

/// Serves whatever certificate was loaded last; none (handshakes fail) until the first.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// The current leaf's notAfter, seconds since the Unix epoch; 0 when none or unreadable.
    not_after: AtomicI64,
    provider: Arc<CryptoProvider>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl CertResolver {
    pub fn empty() -> Self {
        Self {
            current: RwLock::new(None),
            not_after: AtomicI64::new(0),
            provider: provider(),
        }
    }

    /// When the certificate being served expires, in seconds since the Unix epoch.
    pub fn not_after(&self) -> Option<i64> {
        Some(self.not_after.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().and_then(|k| k.clone())
    }

    pub fn is_loaded(&self) -> bool {
        self.current().is_some()
    }

    fn swap(&self, key: Arc<CertifiedKey>) {
        let not_after = key
            .cert
            .first()
            .and_then(|leaf| not_after(leaf))
            .unwrap_or(0);
        if let Ok(mut current) = self.current.write() {
            *current = Some(key);
            self.not_after.store(not_after, Ordering::Relaxed);
        }
    }

    /// Installs a PEM pair from memory (a Secret); on error the previous pair stays.
    pub fn install_pem(
        &self,
        cert_pem: &[u8],
        key_pem: &[u8],
        origin: &Path,
    ) -> Result<(), TlsError> {
        let key = certified_key(cert_pem, key_pem, origin, origin, &self.provider)?;
        self.swap(key);
        Ok(())
    }

    /// rustls server config offering HTTP/1.1 only: a kube-apiserver offered h2 takes it and
    /// multiplexes every review over one connection to one replica, defeating the spread
    /// of load over replicas that HTTP/1.1 connection pooling gives (kubernetes#75791).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The leaf certificate's notAfter, seconds since the Unix epoch.
fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    x509_parser::parse_x509_certificate(der.as_ref())
        .ok()
        .map(|(_, cert)| cert.validity().not_after.timestamp())
}

/// The files to serve from, and the resolver that serves their latest good contents.
pub struct CertificateFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
    resolver: Arc<CertResolver>,
    last: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl CertificateFiles {
    /// Loads the pair once; a failure here is fatal at start-up.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let resolver = CertResolver::empty();
        let loaded = load_pair(cert_file, key_file, &resolver.provider)?;
        resolver.swap(loaded.key);
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            resolver: Arc::new(resolver),
            last: std::sync::Mutex::new((loaded.cert_pem, loaded.key_pem)),
        })
    }

    pub fn resolver(&self) -> Arc<CertResolver> {
        Arc::clone(&self.resolver)
    }

    /// Re-reads the files; swaps in the new pair when it changed and is valid.
    /// Returns `Ok(true)` when a new pair was installed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let cert_pem = read(&self.cert_file)?;
        let key_pem = read(&self.key_file)?;
        {
            let last = self.last.lock().map_err(|_| TlsError::NoCertificate {
                path: self.cert_file.clone(),
            })?;
            if last.0 == cert_pem && last.1 == key_pem {
                return Ok(false);
            }
        }
        let key = certified_key(
            &cert_pem,
            &key_pem,
            &self.cert_file,
            &self.key_file,
            &self.resolver.provider,
        );
        // Remember the bytes even when they are broken, so a bad pair is reported once.
        if let Ok(mut last) = self.last.lock() {
            *last = (cert_pem, key_pem);
        }
        self.resolver.swap(key?);
        Ok(true)
    }

    /// Polls the files until `stop` fires, counting reloads in `metrics`.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let this = Arc::clone(&self);
            let result = tokio::task::spawn_blocking(move || this.reload()).await;
            match result {
                Ok(Ok(true)) => {
                    metrics.certificate_reloaded(true);
                    tracing::info!(cert = %self.cert_file.display(), "serving certificate reloaded");
                }
                Ok(Ok(false)) => {}
                Ok(Err(error)) => {
                    metrics.certificate_reloaded(false);
                    tracing::error!(%error, "new certificate not loaded; still serving the previous one");
                }
                Err(error) => tracing::error!(%error, "certificate reload task failed"),
            }
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    let key = certified_key(&cert_pem, &key_pem, cert_file, key_file, provider)?;
    Ok(Loaded {
        key,
        cert_pem,
        key_pem,
    })
}

fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: cert_file.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey {
        path: key_file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let certified =
        CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
            cert: cert_file.to_path_buf(),
            key: key_file.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(Arc::new(certified))
}
