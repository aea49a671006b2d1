//! One shard's life on its executor: connect the mesh, build the host, accept, tick,
//! drain.
//!
//! The runtime owns the parts every shard has whatever it serves ([`Core`]: its place among
//! the shards, its mesh ends, its connection table and the shutdown sequence); the
//! [`Host`] is what the relay runs on top, handed in by `main` as a builder, so that this
//! module never names it.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;

use super::budget::Admission;
use super::conns::{self, ConnTable};
use super::mesh::{self, Mesh, MeshEnds};
use super::signal::Signal;
use super::{listener, now_ms, sleep, spawn_local, Process, TcpStream};

/// What runs on each shard: the runtime hands it connections, mesh notes and ticks.
pub trait Host: Sized + 'static {
    /// The one-way message of the data path between shards (a delivery), sent unboxed.
    type Note: Send + 'static;

    /// The runtime's part of this shard.
    fn core(&self) -> &Core<Self>;

    /// A note from another shard.
    fn on_note(self: &Rc<Self>, note: Self::Note);

    /// Serves one accepted connection, with the connection budget's verdict on it.
    fn serve(
        self: &Rc<Self>,
        stream: TcpStream,
        admission: Admission,
    ) -> impl Future<Output = ()> + 'static;

    /// The host's housekeeping, on the shard's coarse tick (every [`conns::TICK`]).
    fn tick(&self, now_ms: u64);

    /// During shutdown: whether what the host accepted is all on its way out (writes to
    /// the persistent tier, unless it is gone), so the shard may stop.
    fn settled(&self) -> bool;
}

/// The runtime's part of one shard: where it is, its mesh ends, its connections.
pub struct Core<H: Host> {
    pub id: usize,
    /// How many shards run.
    pub count: usize,
    pub process: Arc<Process>,
    pub mesh: Mesh<H>,
    pub conns: ConnTable,
    stop_accepting: Signal,
    shutting_down: Cell<bool>,
}

impl<H: Host> Core<H> {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    fn begin_shutdown(&self) {
        if !self.shutting_down.replace(true) {
            self.stop_accepting.raise();
            self.conns.begin_shutdown();
        }
    }
}

/// Runs shard `id` until shutdown completed.
pub(super) async fn run<H: Host>(
    id: usize,
    process: Arc<Process>,
    ends: MeshEnds<H>,
    listener: glommio::net::TcpListener,
    grace: Duration,
    build: impl FnOnce(Core<H>) -> Rc<H>,
) {
    let (mesh, receivers) = Mesh::connect(id, ends).await;
    let core = Core {
        id,
        count: process.serving.len(),
        process: Arc::clone(&process),
        mesh,
        conns: ConnTable::default(),
        stop_accepting: Signal::default(),
        shutting_down: Cell::new(false),
    };
    let host = build(core);
    mesh::receive(&host, receivers);
    let housekeeping = spawn_local(housekeeping(Rc::clone(&host), grace));
    process.serving[id].store(true, Ordering::Release);
    accept_loop(&host, listener).await;
    process.serving[id].store(false, Ordering::Release);
    housekeeping.await;
}

async fn accept_loop<H: Host>(host: &Rc<H>, listener: glommio::net::TcpListener) {
    let core = host.core();
    let mut last_logged_ms = 0;
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            core.stop_accepting.wait().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                let open = core.process.connections.load(Ordering::Relaxed);
                let admission = core.process.budget.admit(open);
                spawn_local(host.serve(stream, admission)).detach();
            }
            Some(Err(e)) => {
                let backoff = match &e {
                    glommio::GlommioError::IoError(io) if listener::is_fd_exhaustion(io) => 100,
                    _ => 10,
                };
                // A lasting failure would otherwise fill the log ten lines a second.
                if now_ms().saturating_sub(last_logged_ms) >= 10_000 {
                    last_logged_ms = now_ms();
                    crate::log_line!(
                        "shard {}: accept failed: {e}; retrying every {backoff} ms (logged once per 10 s)",
                        core.id
                    );
                }
                sleep(Duration::from_millis(backoff)).await;
            }
        }
    }
}

/// The shard's coarse clock: connection deadlines, the host's housekeeping, and the
/// shutdown sequence. Returns once this shard may stop.
async fn housekeeping<H: Host>(host: Rc<H>, grace: Duration) {
    let core = host.core();
    let mut shutdown_started: Option<u64> = None;
    let mut drained = false;
    loop {
        sleep(conns::TICK).await;
        let now = now_ms();
        core.conns.tick(now);
        host.tick(now);
        if shutdown_started.is_none() && core.process.shutdown.load(Ordering::Acquire) {
            shutdown_started = Some(now);
            core.begin_shutdown();
        }
        let Some(started) = shutdown_started else {
            continue;
        };
        if !drained && core.conns.live() == 0 && host.settled() {
            drained = true;
            core.process.draining.fetch_sub(1, Ordering::AcqRel);
        }
        // Stay up (answering mesh calls) until every shard drained, or the grace ran out.
        let all_drained = core.process.draining.load(Ordering::Acquire) == 0;
        if all_drained || now.saturating_sub(started) >= grace.as_millis() as u64 {
            return;
        }
    }
}
