//! The line protocol that changes a running proxy's faults: one command per line, one
//! answer line each (`ok …` or `error: …`). The binary reads it from stdin and from its
//! control port, so a shell script can drive a proxy running in the background:
//!
//! ```text
//! exec 3<>/dev/tcp/127.0.0.1/$CONTROL_PORT
//! echo "stall both" >&3; read -r answer <&3      # answer: ok
//! ```
//!
//! Commands (`DIR` is `up` = client → upstream, `down` = upstream → client, or `both`;
//! durations are `250us`, `50ms` or `2s`, a bare number is milliseconds):
//!
//! | command | effect |
//! |---|---|
//! | `latency DIR DELAY [JITTER]` | add `DELAY` (± `JITTER`) to every byte's trip |
//! | `bandwidth DIR BYTES_PER_SECOND` / `bandwidth DIR off` | limit the rate |
//! | `stall DIR` / `flow DIR` | stop every byte without closing anything / let them go |
//! | `segments DIR BYTES [GAP]` / `segments DIR off` | deliver in segments of `BYTES`, `GAP` apart |
//! | `half-close DIR` | FIN that way on every open connection; the other way keeps flowing |
//! | `reset` | RST both ends of every open connection |
//! | `reset-after DIR BYTES` | RST the connection that forwards the `BYTES`th byte from now |
//! | `clear` | every fault off (a clean link) |
//! | `status` | `ok connections=N accepted=N up_bytes=N down_bytes=N up=[…] down=[…]` |
//!
//! Owns: parsing and answering commands. Must not: hold any state of its own.

use std::time::Duration;

use crate::{Direction, FaultProxy, Faults, Segments};

/// Runs one command line against `proxy`: `Ok` with the answer's text after `ok`, or
/// `Err` with what was wrong.
pub fn execute(proxy: &FaultProxy, line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&command, args)) = words.split_first() else {
        return Err("empty command".into());
    };
    let want = |n: std::ops::RangeInclusive<usize>, usage: &str| {
        if n.contains(&args.len()) {
            Ok(())
        } else {
            Err(format!("usage: {usage}"))
        }
    };
    match command {
        "latency" => {
            want(2..=3, "latency DIR DELAY [JITTER]")?;
            let jitter = args.get(2).map_or(Ok(Duration::ZERO), |j| duration(j))?;
            proxy.latency(direction(args[0])?, duration(args[1])?, jitter);
        }
        "bandwidth" => {
            want(2..=2, "bandwidth DIR BYTES_PER_SECOND|off")?;
            let rate = match args[1] {
                "off" => None,
                n => Some(count(n)?),
            };
            proxy.bandwidth(direction(args[0])?, rate);
        }
        "stall" | "flow" => {
            want(1..=1, &format!("{command} DIR"))?;
            let dir = direction(args[0])?;
            if command == "stall" {
                proxy.stall(dir);
            } else {
                proxy.flow(dir);
            }
        }
        "segments" => {
            want(2..=3, "segments DIR BYTES [GAP] | segments DIR off")?;
            let segments = match args[1] {
                "off" if args.len() == 2 => None,
                n => Some(Segments {
                    size: usize::try_from(count(n)?).map_err(|_| "segment too large")?,
                    gap: args.get(2).map_or(Ok(Duration::ZERO), |g| duration(g))?,
                }),
            };
            if segments.is_some_and(|s| s.size == 0) {
                return Err("segments must be at least 1 byte".into());
            }
            proxy.segments(direction(args[0])?, segments);
        }
        "half-close" => {
            want(1..=1, "half-close DIR")?;
            proxy.half_close(direction(args[0])?);
        }
        "reset" => {
            want(0..=0, "reset")?;
            proxy.reset();
        }
        "reset-after" => {
            want(2..=2, "reset-after DIR BYTES")?;
            proxy.reset_after(direction(args[0])?, count(args[1])?);
        }
        "clear" => {
            want(0..=0, "clear")?;
            proxy.clear();
        }
        "status" => {
            want(0..=0, "status")?;
            let [up, down] = proxy.faults();
            return Ok(format!(
                "connections={} accepted={} up_bytes={} down_bytes={} up=[{}] down=[{}]",
                proxy.connections(),
                proxy.accepted(),
                proxy.forwarded(Direction::Up),
                proxy.forwarded(Direction::Down),
                describe(&up),
                describe(&down)
            ));
        }
        other => {
            return Err(format!(
                "unknown command `{other}` (latency, bandwidth, stall, flow, segments, \
                 half-close, reset, reset-after, clear, status)"
            ))
        }
    }
    Ok(String::new())
}

fn direction(word: &str) -> Result<Direction, String> {
    match word {
        "up" => Ok(Direction::Up),
        "down" => Ok(Direction::Down),
        "both" => Ok(Direction::Both),
        other => Err(format!("direction must be up, down or both, not `{other}`")),
    }
}

fn count(word: &str) -> Result<u64, String> {
    word.parse()
        .map_err(|_| format!("expected a whole number, not `{word}`"))
}

fn duration(word: &str) -> Result<Duration, String> {
    let digits = word.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n = count(digits).map_err(|_| format!("expected a duration like 50ms, not `{word}`"))?;
    match &word[digits.len()..] {
        "us" => Ok(Duration::from_micros(n)),
        "" | "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        unit => Err(format!("unknown unit `{unit}` in `{word}` (us, ms, s)")),
    }
}

fn describe(f: &Faults) -> String {
    let mut parts = Vec::new();
    if f.stalled {
        parts.push("stalled".to_string());
    }
    if !f.jitter.is_zero() {
        parts.push(format!("latency={:?}±{:?}", f.latency, f.jitter));
    } else if !f.latency.is_zero() {
        parts.push(format!("latency={:?}", f.latency));
    }
    if let Some(rate) = f.bandwidth {
        parts.push(format!("bandwidth={rate}B/s"));
    }
    if let Some(s) = f.segments {
        parts.push(format!("segments={}B/{:?}", s.size, s.gap));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_directions_parse() {
        assert_eq!(duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(duration("50"), Ok(Duration::from_millis(50)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("250us"), Ok(Duration::from_micros(250)));
        assert!(duration("5m").is_err());
        assert!(duration("ms").is_err());
        assert_eq!(direction("both"), Ok(Direction::Both));
        assert!(direction("sideways").is_err());
    }
}
