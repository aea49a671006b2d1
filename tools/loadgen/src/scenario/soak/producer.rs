//! The soak's publishers: single and bulk publishes at a steady rate, each one logical
//! publish with its own Idempotency-Key, retried with the same key and body until it gets
//! an answer that settles it (or a minute has passed). Every payload carries its tag
//! (publisher, sequence number) and its first send time, so the checker can tell a
//! retry's duplicate from a redelivery, and measure publish-to-delivery latency.
//!
//! Must not: judge anything but the shape of answers; tell the checker about a publish
//! before it is settled (the checker's horizon relies on [`Producer::in_flight`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use serde::Deserialize;

use super::checker::{parse_id, Published, Seen, Tag};
use super::client::{request, Answer, Client};
use super::Dice;
use crate::clock::{now_ns, sleep_until};
use crate::http::Target;

/// How long one publish is retried before it is given up as unresolved.
const GIVE_UP_NS: u64 = 60_000_000_000;
/// One attempt's wait for its answer: longer than the relay's idempotency wait (10 s).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Items of a bulk publish, at most.
const BULK_MAX: u64 = 8;

pub struct Producer {
    pub number: u32,
    pub run_id: String,
    pub topics: Vec<String>,
    pub target: Target,
    pub token: String,
    /// Messages per second from this publisher.
    pub rate: f64,
    pub published: Sender<Published>,
    pub seen: Sender<Seen>,
    /// When the publish under way was first sent; 0 between publishes.
    pub in_flight: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
}

#[derive(Deserialize)]
struct Single<'a> {
    message_id: &'a str,
}

#[derive(Deserialize)]
struct Bulk<'a> {
    #[serde(borrow)]
    results: Vec<Item<'a>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    message_id: Option<&'a str>,
    status: &'a str,
}

/// What one settled publish was.
struct Settled {
    answer: Option<Answer>,
    attempt_sent: u64,
    conn_opened: u64,
    retries: u32,
    lost_attempts: u32,
}

impl Producer {
    pub fn run(self) {
        let mut dice = Dice::new(u64::from(self.number) + 1);
        let mut conn: Option<Client> = None;
        let (mut seq, mut publish) = (0u64, 0u64);
        let start = now_ns();
        let mut sent_messages = 0u64;
        while !self.stop.load(SeqCst) {
            let due = start + (sent_messages as f64 * 1e9 / self.rate) as u64;
            sleep_until(due);
            let items = if dice.below(5) == 0 {
                2 + dice.below(BULK_MAX - 1)
            } else {
                1
            };
            let first_sent = now_ns();
            self.in_flight.store(first_sent, SeqCst);
            let chosen: Vec<(usize, u64)> = (0..items)
                .map(|_| {
                    seq += 1;
                    (dice.below(self.topics.len() as u64) as usize, seq)
                })
                .collect();
            let body = self.body(&chosen, first_sent, items > 1);
            let path = if items > 1 {
                "/api/v1/messages/bulk"
            } else {
                "/api/v1/messages"
            };
            publish += 1;
            let key = format!(
                "Idempotency-Key: soak-{}-{}-{publish}\r\n",
                self.run_id, self.number
            );
            let req = request(
                "POST",
                path,
                &self.target,
                Some(&self.token),
                &key,
                Some(("application/json", body.as_bytes())),
            );
            let settled = self.settle(&mut conn, &req, first_sent, &mut dice);
            self.report(&chosen, first_sent, settled);
            self.in_flight.store(0, SeqCst);
            sent_messages += items;
        }
    }

