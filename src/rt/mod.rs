//! The runtime: what every other layer stands on. Executors and where they run, listening
//! sockets, spawning, sleeping and TCP streams, the clock, shard-local wake-ups, the
//! connection table and its coarse timer, and which shard owns a key.
//!
//! It knows nothing of HTTP, topics, accounts or Valkey, and imports no other module of
//! the relay. glommio stays behind it: the rest of the code sees these names, not glommio's,
//! so the executor could be swapped (monoio, compio) without touching the protocol code.

pub mod budget;
pub mod clock;
pub mod conns;
pub mod executor;
pub mod listener;
pub mod owner;
pub mod signal;

pub use clock::now_ms;
pub use glommio::net::TcpStream;
pub use glommio::spawn_local;
pub use glommio::timer::sleep;

/// Runs CPU-heavy work (password hashing) on glommio's blocking thread pool, so that the
/// shard's executor keeps serving while it runs.
pub async fn blocking<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(work).await
}
