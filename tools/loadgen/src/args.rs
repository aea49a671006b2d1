//! The command line: `pulsar-loadgen SCENARIO --flag value …` (flags may also come before
//! the scenario), parsed by hand into [`Options`], with the usage text that doubles as the
//! tool's documentation.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::cpu::cores;
use crate::http::Target;
use crate::plot;
use crate::token;

pub const USAGE: &str = "\
pulsar-loadgen: load generator for Pulsar Relay

usage: pulsar-loadgen SCENARIO [--flag value ...]   (flags go before or after SCENARIO)
       pulsar-loadgen plot A.hgrm [B.hgrm ...] -o latency.svg [--label A --label B ...]

scenarios:
  publish      HTTP producers on keep-alive connections: closed loop (as fast as the relay
               answers) or, with --rate, open loop on a fixed schedule.
  fanout       --subscribers WebSocket clients over --topics and a publisher at --rate:
               deliveries/s, and losses (expected vs received per subscriber).
  e2e          publish -> WebSocket receive latency; the intended send time travels in the
               payload and latency counts from it (coordinated-omission corrected).
  connections  ramp to --count idle WebSocket connections and hold them: handshake latency
               and, with --server-pid, the relay's RSS per connection.
  poll         --consumers long-poll clients (GET /api/v1/poll, since cursors) fed by a
               publisher at --rate: messages/s and poll latency.
  soak         a mixed load for --duration with a checker: durable WebSocket and long-poll
               consumers that disconnect and resume at random, cursor long-polls,
               publishers (single and bulk, Idempotency-Key retries), logins; a row of
               RSS, descriptors, counts and latency per --interval; fails on any lost,
               reordered or wrongly duplicated message, or growth that does not level off.
               Driven by tools/soak.sh, which kills the relay and stalls Valkey meanwhile.

common flags:
  --url URL           relay address (default http://127.0.0.1:8080; https://… with --tls-ca);
                      fanout and e2e take it more than once: subscriber i connects to
                      URL number i mod N (several cluster-mode nodes, one load)
  --publish-url URL   fanout and e2e: where the publisher posts (default: the first --url),
                      e.g. one node while the subscribers are on others
  --tls-ca FILE       PEM CA certificate(s) to verify an https:// relay with
  --token JWT         token with read and write permissions, or
  --secret KEY        HS256 secret to mint one (default: $PULSAR_JWT_SECRET_KEY)
  --duration D        measured phase (default 10s; D is 500ms, 10s, 2m or bare seconds)
  --warmup D          load before measuring, not counted (default 2s)
  --threads N         worker threads (default: half the cores, leaving the rest to a relay
                      on the same machine; connections: one per core)
  --server-pid PID    the relay's pid: its CPU use (and RSS for connections) in the summary,
                      and a \"server µs\" column: its CPU time (user + system, from /proc)
                      over the measured phase divided by each row's count (per message
                      acknowledged, per delivery, per poll, per handshake)
  --json FILE         machine-readable summary
  --hgrm FILE         the headline latency as an HdrHistogram percentile distribution (ms)
  --svg FILE          the headline latency drawn as `plot` draws the --hgrm file
  --topic-prefix P    topics are P-0, P-1, ... (default loadgen-<unix ms>, fresh per run)
  --max-error-rate R  errors tolerated, as a fraction of the operations counted (0.001 or
                      0.1%; default 0: any error, lost or duplicate delivery fails the run)

