//! One shard's connection to Valkey: connect, authenticate, pipeline, reconnect.
//!
//! Each shard owns one `Link` and its driver task; nothing else touches the socket. Callers
//! queue packed commands; the driver sends everything queued as one pipeline, reads the
//! replies in order, and only then sends the next pipeline, so the commands that pile up
//! while one round trip is in flight become the next group commit.
//!
//! Writes are retried across reconnects, in order, until Valkey answers them (the relay's
//! writes carry explicit stream IDs, which makes a retried XADD harmless). Reads fail fast
//! while the link is down. Reconnects back off exponentially (50 ms to 5 s) with jitter.
//! A sentinel key detects a Valkey that came back without its data.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use redis::Value;

use super::resp;
use crate::config::ValkeyConfig;
use crate::metrics::{self, ShardMetrics};
use crate::rt::signal::{Signal, Slot};
use crate::rt::{now_ms, sleep, TcpStream};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// Not connected; reads are not queued while down.
    Down,
    Timeout,
    Io(String),
    Protocol(&'static str),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Down => f.write_str("not connected to Valkey"),
            LinkError::Timeout => f.write_str("Valkey did not answer in time"),
            LinkError::Io(e) => write!(f, "Valkey connection error: {e}"),
            LinkError::Protocol(e) => write!(f, "Valkey protocol error: {e}"),
        }
    }
}

pub type Reply = Rc<Slot<Result<Value, LinkError>>>;

struct Request {
    packed: Vec<u8>,
    reply: Option<Reply>,
    /// Writes survive reconnects; reads are failed instead.
    retry: bool,
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const IDLE_PING: Duration = Duration::from_secs(1);

pub struct Link {
    cfg: ValkeyConfig,
    shard: usize,
    sentinel_key: String,
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
    pub fn new(cfg: ValkeyConfig, shard: usize, metrics: Rc<ShardMetrics>) -> Rc<Link> {
        let sentinel_key = format!("{}:{{relay}}:epoch", cfg.key_prefix);
        Rc::new(Link {
            cfg,
            shard,
            sentinel_key,
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
            retry: true,
        });
        self.wake.raise();
        reply
    }

    /// Sends a read and waits for its reply; fails at once while the link is down.
    pub async fn read(&self, cmd: &redis::Cmd) -> Result<Value, LinkError> {
        if !self.up.get() {
            return Err(LinkError::Down);
        }
        let reply: Reply = Rc::new(Slot::default());
        self.queue.borrow_mut().push_back(Request {
            packed: cmd.get_packed_command(),
            reply: Some(Rc::clone(&reply)),
            retry: false,
        });
        self.wake.raise();
        reply.take().await
    }

