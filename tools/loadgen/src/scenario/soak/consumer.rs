//! The soak's consumers: each runs sessions of a random length, one after another, until
//! the run ends, and reports every session start, delivery and confirmed ack to the
//! checker. A session is one WebSocket connection, or one long-poll request (each durable
//! poll resumes from the stored position, so each is a session of its own).
//!
//! Kinds differ only in how a session reads and acks; the driver loop (reconnects, random
//! lifetimes, back-off) and the checker's rules are shared. A new transport (SSE, say) is
//! one more [`Kind`] and one more session function here: its `Resume` tells the checker
//! what it may see twice.
//!
//! Must not: judge what it sees (the checker does), or retry a request itself.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use serde::Deserialize;

use super::checker::{parse_id, Id, Resume, Seen, Tag};
use super::client::{request, Client};
use super::Dice;
use crate::clock::{now_ns, sleep_until};
use crate::http::Target;
use crate::ws::{self, Drained};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// WebSocket with a `client_id`, acking as it goes (ack frames confirmed by a ping).
    WsDurable,
    /// `GET /api/v1/poll` with a `client_id`, then `POST /api/v1/ack`.
    PollDurable,
    /// `GET /api/v1/poll` with `since` = the last ID received, one topic.
    PollCursor,
}

impl Kind {
    pub fn resume(self) -> Resume {
        match self {
            Kind::WsDurable | Kind::PollDurable => Resume::Durable,
            Kind::PollCursor => Resume::Cursor,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Kind::WsDurable => "ws",
            Kind::PollDurable => "poll",
            Kind::PollCursor => "cursor",
        }
    }
}

/// The run's flags the consumers read.
pub struct Flags {
    /// Set when the load stops: sessions then last until the end.
    pub draining: AtomicBool,
    pub quit: AtomicBool,
}

pub struct Consumer {
    pub number: usize,
    pub kind: Kind,
    pub client_id: String,
    /// (index, name) of its topics.
    pub topics: Vec<(usize, String)>,
    pub target: Target,
    pub token: String,
    pub mean_session_ns: u64,
    pub seen: Sender<Seen>,
    pub flags: Arc<Flags>,
    /// Told once the first subscription is in place (the durable position exists).
    pub ready: Option<Sender<()>>,
    /// Whether the relay knows this consumer (its first session subscribed).
    known: bool,
    /// PollCursor: the last ID received.
    cursor: String,
    dice: Dice,
}

/// Why a session ended early; counted, then the consumer reconnects.
type Trouble = String;

const POLL_TIMEOUT_S: u64 = 2;
const ANSWER_TIMEOUT: Duration = Duration::from_secs(POLL_TIMEOUT_S + 20);
const ACK_EVERY_NS: u64 = 250_000_000;
const POLL_LIMIT: usize = 500;

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message_id: Option<&'a str>,
    topic: Option<&'a str>,
    payload: Option<Stamp>,
    code: Option<&'a str>,
}

#[derive(Deserialize)]
pub struct Stamp {
    pub p: u32,
    pub s: u64,
    pub t: u64,
}

#[derive(Deserialize)]
struct PollReply<'a> {
    #[serde(borrow)]
    messages: Vec<Frame<'a>>,
}

