//! TLS for both directions, with rustls (ring provider, no OpenSSL): the listener's
//! HTTPS/WSS ([`server`]) and the link to Valkey ([`client`]), the PEM files both read
//! ([`pem`]), and the one [`Stream`] type a connection holds whether it is plain or TLS.
//!
//! It owns certificates, keys, trust anchors and handshakes; it knows nothing of HTTP,
//! WebSocket or RESP, and reads no configuration: callers hand it file paths and names.
//! A plain connection stays the runtime's TCP stream inside [`Stream::Plain`]: one branch
//! per read or write, no boxing, no extra copy.

pub mod client;
mod pem;
pub mod server;

use std::fmt;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::rt::TcpStream;

/// A certificate, key or trust-anchor problem, found at start-up or on a reload.
#[derive(Debug)]
pub struct TlsError(String);

impl TlsError {
    fn new(text: impl Into<String>) -> TlsError {
        TlsError(text.into())
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// One connection's byte stream: the TCP stream itself, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a TLS session is a few hundred bytes that a plain connection should not carry.
    Tls(Box<futures_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP stream underneath (peer address, socket options).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Writes all of `bytes` and, over TLS, pushes out the records they became (rustls keeps
    /// what the socket did not take until flushed).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.write_all(bytes).await,
            Stream::Tls(tls) => {
                tls.write_all(bytes).await?;
                tls.flush().await
            }
        }
    }

    /// Ends our direction: over TLS with a `close_notify` alert first, so the peer can tell
    /// a complete stream from a cut one.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.shutdown(Shutdown::Write).await.map_err(io::Error::from),
            Stream::Tls(tls) => tls.close().await,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_close(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_close(cx),
        }
    }
}

/// The rustls error inside an I/O error from a TLS stream, if that is what it is: a
/// certificate refused, an alert from the peer, bytes that are not TLS.
pub fn tls_cause(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A certificate and key rustls would not pair up, explained.
fn identity_error(cert: &std::path::Path, key: &std::path::Path, err: rustls::Error) -> TlsError {
    let reason = match err {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not belong to the certificate".to_owned()
        }
        other => other.to_string(),
    };
    TlsError::new(format!(
        "{} with key {}: {reason}",
        cert.display(),
        key.display()
    ))
}

fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2; nothing older.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
