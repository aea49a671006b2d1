//! The cross-shard mesh: one bounded SPSC channel for every ordered pair of shards, and the
//! one way to run work on another shard.
//!
//! Mechanism: glommio's `shared_channel` (a lock-free SPSC ring; the receiving executor
//! sleeps on an eventfd while idle and is woken by the sender, so there is neither spinning
//! nor polling delay). That is exactly the "crossbeam channel plus per-shard wake-up"
//! alternative, already integrated with the executor's sleep, so we use it rather than
//! rebuild it. Pairs are created individually rather than with `channel_mesh`, which has an
//! open deadlock report with small capacities (glommio #555).
//!
//! Measured with `cargo bench --bench mesh_hop` (2-core AMD EPYC VM, 2026-11-27, other
//! builds running): one-way hop to a parked executor p50 29 us, p99 61 us (the eventfd
//! wake-up dominates; a busy shard does not park, and then the hop is a ring push);
//! one-way stream 27.6 M messages/s; two idle connected executors burn 0.11% of a core.
//!
//! What travels, generic over the [`Host`] that runs on each shard:
//! - notes (`Host::Note`): the data path's one-way message (a delivery), unboxed;
//! - posts: one-way work for another shard (a boxed closure);
//! - calls: work whose typed answer comes back ([`on_shard`]). A call is one allocation,
//!   the cell that carries the work to the target and its answer back, whatever the
//!   operation; there is no catalogue of operations here. A new cross-shard operation is a
//!   function the caller passes and the owner-side handler that function calls.
//!
//! Each pair is strictly FIFO, and the protocol leans on that: an owner's answer to a
//! subscription and its later deliveries reach the subscriber's shard in the order they
//! were sent. To keep that order while never blocking the executor, every peer has an
//! outbox: a send goes straight into the channel when nothing is queued before it, and
//! otherwise waits in the outbox, drained by a pump task that awaits channel space. A full
//! channel therefore becomes back-pressure (the metrics report [`Mesh::backlog`]), never a
//! drop.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::{GlommioError, ResourceType};

use super::signal::Signal;
use super::Host;

/// Channel slots per ordered shard pair.
const CHANNEL_CAPACITY: usize = 4096;

/// What an owner-side handler answers: a value at once, or one that needs waiting for
/// (a write to be confirmed, a topic to be loaded, another request to finish). `Later`
/// holds the handler's own future type, so an answer that is ready costs no allocation.
pub enum Answer<R, L = std::future::Ready<R>> {
    Now(R),
    Later(L),
}

impl<R> Answer<R> {
    /// An answer that is ready.
    pub fn now(value: R) -> Self {
        Answer::Now(value)
    }
}

impl<R, L: Future<Output = R>> Answer<R, L> {
    /// The value, waiting for it if need be.
    pub async fn get(self) -> R {
        match self {
            Answer::Now(value) => value,
            Answer::Later(later) => later.await,
        }
    }
}

/// One-way work for another shard.
type PostWork<H> = Box<dyn FnOnce(&Rc<H>) + Send>;

/// Everything that crosses shards.
pub(super) enum Envelope<H: Host> {
    Note(H::Note),
    Post(PostWork<H>),
    /// A call, to run on the receiving shard.
    Call(Arc<dyn Call<H>>),
    /// A call come back with its answer, to the shard that made it.
    Answered(Arc<dyn Call<H>>),
}

/// A call in flight, seen from the mesh.
pub(super) trait Call<H>: Send + Sync {
    /// On the target shard: runs the work and sends the answer back when it is there.
    fn run(self: Arc<Self>, host: &Rc<H>);
    /// On the calling shard: the answer arrived; wakes the caller.
    fn complete(&self);
}

/// One call: the work (taken by the target), the answer (written by the target), and the
/// caller's waker.
///
/// Shared by two threads through an `Arc`, without locks, under these rules:
/// - `work` is put in before the cell is sent and taken once, by the target shard;
/// - `answer` is written once, by the target shard, before the cell is sent back; the
///   caller reads it only after the cell came back through the channel, whose hand-over
///   orders the write before the read;
/// - `done` and `waker` are touched only by the calling shard (its future, and its receive
///   loop in [`Call::complete`]).
///
/// A waker is never dropped on the target shard: the caller takes it out when its future
/// completes or is dropped, and a cell dropped with a waker still in it (a caller whose
/// executor ended first, at shutdown) forgets the waker rather than drop it there.
struct CallCell<H, F, R, L> {
    from: usize,
    work: UnsafeCell<Option<F>>,
    answer: UnsafeCell<Option<R>>,
    done: AtomicBool,
    waker: UnsafeCell<Option<Waker>>,
    _types: PhantomData<CallTypes<H, L>>,
}

