//! One shard's connection to Valkey: connect, authenticate, pipeline, reconnect.
//!
//! Each shard owns one `Link` and its driver task; nothing else touches the socket. Callers
//! queue packed commands; the driver sends everything queued as one pipeline, reads the
//! replies in order, and only then sends the next pipeline, so the commands that pile up
//! while one round trip is in flight become the next group commit.
//!
//! Writes are retried across reconnects, in order, until Valkey answers them, and a read
//! whose connection turned out to be closed is sent once more on a fresh connection (the
//! rule, shared with each Cluster primary's connection, is [`super::retry`]'s); a read
//! queued while the link is down waits for the next connection attempt and fails if that
//! fails. So no read waits longer than one reconnect and two command timeouts, and none
//! fails only because Valkey closed an idle connection. Reconnects back off exponentially (50 ms to 500 ms, so every shard sees a
//! Valkey that came back within a second) with jitter. An idle connection is watched for
//! Valkey closing it and pinged every second. A sentinel key detects a Valkey that came
//! back without its data.
//!
//! With replicated acks, a pipeline that carries a write someone waits for ends with one
//! `WAIT <replicas> <timeout>`; those writes are answered only once it reports, and fail
//! with [`LinkError::Replicas`] when it counts too few replicas.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{future, AsyncReadExt};
use redis::Value;

use super::resp;
use super::retry::{connect_failure, Kind};
use super::transport;
use crate::config::ValkeyConfig;
use crate::metrics::{self, ShardMetrics};
use crate::rt::signal::{Signal, Slot};
use crate::rt::{now_ms, sleep};
use crate::tls::client::ClientTls;
use crate::tls::Stream;

#[derive(Clone, Debug, PartialEq)]
pub enum LinkError {
    /// Not connected; reads are not queued while down.
    Down,
    Timeout,
    Io(String),
    Protocol(&'static str),
    /// Valkey applied the pipeline's writes, but its `WAIT` counted only `got` of the
    /// `wanted` replicas.
    Replicas {
        got: u64,
        wanted: u32,
    },
    /// What each of those writes fails with: Valkey's reply to it stands (a publish
    /// script's IDs name a message the primary holds), only its replication is short.
    Unreplicated {
        got: u64,
        wanted: u32,
        applied: Box<Value>,
    },
}

impl LinkError {
    /// The failure of one write Valkey answered with `applied` in a pipeline whose `WAIT`
    /// failed with `self` (any other failure stays as it is).
    pub(super) fn of_write(&self, applied: Value) -> LinkError {
        match *self {
            LinkError::Replicas { got, wanted } => LinkError::Unreplicated {
                got,
                wanted,
                applied: Box::new(applied),
            },
            ref other => other.clone(),
        }
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Down => f.write_str("not connected to Valkey"),
            LinkError::Timeout => f.write_str("Valkey did not answer in time"),
            LinkError::Io(e) => write!(f, "Valkey connection error: {e}"),
            LinkError::Protocol(e) => write!(f, "Valkey protocol error: {e}"),
            LinkError::Replicas { got, wanted } | LinkError::Unreplicated { got, wanted, .. } => {
                write!(
                    f,
                    "Valkey has the write, but only {got} of {wanted} replicas confirmed it in time"
                )
            }
        }
    }
}

pub type Reply = Rc<Slot<Result<Value, LinkError>>>;

struct Request {
    packed: Vec<u8>,
    reply: Option<Reply>,
    kind: Kind,
}

/// `WAIT` after each pipeline that carries a write someone waits for (replicated acks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaWait {
    pub replicas: u32,
    pub timeout: Duration,
}

impl ReplicaWait {
    /// Ends a pipeline with this `WAIT`; returns how much longer its round trip may take.
    pub(super) fn append_to(&self, packed: &mut Vec<u8>) -> Duration {
        packed.extend_from_slice(
            &redis::cmd("WAIT")
                .arg(self.replicas)
                .arg(self.timeout.as_millis() as u64)
                .get_packed_command(),
        );
        self.timeout
    }
}

/// A sentinel key as one connection found it.
pub(super) struct Sentinel {
    /// It was not there: this connection created it.
    created: bool,
    value: Option<Vec<u8>>,
}

