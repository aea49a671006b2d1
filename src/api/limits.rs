//! Fairness limits: token buckets for publish rates and WebSocket frame rates, per-address
//! login attempts, and the JSON nesting check.
//!
//! Publish buckets are kept per token subject **on each shard**, not on one shard per
//! subject: checking them costs no cross-shard hop and no lock on the request path. The
//! price is that a subject whose connections land on N shards can reach N times the
//! configured rate (README "Security" says so). Buckets of subjects idle for a minute are
//! dropped, so the table stays as small as the set of active producers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::error::ApiError;

/// A token bucket: `rate` tokens per second, holding at most one second's worth.
#[derive(Clone, Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u64, now: Instant) -> Self {
        Bucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }

    /// Takes `cost` tokens, or says how long until they would be there. A cost above the
    /// burst is allowed when the bucket is full, so one large request is never refused
    /// forever; it just empties the bucket for longer.
    pub fn take(&mut self, cost: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let needed = cost.min(self.rate);
        if self.tokens >= needed {
            self.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((needed - self.tokens) / self.rate))
        }
    }

    fn idle_since(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last)
    }
}

struct SubjectBuckets {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
}

/// The publish buckets of one shard.
pub struct PublishRates {
    messages_per_sec: u64,
    bytes_per_sec: u64,
    subjects: RefCell<HashMap<String, SubjectBuckets>>,
    last_sweep: RefCell<Instant>,
}

const IDLE_BUCKET: Duration = Duration::from_secs(60);

impl PublishRates {
    pub fn new(messages_per_sec: u64, bytes_per_sec: u64) -> Self {
        PublishRates {
            messages_per_sec,
            bytes_per_sec,
            subjects: RefCell::new(HashMap::new()),
            last_sweep: RefCell::new(Instant::now()),
        }
    }

    /// Charges `subject` for `messages` messages in a body of `bytes` bytes; 429 with
    /// `Retry-After` when either bucket is short. A refused request is not charged.
    pub fn charge(&self, subject: &str, messages: usize, bytes: usize) -> Result<(), ApiError> {
        if self.messages_per_sec == 0 && self.bytes_per_sec == 0 {
            return Ok(());
        }
        let now = Instant::now();
        self.sweep(now);
        let mut subjects = self.subjects.borrow_mut();
        let buckets = match subjects.get_mut(subject) {
            Some(b) => b,
            None => subjects
                .entry(subject.to_string())
                .or_insert(SubjectBuckets {
                    messages: (self.messages_per_sec > 0)
                        .then(|| Bucket::new(self.messages_per_sec, now)),
                    bytes: (self.bytes_per_sec > 0).then(|| Bucket::new(self.bytes_per_sec, now)),
                }),
        };
        // Check both before taking from either, so a refusal costs nothing.
        let mut probe_m = buckets.messages.clone();
        let mut probe_b = buckets.bytes.clone();
        let wait_m = probe_m.as_mut().map(|b| b.take(messages as f64, now));
        let wait_b = probe_b.as_mut().map(|b| b.take(bytes as f64, now));
        let wait = [wait_m, wait_b]
            .into_iter()
            .flatten()
            .filter_map(Result::err)
            .max();
        match wait {
            Some(wait) => Err(rate_limited(
                wait,
                "publish rate limit of this token exceeded",
            )),
            None => {
                buckets.messages = probe_m;
                buckets.bytes = probe_b;
                Ok(())
            }
        }
    }

    fn sweep(&self, now: Instant) {
        let mut last = self.last_sweep.borrow_mut();
        if now.saturating_duration_since(*last) < IDLE_BUCKET {
            return;
        }
        *last = now;
        self.subjects.borrow_mut().retain(|_, b| {
            [&b.messages, &b.bytes]
                .into_iter()
                .flatten()
                .any(|bucket| bucket.idle_since(now) < IDLE_BUCKET)
        });
    }
}

/// Addresses tracked per login window and shard; beyond, new addresses are refused until
/// the window turns (an attacker with that many addresses is not slowed by a per-address
/// limit anyway, and the map stays bounded).
const MAX_LOGIN_ADDRESSES: usize = 100_000;

