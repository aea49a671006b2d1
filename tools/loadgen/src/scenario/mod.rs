//! The scenarios, one module each (`soak` a directory: it has a checker of its own); this
//! module dispatches and holds what they share: the feeding publisher and the crew of
//! receiving threads of `fanout`, `e2e` and `poll`.

mod connections;
mod delivery;
mod poll;
mod publish;
pub mod soak;

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::args::{Common, Load, Options, Scenario};
use crate::clock::{now_ns, sleep_until, Window};
use crate::progress::Live;
use crate::publisher::{self, Outcome, Payload, Plan, Publisher};
use crate::report::Summary;

/// After the publisher is done, how long stragglers may take to arrive.
const STRAGGLERS_NS: u64 = 2_000_000_000;

pub fn run(options: &Options) -> Result<Summary, String> {
    let common = &options.common;
    match &options.scenario {
        Scenario::Publish { load, bulk } => publish::run(common, load, *bulk),
        Scenario::Fanout { load, subscribers } => {
            delivery::run(common, load, *subscribers, delivery::Kind::Fanout)
        }
        Scenario::E2e { load, subscribers } => {
            delivery::run(common, load, *subscribers, delivery::Kind::E2e)
        }
        Scenario::Connections {
            count,
            rate,
            sources,
        } => connections::run(common, *count, *rate, *sources),
        Scenario::Poll {
            load,
            consumers,
            poll_timeout,
        } => poll::run(common, load, *consumers, *poll_timeout),
        Scenario::Soak(plan) => soak::run(common, plan),
    }
}

fn rate_words(rate: Option<f64>) -> String {
    match rate {
        Some(r) => format!("{r} msg/s"),
        None => "closed loop".into(),
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Receiving threads and the coordinator's handle on them. Each thread sets up its share
/// (connects, subscribes), says whether that worked, waits for the run's window, receives
/// until [`Live::stop`], and hands back what it saw.
struct Crew<P> {
    handles: Vec<JoinHandle<()>>,
    ready: Receiver<Result<(), String>>,
    window: Sender<Window>,
    parts: Receiver<P>,
}

type SetUp<S> = Box<dyn FnOnce() -> Result<S, String> + Send>;

impl<P: Send + 'static> Crew<P> {
    /// Starts `threads` threads named `name-N`; thread N runs `setup(N)`, then `receive`.
    fn launch<S: 'static>(
        threads: usize,
        name: &str,
        mut setup: impl FnMut(usize) -> SetUp<S>,
        receive: fn(S, &Window) -> P,
    ) -> Result<Crew<P>, String> {
        let (ready_tx, ready) = unbounded();
        let (window, window_rx) = bounded::<Window>(threads);
        let (part_tx, parts) = unbounded();
        let mut handles = Vec::new();
        for t in 0..threads {
            let set_up = setup(t);
            let (ready_tx, window_rx, part_tx) =
                (ready_tx.clone(), window_rx.clone(), part_tx.clone());
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{t}"))
                .spawn(move || {
                    let state = match set_up() {
                        Ok(state) => state,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    // No window: the run was called off.
                    if let Ok(window) = window_rx.recv() {
                        let _ = part_tx.send(receive(state, &window));
                    }
                })
                .map_err(|e| format!("cannot start a thread: {e}"))?;
            handles.push(handle);
        }
        Ok(Crew {
            handles,
            ready,
            window,
            parts,
        })
    }

    /// Waits until every thread is set up; when one failed, calls the run off.
    fn all_ready(self) -> Result<Crew<P>, String> {
        let mut failure = None;
        for _ in 0..self.handles.len() {
            match self.ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => failure = failure.or(Some("a receiving thread died".into())),
            }
        }
        match failure {
            None => Ok(self),
            Some(e) => {
                drop(self.window);
                for h in self.handles {
                    let _ = h.join();
                }
                Err(e)
            }
        }
    }

    fn go(&self, window: Window) {
        for _ in 0..self.handles.len() {
            let _ = self.window.send(window);
        }
    }

    /// What every thread saw (call after [`Live::stop`]).
    fn parts(self) -> Vec<P> {
        drop(self.window);
        let parts = self.parts.iter().take(self.handles.len()).collect();
        for h in self.handles {
            let _ = h.join();
        }
        parts
    }
}

