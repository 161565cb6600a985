//! The TLS side of `https` checks: a rustls client configuration per check,
//! built once from [`TlsCheck`] and shared by the probes of its backends.
//!
//! kube-apiservers serve `/readyz` over TLS with a certificate from the
//! cluster CA, and anonymous requests to it are allowed by default. So a
//! check either trusts that CA (`ca_file`) or, like haproxy's
//! `check-ssl verify none`, skips certificate verification — but even then
//! the handshake signatures are verified, so a peer must hold the private key
//! of the certificate it shows.
//!
//! The files are read by [`config::pem`](pem), which the configuration also uses
//! to refuse a bad file at load time, so that a typo is found before the
//! first check runs.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{
        CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    sign::SingleCertAndKey,
};

use crate::config::{TlsCheck, pem};

/// The rustls client configuration for an `https` check.
pub fn client_config(tls: &TlsCheck) -> Result<Arc<ClientConfig>> {
    let provider = pem::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS: the ring provider offers no safe protocol version")?;

    let builder = match (tls.insecure_skip_verify, &tls.ca_file) {
        (true, Some(ca)) => bail!(
            "TLS: insecure_skip_verify contradicts ca_file {}: choose one",
            ca.display()
        ),
        (true, None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(&provider))),
        (false, Some(ca)) => builder.with_root_certificates(pem::root_store(ca)?),
        // There is no built-in list of public CAs: apiservers are signed by
        // the cluster's own CA, which only `ca_file` can name.
        (false, None) => {
            bail!("TLS: verifying the backends' certificates needs a ca_file")
        }
    };

    let mut config = match (&tls.cert_file, &tls.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => builder.with_client_cert_resolver(Arc::new(
            SingleCertAndKey::from(pem::client_key(cert, key, &provider)?),
        )),
        (Some(cert), None) => bail!("TLS: cert_file {} needs a key_file", cert.display()),
        (None, Some(key)) => bail!("TLS: key_file {} needs a cert_file", key.display()),
    };
    // The probe speaks HTTP/1.1 only; a server that would pick h2 must see
    // that it cannot.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `insecure_skip_verify`: any certificate chain and name is accepted, but