/// Password-login and token-refresh attempts per client address and minute on one shard,
/// in fixed windows as the original relay counts them.
pub struct LoginRates {
    per_minute: u32,
    window: Cell<u64>,
    attempts: RefCell<HashMap<IpAddr, u32>>,
}

impl LoginRates {
    pub fn new(per_minute: u32) -> Self {
        LoginRates {
            per_minute,
            window: Cell::new(0),
            attempts: RefCell::new(HashMap::new()),
        }
    }

    /// Counts one attempt from `addr`; 429 when the address used up this minute's.
    pub fn charge(&self, addr: IpAddr, now_ms: u64) -> Result<(), ApiError> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let minute = now_ms / 60_000;
        let mut attempts = self.attempts.borrow_mut();
        if self.window.replace(minute) != minute {
            attempts.clear();
        }
        let limited = || {
            rate_limited(
                Duration::from_millis(60_000 - now_ms % 60_000),
                &format!("Rate limit exceeded: {} per 1 minute", self.per_minute),
            )
        };
        let full = attempts.len() >= MAX_LOGIN_ADDRESSES;
        let count = match attempts.get_mut(&addr) {
            Some(count) => count,
            None if full => return Err(limited()),
            None => attempts.entry(addr).or_insert(0),
        };
        if *count >= self.per_minute {
            return Err(limited());
        }
        *count += 1;
        Ok(())
    }
}

/// 429 with a whole-second `Retry-After` (at least 1).
pub fn rate_limited(wait: Duration, detail: &str) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(429, "RATE_LIMITED", detail).with_header("Retry-After", secs.max(1).to_string())
}

/// Whether JSON text nests arrays/objects deeper than `max` (strings are skipped, so
/// brackets inside them do not count). The text is already known to be valid JSON.
pub fn too_deep(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, t0);
        for _ in 0..10 {
            assert!(b.take(1.0, t0).is_ok());
        }
        let wait = b.take(1.0, t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(b.take(1.0, t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take(5.0, t0 + Duration::from_millis(150)).is_err());
    }

    #[test]
    fn a_cost_above_the_burst_passes_once_the_bucket_is_full() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, t0);
        assert!(b.take(25.0, t0).is_ok(), "full bucket");
        assert!(
            b.take(1.0, t0 + Duration::from_secs(1)).is_err(),
            "paid off slowly"
        );
        assert!(b.take(1.0, t0 + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn subjects_have_separate_buckets_and_refusals_cost_nothing() {
        let rates = PublishRates::new(2, 0);
        assert!(rates.charge("a", 2, 10).is_ok());
        let err = rates.charge("a", 1, 10).unwrap_err();
        assert_eq!((err.status, err.code), (429, "RATE_LIMITED"));
        assert!(err
            .headers
            .iter()
            .any(|(n, v)| *n == "Retry-After" && v == "1"));
        assert!(rates.charge("b", 2, 10).is_ok(), "another subject");

        let bytes = PublishRates::new(100, 1000);
        assert!(bytes.charge("a", 1, 900).is_ok());
        assert!(bytes.charge("a", 1, 200).is_err(), "byte bucket short");
        assert!(
            bytes.charge("a", 1, 100).is_ok(),
            "the refusal took no message token"
        );
    }

    #[test]
    fn unlimited_by_default() {
        let rates = PublishRates::new(0, 0);
        for _ in 0..10_000 {
            assert!(rates.charge("a", 1000, 1 << 20).is_ok());
        }
        assert!(rates.subjects.borrow().is_empty());
    }

    #[test]
    fn nesting_depth() {
        assert!(!too_deep(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(too_deep(br#"{"a":[1,{"b":2}]}"#, 2));
        assert!(
            !too_deep(br#"{"a":"[[[[[[\"[["}"#, 1),
            "brackets in strings"
        );
        assert!(!too_deep(b"42", 0));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(too_deep(deep.as_bytes(), 64));
    }
}