scenario flags (defaults in brackets):
  publish      --connections N [64]  --rate MSGS/S [closed loop]  --bulk N [single POSTs]
               --payload-bytes N [100]  --topics N [1]
  fanout       --subscribers N [100]  --topics N [1]  --rate MSGS/S [1000]
               --connections N [rate/1000, 2 to 64] (publisher)
               --payload-bytes N [0 = just the stamp]
  e2e          --subscribers N [1]  --topics N [1]  --rate MSGS/S [1000]
               --connections N [rate/1000, 2 to 64]  --payload-bytes N [0]
  connections  --count N [1000]  --rate HANDSHAKES/S [as fast as possible]
               --source-addresses N [as many as the ephemeral port range needs]
               (connection i binds to 127.0.0.(1 + i mod N) before connecting)
               (--duration is the hold after the ramp; the relay's RSS is read before the
               ramp and after the warm-up that follows it)
  poll         --consumers N [4]  --topics N [1]  --rate MSGS/S [1000]
               --connections N [rate/1000, 2 to 64]
               --poll-timeout SECS [5]  --payload-bytes N [0]
  soak         --publishers N [3]  --rate MSGS/S [200]  --topics N [4]
               --ws-consumers N [4]  --poll-consumers N [2]  --cursor-consumers N [2]
               --session D [5s] (mean consumer session)  --interval D [10s]
               --server-pid-file FILE (the relay's pid, rewritten on restarts)
               --events-file FILE (`stall UNIX_NS` lines)  --ready-file FILE (written
               when the load starts)  --drain D [30s] (time to catch up at the end)
               --growth-tolerance R [10%]  --admin-user U --admin-password P [from
               $PULSAR_BOOTSTRAP_ADMIN_USERNAME / _PASSWORD; neither: no logins]
               --retry-duplicates count|fail [count] (a publish under two IDs after an
               attempt lost with a killed relay: the relay's documented at-least-once)
               (--warmup is not used)

plot: percentile curves of .hgrm files (from --hgrm, or any HdrHistogram library) as an
  SVG picture, one labelled series per file, on the \"1 in N\" axis (0%, 90%, 99%, 99.9%, ...
  evenly spaced), latency in ms linear from 0. The curve ends at the highest percentile
  below 100%; the legend gives each maximum.
  -o FILE             the picture (required)
  --label TEXT        legend text, once per file in order (default: the file names)
  --title TEXT        the picture's title (default \"Latency by percentile\")

Subscriber and consumer i take topic i mod --topics. --rate is messages per second in
total. The summary goes to stdout; runs longer than 3 s print a progress line to stderr
every second.

Receiving scenarios count deliveries over the whole run, warm-up included: `expected` is
what the publishes the relay confirmed call for (one per subscriber of the topic), and
delivered = expected - lost + delivered_unconfirmed + duplicates, where
delivered_unconfirmed are deliveries of publishes that got no answer in time (counted as
publish errors, `unconfirmed`; the relay may still have taken them).

exit status: 0 the run passed; 1 it could not run (relay unreachable, setup refused);
2 bad command line; 3 it ran but had errors, lost or duplicate deliveries above
--max-error-rate, or measured nothing (the summary is still printed and written).
plot exits 0 when it wrote the picture, 1 when an input is missing or not a percentile
distribution (or the picture cannot be written), 2 for a bad command line.

examples:
  pulsar-loadgen publish --secret $KEY --connections 64 --duration 10s --server-pid $PID
  pulsar-loadgen publish --secret $KEY --rate 20000 --bulk 100 --json publish.json
  pulsar-loadgen fanout --secret $KEY --subscribers 10000 --rate 100
  pulsar-loadgen e2e --secret $KEY --subscribers 1000 --rate 10000 --hgrm e2e.hgrm
  pulsar-loadgen connections --secret $KEY --count 19000 --server-pid $PID
  pulsar-loadgen poll --secret $KEY --consumers 8 --rate 5000
  pulsar-loadgen plot 1-shard.hgrm 2-shards.hgrm -o latency.svg";

/// Settings every scenario has.
pub struct Common {
    /// The first `--url`: where every scenario connects, and where `fanout` and `e2e`
    /// publish unless `--publish-url` says otherwise.
    pub target: Target,
    /// Every `--url`, in order: `fanout` and `e2e` subscriber i connects to `i mod len`.
    pub subscribe_targets: Vec<Target>,
    /// `--publish-url`, or the first `--url`.
    pub publish_target: Target,
    pub token: String,
    pub duration: Duration,
    pub warmup: Duration,
    /// `--threads`, when given; scenarios pick their own default.
    pub threads: Option<usize>,
    pub server_pid: Option<u32>,
    pub json: Option<PathBuf>,
    pub hgrm: Option<PathBuf>,
    /// `--svg`: the headline latency drawn as `plot` would draw the `--hgrm` file.
    pub svg: Option<PathBuf>,
    pub topic_prefix: String,
    /// Faults tolerated, as a fraction of the operations counted.
    pub max_error_rate: f64,
}

impl Common {
    /// Worker threads: `--threads`, or half the cores. Sharing a machine with the relay,
    /// the generator should not take the CPU the relay needs (one publisher thread drives
    /// 64 connections at 78k requests/s in 0.6 of a core on the 2-core dev machine).
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or((cores() / 2).max(1))
    }

    pub fn topics(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{}-{i}", self.topic_prefix))
            .collect()
    }
}

