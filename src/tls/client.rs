//! The client side of TLS, for the link to Valkey: whom to trust (a CA file or the
//! system's bundle), the name to verify, an optional client certificate for mutual TLS,
//! the handshake on a shard's socket, and a blocking probe run once at start-up so that a
//! certificate problem stops the relay instead of leaving it retrying forever.

use std::io::{self, Read, Write};
use std::net::{TcpStream as StdTcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::TlsConnector;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use super::{identity_error, pem, provider, tls_cause, Stream, TlsError, VERSIONS};
use crate::rt::TcpStream;

/// How to speak TLS to one server.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

/// Why the start-up probe failed.
#[derive(Debug)]
pub enum ProbeError {
    /// The server could not be reached (refused, timed out): it may come up later.
    Unreachable(io::Error),
    /// The server was reached and the TLS session failed: a certificate refused (by either
    /// side), a name that does not match, a server that does not speak TLS.
    Refused(String),
}

impl ClientTls {
    /// `ca`: PEM bundle of trust anchors (`None`: the system's). `identity`: certificate
    /// chain and key presented when the server asks for one. `server_name`: the DNS name or
    /// IP address the server's certificate must be valid for.
    pub fn new(
        ca: Option<&Path>,
        identity: Option<(&Path, &Path)>,
        server_name: &str,
    ) -> Result<ClientTls, TlsError> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
            TlsError::new(format!(
                "`{server_name}` is neither a DNS name nor an IP address"
            ))
        })?;
        let roots = pem::roots(ca)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::new(format!("TLS set-up: {e}")))?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(pem::certificates(cert)?, pem::private_key(key)?)
                .map_err(|e| identity_error(cert, key, e))?,
        };
        Ok(ClientTls {
            config: Arc::new(config),
            name,
        })
    }

    /// Runs the client side of the handshake on a connected socket.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<Stream> {
        let tls = TlsConnector::from(Arc::clone(&self.config))
            .connect(self.name.clone(), tcp)
            .await?;
        Ok(Stream::Tls(Box::new(tls.into())))
    }

    /// Connects to `addr` with blocking I/O, completes the handshake, sends `hello` and waits
    /// for the first byte of an answer: a server that refuses our certificate only says so
    /// after the handshake (TLS 1.3), on the first read.
    pub fn probe(&self, addr: &str, timeout: Duration, hello: &[u8]) -> Result<(), ProbeError> {
        let mut tcp = connect_std(addr, timeout).map_err(ProbeError::Unreachable)?;
        let mut session =
            rustls::ClientConnection::new(Arc::clone(&self.config), self.name.clone())
                .map_err(|e| ProbeError::Refused(e.to_string()))?;
        let mut tls = rustls::Stream::new(&mut session, &mut tcp);
        let mut first = [0u8; 1];
        let outcome = tls
            .write_all(hello)
            .and_then(|()| tls.flush())
            .and_then(|()| tls.read(&mut first));
        let handshaking = session.is_handshaking();
        match outcome {
            Ok(0) => Err(ProbeError::Refused(
                "the server closed the connection right after the handshake".into(),
            )),
            Ok(_) => Ok(()),
            Err(e) => match tls_cause(&e) {
                Some(cause) => Err(ProbeError::Refused(cause.to_string())),
                None if e.kind() == io::ErrorKind::UnexpectedEof => Err(ProbeError::Refused(
                    "the server closed the connection during the handshake".into(),
                )),
                // Connected, and no TLS answer: a server that is up but speaks something
                // else there waits for more of what it takes for a command.
                None if handshaking && is_timeout(&e) => Err(ProbeError::Refused(format!(
                    "no TLS handshake answer within {timeout:?}"
                ))),
                None => Err(ProbeError::Unreachable(e)),
            },
        }
    }
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn connect_std(addr: &str, timeout: Duration) -> io::Result<StdTcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    for candidate in addr.to_socket_addrs()? {
        match StdTcpStream::connect_timeout(&candidate, timeout) {
            Ok(tcp) => {
                tcp.set_read_timeout(Some(timeout))?;
                tcp.set_write_timeout(Some(timeout))?;
                tcp.set_nodelay(true)?;
                return Ok(tcp);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