/// Messages each receiver should get and how it fared against that: receiver i takes
/// topic i mod topics, so it expects what was confirmed published there.
#[derive(Default)]
struct Tally {
    expected: u64,
    received: u64,
    lost: u64,
    /// Deliveries of publishes that got no answer: the relay took them after all.
    from_unconfirmed: u64,
    duplicates: u64,
}

impl Tally {
    fn expected(published: &Outcome, receivers: usize) -> u64 {
        let topics = published.published.len();
        (0..receivers)
            .map(|i| published.published[i % topics])
            .sum()
    }

    fn add(&mut self, published: &Outcome, receiver: usize, got: u64) {
        let topic = receiver % published.published.len();
        let want = published.published[topic];
        self.expected += want;
        self.received += got;
        self.lost += want.saturating_sub(got);
        // Unconfirmed publishes may have been delivered; only beyond them is a delivery a
        // duplicate. So received = expected - lost + from_unconfirmed + duplicates.
        let beyond = got.saturating_sub(want);
        let from_unconfirmed = beyond.min(published.unconfirmed[topic]);
        self.from_unconfirmed += from_unconfirmed;
        self.duplicates += beyond - from_unconfirmed;
    }
}

/// Gives the last deliveries up to 2 s to arrive (`live` counts them), then stops the run.
fn settle(live: &Live, expected: u64) {
    let give_up = now_ns() + STRAGGLERS_NS;
    while live.ops() < expected && now_ns() < give_up {
        sleep_until(now_ns() + 5_000_000);
    }
    live.stop();
}

/// Starts the publisher that feeds the receiving scenarios (stamped payloads, one
/// thread, on `--publish-url`), or stops the receivers when it cannot start.
fn start_feeding(
    common: &Common,
    load: &Load,
    topics: &[String],
    window: Window,
    receivers: &Live,
) -> Result<Publisher, String> {
    let plan = Plan {
        target: common.publish_target.clone(),
        token: common.token.clone(),
        connections: load.connections,
        threads: 1,
        rate: load.rate,
        bulk: None,
        payload: Payload::Stamped(load.payload_bytes),
        topics: topics.to_vec(),
    };
    publisher::start(&plan, window, Live::new()).inspect_err(|_| receivers.stop())
}

/// The clients worker thread `t` of `threads` runs, numbered, with their topics: client
/// `i` goes to thread `i mod threads` and reads topic `i mod topics`.
pub fn clients_of(
    t: usize,
    threads: usize,
    clients: usize,
    topics: &[String],
) -> Vec<(usize, String)> {
    (t..clients)
        .step_by(threads)
        .map(|i| (i, topics[i % topics.len()].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Latency;

    #[test]
    fn deliveries_add_up_to_expected_minus_lost_plus_unconfirmed_plus_duplicates() {
        // Two topics: 10 and 20 publishes confirmed, 3 and 0 sent without an answer.
        let published = Outcome {
            latency: Latency::new(),
            messages: 30,
            errors: 3,
            published: vec![10, 20],
            unconfirmed: vec![3, 0],
            refusals: Default::default(),
            first_error: None,
        };
        let mut tally = Tally::default();
        tally.add(&published, 0, 12); // topic 0: 2 of the unconfirmed arrived
        tally.add(&published, 1, 19); // topic 1: one lost
        tally.add(&published, 2, 15); // topic 0: the 3 unconfirmed, and 2 more
        tally.add(&published, 3, 20); // topic 1: exactly
        assert_eq!(tally.expected, 60);
        assert_eq!(tally.received, 66);
        assert_eq!(tally.lost, 1);
        assert_eq!(tally.from_unconfirmed, 5);
        assert_eq!(tally.duplicates, 2);
        assert_eq!(
            tally.received,
            tally.expected - tally.lost + tally.from_unconfirmed + tally.duplicates
        );
    }
}