    fn body(&self, chosen: &[(usize, u64)], first_sent: u64, bulk: bool) -> String {
        let message = |(topic, seq): &(usize, u64)| {
            format!(
                r#"{{"topic":"{}","payload":{{"p":{},"s":{seq},"t":{first_sent}}}}}"#,
                self.topics[*topic], self.number
            )
        };
        if bulk {
            let items: Vec<String> = chosen.iter().map(message).collect();
            format!(r#"{{"messages":[{}]}}"#, items.join(","))
        } else {
            message(&chosen[0])
        }
    }

    /// Sends `req` until an answer settles it: a 201 or 207 (with anything accepted), or
    /// any answer but 503 / 429 (a relay recovering, stalled on Valkey or busy) and a
    /// 207 that published nothing, which are retried with the same key.
    fn settle(
        &self,
        conn: &mut Option<Client>,
        req: &[u8],
        first_sent: u64,
        dice: &mut Dice,
    ) -> Settled {
        let (mut retries, mut lost_attempts) = (0, 0);
        loop {
            let now = now_ns();
            if now > first_sent + GIVE_UP_NS {
                return Settled {
                    answer: None,
                    attempt_sent: now,
                    conn_opened: 0,
                    retries,
                    lost_attempts,
                };
            }
            if conn.is_none() {
                match Client::connect(&self.target, None) {
                    Ok(c) => *conn = Some(c),
                    Err(_) => {
                        retries += 1;
                        sleep_until(now + (50 + dice.below(200)) * 1_000_000);
                        continue;
                    }
                }
            }
            let client = conn.as_mut().expect("connected above");
            let conn_opened = client.opened_at;
            let attempt_sent = now_ns();
            match client.call(req, ATTEMPT_TIMEOUT) {
                Ok(answer) if retryable(&answer) => {
                    retries += 1;
                    let pause = answer.retry_after.map_or(200, |s| (s * 1000).min(1000));
                    sleep_until(now_ns() + pause * 1_000_000);
                }
                Ok(answer) => {
                    return Settled {
                        answer: Some(answer),
                        attempt_sent,
                        conn_opened,
                        retries,
                        lost_attempts,
                    }
                }
                Err(_) => {
                    *conn = None;
                    retries += 1;
                    lost_attempts += 1;
                    sleep_until(now_ns() + (50 + dice.below(200)) * 1_000_000);
                }
            }
        }
    }

    fn report(&self, chosen: &[(usize, u64)], first_sent: u64, settled: Settled) {
        let tag = |seq: u64| Tag {
            publisher: self.number,
            seq,
        };
        let at = now_ns();
        let Some(answer) = settled.answer else {
            for &(_, seq) in chosen {
                let _ = self
                    .published
                    .send(Published::Unresolved { tag: tag(seq), at });
            }
            return;
        };
        let ids: Result<Vec<Option<String>>, String> = match answer.status {
            201 if chosen.len() == 1 => serde_json::from_slice::<Single>(&answer.body)
                .map(|s| vec![Some(s.message_id.to_string())])
                .map_err(|e| e.to_string()),
            207 if chosen.len() > 1 => serde_json::from_slice::<Bulk>(&answer.body)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    if b.results.len() != chosen.len() {
                        return Err(format!(
                            "{} results for {} items",
                            b.results.len(),
                            chosen.len()
                        ));
                    }
                    Ok(b.results
                        .iter()
                        .map(|r| {
                            (r.status == "accepted")
                                .then(|| r.message_id.unwrap_or_default().to_string())
                        })
                        .collect())
                }),
            _ => Err(answer.describe()),
        };
        let ids = ids.unwrap_or_else(|why| {
            let _ = self.seen.send(Seen::Unexpected {
                at,
                what: format!("publisher {}: {why}", self.number),
            });
            vec![None; chosen.len()]
        });
        for (&(topic, seq), id) in chosen.iter().zip(ids) {
            let result = match id.as_deref().map(parse_id) {
                Some(Some(id)) => Published::Accepted {
                    topic,
                    id,
                    tag: tag(seq),
                    first_sent,
                    attempt_sent: settled.attempt_sent,
                    conn_opened: settled.conn_opened,
                    answered: at,
                    retries: settled.retries,
                    lost_attempts: settled.lost_attempts,
                },
                _ => Published::Rejected { tag: tag(seq), at },
            };
            let _ = self.published.send(result);
        }
    }
}

/// Answers a retry with the same key may turn into a publish: the relay kept no key.
fn retryable(answer: &Answer) -> bool {
    match answer.status {
        503 | 429 => true,
        207 => serde_json::from_slice::<serde_json::Value>(&answer.body)
            .is_ok_and(|v| v["summary"]["accepted"].as_u64() == Some(0)),
        _ => false,
    }
}