/// The host a call runs on and the future its answer may come through: named, never held.
type CallTypes<H, L> = (fn(&Rc<H>), fn() -> L);

// SAFETY: see the rules on `CallCell`: each field is accessed by one thread at a time, and
// the channel orders the hand-overs between the two shards. `F` and `R` cross threads, so
// they must be `Send`; the waker never leaves the calling shard.
unsafe impl<H, F: Send, R: Send, L> Send for CallCell<H, F, R, L> {}
// SAFETY: as above.
unsafe impl<H, F: Send, R: Send, L> Sync for CallCell<H, F, R, L> {}

impl<H, F, R, L> Drop for CallCell<H, F, R, L> {
    fn drop(&mut self) {
        if let Some(waker) = self.waker.get_mut().take() {
            std::mem::forget(waker);
        }
    }
}

impl<H, F, R, L> Call<H> for CallCell<H, F, R, L>
where
    H: Host,
    F: FnOnce(&Rc<H>) -> Answer<R, L> + Send + 'static,
    R: Send + 'static,
    L: Future<Output = R> + 'static,
{
    fn run(self: Arc<Self>, host: &Rc<H>) {
        // SAFETY: the target shard takes the work, once (see `CallCell`).
        let Some(work) = (unsafe { (*self.work.get()).take() }) else {
            return;
        };
        match work(host) {
            Answer::Now(value) => answer(self, host, value),
            Answer::Later(later) => {
                let host = Rc::clone(host);
                super::spawn_local(async move {
                    let value = later.await;
                    answer(self, &host, value);
                })
                .detach();
            }
        }
    }

    fn complete(&self) {
        self.done.store(true, Ordering::Relaxed);
        // SAFETY: only the calling shard touches the waker, and this runs there.
        if let Some(waker) = unsafe { (*self.waker.get()).take() } {
            waker.wake();
        }
    }
}

/// Writes the answer into the cell and sends it back to the caller.
fn answer<H, F, R, L>(cell: Arc<CallCell<H, F, R, L>>, host: &Rc<H>, value: R)
where
    H: Host,
    F: FnOnce(&Rc<H>) -> Answer<R, L> + Send + 'static,
    R: Send + 'static,
    L: Future<Output = R> + 'static,
{
    // SAFETY: the target shard writes the answer once, before the cell goes back.
    unsafe { *cell.answer.get() = Some(value) };
    let from = cell.from;
    host.core().mesh.send(from, Envelope::Answered(cell));
}

/// The caller's side of a call: resolves when the answer came back.
struct Pending<H, F, R, L> {
    cell: Arc<CallCell<H, F, R, L>>,
}