/// The publishing side shared by the scenarios that publish.
pub struct Load {
    pub topics: usize,
    pub rate: Option<f64>,
    pub connections: usize,
    pub payload_bytes: usize,
}

pub enum Scenario {
    Publish {
        load: Load,
        bulk: Option<usize>,
    },
    Fanout {
        load: Load,
        subscribers: usize,
    },
    E2e {
        load: Load,
        subscribers: usize,
    },
    Connections {
        count: usize,
        rate: Option<f64>,
        /// `--source-addresses`: spread over 127.0.0.1..=N; None = as the port range needs.
        sources: Option<usize>,
    },
    Poll {
        load: Load,
        consumers: usize,
        poll_timeout: u64,
    },
    Soak(crate::scenario::soak::Plan),
}

pub struct Options {
    pub common: Common,
    pub scenario: Scenario,
}

pub enum Parsed {
    Help,
    Run(Box<Options>),
    Plot(plot::Request),
}

pub fn parse(args: Vec<String>) -> Result<Parsed, String> {
    let mut flags = Flags::collect(args.into_iter())?;
    if flags.help {
        return Ok(Parsed::Help);
    }
    if flags.scenario.as_deref() == Some("plot") {
        return parse_plot(flags).map(Parsed::Plot);
    }
    flags.no_words()?;
    let Some(name) = flags.scenario.take() else {
        return Err("no scenario given".into());
    };
    let scenario = match name.as_str() {
        "publish" => {
            let load = flags.load(Some(64), None, 100)?;
            let bulk = flags.opt::<usize>("--bulk")?;
            if bulk.is_some_and(|n| n == 0 || n > 100_000) {
                return Err("--bulk must be from 1 to 100000 messages".into());
            }
            Scenario::Publish { load, bulk }
        }
        "fanout" => Scenario::Fanout {
            load: flags.load(None, Some(1000.0), 0)?,
            subscribers: flags.positive("--subscribers", 100)?,
        },
        "e2e" => Scenario::E2e {
            load: flags.load(None, Some(1000.0), 0)?,
            subscribers: flags.positive("--subscribers", 1)?,
        },
        "connections" => Scenario::Connections {
            count: flags.positive("--count", 1000)?,
            rate: flags.rate()?,
            sources: match flags.opt::<usize>("--source-addresses")? {
                Some(n) if !(1..=254).contains(&n) => {
                    return Err("--source-addresses must be from 1 to 254".into())
                }
                other => other,
            },
        },
        "poll" => Scenario::Poll {
            load: flags.load(None, Some(1000.0), 0)?,
            consumers: flags.positive("--consumers", 4)?,
            poll_timeout: flags.positive("--poll-timeout", 5)? as u64,
        },
        "soak" => Scenario::Soak(flags.soak()?),
        other => return Err(format!("unknown scenario {other:?}")),
    };
    let common = flags.common(matches!(name.as_str(), "fanout" | "e2e"))?;
    flags.finish(&name)?;
    Ok(Parsed::Run(Box::new(Options { common, scenario })))
}

/// Flags that may be given more than once.
const REPEATABLE: [&str; 2] = ["--label", "--url"];

/// The scenario and the `--flag value` pairs, each pair taken once by the parser;
/// leftovers are errors.
struct Flags {
    scenario: Option<String>,
    /// Words after the scenario.
    words: Vec<String>,
    pairs: Vec<(String, String)>,
    help: bool,
}

