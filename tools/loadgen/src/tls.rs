//! TLS for `https://` targets (`--tls-ca FILE`): a rustls session over the same
//! non-blocking sockets, behind one [`Stream`] type that the HTTP and WebSocket clients
//! read and write like the plain socket.
//!
//! The handshake runs while the socket is still blocking (connection set-up). Afterwards
//! rustls may hold encrypted bytes the socket did not take; [`Stream::pending`] tells the
//! callers to keep asking epoll for writability until [`Stream::push`] wrote them.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// How to speak TLS to the relay: whom to trust and the name to verify.
#[derive(Clone, Debug)]
pub struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Tls {
    /// Trusts the CA certificates in the PEM file `ca`; verifies the relay as `host`.
    pub fn new(ca: &str, host: &str) -> Result<Tls, String> {
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--tls-ca {ca}: {e:?}"))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("--tls-ca {ca}: no usable CA certificate in it"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| format!("--url: `{host}` is not a name TLS can verify"))?;
        Ok(Tls {
            config: Arc::new(config),
            name,
        })
    }

    /// Runs the handshake on a connected, still blocking socket.
    pub fn connect(&self, tcp: TcpStream) -> io::Result<Stream> {
        let conn = ClientConnection::new(Arc::clone(&self.config), self.name.clone())
            .map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// A connection's byte stream: the socket, or a TLS session over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.sock,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }

    /// Encrypted bytes waiting for the socket.
    pub fn pending(&self) -> bool {
        matches!(self, Stream::Tls(tls) if tls.conn.wants_write())
    }

    /// Writes what [`Stream::pending`] holds, as far as the socket takes it.
    pub fn push(&mut self) -> io::Result<()> {
        if let Stream::Tls(tls) = self {
            while tls.conn.wants_write() {
                match tls.conn.write_tls(&mut tls.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}