/// the handshake signature must be valid for the certificate presented.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyCertificate {
    fn new(provider: &CryptoProvider) -> Self {
        AnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        path::PathBuf,
        sync::atomic::{AtomicU32, Ordering},
    };

    use rustls::{
        ServerConfig,
        pki_types::{PrivateKeyDer, pem::PemObject},
        server::{ClientHello, ResolvesServerCert},
        sign::CertifiedKey,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::config::{CheckKind, Config};

    /// A file under the temp directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn with(contents: &str) -> TempFile {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "xdplb-tls-test-{}-{}.pem",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    /// A self-signed certificate for `localhost`/127.0.0.1: (cert, key) PEM.
    /// Each has its own subject name, as two clusters' CAs would.
    fn self_signed() -> (String, String) {
        static N: AtomicU32 = AtomicU32::new(0);
        let mut params =
            rcgen::CertificateParams::new(["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("valid names");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("xdplb-test-ca-{}", N.fetch_add(1, Ordering::Relaxed)),
        );
        let key = rcgen::KeyPair::generate().expect("rcgen generates a key");
        let cert = params
            .self_signed(&key)
            .expect("rcgen signs the certificate");
        (cert.pem(), key.serialize_pem())
    }

    fn insecure() -> TlsCheck {
        TlsCheck {
            insecure_skip_verify: true,
            ca_file: None,
            cert_file: None,
            key_file: None,
            sni: None,
        }
    }

    fn with_ca(ca: &TempFile) -> TlsCheck {
        TlsCheck {
            insecure_skip_verify: false,
            ca_file: Some(ca.0.clone()),
            ..insecure()
        }
    }

    #[track_caller]
    fn assert_err(r: Result<Arc<ClientConfig>>, want: &str) {
        match r {
            Ok(_) => panic!("expected an error containing {want:?}, the config was built"),
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(
                    msg.contains(want),
                    "expected {want:?} in the error, got {msg:?}"
                );
            }
        }
    }

    #[test]
    fn insecure_config_builds_and_offers_http1() {
        let c = client_config(&insecure()).expect("insecure config builds");
        assert_eq!(c.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    #[test]
    fn ca_file_and_client_certificate_load() {
        let (cert, key) = self_signed();
        let (cert, key) = (TempFile::with(&cert), TempFile::with(&key));
        client_config(&with_ca(&cert)).expect("a CA file from rcgen loads");
        client_config(&TlsCheck {
            cert_file: Some(cert.0.clone()),
            key_file: Some(key.0.clone()),
            ..with_ca(&cert)
        })
        .expect("a client certificate and its key load");
        client_config(&TlsCheck {
            cert_file: Some(cert.0.clone()),
            key_file: Some(key.0.clone()),
            ..insecure()
        })
        .expect("a client certificate works without verification too");
    }

    #[test]
    fn bad_files_are_named() {
        let (cert, key) = self_signed();
        let (cert, key) = (TempFile::with(&cert), TempFile::with(&key));
        let garbage = TempFile::with("this is not PEM\n");
        let broken =
            TempFile::with("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
        let g = garbage.0.display().to_string();

        assert_err(
            client_config(&with_ca(&garbage)),
            &format!("ca_file {g}: no PEM certificate"),
        );
        assert_err(
            client_config(&with_ca(&broken)),
            &format!("ca_file {}: not valid PEM", broken.0.display()),
        );
        let missing = TlsCheck {
            ca_file: Some("/nonexistent/ca.crt".into()),
            ..with_ca(&cert)
        };
        assert_err(
            client_config(&missing),
            "ca_file /nonexistent/ca.crt: cannot read: ",
        );
        // A key where the certificate should be, and the other way round.
        assert_err(
            client_config(&TlsCheck {
                cert_file: Some(key.0.clone()),
                key_file: Some(key.0.clone()),
                ..insecure()
            }),
            &format!("cert_file {}: no PEM certificate", key.0.display()),
        );
        assert_err(
            client_config(&TlsCheck {
                cert_file: Some(cert.0.clone()),
                key_file: Some(cert.0.clone()),
                ..insecure()
            }),
            &format!("key_file {}: no PEM private key", cert.0.display()),
        );
        // A key that is not the certificate's.
        let (_, other_key) = self_signed();
        let other_key = TempFile::with(&other_key);
        assert_err(
            client_config(&TlsCheck {
                cert_file: Some(cert.0.clone()),
                key_file: Some(other_key.0.clone()),
                ..insecure()
            }),
            &format!(
                "cert_file {} with key_file {}",
                cert.0.display(),
                other_key.0.display()
            ),
        );
        assert_err(
            client_config(&TlsCheck {
                cert_file: Some(cert.0.clone()),
                ..insecure()
            }),
            "needs a key_file",
        );
        assert_err(
            client_config(&TlsCheck {
                insecure_skip_verify: false,
                ..insecure()
            }),
            "needs a ca_file",
        );
        assert_err(
            client_config(&TlsCheck {
                insecure_skip_verify: true,
                ..with_ca(&cert)
            }),
            "contradicts ca_file",
        );
    }

    /// What the configuration accepted at load time builds here: both read
    /// the files through `config::pem`.
    #[test]
    fn a_checked_file_builds() {
        let (cert, key) = self_signed();
        let (cert, key) = (TempFile::with(&cert), TempFile::with(&key));
        let (cert, key) = (cert.0.display(), key.0.display());
        let text = format!(
            "[[service]]\nvip = \"10.0.0.100\"\n  [[service.backend]]\n  address = \"10.0.0.1:6443\"\n  [service.check]\n  ca_file = \"{cert}\"\n  cert_file = \"{cert}\"\n  key_file = \"{key}\"\n  sni = \"localhost\"\n"
        );
        let c = Config::from_toml_str(&text, "xdplb.toml").unwrap_or_else(|e| panic!("{e:#}"));
        let CheckKind::Https { tls, .. } = &c.services[0].check.kind else {
            panic!(
                "a check with a ca_file is https, got {:?}",
                c.services[0].check.kind
            )
        };
        client_config(tls).expect("a checked TLS configuration builds");
    }

    /// Serves one certificate, signing with `key` — which may not be the
    /// certificate's (rustls' own builders refuse that, hence a resolver).
    #[derive(Debug)]
    struct Serve(Arc<CertifiedKey>);

    impl ResolvesServerCert for Serve {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    fn server(cert_pem: &str, key_pem: &str) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap())
            .unwrap();
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Serve(Arc::new(CertifiedKey::new(certs, key)))));
        TlsAcceptor::from(Arc::new(config))
    }

    /// One handshake over an in-memory pipe; the client's error, if any.
    async fn handshake(
        client: Arc<ClientConfig>,
        server: TlsAcceptor,
        sni: &str,
    ) -> Result<(), String> {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(async move {
            let mut tls = server.accept(s).await.ok()?;
            tls.write_all(b"ok").await.ok()?;
            tls.shutdown().await.ok()
        });
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let result = async {
            let mut tls = TlsConnector::from(client).connect(name, c).await?;
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        }
        .await;
        serving.abort();
        match result {
            Ok(buf) if buf == b"ok" => Ok(()),
            Ok(buf) => Err(format!("unexpected data {buf:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    #[tokio::test]
    async fn handshakes_verify_what_they_should() {
        let (cert, key) = self_signed();
        let (other_cert, other_key) = self_signed();
        let ca = TempFile::with(&cert);

        let any = client_config(&insecure()).unwrap();
        handshake(any.clone(), server(&cert, &key), "localhost")
            .await
            .expect("insecure_skip_verify accepts a self-signed certificate");
        handshake(any.clone(), server(&cert, &key), "some-other-name")
            .await
            .expect("insecure_skip_verify accepts any name");
        let forged = handshake(any, server(&cert, &other_key), "localhost").await;
        assert!(
            matches!(&forged, Err(e) if e.contains("invalid peer certificate: BadSignature")),
            "insecure_skip_verify must still check the handshake signature (a server signing with another key), got {forged:?}"
        );

        let trusting = client_config(&with_ca(&ca)).unwrap();
        handshake(trusting.clone(), server(&cert, &key), "localhost")
            .await
            .expect("the certificate of the CA in ca_file is trusted");
        let wrong_ca = handshake(
            trusting.clone(),
            server(&other_cert, &other_key),
            "localhost",
        )
        .await;
        assert!(
            matches!(&wrong_ca, Err(e) if e.contains("UnknownIssuer")),
            "a certificate from another CA must be refused as UnknownIssuer, got {wrong_ca:?}"
        );
        let wrong_name = handshake(trusting, server(&cert, &key), "kubernetes").await;
        assert!(
            matches!(&wrong_name, Err(e) if e.contains("not valid for name")),
            "a name the certificate does not carry must be refused, got {wrong_name:?}"
        );
    }
}