impl Flags {
    /// The first word that is not a flag or a flag's value is the scenario, wherever it
    /// stands: `pulsar-loadgen --secret K publish` is `pulsar-loadgen publish --secret K`,
    /// so a shell variable can hold the common flags. Further words are `plot`'s input
    /// files; `-o` is `--output`.
    fn collect(mut it: impl Iterator<Item = String>) -> Result<Flags, String> {
        let mut words: Vec<String> = Vec::new();
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut help = false;
        while let Some(flag) = it.next() {
            if matches!(flag.as_str(), "-h" | "--help") || (flag == "help" && words.is_empty()) {
                help = true;
                continue;
            }
            let flag = if flag == "-o" {
                "--output".into()
            } else {
                flag
            };
            if !flag.starts_with("--") {
                words.push(flag);
                continue;
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            if !REPEATABLE.contains(&flag.as_str()) && pairs.iter().any(|(f, _)| *f == flag) {
                return Err(format!("{flag} given twice"));
            }
            pairs.push((flag, value));
        }
        let mut words = words.into_iter();
        Ok(Flags {
            scenario: words.next(),
            words: words.collect(),
            pairs,
            help,
        })
    }

    /// Refuses words after the scenario: only `plot` takes any.
    fn no_words(&self) -> Result<(), String> {
        match (&self.scenario, self.words.first()) {
            (Some(first), Some(word)) => Err(format!(
                "unexpected argument {word:?} after the scenario {first:?} (flags look like \
                 --name value)"
            )),
            _ => Ok(()),
        }
    }

    /// Every value of a repeatable flag, in order.
    fn take_all(&mut self, flag: &str) -> Vec<String> {
        let mut values = Vec::new();
        while let Some(v) = self.take(flag) {
            values.push(v);
        }
        values
    }

    fn take(&mut self, flag: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(f, _)| f == flag)?;
        Some(self.pairs.remove(i).1)
    }

