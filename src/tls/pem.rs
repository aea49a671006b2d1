//! Reading the PEM files TLS needs: certificate chains, private keys, trust anchors. Each
//! error names the file and what is wrong with it, since it is shown to an operator as is.

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::TlsError;

/// Where distributions keep the system's CA bundle (Debian/Ubuntu, Fedora/RHEL, openSUSE,
/// Alpine/others), tried in this order after `$SSL_CERT_FILE`.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Every certificate in `path`, in order (leaf first for a chain).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(TlsError::new(format!(
            "{}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The first private key in `path` (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::new(format!(
            "{}: no PEM private key in it (expected -----BEGIN PRIVATE KEY-----, \
             RSA PRIVATE KEY or EC PRIVATE KEY)",
            path.display()
        )),
        other => file_error(path, "private key", other),
    })
}

/// Trust anchors from the PEM bundle at `ca`, or from the system's bundle when `None`.
pub fn roots(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let path = match ca {
        Some(path) => path.to_path_buf(),
        None => system_bundle()?,
    };
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certificates(&path)?);
    if added == 0 {
        return Err(TlsError::new(format!(
            "{}: none of its certificates can serve as a trust anchor",
            path.display()
        )));
    }
    Ok(store)
}

fn system_bundle() -> Result<std::path::PathBuf, TlsError> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    from_env
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(std::path::PathBuf::from))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            TlsError::new(format!(
                "no CA file given and no system CA bundle found (looked at $SSL_CERT_FILE and {}); \
                 name the CA that signed the server's certificate",
                SYSTEM_BUNDLES.join(", ")
            ))
        })
}

fn file_error(path: &Path, what: &str, err: pem::Error) -> TlsError {
    let reason = match err {
        pem::Error::Io(io) => io.to_string(),
        other => format!("not a readable PEM {what} file ({other:?})"),
    };
    TlsError::new(format!("{}: {reason}", path.display()))
}