impl<H, F, R, L> Future for Pending<H, F, R, L> {
    type Output = R;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R> {
        let cell = &self.cell;
        if cell.done.load(Ordering::Relaxed) {
            // SAFETY: `done` is set by the calling shard once the cell came back, after
            // the target wrote the answer (see `CallCell`).
            let value = unsafe { (*cell.answer.get()).take() };
            return Poll::Ready(value.expect("a call is answered once and awaited once"));
        }
        // SAFETY: only the calling shard touches the waker, and this runs there.
        let waker = unsafe { &mut *cell.waker.get() };
        match waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<H, F, R, L> Drop for Pending<H, F, R, L> {
    fn drop(&mut self) {
        // SAFETY: only the calling shard touches the waker, and this runs there.
        drop(unsafe { (*self.cell.waker.get()).take() });
    }
}

/// Runs `work` on shard `to` with that shard's host and resolves to its answer: at once
/// here when `to` is this shard (no allocation, no hop), else through the mesh. The one
/// way to reach another shard's state and hear back.
pub async fn on_shard<H, R, L, F>(host: &Rc<H>, to: usize, work: F) -> R
where
    H: Host,
    F: FnOnce(&Rc<H>) -> Answer<R, L> + Send + 'static,
    R: Send + 'static,
    L: Future<Output = R> + 'static,
{
    let mesh = &host.core().mesh;
    if to == mesh.me {
        return work(host).get().await;
    }
    let cell = Arc::new(CallCell {
        from: mesh.me,
        work: UnsafeCell::new(Some(work)),
        answer: UnsafeCell::new(None),
        done: AtomicBool::new(false),
        waker: UnsafeCell::new(None),
        _types: PhantomData,
    });
    let pending = Pending {
        cell: Arc::clone(&cell),
    };
    mesh.send(to, Envelope::Call(cell));
    pending.await
}

/// Runs each `(shard, work)` with [`on_shard`], all at once, and resolves to the answers
/// in the same order: the scatter-gather of requests that reach several owners.
pub async fn on_shards<H, R, L, F>(
    host: &Rc<H>,
    work: impl IntoIterator<Item = (usize, F)>,
) -> Vec<R>
where
    H: Host,
    F: FnOnce(&Rc<H>) -> Answer<R, L> + Send + 'static,
    R: Send + 'static,
    L: Future<Output = R> + 'static,
{
    join_all(work.into_iter().map(|(to, work)| on_shard(host, to, work))).await
}

/// Runs the work `make` builds on every shard, this one included (each answering about
/// its own state), and resolves to the answers in shard order.
pub async fn on_every_shard<H, R, L, F>(host: &Rc<H>, make: impl Fn() -> F) -> Vec<R>
where
    H: Host,
    F: FnOnce(&Rc<H>) -> Answer<R, L> + Send + 'static,
    R: Send + 'static,
    L: Future<Output = R> + 'static,
{
    let shards = host.core().count;
    on_shards(host, (0..shards).map(|to| (to, make()))).await
}

/// Runs `work` on shard `to` without waiting for it: here at once, else through the mesh.
pub fn post<H: Host>(host: &Rc<H>, to: usize, work: impl FnOnce(&Rc<H>) + Send + 'static) {
    let mesh = &host.core().mesh;
    if to == mesh.me {
        work(host);
    } else {
        mesh.send(to, Envelope::Post(Box::new(work)));
    }
}

/// Polls every future in turn on the caller's task (no task per future: one allocation
/// for all of them) and resolves to their outputs in order once all are ready.
pub async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    enum Slot<F: Future> {
        Running(F),
        Ready(F::Output),
        Taken,
    }
    let mut slots: Pin<Box<[Slot<F>]>> =
        Box::into_pin(futures.into_iter().map(Slot::Running).collect());
    poll_fn(|cx| {
        let mut pending = false;
        for i in 0..slots.len() {
            // SAFETY: a running future is never moved out of the pinned slice: it is
            // polled where it is and dropped in place when its output replaces it.
            let slot = unsafe { slots.as_mut().get_unchecked_mut().get_unchecked_mut(i) };
            if let Slot::Running(future) = slot {
                // SAFETY: as above, `future` stays where it is until dropped.
                match unsafe { Pin::new_unchecked(future) }.poll(cx) {
                    Poll::Ready(output) => *slot = Slot::Ready(output),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        // SAFETY: every future has finished; outputs are moved out, futures are gone.
        let slots = unsafe { slots.as_mut().get_unchecked_mut() };
        Poll::Ready(
            slots
                .iter_mut()
                .filter_map(|slot| match std::mem::replace(slot, Slot::Taken) {
                    Slot::Ready(output) => Some(output),
                    Slot::Running(_) | Slot::Taken => None,
                })
                .collect(),
        )
    })
    .await
}

/// The channel ends one shard takes into its executor.
pub(super) struct MeshEnds<H: Host> {
    senders: Vec<Option<SharedSender<Envelope<H>>>>,
    receivers: Vec<Option<SharedReceiver<Envelope<H>>>>,
}

/// Creates the channels for `shards` shards; element `i` goes to shard `i`.
pub(super) fn build<H: Host>(shards: usize) -> Vec<MeshEnds<H>> {
    let mut ends: Vec<MeshEnds<H>> = (0..shards)
        .map(|_| MeshEnds {
            senders: (0..shards).map(|_| None).collect(),
            receivers: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(CHANNEL_CAPACITY);
                ends[from].senders[to] = Some(tx);
                ends[to].receivers[from] = Some(rx);
            }
        }
    }
    ends
}

struct Outbox<H: Host> {
    sender: ConnectedSender<Envelope<H>>,
    queue: RefCell<VecDeque<Envelope<H>>>,
    /// The pump holds an envelope it has taken off the queue but not yet sent.
    pump_busy: Cell<bool>,
    wake: Signal,
}

impl<H: Host> Outbox<H> {
    fn push(&self, env: Envelope<H>) {
        if self.queue.borrow().is_empty() && !self.pump_busy.get() {
            match self.sender.try_send(env) {
                Ok(()) => return,
                Err(GlommioError::WouldBlock(ResourceType::Channel(env))) => {
                    self.queue.borrow_mut().push_back(env)
                }
                // The peer shard is gone (shutdown): nobody left to deliver to.
                Err(_) => return,
            }
        } else {
            self.queue.borrow_mut().push_back(env);
        }
        self.wake.raise();
    }

    async fn pump(self: Rc<Self>) {
        loop {
            let next = self.queue.borrow_mut().pop_front();
            match next {
                Some(env) => {
                    self.pump_busy.set(true);
                    let sent = self.sender.send(env).await;
                    self.pump_busy.set(false);
                    if sent.is_err() {
                        // The peer shard is gone (shutdown); nothing left to deliver to.
                        self.queue.borrow_mut().clear();
                        return;
                    }
                }
                None => self.wake.wait().await,
            }
        }
    }
}

/// This shard's ends of the mesh.
pub struct Mesh<H: Host> {
    me: usize,
    outboxes: Vec<Option<Rc<Outbox<H>>>>,
}

/// The connected receiving ends, one per peer, for the receive loops.
pub(super) type Receivers<H> = Vec<ConnectedReceiver<Envelope<H>>>;

impl<H: Host> Mesh<H> {
    /// Connects this shard's ends (inside its executor) and starts the outbox pumps.
    pub(super) async fn connect(me: usize, ends: MeshEnds<H>) -> (Mesh<H>, Receivers<H>) {
        // Connect every end concurrently: a sender's connect completes only once its
        // receiver connected on the peer, which is doing the same in the other order.
        let senders = ends.senders.into_iter().map(|tx| async move {
            match tx {
                Some(tx) => Some(tx.connect().await),
                None => None,
            }
        });
        let receivers = ends.receivers.into_iter().map(|rx| async move {
            match rx {
                Some(rx) => Some(rx.connect().await),
                None => None,
            }
        });
        let (senders, receivers) =
            futures_lite::future::zip(join_all(senders), join_all(receivers)).await;
        let outboxes = senders
            .into_iter()
            .map(|connected| {
                connected.map(|sender| {
                    let outbox = Rc::new(Outbox {
                        sender,
                        queue: RefCell::new(VecDeque::new()),
                        pump_busy: Cell::new(false),
                        wake: Signal::default(),
                    });
                    super::spawn_local(Rc::clone(&outbox).pump()).detach();
                    outbox
                })
            })
            .collect();
        let mesh = Mesh { me, outboxes };
        (mesh, receivers.into_iter().flatten().collect())
    }

    fn send(&self, to: usize, env: Envelope<H>) {
        if let Some(Some(outbox)) = self.outboxes.get(to) {
            outbox.push(env);
        }
    }

    /// Sends a note to shard `to` (never this one).
    pub fn note(&self, to: usize, note: H::Note) {
        self.send(to, Envelope::Note(note));
    }

    /// Envelopes waiting in the outbox to `to` behind a full channel.
    pub fn backlog(&self, to: usize) -> usize {
        match self.outboxes.get(to) {
            Some(Some(outbox)) => outbox.queue.borrow().len(),
            _ => 0,
        }
    }
}

/// Starts one receive loop per peer: notes go to the host, posts and calls run on it,
/// answers wake their callers.
pub(super) fn receive<H: Host>(host: &Rc<H>, receivers: Receivers<H>) {
    for receiver in receivers {
        let host = Rc::clone(host);
        super::spawn_local(async move {
            while let Some(env) = receiver.recv().await {
                match env {
                    Envelope::Note(note) => host.on_note(note),
                    Envelope::Post(work) => work(&host),
                    Envelope::Call(call) => call.run(&host),
                    Envelope::Answered(call) => call.complete(),
                }
            }
        })
        .detach();
    }
}