impl Consumer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        number: usize,
        kind: Kind,
        run_id: &str,
        topics: Vec<(usize, String)>,
        target: Target,
        token: String,
        mean_session_ns: u64,
        seen: Sender<Seen>,
        flags: Arc<Flags>,
        ready: Sender<()>,
    ) -> Consumer {
        Consumer {
            number,
            kind,
            client_id: format!("soak-{run_id}-{}-{number}", kind.word()),
            topics,
            target,
            token,
            mean_session_ns,
            seen,
            flags,
            ready: Some(ready),
            known: false,
            cursor: "earliest".into(),
            dice: Dice::new(number as u64 + 1000),
        }
    }

    /// Sessions until the run quits; returns how many ended in trouble, and the first.
    pub fn run(mut self) -> (u64, Option<String>) {
        let (mut troubles, mut first) = (0u64, None);
        while !self.flags.quit.load(Relaxed) {
            let until = if self.flags.draining.load(Relaxed) {
                u64::MAX
            } else {
                now_ns() + self.dice.exponential(self.mean_session_ns)
            };
            let result = match self.kind {
                Kind::WsDurable => self.ws_session(until),
                Kind::PollDurable | Kind::PollCursor => self.poll_session(until),
            };
            if let Err(why) = result {
                troubles += 1;
                first.get_or_insert(why);
            }
            // A pause between sessions, as real clients have, and a back-off after trouble.
            sleep_until(now_ns() + self.dice.below(300) * 1_000_000);
        }
        (troubles, first)
    }

    fn topic_index(&self, name: &str) -> Option<usize> {
        self.topics.iter().find(|(_, n)| n == name).map(|(i, _)| *i)
    }

    fn deliver(&self, frame: &Frame, at: u64) -> Result<(usize, Id), Trouble> {
        let (Some(id), Some(topic), Some(stamp)) = (frame.message_id, frame.topic, &frame.payload)
        else {
            return Err("a message without message_id, topic or payload".into());
        };
        let id = parse_id(id).ok_or_else(|| format!("a message ID that is not ms-seq: {id}"))?;
        let topic = self
            .topic_index(topic)
            .ok_or_else(|| format!("a message from a topic not subscribed to: {topic}"))?;
        let _ = self.seen.send(Seen::Delivery {
            consumer: self.number,
            topic,
            id,
            tag: Tag {
                publisher: stamp.p,
                seq: stamp.s,
            },
            sent_ns: stamp.t,
            at,
        });
        Ok((topic, id))
    }

    fn mark_known(&mut self) {
        self.known = true;
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
    }

    fn quit(&self) -> bool {
        self.flags.quit.load(Relaxed)
    }

    /// One WebSocket connection: subscribe (the first time from the earliest message, later
    /// from the stored position), read, ack every quarter second (confirmed by a ping's
    /// pong), and at the end of the lifetime either ack and close, or just drop the line.
    fn ws_session(&mut self, until: u64) -> Result<(), Trouble> {
        let mut conn = ws::open(&self.target, &self.token, None, 64 * 1024)?;
        conn.set_read_timeout(Duration::from_millis(50))
            .map_err(|e| format!("socket options: {e}"))?;
        let names: Vec<&str> = self.topics.iter().map(|(_, n)| n.as_str()).collect();
        let since = if self.known {
            ""
        } else {
            r#","since":"earliest""#
        };
        let subscribe = format!(
            r#"{{"type":"subscribe","topics":{},"client_id":"{}"{since}}}"#,
            serde_json::to_string(&names).unwrap_or_default(),
            self.client_id
        );
        let _ = self.seen.send(Seen::Session {
            consumer: self.number,
            at: now_ns(),
        });
        conn.send_text(subscribe.as_bytes())
            .map_err(|e| format!("subscribe: {e}"))?;
        // The newest delivery per topic not yet acked, and the acks awaiting their pong.
        let mut unacked: Vec<(usize, Id)> = Vec::new();
        let mut in_flight: Option<(u64, Vec<(usize, Id)>)> = None;
        let mut next_ack = now_ns() + ACK_EVERY_NS;
        let clean_end = self.dice.below(2) == 0;
        let mut ending = false;
        let mut end_by = u64::MAX;
        loop {
            let mut frames: Vec<Vec<u8>> = Vec::new();
            let drained = conn.drain(|text| frames.push(text.to_vec()));
            let at = now_ns();
            for text in &frames {
                let frame: Frame = serde_json::from_slice(text)
                    .map_err(|e| format!("a frame that is not the expected JSON: {e}"))?;
                match frame.kind {
                    "message" => {
                        let (topic, id) = self.deliver(&frame, at)?;
                        match unacked.iter_mut().find(|(t, _)| *t == topic) {
                            Some(slot) => slot.1 = id,
                            None => unacked.push((topic, id)),
                        }
                    }
                    "subscribed" => self.mark_known(),
                    "pong" => {
                        if let Some((sent_at, acks)) = in_flight.take() {
                            for (topic, id) in acks {
                                let _ = self.seen.send(Seen::Ack {
                                    consumer: self.number,
                                    topic,
                                    id,
                                    sent_at,
                                    confirmed_at: at,
                                });
                            }
                        }
                        if ending {
                            return Ok(());
                        }
                    }
                    "error" => {
                        return Err(format!("error frame {}", frame.code.unwrap_or("?")));
                    }
                    _ => {}
                }
            }
            if let Drained::Closed(why) = drained {
                return Err(why);
            }
            if self.quit() || (ending && at > end_by) {
                return Ok(());
            }
            if !ending && at >= until {
                if !clean_end {
                    return Ok(());
                }
                ending = true;
                end_by = at + 1_000_000_000;
                next_ack = at;
            }
            if in_flight.is_none() && !unacked.is_empty() && at >= next_ack {
                for (topic, id) in &unacked {
                    let frame = format!(
                        r#"{{"type":"ack","message_id":"{}","topic":"{}"}}"#,
                        super::checker::show_id(*id),
                        self.topic_name(*topic)
                    );
                    conn.send_text(frame.as_bytes())
                        .map_err(|e| format!("ack: {e}"))?;
                }
                conn.send_text(br#"{"type":"ping"}"#)
                    .map_err(|e| format!("ping: {e}"))?;
                in_flight = Some((at, std::mem::take(&mut unacked)));
                next_ack = at + ACK_EVERY_NS;
            } else if ending && in_flight.is_none() && unacked.is_empty() {
                return Ok(());
            }
        }
    }

    fn topic_name(&self, topic: usize) -> &str {
        self.topics
            .iter()
            .find(|(i, _)| *i == topic)
            .map_or("", |(_, n)| n.as_str())
    }

    /// One keep-alive connection of polls until the lifetime ends. Durable consumers ack
    /// what each poll brought (and now and then do not, to be sent it again); cursor
    /// consumers poll from the last ID they got.
    fn poll_session(&mut self, until: u64) -> Result<(), Trouble> {
        let mut client =
            Client::connect(&self.target, None).map_err(|e| format!("connect: {e}"))?;
        let names: Vec<&str> = self.topics.iter().map(|(_, n)| n.as_str()).collect();
        let topics = names.join(",");
        while !self.quit() && now_ns() < until {
            let path = match self.kind {
                Kind::PollCursor => format!(
                    "/api/v1/poll?topics={topics}&timeout={POLL_TIMEOUT_S}&limit={POLL_LIMIT}&since={}",
                    self.cursor
                ),
                _ => format!(
                    "/api/v1/poll?topics={topics}&timeout={POLL_TIMEOUT_S}&limit={POLL_LIMIT}&client_id={}{}",
                    self.client_id,
                    if self.known { "" } else { "&since=earliest" }
                ),
            };
            let _ = self.seen.send(Seen::Session {
                consumer: self.number,
                at: now_ns(),
            });
            let req = request("GET", &path, &self.target, Some(&self.token), "", None);
            let answer = client
                .call(&req, ANSWER_TIMEOUT)
                .map_err(|e| format!("poll: {e}"))?;
            let at = now_ns();
            match answer.status {
                200 => {}
                503 => return Err(format!("poll: 503 {}", answer.code())),
                _ => {
                    let _ = self.seen.send(Seen::Unexpected {
                        at,
                        what: format!("poll by {}: {}", self.client_id, answer.describe()),
                    });
                    return Err(format!("poll: {}", answer.describe()));
                }
            }
            self.mark_known();
            let reply: PollReply = serde_json::from_slice(&answer.body)
                .map_err(|e| format!("a poll reply that is not the expected JSON: {e}"))?;
            let mut newest: Vec<(usize, Id)> = Vec::new();
            for frame in &reply.messages {
                let (topic, id) = self.deliver(frame, at)?;
                match newest.iter_mut().find(|(t, _)| *t == topic) {
                    Some(slot) => slot.1 = id,
                    None => newest.push((topic, id)),
                }
                if self.kind == Kind::PollCursor {
                    self.cursor = frame.message_id.unwrap_or_default().to_string();
                }
            }
            // One durable poll in ten leaves its messages unacknowledged.
            if self.kind == Kind::PollDurable && !newest.is_empty() && self.dice.below(10) > 0 {
                self.ack(&mut client, &newest)?;
            }
        }
        Ok(())
    }

    /// `POST /api/v1/ack` for the newest message of each topic; the IDs the relay took
    /// are reported confirmed.
    fn ack(&mut self, client: &mut Client, newest: &[(usize, Id)]) -> Result<(), Trouble> {
        let ids: Vec<String> = newest
            .iter()
            .map(|(_, id)| super::checker::show_id(*id))
            .collect();
        let body = serde_json::json!({"message_ids": ids, "client_id": self.client_id}).to_string();
        let req = request(
            "POST",
            "/api/v1/ack",
            &self.target,
            Some(&self.token),
            "",
            Some(("application/json", body.as_bytes())),
        );
        let sent_at = now_ns();
        let answer = client
            .call(&req, ANSWER_TIMEOUT)
            .map_err(|e| format!("ack: {e}"))?;
        let confirmed_at = now_ns();
        if answer.status != 200 {
            return Err(format!("ack: {}", answer.describe()));
        }
        let reply: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("an ack reply that is not JSON: {e}"))?;
        let refused = |id: &str| {
            ["unknown", "ambiguous"].iter().any(|k| {
                reply[*k]
                    .as_array()
                    .is_some_and(|list| list.iter().any(|v| v.as_str() == Some(id)))
            })
        };
        for ((topic, id), text) in newest.iter().zip(&ids) {
            if refused(text) {
                continue;
            }
            let _ = self.seen.send(Seen::Ack {
                consumer: self.number,
                topic: *topic,
                id: *id,
                sent_at,
                confirmed_at,
            });
        }
        Ok(())
    }
}