    fn opt<T: FromStr>(&mut self, flag: &str) -> Result<Option<T>, String> {
        match self.take(flag) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{flag}: {v:?} is not a valid number")),
        }
    }

    fn positive(&mut self, flag: &str, default: usize) -> Result<usize, String> {
        match self.opt::<usize>(flag)? {
            Some(0) => Err(format!("{flag} must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(default),
        }
    }

    fn rate(&mut self) -> Result<Option<f64>, String> {
        match self.opt::<f64>("--rate")? {
            Some(r) if !(r.is_finite() && r > 0.0) => Err("--rate must be above 0".into()),
            other => Ok(other),
        }
    }

    fn duration(&mut self, flag: &str, default: Duration) -> Result<Duration, String> {
        match self.take(flag) {
            None => Ok(default),
            Some(v) => parse_duration(&v).ok_or_else(|| {
                format!("{flag}: {v:?} is not a duration (like 500ms, 10s, 2m, or bare seconds)")
            }),
        }
    }

    /// The publishing flags; without `--connections`, `connections` or else one per
    /// 1000 msg/s of the rate (2 to 64): the relay answers a connection's requests one
    /// after another, so a few connections cannot carry a high rate without queueing.
    fn load(
        &mut self,
        connections: Option<usize>,
        rate: Option<f64>,
        payload: usize,
    ) -> Result<Load, String> {
        let rate = self.rate()?.or(rate);
        let per_rate = (rate.unwrap_or(0.0) / 1000.0).ceil().clamp(2.0, 64.0) as usize;
        Ok(Load {
            topics: self.positive("--topics", 1)?,
            rate,
            connections: self.positive("--connections", connections.unwrap_or(per_rate))?,
            payload_bytes: self.opt("--payload-bytes")?.unwrap_or(payload),
        })
    }

    /// The `soak` flags; the administrator's credentials default to the relay's bootstrap
    /// variables, so a script that set them for the relay need not repeat them.
    fn soak(&mut self) -> Result<crate::scenario::soak::Plan, String> {
        let rate = self.rate()?.unwrap_or(200.0);
        let interval = self.duration("--interval", Duration::from_secs(10))?;
        if interval < Duration::from_secs(1) {
            return Err("--interval must be at least 1s".into());
        }
        let user = self
            .take("--admin-user")
            .or_else(|| std::env::var("PULSAR_BOOTSTRAP_ADMIN_USERNAME").ok())
            .filter(|s| !s.is_empty());
        let password = self
            .take("--admin-password")
            .or_else(|| std::env::var("PULSAR_BOOTSTRAP_ADMIN_PASSWORD").ok())
            .filter(|s| !s.is_empty());
        let tolerance = match self.take("--growth-tolerance") {
            None => 0.10,
            Some(v) => parse_fraction(&v).ok_or_else(|| {
                format!("--growth-tolerance: {v:?} is not a fraction (0.1 or 10%)")
            })?,
        };
        Ok(crate::scenario::soak::Plan {
            publishers: self.positive("--publishers", 3)?,
            rate,
            topics: self.positive("--topics", 4)?,
            ws: self.opt("--ws-consumers")?.unwrap_or(4),
            polls: self.opt("--poll-consumers")?.unwrap_or(2),
            cursors: self.opt("--cursor-consumers")?.unwrap_or(2),
            interval,
            mean_session: self.duration("--session", Duration::from_secs(5))?,
            pid_file: self.take("--server-pid-file").map(PathBuf::from),
            events_file: self.take("--events-file").map(PathBuf::from),
            ready_file: self.take("--ready-file").map(PathBuf::from),
            admin: user.zip(password),
            tolerance,
            drain: self.duration("--drain", Duration::from_secs(30))?,
            strict: match self.take("--retry-duplicates").as_deref() {
                None | Some("count") => false,
                Some("fail") => true,
                Some(other) => {
                    return Err(format!(
                        "--retry-duplicates: {other:?} is not count or fail"
                    ))
                }
            },
        })
    }

    /// `spread`: the scenario subscribes over several `--url`s and takes `--publish-url`;
    /// other scenarios refuse a second `--url` and leave `--publish-url` to [`Self::finish`].
    fn common(&mut self, spread: bool) -> Result<Common, String> {
        let mut urls = self.take_all("--url");
        if urls.is_empty() {
            urls.push("http://127.0.0.1:8080".into());
        }
        if urls.len() > 1 && !spread {
            return Err(
                "--url given twice (only fanout and e2e spread subscribers over several)".into(),
            );
        }
        let tls_ca = self.take("--tls-ca");
        let subscribe_targets = urls
            .iter()
            .map(|url| Target::parse(url, tls_ca.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let target = subscribe_targets[0].clone();
        let publish_target = match spread.then(|| self.take("--publish-url")).flatten() {
            Some(url) => Target::parse(&url, tls_ca.as_deref())
                .map_err(|e| e.replacen("--url", "--publish-url", 1))?,
            None => target.clone(),
        };
        let duration = self.duration("--duration", Duration::from_secs(10))?;
        let warmup = self.duration("--warmup", Duration::from_secs(2))?;
        if duration.is_zero() {
            return Err("--duration must be above 0".into());
        }
        let token = match (self.take("--token"), self.take("--secret")) {
            (Some(_), Some(_)) => return Err("give --token or --secret, not both".into()),
            (Some(t), None) => t,
            (None, secret) => {
                let secret = secret
                    .or_else(|| std::env::var("PULSAR_JWT_SECRET_KEY").ok())
                    .filter(|s| !s.is_empty())
                    .ok_or("a token is needed: give --token JWT or --secret KEY (or set PULSAR_JWT_SECRET_KEY)")?;
                token::mint(&secret, duration + warmup + Duration::from_secs(3600))?
            }
        };
        let topic_prefix = match self.take("--topic-prefix") {
            Some(p) => p,
            None => format!(
                "loadgen-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            ),
        };
        if topic_prefix.is_empty()
            || topic_prefix.len() > 200
            || !topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        {
            return Err(
                "--topic-prefix: 1-200 characters of ASCII letters, digits and _ . : -".into(),
            );
        }
        Ok(Common {
            target,
            subscribe_targets,
            publish_target,
            token,
            duration,
            warmup,
            threads: match self.opt::<usize>("--threads")? {
                Some(0) => return Err("--threads must be at least 1".into()),
                other => other,
            },
            server_pid: self.opt("--server-pid")?,
            json: self.take("--json").map(PathBuf::from),
            hgrm: self.take("--hgrm").map(PathBuf::from),
            svg: self.take("--svg").map(PathBuf::from),
            topic_prefix,
            max_error_rate: match self.take("--max-error-rate") {
                None => 0.0,
                Some(v) => parse_fraction(&v).ok_or_else(|| {
                    format!("--max-error-rate: {v:?} is not a fraction from 0 to 1 (or 0% to 100%)")
                })?,
            },
        })
    }

    fn finish(self, scenario: &str) -> Result<(), String> {
        match self.pairs.first() {
            None => Ok(()),
            Some((flag, _)) => Err(format!("{flag} is not a flag of `{scenario}`")),
        }
    }
}

/// `plot FILE.hgrm [FILE.hgrm …] -o OUT.svg [--label L …] [--title T]`.
fn parse_plot(mut flags: Flags) -> Result<plot::Request, String> {
    let inputs: Vec<PathBuf> = std::mem::take(&mut flags.words)
        .into_iter()
        .map(PathBuf::from)
        .collect();
    if inputs.is_empty() {
        return Err("plot needs at least one .hgrm file".into());
    }
    let output = flags
        .take("--output")
        .map(PathBuf::from)
        .ok_or("plot needs -o FILE.svg")?;
    let labels = flags.take_all("--label");
    if !labels.is_empty() && labels.len() != inputs.len() {
        return Err(format!(
            "plot: {} --label for {} files (give one per file, in order, or none)",
            labels.len(),
            inputs.len()
        ));
    }
    let title = flags.take("--title");
    flags.finish("plot")?;
    Ok(plot::Request {
        inputs,
        labels,
        output,
        title,
    })
}

/// `0.001`, or `0.1%`: a fraction from 0 to 1.
fn parse_fraction(text: &str) -> Option<f64> {
    let text = text.trim();
    let value = match text.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().ok()? / 100.0,
        None => text.parse::<f64>().ok()?,
    };
    (0.0..=1.0).contains(&value).then_some(value)
}

/// `500ms`, `10s`, `2m`, `1h`, `1.5s` or bare seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        match parse(args.iter().map(|s| s.to_string()).collect())? {
            Parsed::Run(o) => Ok(*o),
            Parsed::Help => Err("help".into()),
            Parsed::Plot(_) => Err("plot".into()),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration("s"), None);
    }

    #[test]
    fn error_rates_are_fractions_or_percentages() {
        assert_eq!(parse_fraction("0"), Some(0.0));
        assert_eq!(parse_fraction("0.01"), Some(0.01));
        assert_eq!(parse_fraction("2.5%"), Some(0.025));
        assert_eq!(parse_fraction("100%"), Some(1.0));
        assert_eq!(parse_fraction("1.5"), None);
        assert_eq!(parse_fraction("-0.1"), None);
        assert_eq!(parse_fraction("some"), None);
        let o = run(&["publish", "--token", "t", "--max-error-rate", "1%"]).unwrap();
        assert_eq!(o.common.max_error_rate, 0.01);
        assert_eq!(
            run(&["publish", "--token", "t"])
                .unwrap()
                .common
                .max_error_rate,
            0.0
        );
    }

    #[test]
    fn publish_flags() {
        let o = run(&[
            "publish",
            "--token",
            "t",
            "--rate",
            "500",
            "--bulk",
            "10",
            "--topics",
            "3",
            "--duration",
            "1s",
            "--warmup",
            "0",
        ])
        .unwrap();
        match o.scenario {
            Scenario::Publish { load, bulk } => {
                assert_eq!(load.rate, Some(500.0));
                assert_eq!(bulk, Some(10));
                assert_eq!(load.topics, 3);
                assert_eq!(load.connections, 64);
            }
            _ => panic!("not publish"),
        }
        assert_eq!(o.common.duration, Duration::from_secs(1));
        let e2e = run(&["e2e", "--token", "t", "--rate", "10000"]).unwrap();
        match e2e.scenario {
            Scenario::E2e { load, .. } => assert_eq!(load.connections, 10),
            _ => panic!("not e2e"),
        }
        assert_eq!(
            o.common.topics(2)[1],
            format!("{}-1", o.common.topic_prefix)
        );
    }

    #[test]
    fn errors_are_clear() {
        let err = |args: &[&str]| run(args).err().unwrap();
        assert!(err(&["publish", "--token", "t", "--subscribers", "3"]).contains("--subscribers"));
        assert!(err(&["publish", "--token", "t", "--rate", "fast"]).contains("--rate"));
        assert!(err(&["publish", "--token"]).contains("needs a value"));
        assert!(err(&["bogus"]).contains("unknown scenario"));
        assert!(err(&["fanout", "--token", "t", "--subscribers", "0"]).contains("at least 1"));
        assert!(err(&["e2e", "--token", "t", "--token", "u"]).contains("twice"));
        assert_eq!(err(&["poll", "--token", "t", "--help"]), "help");
        assert!(err(&["--token", "t"]).contains("no scenario"));
        assert!(err(&["publish", "fanout", "--token", "t"]).contains("\"fanout\""));
    }

    #[test]
    fn flags_may_come_before_the_scenario() {
        // The README keeps the common flags in a shell variable: `$L publish --rate 100`.
        let o = run(&[
            "--token",
            "t",
            "--server-pid",
            "42",
            "publish",
            "--rate",
            "100",
        ])
        .unwrap();
        assert!(matches!(o.scenario, Scenario::Publish { .. }));
        assert_eq!(o.common.token, "t");
        assert_eq!(o.common.server_pid, Some(42));
        let o = run(&[
            "--rate",
            "300",
            "fanout",
            "--subscribers",
            "3",
            "--token",
            "t",
        ])
        .unwrap();
        match o.scenario {
            Scenario::Fanout { load, subscribers } => {
                assert_eq!(load.rate, Some(300.0));
                assert_eq!(subscribers, 3);
            }
            _ => panic!("not fanout"),
        }
    }

    #[test]
    fn fanout_and_e2e_spread_subscribers_over_urls_and_publish_on_one() {
        let o = run(&[
            "e2e",
            "--token",
            "t",
            "--url",
            "http://127.0.0.1:8081",
            "--url",
            "http://127.0.0.1:8082",
            "--publish-url",
            "http://127.0.0.1:8083",
        ])
        .unwrap();
        let hosts: Vec<&str> = o
            .common
            .subscribe_targets
            .iter()
            .map(|t| t.host.as_str())
            .collect();
        assert_eq!(hosts, ["127.0.0.1:8081", "127.0.0.1:8082"]);
        assert_eq!(o.common.target.host, "127.0.0.1:8081");
        assert_eq!(o.common.publish_target.host, "127.0.0.1:8083");
        // Without --publish-url the publisher posts to the first --url.
        let o = run(&["fanout", "--token", "t", "--url", "http://127.0.0.1:9"]).unwrap();
        assert_eq!(o.common.publish_target.host, "127.0.0.1:9");
        assert_eq!(o.common.subscribe_targets.len(), 1);
        let err = |args: &[&str]| run(args).err().unwrap();
        let two = ["--url", "http://127.0.0.1:1", "--url", "http://127.0.0.1:2"];
        for scenario in ["publish", "poll", "connections", "soak"] {
            let mut args = vec![scenario, "--token", "t"];
            args.extend_from_slice(&two);
            assert!(err(&args).contains("only fanout and e2e"), "{scenario}");
            let one = [
                scenario,
                "--token",
                "t",
                "--publish-url",
                "http://127.0.0.1:1",
            ];
            assert!(
                err(&one).contains("--publish-url is not a flag"),
                "{scenario}"
            );
        }
        assert!(err(&["e2e", "--token", "t", "--publish-url", "ftp://x"])
            .starts_with("--publish-url \"ftp://x\""));
    }

    #[test]
    fn plot_takes_files_an_output_and_labels() {
        let plot = |args: &[&str]| match parse(args.iter().map(|s| s.to_string()).collect()) {
            Ok(Parsed::Plot(r)) => Ok(r),
            Ok(_) => Err("not plot".to_string()),
            Err(e) => Err(e),
        };
        let r = plot(&[
            "plot", "a.hgrm", "b.hgrm", "-o", "x.svg", "--label", "A", "--label", "B",
        ])
        .unwrap();
        assert_eq!(r.inputs, [PathBuf::from("a.hgrm"), PathBuf::from("b.hgrm")]);
        assert_eq!(r.labels, ["A", "B"]);
        assert_eq!(r.output, PathBuf::from("x.svg"));
        assert_eq!(r.title, None);
        let r = plot(&["--output", "x.svg", "plot", "a.hgrm", "--title", "T"]).unwrap();
        assert!(r.labels.is_empty());
        assert_eq!(r.title.as_deref(), Some("T"));
        let err = |args: &[&str]| plot(args).unwrap_err();
        assert!(err(&["plot", "-o", "x.svg"]).contains("at least one"));
        assert!(err(&["plot", "a.hgrm"]).contains("-o"));
        assert!(err(&["plot", "a", "b", "-o", "x.svg", "--label", "A"]).contains("one per file"));
        assert!(err(&["plot", "a", "-o", "x.svg", "--rate", "5"]).contains("--rate"));
        assert!(err(&["plot", "a", "-o", "x.svg", "-o", "y.svg"]).contains("twice"));
        // Only plot takes repeated labels and more words.
        assert!(run(&["publish", "--token", "t", "--label", "x"])
            .err()
            .unwrap()
            .contains("--label"));
        let svg = run(&["e2e", "--token", "t", "--svg", "e2e.svg"]).unwrap();
        assert_eq!(svg.common.svg, Some(PathBuf::from("e2e.svg")));
    }
}