impl Sentinel {
    /// Whether it is gone or changed since a connection saw it with value `seen`.
    pub(super) fn lost(&self, seen: &[u8]) -> bool {
        self.created || self.value.as_deref() != Some(seen)
    }

    pub(super) fn value(self) -> Option<Vec<u8>> {
        self.value
    }
}

/// Reconnect backoff, and the idle check, shared with each Cluster primary's connection:
/// every shard follows Valkey going and coming back within about a second.
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub(super) const BACKOFF_MAX: Duration = Duration::from_millis(500);
pub(super) const IDLE_PING: Duration = Duration::from_secs(1);

pub struct Link {
    cfg: ValkeyConfig,
    tls: Option<ClientTls>,
    shard: usize,
    sentinel_key: String,
    replicas: Option<ReplicaWait>,
    queue: RefCell<VecDeque<Request>>,
    /// Writes queued or in flight: the backlog bounded by `storage.max_pending_writes`.
    pending_writes: Cell<usize>,
    /// Their packed bytes, bounded by `storage.max_pending_bytes`: each write holds its own
    /// copy of the message until Valkey answers it.
    pending_bytes: Cell<usize>,
    wake: Signal,
    up: Cell<bool>,
    /// The sentinel value seen on the first connection; a different one later means the
    /// server lost its data in between.
    epoch: RefCell<Option<Vec<u8>>>,
    metrics: Rc<ShardMetrics>,
}