    /// Sends several reads at once (they go out in one pipeline) and waits for all their
    /// replies, in order; fails at once while the link is down.
    pub async fn read_all(&self, cmds: &[redis::Cmd]) -> Result<Vec<Value>, LinkError> {
        if !self.up.get() {
            return Err(LinkError::Down);
        }
        let replies: Vec<Reply> = {
            let mut queue = self.queue.borrow_mut();
            cmds.iter()
                .map(|cmd| {
                    let reply: Reply = Rc::new(Slot::default());
                    queue.push_back(Request {
                        packed: cmd.get_packed_command(),
                        reply: Some(Rc::clone(&reply)),
                        retry: false,
                    });
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
                    self.fail_reads();
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
                    self.fail_reads();
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

    fn fail_reads(&self) {
        let mut queue = self.queue.borrow_mut();
        queue.retain(|req| {
            if !req.retry {
                if let Some(reply) = &req.reply {
                    reply.fill(Err(LinkError::Down));
                }
            }
            req.retry
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

    async fn connect(&self) -> Result<TcpStream, LinkError> {
        let addr = format!("{}:{}", self.cfg.host, self.cfg.port);
        let mut stream = self
            .with_timeout(self.cfg.connect_timeout, async {
                TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| LinkError::Io(e.to_string()))
            })
            .await?;
        let _ = stream.set_nodelay(true);
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
        self.check_sentinel(&mut stream, &mut buf).await?;
        Ok(stream)
    }

    /// Creates the sentinel key once and checks on every later connection that it is
    /// still there with the same value: if not, Valkey restarted without its data.
    async fn check_sentinel(
        &self,
        stream: &mut TcpStream,
        buf: &mut Replies,
    ) -> Result<(), LinkError> {
        let limit = self.cfg.connect_timeout;
        let candidate = format!("{:x}-{}", now_ms(), self.shard);
        let set = redis::cmd("SET")
            .arg(&self.sentinel_key)
            .arg(&candidate)
            .arg("NX")
            .clone();
        let created = self
            .with_timeout(limit, roundtrip(stream, buf, &set))
            .await?;
        // E.g. NOAUTH (Valkey wants a password and none is configured): say so, or the
        // relay would stay unready without a word.
        if let Some(e) = resp::server_error(&created) {
            crate::log_line!("shard {}: Valkey refused a write: {e}", self.shard);
            return Err(LinkError::Protocol("write refused"));
        }
        let get = redis::cmd("GET").arg(&self.sentinel_key).clone();
        let current = self
            .with_timeout(limit, roundtrip(stream, buf, &get))
            .await?;
        let current = resp::bytes(&current).map(<[u8]>::to_vec);
        let mut epoch = self.epoch.borrow_mut();
        if let Some(seen) = &*epoch {
            // We had connected before: the key must still be there, unchanged.
            if created == Value::Okay || current.as_ref() != Some(seen) {
                lost_data(self.shard);
            }
        }
        *epoch = current;
        Ok(())
    }

    async fn serve(&self, stream: &mut TcpStream) -> LinkError {
        let mut replies_in = Replies::default();
        let mut packed = Vec::new();
        loop {
            if self.queue.borrow().is_empty() {
                // An idle connection is checked with a PING, so a dead Valkey shows on
                // /ready even when nothing is written.
                let woken = future::or(
                    async {
                        self.wake.wait().await;
                        true
                    },
                    async {
                        sleep(IDLE_PING).await;
                        false
                    },
                )
                .await;
                if !woken && self.queue.borrow().is_empty() {
                    self.queue.borrow_mut().push_back(Request {
                        packed: redis::cmd("PING").get_packed_command(),
                        reply: None,
                        retry: false,
                    });
                }
                continue;
            }
            let batch: Vec<Request> = self.queue.borrow_mut().drain(..).collect();
            packed.clear();
            for req in &batch {
                packed.extend_from_slice(&req.packed);
            }
            let started = std::time::Instant::now();
            let outcome = self
                .with_timeout(self.cfg.command_timeout, async {
                    stream
                        .write_all(&packed)
                        .await
                        .map_err(|e| LinkError::Io(e.to_string()))?;
                    let mut replies = Vec::with_capacity(batch.len());
                    for _ in 0..batch.len() {
                        replies.push(replies_in.next(stream).await?);
                    }
                    Ok(replies)
                })
                .await;
            match outcome {
                Ok(replies) => {
                    let micros = started.elapsed().as_micros() as u64;
                    let mut latency = self.metrics.valkey_latency.borrow_mut();
                    for (req, value) in batch.into_iter().zip(replies) {
                        if req.retry {
                            self.pending_writes.set(self.pending_writes.get() - 1);
                            self.pending_bytes
                                .set(self.pending_bytes.get() - req.packed.len());
                            latency.record(micros);
                            if resp::server_error(&value).is_some() {
                                metrics::add(&self.metrics.valkey_errors, 1);
                            } else {
                                metrics::add(&self.metrics.valkey_writes, 1);
                            }
                        }
                        if let Some(reply) = req.reply {
                            reply.fill(Ok(value));
                        }
                    }
                }
                Err(err) => {
                    metrics::add(&self.metrics.valkey_errors, 1);
                    // Unanswered writes go back to the front, in their order.
                    let mut queue = self.queue.borrow_mut();
                    for req in batch.into_iter().rev() {
                        if req.retry {
                            queue.push_front(req);
                        } else if let Some(reply) = req.reply {
                            reply.fill(Err(err.clone()));
                        }
                    }
                    return err;
                }
            }
        }
    }
}

fn lost_data(shard: usize) {
    crate::log_line!(
        "shard {shard}: DATA LOSS: Valkey came back without the relay's sentinel key. Its data \
         was lost (restart without AOF/RDB, FLUSHALL, or a failover to an empty replica). \
         Messages persisted before this point may be missing from history; new messages are \
         persisted again from now on."
    );
}

/// Sends one command and reads its reply (used during the handshake).
async fn roundtrip(
    stream: &mut TcpStream,
    replies: &mut Replies,
    cmd: &redis::Cmd,
) -> Result<Value, LinkError> {
    stream
        .write_all(&cmd.get_packed_command())
        .await
        .map_err(|e| LinkError::Io(e.to_string()))?;
    replies.next(stream).await
}

/// The reply side of a connection: bytes read ahead, and the parser.
#[derive(Default)]
struct Replies {
    buf: Vec<u8>,
    /// Start of the first unparsed reply in `buf`; consumed bytes are dropped in bulk, not
    /// reply by reply, so a pipeline of N replies costs O(N), not O(N²), in moves.
    pos: usize,
    parser: redis::Parser,
}

impl Replies {
    async fn next(&mut self, stream: &mut TcpStream) -> Result<Value, LinkError> {
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
