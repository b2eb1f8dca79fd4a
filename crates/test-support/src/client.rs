//! A real TLS client for the webhook: rustls pinned to the test CA, hyper HTTP/1.1 with
//! keep-alive (one connection, many requests), as the apiserver talks to us.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
}

impl TlsClient {
    pub fn new(ca_pem: &str) -> Self {
        Self::with_alpn(ca_pem, vec![b"http/1.1".to_vec()])
    }

    pub fn with_alpn(ca_pem: &str, alpn: Vec<Vec<u8>>) -> Self {
        Self::build(ca_pem, alpn, true)
    }

    /// As the kube-apiserver connects: HTTP/1.1 and no TLS session resumption (Go's
    /// `tls.Config` without a `ClientSessionCache`), so every connection is a full handshake
    /// and sees the certificate the server serves now.
    pub fn without_resumption(ca_pem: &str) -> Self {
        Self::build(ca_pem, vec![b"http/1.1".to_vec()], false)
    }

    fn build(ca_pem: &str, alpn: Vec<Vec<u8>>, resume: bool) -> Self {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn;
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Self {
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    /// A TLS stream to `addr`, verifying the server certificate for `localhost`.
    pub async fn tls(&self, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("server name");
        self.connector.connect(name, tcp).await
    }

    /// The end-entity certificate the server presents to a new connection.
    pub async fn peer_certificate(&self, addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let stream = self.tls(addr).await?;
        let (_, conn) = stream.get_ref();
        Ok(conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default())
    }

    /// An HTTP/1.1 keep-alive connection.
    pub async fn connect(&self, addr: SocketAddr) -> Connection {
        let stream = self.tls(addr).await.expect("TLS connection to the webhook");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Connection { sender, driver }
    }

    /// One request on a fresh connection.
    pub async fn post(
        &self,
        addr: SocketAddr,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Response {
        self.connect(addr)
            .await
            .post(path, content_type, body)
            .await
    }
}

pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Connection {
    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Response {
        let request = Request::post(path)
            .header("host", "localhost")
            .header("content-type", content_type)
            .body(Full::new(body.into()))
            .expect("request");
        self.send(request).await
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Response {
        self.sender
            .ready()
            .await
            .expect("connection ready for another request");
        let response = self.sender.send_request(request).await.expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Response {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// True while the server keeps the connection open.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed() && !self.driver.is_finished()
    }
}