impl Link {
    pub fn new(
        cfg: ValkeyConfig,
        tls: Option<ClientTls>,
        shard: usize,
        metrics: Rc<ShardMetrics>,
        replicas: Option<ReplicaWait>,
    ) -> Rc<Link> {
        let sentinel_key = format!("{}:{{relay}}:epoch", cfg.key_prefix);
        Rc::new(Link {
            cfg,
            tls,
            shard,
            sentinel_key,
            replicas,
            queue: RefCell::new(VecDeque::new()),
            pending_writes: Cell::new(0),
            pending_bytes: Cell::new(0),
            wake: Signal::default(),
            up: Cell::new(false),
            epoch: RefCell::new(None),
            metrics,
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.get()
    }

    /// The server's `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.cfg.host, self.cfg.port)
    }

    pub fn pending_writes(&self) -> usize {
        self.pending_writes.get()
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes.get()
    }

    /// Queues a write; it is sent in order and retried until Valkey answers it.
    pub fn write(&self, cmd: &redis::Cmd, want_reply: bool) -> Option<Reply> {
        let reply = want_reply.then(|| Rc::new(Slot::default()));
        let packed = cmd.get_packed_command();
        self.pending_writes.set(self.pending_writes.get() + 1);
        self.pending_bytes
            .set(self.pending_bytes.get() + packed.len());
        self.queue.borrow_mut().push_back(Request {
            packed,
            reply: reply.clone(),
            kind: Kind::WRITE,
        });
        self.wake.raise();
        reply
    }

    /// Queues a write that is sent at most once (see [`Kind::Once`]); its reply says
    /// whether it was applied, or fails when that cannot be known.
    pub fn write_once(&self, cmd: &redis::Cmd) -> Reply {
        let reply: Reply = Rc::new(Slot::default());
        let packed = cmd.get_packed_command();
        self.pending_writes.set(self.pending_writes.get() + 1);
        self.pending_bytes
            .set(self.pending_bytes.get() + packed.len());
        self.queue.borrow_mut().push_back(Request {
            packed,
            reply: Some(Rc::clone(&reply)),
            kind: Kind::Once,
        });
        self.wake.raise();
        reply
    }

    /// Sends a read and waits for its reply (see the module header for how long).
    pub async fn read(&self, cmd: &redis::Cmd) -> Result<Value, LinkError> {
        let reply: Reply = Rc::new(Slot::default());
        self.queue.borrow_mut().push_back(read_request(cmd, &reply));
        self.wake.raise();
        reply.take().await
    }

    /// Sends several reads at once (they go out in one pipeline) and waits for all their
    /// replies, in order.
    pub async fn read_all(&self, cmds: &[redis::Cmd]) -> Result<Vec<Value>, LinkError> {
        let replies: Vec<Reply> = {
            let mut queue = self.queue.borrow_mut();
            cmds.iter()
                .map(|cmd| {
                    let reply: Reply = Rc::new(Slot::default());
                    queue.push_back(read_request(cmd, &reply));
                    reply
                })
                .collect()
        };
        self.wake.raise();
        let mut values = Vec::with_capacity(replies.len());
        for reply in replies {
            values.push(reply.take().await?);
        }
        Ok(values)
    }

    /// The driver: keeps a connection up and pipelines the queue through it.
    pub async fn run(self: Rc<Self>) {
        let mut backoff = BACKOFF_MIN;
        let mut seed = now_ms() ^ ((self.shard as u64) << 32) | 1;
        let mut failures = 0u32;
        loop {
            match self.connect().await {
                Ok(mut stream) => {
                    if failures > 0 {
                        crate::log_line!("shard {}: Valkey connection restored", self.shard);
                    }
                    failures = 0;
                    backoff = BACKOFF_MIN;
                    self.up.set(true);
                    let err = self.serve(&mut stream).await;
                    self.up.set(false);
                    crate::log_line!("shard {}: Valkey connection lost: {err}", self.shard);
                }
                Err(err) => {
                    // Log the first failure and then every 20th, not every retry.
                    if failures.is_multiple_of(20) {
                        crate::log_line!(
                            "shard {}: cannot connect to Valkey at {}:{}: {err}; retrying",
                            self.shard,
                            self.cfg.host,
                            self.cfg.port
                        );
                    }
                    failures += 1;
                    self.fail_reads(&err);
                }
            }
            // xorshift: jitter so that shards (and relays) do not reconnect in lockstep.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let jitter = Duration::from_millis(seed % (backoff.as_millis() as u64 / 2 + 1));
            sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Fails the queued reads: the connection attempt they waited for failed.
    fn fail_reads(&self, err: &LinkError) {
        let failed = connect_failure(err);
        let mut queue = self.queue.borrow_mut();
        queue.retain(|req| {
            let read = !req.kind.is_write();
            if let (true, Some(reply)) = (read, &req.reply) {
                reply.fill(Err(failed.clone()));
            }
            !read
        });
    }

    async fn with_timeout<T>(
        &self,
        limit: Duration,
        fut: impl std::future::Future<Output = Result<T, LinkError>>,
    ) -> Result<T, LinkError> {
        future::or(fut, async {
            sleep(limit).await;
            Err(LinkError::Timeout)
        })
        .await
    }

    /// Opens and sets up this link's connection, and checks the sentinel.
    async fn connect(&self) -> Result<Stream, LinkError> {
        let (mut stream, mut buf) = self.open().await?;
        self.check_sentinel(&mut stream, &mut buf).await?;
        Ok(stream)
    }

    /// Opens one connection and authenticates it (also each Cluster primary's, whose
    /// sentinels the router checks itself).
    pub(super) async fn open(&self) -> Result<(Stream, Replies), LinkError> {
        let mut stream =
            transport::open(&self.cfg, self.tls.as_ref(), self.cfg.connect_timeout).await?;
        let mut buf = Replies::default();
        let limit = self.cfg.connect_timeout;
        if !self.cfg.password.is_empty() {
            let mut auth = redis::cmd("AUTH");
            if !self.cfg.username.is_empty() {
                auth.arg(&self.cfg.username);
            }
            auth.arg(&self.cfg.password);
            let reply = self
                .with_timeout(limit, roundtrip(&mut stream, &mut buf, &auth))
                .await?;
            if let Some(e) = resp::server_error(&reply) {
                crate::log_line!("shard {}: Valkey AUTH failed: {e}", self.shard);
                return Err(LinkError::Protocol("AUTH refused"));
            }
        }
        if self.cfg.db != 0 {
            let select = redis::cmd("SELECT").arg(self.cfg.db).clone();
            let reply = self
                .with_timeout(limit, roundtrip(&mut stream, &mut buf, &select))
                .await?;
            if resp::server_error(&reply).is_some() {
                return Err(LinkError::Protocol("SELECT refused"));
            }
        }
        Ok((stream, buf))
    }

    /// Creates the sentinel key once and checks on every later connection that it is
    /// still there with the same value: if not, Valkey restarted without its data.
    async fn check_sentinel(
        &self,
        stream: &mut Stream,
        buf: &mut Replies,
    ) -> Result<(), LinkError> {
        let Some(found) = self.sentinel(stream, buf, &self.sentinel_key).await? else {
            return Ok(());
        };
        let mut epoch = self.epoch.borrow_mut();
        if let Some(seen) = &*epoch {
            // We had connected before: the key must still be there, unchanged.
            if found.lost(seen) {
                self.lost_data(&self.sentinel_key);
            }
        }
        *epoch = found.value;
        Ok(())
    }

    /// Sentinel `key` on a fresh connection: created (`SET NX`) unless there, then read
    /// back. `Ok(None)` when the server does not serve the key's slot (a Cluster primary
    /// that answers with a redirection: the key is another primary's to check).
    pub(super) async fn sentinel(
        &self,
        stream: &mut Stream,
        buf: &mut Replies,
        key: &str,
    ) -> Result<Option<Sentinel>, LinkError> {
        let limit = self.cfg.connect_timeout;
        let candidate = format!("{:x}-{}", now_ms(), self.shard);
        let set = redis::cmd("SET").arg(key).arg(&candidate).arg("NX").clone();
        let created = self
            .with_timeout(limit, roundtrip(stream, buf, &set))
            .await?;
        if redirected(&created) {
            return Ok(None);
        }
        // E.g. NOAUTH (Valkey wants a password and none is configured): say so, or the
        // relay would stay unready without a word.
        if let Some(e) = resp::server_error(&created) {
            crate::log_line!("shard {}: Valkey refused a write: {e}", self.shard);
            return Err(LinkError::Protocol("write refused"));
        }
        let get = redis::cmd("GET").arg(key).clone();
        let current = self
            .with_timeout(limit, roundtrip(stream, buf, &get))
            .await?;
        if redirected(&current) {
            return Ok(None);
        }
        Ok(Some(Sentinel {
            created: created == Value::Okay,
            value: resp::bytes(&current).map(<[u8]>::to_vec),
        }))
    }

    /// Says loudly, and counts, that the server this link connects to came back without
    /// sentinel `key`, which it held before.
    pub(super) fn lost_data(&self, key: &str) {
        metrics::add(&self.metrics.valkey_data_loss, 1);
        crate::log_line!(
            "shard {}: DATA LOSS: Valkey at {}:{} came back without the relay's sentinel key \
             {key}. Its data was lost (restart without AOF/RDB, FLUSHALL, or a failover to an \
             empty replica). Messages persisted before this point may be missing from \
             history; new messages are persisted again from now on.",
            self.shard,
            self.cfg.host,
            self.cfg.port
        );
    }

    async fn serve(&self, stream: &mut Stream) -> LinkError {
        let mut replies_in = Replies::default();
        let mut packed = Vec::new();
        let mut batch: VecDeque<Request> = VecDeque::new();
        // Writes Valkey answered whose replies wait for the pipeline's WAIT.
        let mut held: Vec<(Request, Value)> = Vec::new();
        loop {
            if self.queue.borrow().is_empty() {
                // An idle connection is watched (Valkey closing it shows at once) and
                // checked with a PING, so a dead Valkey shows on /ready even when nothing
                // is written.
                match idle(&self.wake, stream).await {
                    Err(err) => {
                        metrics::add(&self.metrics.valkey_errors, 1);
                        return err;
                    }
                    Ok(false) if self.queue.borrow().is_empty() => {
                        self.queue.borrow_mut().push_back(Request {
                            packed: redis::cmd("PING").get_packed_command(),
                            reply: None,
                            kind: Kind::Read { retried: true },
                        });
                    }
                    Ok(_) => {}
                }
                continue;
            }
            batch.extend(self.queue.borrow_mut().drain(..));
            let wait = self.replicas.filter(|_| {
                batch
                    .iter()
                    .any(|req| req.kind.is_write() && req.reply.is_some())
            });
            packed.clear();
            for req in &batch {
                packed.extend_from_slice(&req.packed);
            }
            let mut limit = self.cfg.command_timeout;
            if let Some(wait) = wait {
                limit += wait.append_to(&mut packed);
            }
            let started = std::time::Instant::now();
            let outcome = self
                .with_timeout(limit, async {
                    stream
                        .send(&packed)
                        .await
                        .map_err(|e| LinkError::Io(e.to_string()))?;
                    while !batch.is_empty() {
                        let value = replies_in.next(stream).await?;
                        if let Some(req) = batch.pop_front() {
                            self.answered(req, value, started, wait.is_some(), &mut held);
                        }
                    }
                    if let Some(wait) = wait {
                        let count = replies_in.next(stream).await?;
                        self.replicated(&mut held, &count, wait, started);
                    }
                    Ok(())
                })
                .await;
            if let Err(err) = outcome {
                metrics::add(&self.metrics.valkey_errors, 1);
                self.requeue(&mut held, &mut batch, &err);
                return err;
            }
        }
    }

    /// One reply of a pipeline, in order: reads are answered at once, writes too unless
    /// `hold` (the pipeline's WAIT decides them).
    fn answered(
        &self,
        req: Request,
        value: Value,
        started: std::time::Instant,
        hold: bool,
        held: &mut Vec<(Request, Value)>,
    ) {
        if !req.kind.is_write() {
            if let Some(reply) = req.reply {
                reply.fill(Ok(value));
            }
            return;
        }
        let value = req.kind.answer(value);
        let refused = resp::server_error(&value).is_some();
        if hold && !refused && req.reply.is_some() {
            held.push((req, value));
            return;
        }
        self.write_answered(started, refused, req.packed.len());
        if let Some(reply) = req.reply {
            reply.fill(Ok(value));
        }
    }

    /// The pipeline's `WAIT` replied `count`: its held writes are answered, as failed
    /// when it counted too few replicas.
    fn replicated(
        &self,
        held: &mut Vec<(Request, Value)>,
        count: &Value,
        wait: ReplicaWait,
        started: std::time::Instant,
    ) {
        let got = match count {
            Value::Int(n) => (*n).max(0) as u64,
            _ => 0,
        };
        let enough = got >= u64::from(wait.replicas);
        if !enough {
            metrics::add(&self.metrics.valkey_replica_timeouts, 1);
        }
        let short = LinkError::Replicas {
            got,
            wanted: wait.replicas,
        };
        for (req, value) in held.drain(..) {
            self.write_answered(started, false, req.packed.len());
            if let Some(reply) = req.reply {
                reply.fill(if enough {
                    Ok(value)
                } else {
                    Err(short.of_write(value))
                });
            }
        }
    }

    fn write_answered(&self, started: std::time::Instant, refused: bool, bytes: usize) {
        self.pending_writes.set(self.pending_writes.get() - 1);
        self.pending_bytes.set(self.pending_bytes.get() - bytes);
        self.metrics
            .valkey_latency
            .borrow_mut()
            .record(started.elapsed().as_micros() as u64);
        if refused {
            metrics::add(&self.metrics.valkey_errors, 1);
        } else {
            metrics::add(&self.metrics.valkey_writes, 1);
        }
    }

    /// The pipeline failed with `err`: what it had not finished goes back to the front of
    /// the queue, in order, or fails, as [`Kind::after_failure`] says.
    fn requeue(
        &self,
        held: &mut Vec<(Request, Value)>,
        batch: &mut VecDeque<Request>,
        err: &LinkError,
    ) {
        let unfinished: Vec<Request> = held
            .drain(..)
            .map(|(req, _)| req)
            .chain(batch.drain(..))
            .collect();
        let mut queue = self.queue.borrow_mut();
        for mut req in unfinished.into_iter().rev() {
            match req.kind.after_failure(err) {
                Some(kind) => {
                    req.kind = kind;
                    queue.push_front(req);
                }
                None => {
                    // A write that fails here (sent at most once) leaves the backlog.
                    if req.kind.is_write() {
                        self.pending_writes.set(self.pending_writes.get() - 1);
                        self.pending_bytes
                            .set(self.pending_bytes.get() - req.packed.len());
                    }
                    if let Some(reply) = req.reply {
                        reply.fill(Err(err.clone()));
                    }
                }
            }
        }
    }
}

fn read_request(cmd: &redis::Cmd, reply: &Reply) -> Request {
    Request {
        packed: cmd.get_packed_command(),
        reply: Some(Rc::clone(reply)),
        kind: Kind::READ,
    }
}

/// Resolves when a connection on which no reply is expected shows anything: Valkey closed
/// it, or sent bytes nobody asked for. Dropping it loses nothing: glommio reads with a
/// plain `recv` once the socket is readable, and over TLS the session keeps any record it
/// read (a TLS 1.3 session ticket yields no plaintext, so it does not end the wait).
/// Waits on an idle connection (the link's, and each Cluster primary's): `Ok(true)` when
/// `wake` says there is work, `Ok(false)` after [`IDLE_PING`] (time to check the
/// connection with a PING), `Err` when Valkey closed it or sent something unasked.
pub(super) async fn idle(wake: &Signal, stream: &mut Stream) -> Result<bool, LinkError> {
    future::or(
        async {
            wake.wait().await;
            Ok(true)
        },
        future::or(
            async {
                sleep(IDLE_PING).await;
                Ok(false)
            },
            async { Err(closed_while_idle(stream).await) },
        ),
    )
    .await
}

async fn closed_while_idle(stream: &mut Stream) -> LinkError {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte).await {
        Ok(0) => LinkError::Io("connection closed by Valkey".into()),
        Ok(_) => LinkError::Protocol("unexpected bytes from Valkey"),
        Err(e) => LinkError::Io(e.to_string()),
    }
}

/// A `MOVED` or `ASK` answer: the key's slot is served elsewhere.
fn redirected(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if matches!(e.code(), "MOVED" | "ASK"))
}

/// Sends one command and reads its reply (used during the handshake).
async fn roundtrip(
    stream: &mut Stream,
    replies: &mut Replies,
    cmd: &redis::Cmd,
) -> Result<Value, LinkError> {
    stream
        .send(&cmd.get_packed_command())
        .await
        .map_err(|e| LinkError::Io(e.to_string()))?;
    replies.next(stream).await
}

/// The reply side of a connection: bytes read ahead, and the parser.
#[derive(Default)]
pub(super) struct Replies {
    buf: Vec<u8>,
    /// Start of the first unparsed reply in `buf`; consumed bytes are dropped in bulk, not
    /// reply by reply, so a pipeline of N replies costs O(N), not O(N²), in moves.
    pos: usize,
    parser: redis::Parser,
}

impl Replies {
    pub(super) async fn next(&mut self, stream: &mut Stream) -> Result<Value, LinkError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let pending = &self.buf[self.pos..];
            if let Some(len) = resp::frame_len(pending).map_err(LinkError::Protocol)? {
                let value = self
                    .parser
                    .parse_value(&pending[..len])
                    .map_err(|_| LinkError::Protocol("unparsable reply"))?;
                self.pos += len;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                }
                return Ok(value);
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| LinkError::Io(e.to_string()))?;
            if n == 0 {
                return Err(LinkError::Io("connection closed by Valkey".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    fn link(replicas: Option<ReplicaWait>) -> Rc<Link> {
        Link::new(
            ValkeyConfig::default(),
            None,
            0,
            Rc::new(ShardMetrics::default()),
            replicas,
        )
    }

    fn request(kind: Kind, name: &str) -> (Request, Reply) {
        let reply: Reply = Rc::new(Slot::default());
        let req = Request {
            packed: redis::cmd(name).get_packed_command(),
            reply: Some(Rc::clone(&reply)),
            kind,
        };
        (req, reply)
    }

    /// A `-<text>` reply, as Valkey sends it.
    fn error(text: &str) -> Value {
        redis::Parser::new()
            .parse_value(format!("-{text}\r\n").as_bytes())
            .expect("an error reply")
    }

    #[test]
    fn a_write_sent_at_most_once_fails_with_its_connection_and_leaves_the_backlog() {
        let link = link(None);
        let once = link.write_once(&redis::cmd("EVAL"));
        let queued = link.queue.borrow_mut().pop_front().unwrap();
        assert_eq!(queued.kind, Kind::Once);
        assert_eq!(link.pending_writes(), 1);
        let mut batch = VecDeque::from([queued]);
        let closed = LinkError::Io("connection closed by Valkey".into());
        link.requeue(&mut Vec::new(), &mut batch, &closed);
        assert!(link.queue.borrow().is_empty());
        assert_eq!((link.pending_writes(), link.pending_bytes()), (0, 0));
        assert_eq!(block_on(once.take()), Err(closed));
    }

    #[test]
    fn a_closed_connection_requeues_writes_and_unretried_reads_in_order() {
        let link = link(None);
        let (w1, _) = request(Kind::Write { resent: false }, "W1");
        let (r1, r1_reply) = request(Kind::Read { retried: false }, "R1");
        let (r2, r2_reply) = request(Kind::Read { retried: true }, "R2");
        let (w2, _) = request(Kind::Write { resent: false }, "W2");
        let mut held = vec![(w1, Value::Okay)];
        let mut batch = VecDeque::from([r1, r2, w2]);
        let closed = LinkError::Io("connection closed by Valkey".into());
        link.requeue(&mut held, &mut batch, &closed);
        let queue = link.queue.borrow();
        let kinds: Vec<Kind> = queue.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Write { resent: true },
                Kind::Read { retried: true },
                Kind::Write { resent: true },
            ]
        );
        assert!(!r1_reply.is_done(), "the first read is sent again");
        assert_eq!(block_on(r2_reply.take()), Err(closed), "once only");
    }

    #[test]
    fn a_timeout_fails_the_reads_it_caught_and_keeps_the_writes() {
        let link = link(None);
        let (w, _) = request(Kind::Write { resent: false }, "W");
        let (r, r_reply) = request(Kind::Read { retried: false }, "R");
        let mut batch = VecDeque::from([w, r]);
        link.requeue(&mut Vec::new(), &mut batch, &LinkError::Timeout);
        assert_eq!(block_on(r_reply.take()), Err(LinkError::Timeout));
        let kinds: Vec<Kind> = link.queue.borrow().iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [Kind::Write { resent: true }]);
    }

