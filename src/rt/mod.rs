//! The runtime: what every other layer stands on. Executors and where they run, listening
//! sockets, the cross-shard mesh, spawning, sleeping and TCP streams, the clock, shard-local
//! wake-ups, the connection table and its coarse timer, how late a shard is, and which
//! shard owns a key.
//!
//! It knows nothing of HTTP, topics, accounts or Valkey, and imports no other module of
//! the relay: what runs on each shard is a [`Host`], built by a function `main` hands to
//! [`Runtime::run`]. glommio stays behind this module: the rest of the code sees these
//! names, not glommio's, so the executor could be swapped (monoio, compio) without touching
//! the protocol code.

pub mod budget;
pub mod clock;
pub mod conns;
pub mod executor;
pub mod lateness;
pub mod listener;
pub mod mesh;
pub mod owner;
mod shard;
pub mod signal;

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

pub use clock::now_ms;
pub use glommio::net::TcpStream;
pub use glommio::spawn_local;
pub use glommio::timer::sleep;
pub use shard::{Core, Host};

use budget::ConnectionBudget;

/// Runs CPU-heavy work (password hashing) on glommio's blocking thread pool, so that the
/// shard's executor keeps serving while it runs.
pub async fn blocking<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(work).await
}

/// What the runtime needs to know to start.
#[derive(Clone, Debug)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub shards: usize,
    /// Whether shard threads are pinned to CPUs.
    pub placement: ShardPlacement,
    /// Most connections served at once (0: as many as the file limit allows).
    pub max_connections: usize,
    /// How long shards may take to drain after the shutdown flag is raised.
    pub shutdown_grace: Duration,
}

/// Where the kernel may run shard threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardPlacement {
    /// Anywhere in the process's CPU set, moved as the scheduler sees fit.
    Floating,
    /// Shard *i* on the *i*-th CPU of the process's CPU set ([`executor::cpu_for`]).
    Pinned,
}

/// Process-wide facts, shared by all shards and the main thread (atomics only).
pub struct Process {
    pub shutdown: AtomicBool,
    /// Per shard: listener accepting and mesh connected.
    pub serving: Vec<AtomicBool>,
    /// Shards that still have open connections during shutdown.
    draining: AtomicUsize,
    /// Open client connections, all shards together (checked against `budget`).
    pub connections: AtomicUsize,
    /// How many connections are served, from `limits.max_connections` and RLIMIT_NOFILE.
    pub budget: ConnectionBudget,
    pub local_addr: SocketAddr,
}

impl Process {
    /// `Err` naming the first shard that is not serving.
    pub fn serving(&self) -> Result<(), String> {
        match self.serving.iter().position(|s| !s.load(Ordering::Acquire)) {
            Some(shard) => Err(format!("shard {shard} is not serving")),
            None => Ok(()),
        }
    }
}

/// Why the relay could not start or stopped abnormally.
#[derive(Debug)]
pub enum RuntimeError {
    Bind(SocketAddr, io::Error),
    Executor(String),
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            RuntimeError::Executor(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for RuntimeError {}

/// A bound but not yet running relay; [`Runtime::run`] blocks until shutdown completes.
pub struct Runtime {
    settings: Settings,
    listeners: Vec<StdListener>,
    process: Arc<Process>,
}

impl Runtime {
    /// Binds the listeners (one per shard) before anything runs, so that a bind error is
    /// reported first and port 0 yields one real port.
    pub fn bind(settings: Settings) -> Result<Runtime, RuntimeError> {
        let shards = settings.shards.max(1);
        let addr = resolve(&settings.host, settings.port)?;
        let (listeners, local_addr) =
            listener::bind_all(addr, shards).map_err(|e| RuntimeError::Bind(addr, e))?;
        let process = Arc::new(Process {
            shutdown: AtomicBool::new(false),
            serving: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            draining: AtomicUsize::new(shards),
            connections: AtomicUsize::new(0),
            budget: ConnectionBudget::for_process(settings.max_connections, shards),
            local_addr,
        });
        Ok(Runtime {
            settings,
            listeners,
            process,
        })
    }

    pub fn process(&self) -> Arc<Process> {
        Arc::clone(&self.process)
    }

    /// Starts every shard, each running the host `build` makes on it, and waits for them
    /// to finish (after `process.shutdown` is set).
    pub fn run<H: Host>(
        self,
        build: impl Fn(Core<H>) -> std::rc::Rc<H> + Send + Sync + 'static,
    ) -> Result<(), RuntimeError> {
        let shards = self.listeners.len();
        let allowed = executor::allowed_cpus().map_err(|e| {
            RuntimeError::Executor(format!("cannot read the CPUs this process may use: {e}"))
        })?;
        let build = Arc::new(build);
        let mut handles = Vec::with_capacity(shards);
        for ((id, listener), ends) in self
            .listeners
            .into_iter()
            .enumerate()
            .zip(mesh::build::<H>(shards))
        {
            let process = Arc::clone(&self.process);
            let build = Arc::clone(&build);
            let grace = self.settings.shutdown_grace;
            let fd = listener.into_raw_fd();
            let cpu = match self.settings.placement {
                ShardPlacement::Pinned => Some(executor::cpu_for(id, &allowed)),
                ShardPlacement::Floating => None,
            };
            let spawned =
                LocalExecutorBuilder::new(cpu.map_or(Placement::Unbound, Placement::Fixed))
                    .name(&format!("shard-{id}"))
                    .spawn(move || async move {
                        // SAFETY: `fd` is a listening socket whose ownership moved here.
                        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
                        shard::run(id, process, ends, listener, grace, |core| build(core)).await
                    });
            match spawned {
                Ok(handle) => handles.push((id, cpu, handle)),
                Err(e) => {
                    self.process.shutdown.store(true, Ordering::Release);
                    return Err(RuntimeError::Executor(executor::explain(
                        id,
                        cpu,
                        &e.to_string(),
                    )));
                }
            }
        }
        let mut failure = None;
        for (id, cpu, handle) in handles {
            if let Err(e) = handle.join() {
                self.process.shutdown.store(true, Ordering::Release);
                failure.get_or_insert_with(|| {
                    RuntimeError::Executor(executor::explain(id, cpu, &e.to_string()))
                });
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, RuntimeError> {
    use std::net::ToSocketAddrs;
    let unresolved = || {
        RuntimeError::Bind(
            SocketAddr::from(([0, 0, 0, 0], port)),
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot resolve host {host:?}"),
            ),
        )
    };
    (host, port)
        .to_socket_addrs()
        .map_err(|_| unresolved())?
        .next()
        .ok_or_else(unresolved)
}
