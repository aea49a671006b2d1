//! The soak's account traffic: a password login as the bootstrap administrator, the
//! access token used (`/auth/me`), a refresh, and a logout, every couple of seconds.
//! Each round comes from another loopback address, so the relay's per-address login rate
//! limit never refuses it; a 503 (relay recovering, Valkey stalled) or a lost connection
//! just ends the round. Anything else but the expected answer is reported as unexpected:
//! a refresh token the relay issued and then forgot across a restart, say.
//!
//! Must not: touch messages or consumers.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;

use super::checker::Seen;
use super::client::{request, Answer, Client};
use crate::clock::{now_ns, sleep_until};
use crate::http::Target;

const EVERY_NS: u64 = 2_000_000_000;
const TIMEOUT: Duration = Duration::from_secs(15);

pub struct Logins {
    pub target: Target,
    pub username: String,
    pub password: String,
    pub seen: Sender<Seen>,
    pub stop: Arc<AtomicBool>,
    /// Rounds completed, and rounds cut short by a 503 or a lost connection.
    pub done: Arc<AtomicU64>,
    pub cut: Arc<AtomicU64>,
    /// Why the first round was cut short.
    pub first_cut: Arc<Mutex<Option<String>>>,
}

/// Why a round ended early: the relay was away (fine), or answered wrongly (a violation).
enum Stop {
    Away(String),
    Wrong(String),
}

impl Logins {
    pub fn run(self) {
        let mut round = 0u32;
        while !self.stop.load(Relaxed) {
            let next = now_ns() + EVERY_NS;
            round += 1;
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (round % 250) as u8));
            match self.round(source) {
                Ok(()) => self.done.fetch_add(1, Relaxed),
                Err(Stop::Away(why)) => {
                    if let Ok(mut first) = self.first_cut.lock() {
                        first.get_or_insert(why);
                    }
                    self.cut.fetch_add(1, Relaxed)
                }
                Err(Stop::Wrong(what)) => {
                    let _ = self.seen.send(Seen::Unexpected { at: now_ns(), what });
                    self.cut.fetch_add(1, Relaxed)
                }
            };
            sleep_until(next);
        }
    }

    fn call(&self, source: IpAddr, req: &[u8], want: u16, what: &str) -> Result<Answer, Stop> {
        let mut client = Client::connect(&self.target, Some(source))
            .map_err(|e| Stop::Away(format!("{what}: connect from {source}: {e}")))?;
        let answer = client
            .call(req, TIMEOUT)
            .map_err(|e| Stop::Away(format!("{what}: {e}")))?;
        match answer.status {
            s if s == want => Ok(answer),
            503 => Err(Stop::Away(format!("{what}: {}", answer.describe()))),
            _ => Err(Stop::Wrong(format!("{what}: {}", answer.describe()))),
        }
    }

    fn round(&self, source: IpAddr) -> Result<(), Stop> {
        let form = format!(
            "username={}&password={}&grant_type=password",
            form_encode(&self.username),
            form_encode(&self.password)
        );
        let login = request(
            "POST",
            "/auth/login",
            &self.target,
            None,
            "",
            Some(("application/x-www-form-urlencoded", form.as_bytes())),
        );
        let tokens = self.call(source, &login, 200, "login")?;
        let (access, refresh) = tokens_of(&tokens)?;
        let me = request("GET", "/auth/me", &self.target, Some(&access), "", None);
        self.call(source, &me, 200, "GET /auth/me with a fresh access token")?;
        let body = serde_json::json!({ "refresh_token": refresh }).to_string();
        let refresh = request(
            "POST",
            "/auth/token/refresh",
            &self.target,
            None,
            "",
            Some(("application/json", body.as_bytes())),
        );
        let renewed = self.call(
            source,
            &refresh,
            200,
            "refresh of a refresh token just issued",
        )?;
        let (access, _) = tokens_of(&renewed)?;
        let logout = request(
            "POST",
            "/auth/logout",
            &self.target,
            Some(&access),
            "",
            None,
        );
        self.call(source, &logout, 204, "logout")?;
        Ok(())
    }
}

fn tokens_of(answer: &Answer) -> Result<(String, String), Stop> {
    let v: serde_json::Value = serde_json::from_slice(&answer.body)
        .map_err(|e| Stop::Wrong(format!("token answer is not JSON: {e}")))?;
    match (v["access_token"].as_str(), v["refresh_token"].as_str()) {
        (Some(a), Some(r)) => Ok((a.to_string(), r.to_string())),
        _ => Err(Stop::Wrong(format!("token answer without tokens: {v}"))),
    }
}

/// `application/x-www-form-urlencoded` for a credential.
fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
