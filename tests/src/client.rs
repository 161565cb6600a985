//! A real HTTPS client for the lab, as kubectl would be: TLS (rustls) to
//! VIP:6443 or a backend, HTTP/1.1 with keep-alive. The fake apiservers'
//! certificates are self-signed, so verification is off (lab only).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result, anyhow};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, body::Bytes, client::conn::http1};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Every step of a request is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// The `x-backend` header: which fake apiserver answered.
    pub backend: String,
    pub body: String,
}

/// One TLS connection carrying any number of requests (keep-alive).
pub struct Conn {
    sender: http1::SendRequest<Empty<Bytes>>,
    pub local: SocketAddr,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Conn> {
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))?
            .with_context(|| format!("connect to {addr}"))?;
        let local = tcp.local_addr()?;
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = tokio::time::timeout(TIMEOUT, connector().connect(name, tcp))
            .await
            .map_err(|_| anyhow!("TLS handshake with {addr} timed out"))?
            .with_context(|| format!("TLS handshake with {addr}"))?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(Conn { sender, local })
    }

    pub async fn get(&mut self, path: &str) -> Result<Response> {
        let req = Request::get(path)
            .header("host", "kubernetes")
            .body(Empty::new())?;
        let fut = async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let backend = resp
                .headers()
                .get("x-backend")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok(Response {
                status,
                backend,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("GET {path} timed out"))?
    }
}

/// One request on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    Conn::open(addr).await?.get(path).await
}

fn connector() -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(
            provider.signature_verification_algorithms,
        )))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Trusts any certificate but still checks handshake signatures, so TLS
/// itself is exercised end to end.
#[derive(Debug)]
struct AcceptAnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Runs `f` on a fresh single-threaded tokio runtime (inside whatever
/// namespace the calling thread is in).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime")
        .block_on(f)
}