    #[test]
    fn a_resent_xadd_already_applied_is_done_and_not_an_error() {
        let link = link(None);
        let refused = error(
            "ERR The ID specified in XADD is equal or smaller than the target stream top item",
        );
        let started = std::time::Instant::now();
        for resent in [true, false] {
            link.pending_writes.set(1);
            let (w, reply) = request(Kind::Write { resent }, "XADD");
            link.pending_bytes.set(w.packed.len());
            link.answered(w, refused.clone(), started, false, &mut Vec::new());
            let value = block_on(reply.take()).unwrap();
            assert_eq!(
                resp::server_error(&value).is_none(),
                resent,
                "resent: {resent}"
            );
        }
        assert_eq!(link.metrics.valkey_writes.get(), 1);
        assert_eq!(
            link.metrics.valkey_errors.get(),
            1,
            "only the first sending"
        );
        assert_eq!(link.pending_writes(), 0);
    }

    #[test]
    fn writes_wait_for_the_pipelines_wait_and_fail_with_too_few_replicas() {
        let wait = ReplicaWait {
            replicas: 2,
            timeout: Duration::from_millis(100),
        };
        let link = link(Some(wait));
        let started = std::time::Instant::now();
        for (count, enough) in [(Value::Int(2), true), (Value::Int(1), false)] {
            let mut held = Vec::new();
            link.pending_writes.set(2);
            let (w1, w1_reply) = request(Kind::Write { resent: false }, "XADD");
            let (r, r_reply) = request(Kind::Read { retried: false }, "XRANGE");
            let (w2, w2_reply) = request(Kind::Write { resent: false }, "XADD");
            link.pending_bytes.set(w1.packed.len() + w2.packed.len());
            link.answered(w1, Value::Okay, started, true, &mut held);
            link.answered(r, Value::Nil, started, true, &mut held);
            link.answered(w2, Value::Int(7), started, true, &mut held);
            assert!(r_reply.is_done(), "reads do not wait for WAIT");
            assert!(!w1_reply.is_done() && !w2_reply.is_done());
            link.replicated(&mut held, &count, wait, started);
            for (reply, value) in [(w1_reply, Value::Okay), (w2_reply, Value::Int(7))] {
                let got = block_on(reply.take());
                if enough {
                    assert_eq!(got, Ok(value));
                } else {
                    // Each write's own reply stands: a publish keeps its message's ID.
                    let applied = Box::new(value);
                    let short = LinkError::Unreplicated {
                        got: 1,
                        wanted: 2,
                        applied,
                    };
                    assert_eq!(got, Err(short));
                }
            }
            assert_eq!(link.pending_writes(), 0);
            assert_eq!(link.pending_bytes(), 0);
        }
        assert_eq!(link.metrics.valkey_replica_timeouts.get(), 1);
    }
}
