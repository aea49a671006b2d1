//! How a shard reaches Valkey: a TCP connection, then TLS over it when `valkey.use_tls`,
//! and the start-up check that turns a certificate problem into a clear refusal to start.
//!
//! The link ([`super::link`]) gets a ready [`Stream`] from [`open`] and never looks at
//! which kind it is; certificates and handshakes are `tls`'s, this module only says which
//! files and names the Valkey settings ask for.

use std::path::Path;
use std::time::Duration;

use super::link::LinkError;
use crate::config::ValkeyConfig;
use crate::rt::TcpStream;
use crate::tls::client::{ClientTls, ProbeError};
use crate::tls::{tls_cause, Stream};

/// The TLS settings `cfg` asks for (`None` without `valkey.use_tls`); a file that cannot be
/// used is an error naming it.
pub fn client_tls(cfg: &ValkeyConfig) -> Result<Option<ClientTls>, String> {
    if !cfg.use_tls {
        return Ok(None);
    }
    let ca = (!cfg.ca_path.is_empty()).then(|| Path::new(&cfg.ca_path));
    let identity = (!cfg.tls_cert_file.is_empty())
        .then(|| (Path::new(&cfg.tls_cert_file), Path::new(&cfg.tls_key_file)));
    ClientTls::new(ca, identity, server_name(cfg))
        .map(Some)
        .map_err(|e| format!("valkey TLS for {}: {e}", address(cfg)))
}

/// Once, before the shards start: connects with TLS and waits for Valkey's answer to a
/// `PING`. A session that fails (a certificate either side refuses, a name that does not
/// match, a Valkey without TLS on that port) is an error saying so; an unreachable Valkey
/// is not (it may come up later, and the shards keep trying), only logged.
pub fn check_at_start(cfg: &ValkeyConfig, tls: &ClientTls) -> Result<(), String> {
    let ping = redis::cmd("PING").get_packed_command();
    match tls.probe(&address(cfg), cfg.connect_timeout, &ping) {
        Ok(()) => Ok(()),
        Err(ProbeError::Unreachable(e)) => {
            crate::log_line!(
                "valkey TLS: {} not reachable at start ({e}); its certificate is checked \
                 when it is",
                address(cfg)
            );
            Ok(())
        }
        Err(ProbeError::Refused(reason)) => Err(format!(
            "valkey TLS: the session with {} (verified as `{}`) failed: {reason}. Check \
             valkey.ca_path (the CA that signed Valkey's certificate), valkey.tls_server_name \
             (a name in that certificate), valkey.tls_cert_file and valkey.tls_key_file (when \
             Valkey asks for a client certificate), and that this port speaks TLS",
            address(cfg),
            server_name(cfg)
        )),
    }
}

/// A connected stream to Valkey, TLS when configured; the handshake counts against `limit`.
pub async fn open(
    cfg: &ValkeyConfig,
    tls: Option<&ClientTls>,
    limit: Duration,
) -> Result<Stream, LinkError> {
    let connect = async {
        let tcp = TcpStream::connect(address(cfg).as_str())
            .await
            .map_err(|e| LinkError::Io(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => tls.connect(tcp).await.map_err(|e| match tls_cause(&e) {
                Some(cause) => LinkError::Io(format!("TLS: {cause}")),
                None => LinkError::Io(format!("TLS handshake: {e}")),
            }),
        }
    };
    futures_lite::future::or(connect, async {
        crate::rt::sleep(limit).await;
        Err(LinkError::Timeout)
    })
    .await
}

fn address(cfg: &ValkeyConfig) -> String {
    format!("{}:{}", cfg.host, cfg.port)
}

fn server_name(cfg: &ValkeyConfig) -> &str {
    if cfg.tls_server_name.is_empty() {
        &cfg.host
    } else {
        &cfg.tls_server_name
    }
}
