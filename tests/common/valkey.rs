//! A real valkey-server (or redis-server) per test, on its own port and data directory,
//! and a plain RESP client to look at what the relay wrote.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// The server binary: `$PULSAR_TEST_VALKEY_SERVER` (exported by `tools/test.sh`), else
/// `valkey-server` or `redis-server` on `PATH`.
pub fn valkey_server_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("PULSAR_TEST_VALKEY_SERVER").filter(|p| !p.is_empty()) {
        let path = std::path::PathBuf::from(path);
        assert!(
            path.is_file(),
            "PULSAR_TEST_VALKEY_SERVER={} does not exist; run ./tools/test.sh, which provisions one",
            path.display()
        );
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["valkey-server", "redis-server"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the persistence tests need a real valkey-server: none in PULSAR_TEST_VALKEY_SERVER, \
         and neither valkey-server nor redis-server is on PATH. Run ./tools/test.sh (it \
         provisions one and exports PULSAR_TEST_VALKEY_SERVER), or set that variable to a \
         valkey-server binary."
    )
}

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None` is the null array.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// Simple and bulk strings as text.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    pub fn items(&self) -> &[Resp] {
        match self {
            Resp::Array(Some(items)) => items,
            Resp::Array(None) => &[],
            other => panic!("expected an array reply, got {other:?}"),
        }
    }
}

/// One entry of `XRANGE`: ID and its field/value pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

impl StreamEntry {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal blocking RESP client (one command at a time).
pub struct RespClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RespClient {
    pub fn connect(port: u16, timeout: Duration) -> std::io::Result<RespClient> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(RespClient {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn command(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out)?;
        self.read_reply()
    }

    fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "Valkey closed the connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn read_reply(&mut self) -> std::io::Result<Resp> {
        let line = self.line()?;
        let bad = || std::io::Error::new(ErrorKind::InvalidData, format!("bad RESP line {line:?}"));
        let (kind, rest) = line.split_at(1.min(line.len()));
        Ok(match kind {
            "+" => Resp::Simple(rest.to_string()),
            "-" => Resp::Error(rest.to_string()),
            ":" => Resp::Int(rest.parse().map_err(|_| bad())?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Resp::Bulk(None)
                } else {
                    let len = len as usize;
                    while self.buf.len() < len + 2 {
                        self.fill()?;
                    }
                    let data = self.buf[..len].to_vec();
                    self.buf.drain(..len + 2);
                    Resp::Bulk(Some(data))
                }
            }
            "*" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Resp::Array(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.read_reply()?);
                    }
                    Resp::Array(Some(items))
                }
            }
            _ => return Err(bad()),
        })
    }
}

static VALKEY_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A `valkey-server` on its own ephemeral port and its own data directory, with AOF and
/// `appendfsync always` (so every acknowledged write is on disk). Killed with SIGKILL and
/// its directory removed on drop.
pub struct Valkey {
    child: Option<Child>,
    pub port: u16,
    /// Holds `data/` (the server's `--dir`) and `valkey.log` (its output, all runs).
    root: std::path::PathBuf,
    extra: Vec<String>,
    password: Option<String>,
}

impl Valkey {
    pub fn start() -> Valkey {
        Valkey::start_with(&[])
    }

    /// Starts one with extra command-line arguments (e.g. `["--requirepass", "pw"]`).
    pub fn start_with(extra: &[&str]) -> Valkey {
        let root = std::env::temp_dir().join(format!(
            "pulsar-test-valkey-{}-{}-{}",
            std::process::id(),
            VALKEY_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(root.join("data")).expect("create the Valkey directory");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let password = extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| extra.get(i + 1).cloned());
        let mut valkey = Valkey {
            child: None,
            port: 0,
            root,
            extra,
            password,
        };
        // The port is free when we look, but another process may take it before the server
        // binds it: then try another one.
        for attempt in 0..5 {
            valkey.port = free_port();
            match valkey.spawn_and_wait() {
                Ok(()) => return valkey,
                Err(e) if attempt < 4 => eprintln!("valkey-server did not start ({e}); retrying"),
                Err(e) => panic!("valkey-server did not start: {e}\n{}", valkey.log()),
            }
        }
        unreachable!()
    }

    fn data_dir(&self) -> std::path::PathBuf {
        self.root.join("data")
    }

    /// The server's output so far (every run), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("valkey.log")).unwrap_or_default()
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("valkey.log"))
            .map_err(|e| format!("cannot open the log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(valkey_server_binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.data_dir())
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot spawn {:?}: {e}", valkey_server_binary()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("valkey-server exited with {status}"));
            }
            if self.ping() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("no PONG within 10 s".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A fresh connection, authenticated when the server has a password.
    fn client(&self) -> std::io::Result<RespClient> {
        let mut client = RespClient::connect(self.port, IO_TIMEOUT)?;
        if let Some(pw) = &self.password {
            match client.command(&["AUTH", pw])? {
                Resp::Simple(ok) if ok == "OK" => {}
                other => {
                    return Err(std::io::Error::other(format!("AUTH failed: {other:?}")));
                }
            }
        }
        Ok(client)
    }

    /// True when the server answers `PING` with `PONG` (not `-LOADING`, not refused).
    fn ping(&self) -> bool {
        self.client()
            .and_then(|mut c| c.command(&["PING"]))
            .is_ok_and(|r| r == Resp::Simple("PONG".into()))
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs one command on a fresh connection; panics if Valkey cannot be reached.
    #[track_caller]
    pub fn command(&self, args: &[&str]) -> Resp {
        self.client()
            .and_then(|mut c| c.command(args))
            .unwrap_or_else(|e| panic!("Valkey command {args:?} failed: {e}"))
    }

    /// `XLEN key`.
    pub fn xlen(&self, key: &str) -> i64 {
        self.command(&["XLEN", key]).int()
    }

    /// `XRANGE key - +`, every entry.
    pub fn xrange(&self, key: &str) -> Vec<StreamEntry> {
        self.command(&["XRANGE", key, "-", "+"])
            .items()
            .iter()
            .map(|entry| {
                let parts = entry.items();
                let id = parts[0].text().expect("entry ID");
                let kv = parts[1].items();
                let fields = kv
                    .chunks(2)
                    .map(|p| (p[0].text().unwrap(), p[1].text().unwrap()))
                    .collect();
                StreamEntry { id, fields }
            })
            .collect()
    }

    /// The IDs of `XRANGE key - +`, in stream order.
    pub fn stream_ids(&self, key: &str) -> Vec<String> {
        self.xrange(key).into_iter().map(|e| e.id).collect()
    }

    /// SIGKILL: no shutdown, no final fsync beyond what `appendfsync always` already did.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory (after [`kill9`]).
    ///
    /// [`kill9`]: Valkey::kill9
    pub fn restart_same_dir(&mut self) {
        assert!(
            self.child.is_none(),
            "restart_same_dir: the server is running"
        );
        // The port was free a moment ago; a transient bind failure is retried.
        let mut last = String::new();
        for _ in 0..10 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "valkey-server did not restart on port {}: {last}\n{}",
            self.port,
            self.log()
        );
    }

    /// Deletes everything in the data directory (the server must be stopped).
    pub fn wipe_data(&self) {
        assert!(self.child.is_none(), "wipe_data: the server is running");
        let dir = self.data_dir();
        for entry in std::fs::read_dir(&dir).expect("read the Valkey directory") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove");
            } else {
                std::fs::remove_file(&path).expect("remove");
            }
        }
    }
}

impl Drop for Valkey {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The stream key of `topic` (default key prefix).
pub fn stream_key(topic: &str) -> String {
    format!("pulsar:{{{topic}}}:s")
}

/// The consumer-positions hash key of `topic` (default key prefix).
pub fn positions_key(topic: &str) -> String {
    format!("pulsar:{{{topic}}}:c")
}
