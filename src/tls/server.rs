//! The listener's TLS (HTTPS and WSS): the certificate and key it serves, reloaded on
//! request (SIGHUP) without touching open connections, and the per-shard handshake.
//!
//! The current `ServerConfig` sits behind a mutex with a generation number beside it. A
//! shard keeps its own copy of the acceptor and takes the mutex only when the generation
//! moved, so a handshake costs one atomic load, not a lock. A reload builds a complete new
//! configuration first: a bad file leaves the one in use untouched. Sessions already
//! established keep the keys they negotiated; only new handshakes see a new certificate.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_rustls::TlsAcceptor;
use rustls::ServerConfig;

use super::{identity_error, pem, provider, Stream, TlsError, VERSIONS};
use crate::rt::TcpStream;

/// The one application protocol spoken: WebSocket starts as an HTTP/1.1 upgrade.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The listener's certificate, shared by every shard.
#[derive(Clone)]
pub struct ServerTls {
    shared: Arc<Shared>,
}

struct Shared {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<Arc<ServerConfig>>,
    /// Bumped after `current` changed.
    generation: AtomicU64,
}

impl ServerTls {
    /// Reads and checks the certificate chain and its key (they must match).
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let config = build(cert, key)?;
        Ok(ServerTls {
            shared: Arc::new(Shared {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                current: Mutex::new(config),
                generation: AtomicU64::new(0),
            }),
        })
    }

    /// Reads the files again; new handshakes use them from now on. On error the
    /// certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.shared.cert, &self.shared.key)?;
        *self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = config;
        self.shared.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    pub fn cert_path(&self) -> &Path {
        &self.shared.cert
    }

    /// A shard's handle for accepting connections.
    pub fn acceptor(&self) -> Acceptor {
        let config = Arc::clone(
            &self
                .shared
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        Acceptor {
            shared: Arc::clone(&self.shared),
            cached: RefCell::new((
                self.shared.generation.load(Ordering::Acquire),
                TlsAcceptor::from(config),
            )),
        }
    }
}

/// One shard's view of the listener certificate (not `Send`: each shard has its own).
pub struct Acceptor {
    shared: Arc<Shared>,
    cached: RefCell<(u64, TlsAcceptor)>,
}

impl Acceptor {
    /// Runs the server side of the handshake on an accepted connection.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Stream> {
        let tls = self.current().accept(tcp).await?;
        Ok(Stream::Tls(Box::new(tls.into())))
    }

    fn current(&self) -> TlsAcceptor {
        let generation = self.shared.generation.load(Ordering::Acquire);
        let mut cached = self.cached.borrow_mut();
        if cached.0 != generation {
            let config = Arc::clone(
                &self
                    .shared
                    .current
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            *cached = (generation, TlsAcceptor::from(config));
        }
        cached.1.clone()
    }
}

fn build(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = pem::certificates(cert)?;
    let key_der = pem::private_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::new(format!("TLS set-up: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| identity_error(cert, key, e))?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}
