//! The PEM files of an `https` check: CA certificates, a client certificate
//! and its key. The configuration reads them when it is loaded, so that a
//! wrong path or a key where the certificate should be is refused with the
//! line that names it; the health checks build their TLS client from the
//! same functions, so a file that passed here cannot fail there.

use std::{path::Path, sync::Arc};

use anyhow::{Context, Result, anyhow, bail};
use rustls::{
    RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};

/// The crypto provider of the checks' TLS. Named rather than installed
/// process-wide, so nothing depends on which provider another crate happens
/// to enable; and one place names it, so a key is loaded at start by the
/// provider that will sign with it.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of the PEM file `path`, at least one; `what` (the
/// config key) and the path name it in errors.
pub fn load_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        bail!(
            "{what} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        );
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of the PEM file `path`.
pub fn load_key(what: &str, path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow!(
            "{what} {}: no PEM private key (-----BEGIN PRIVATE KEY-----) in it",
            path.display()
        ),
        e => pem_error(what, path, e),
    })
}

fn pem_error(what: &str, path: &Path, e: rustls::pki_types::pem::Error) -> anyhow::Error {
    match e {
        rustls::pki_types::pem::Error::Io(io) => {
            anyhow!("{what} {}: cannot read: {io}", path.display())
        }
        e => anyhow!("{what} {}: not valid PEM: {e}", path.display()),
    }
}

/// The CA certificates of `ca_file`, as the trust anchors of a check.
pub fn root_store(ca: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("ca_file", ca)? {
        roots
            .add(cert)
            .with_context(|| format!("ca_file {}: unusable CA certificate", ca.display()))?;
    }
    Ok(roots)
}

/// The client certificate of `cert_file` with the key of `key_file`, which
/// must be the certificate's and one `provider` can sign with.
pub fn client_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey> {
    CertifiedKey::from_der(
        load_certs("cert_file", cert)?,
        load_key("key_file", key)?,
        provider,
    )
    .with_context(|| {
        format!(
            "TLS: client certificate: cert_file {} with key_file {}",
            cert.display(),
            key.display()
        )
    })
}
