//! The `pulsar-relay` command: run the relay, or mint a token.
//!
//! Start-up is the only place that prints for humans and picks exit codes: 2 for a bad
//! command line or configuration, 1 when the relay cannot start or fails, 0 after a
//! graceful shutdown (SIGTERM or SIGINT). Its lines go through `pulsar_relay::log`, so a
//! closed stdout or stderr never changes what the process does. With a TLS listener,
//! SIGHUP reloads its certificate and key.

// `println!` and `eprintln!` panic when a write fails; lines go through `log` instead.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use pulsar_relay::account::credentials;
use pulsar_relay::api::shard::{Relay, Transport};
use pulsar_relay::auth::{random_secret, Authenticator, Permissions};
use pulsar_relay::config::{AckMode, Backend, Config};
use pulsar_relay::rt::{Runtime, ShardPlacement};
use pulsar_relay::store::transport;
use pulsar_relay::tls::server::ServerTls;
use pulsar_relay::{log_line, out_line};

const USAGE: &str = "\
usage:
  pulsar-relay [--config FILE]
      Run the relay. Without a config file it listens on 127.0.0.1:8080 with the
      in-memory backend and, when no JWT secret is configured, a random secret
      for this run (a ready-to-use token is printed).
  pulsar-relay token --sub NAME [--permissions read,write,admin] [--ttl 1h] [--config FILE]
      Print a JWT signed with the configured secret (jwt.secret_key or
      PULSAR_JWT_SECRET_KEY).

Every config key can be overridden with PULSAR_<SECTION>_<KEY>, for example
PULSAR_SERVER_HTTP_PORT=9000. See config.example.yaml.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            log_line!("pulsar-relay: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Config(msg)) => {
            log_line!("pulsar-relay: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            log_line!("pulsar-relay: {msg}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Usage(String),
    Config(String),
    Runtime(String),
}

struct Args {
    config: Option<PathBuf>,
    command: Command,
}

enum Command {
    Serve,
    Help,
    Token {
        sub: String,
        permissions: Permissions,
        ttl: Duration,
    },
}

fn parse_args(args: Vec<String>) -> Result<Args, Failure> {
    let mut config = None;
    let mut token = false;
    let mut sub = None;
    let mut permissions = None;
    let mut ttl = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| Failure::Usage(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "-h" | "--help" | "help" => {
                return Ok(Args {
                    config: None,
                    command: Command::Help,
                })
            }
            "-c" | "--config" => config = Some(PathBuf::from(value("--config")?)),
            "token" if !token => token = true,
            "--sub" if token => sub = Some(value("--sub")?),
            "--permissions" if token => {
                let text = value("--permissions")?;
                permissions = Some(
                    Permissions::parse_list(&text)
                        .map_err(|e| Failure::Usage(format!("--permissions: {e}")))?,
                );
            }
            "--ttl" if token => {
                let text = value("--ttl")?;
                ttl = Some(
                    pulsar_relay::config::parse_duration(&text)
                        .map_err(|e| Failure::Usage(format!("--ttl: {e}")))?,
                );
            }
            other => return Err(Failure::Usage(format!("unexpected argument {other:?}"))),
        }
    }
    let command = if token {
        Command::Token {
            sub: sub.ok_or_else(|| Failure::Usage("token needs --sub NAME".into()))?,
            permissions: permissions.unwrap_or(Permissions::READ),
            ttl: ttl.unwrap_or(Duration::from_secs(3600)),
        }
    } else {
        Command::Serve
    };
    Ok(Args { config, command })
}

fn run(args: Vec<String>) -> Result<(), Failure> {
    let args = parse_args(args)?;
    if let Command::Help = args.command {
        out_line!("{USAGE}");
        return Ok(());
    }
    // Variables that are not UTF-8 cannot be ours (all PULSAR_* values are text).
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let config = Config::load(args.config.as_deref(), env.iter().cloned())
        .map_err(|e| Failure::Config(e.to_string()))?;
    credentials::check_bootstrap(&config.bootstrap)
        .map_err(|e| Failure::Config(e.blame_env(&env).to_string()))?;
    match args.command {
        Command::Token {
            sub,
            permissions,
            ttl,
        } => {
            if config.jwt.secret_key.is_empty() {
                return Err(Failure::Config(
                    "no JWT secret configured: set jwt.secret_key or PULSAR_JWT_SECRET_KEY".into(),
                ));
            }
            warn_of_weak_secret(&config);
            let auth = Authenticator::from_config(&config.jwt)
                .map_err(|e| Failure::Config(e.to_string()))?;
            let token = auth
                .mint(&sub, permissions, ttl)
                .map_err(|e| Failure::Config(e.to_string()))?;
            out_line!("{token}");
            Ok(())
        }
        Command::Serve => serve(config),
        Command::Help => Ok(()),
    }
}

fn serve(mut config: Config) -> Result<(), Failure> {
    config
        .check_bind_security()
        .map_err(|e| Failure::Config(e.to_string()))?;
    warn_of_weak_secret(&config);
    let generated = config.jwt.secret_key.is_empty() && config.jwt.algorithm == "HS256";
    if generated {
        config.jwt.secret_key = random_secret();
    }
    let auth =
        Authenticator::from_config(&config.jwt).map_err(|e| Failure::Config(e.to_string()))?;
    let tls = load_tls(&config)?;

    return_large_blocks_to_the_os();
    // Block the signals before any executor thread exists, so every thread inherits the
    // mask and only the waiter below receives them.
    let signals = blocked_signals(tls.listener.is_some());
    let settings = Relay::settings(&config);
    let runtime = Runtime::bind(settings.clone()).map_err(|e| Failure::Runtime(e.to_string()))?;
    let process = runtime.process();
    let addr = process.local_addr;
    let backend = match config.storage.backend {
        Backend::Memory => "memory backend".to_string(),
        Backend::Valkey => format!(
            "valkey backend at {}:{}, {} acks{}",
            config.valkey.host,
            config.valkey.port,
            match config.ack_mode() {
                AckMode::Persisted => "persisted",
                AckMode::Replicated => "replicated",
                AckMode::Memory => "memory",
            },
            if config.cluster.enabled {
                ", cluster mode"
            } else {
                ""
            }
        ),
    };
    let shards = settings.shards;
    let scheme = if tls.listener.is_some() {
        "https"
    } else {
        "http"
    };
    out_line!(
        "pulsar-relay listening on {scheme}://{addr} ({shards} shard{}{}, {backend})",
        if shards == 1 { "" } else { "s" },
        match settings.placement {
            ShardPlacement::Pinned => " pinned to CPUs",
            ShardPlacement::Floating => "",
        },
    );
    if generated {
        let token = auth
            .mint(
                "dev",
                Permissions::READ | Permissions::WRITE | Permissions::ADMIN,
                Duration::from_secs(24 * 3600),
            )
            .map_err(|e| Failure::Runtime(e.to_string()))?;
        out_line!("no jwt.secret_key configured: using a random secret for this run");
        out_line!("dev token (read, write, admin; 24h): {token}");
        out_line!(
            "try: curl -X POST {scheme}://{addr}/api/v1/messages -H 'Authorization: Bearer {token}' \
             -H 'Content-Type: application/json' -d '{{\"topic\":\"hello\",\"payload\":{{\"text\":\"hi\"}}}}'"
        );
    }

    let listener_tls = tls.listener.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while wait_for_signal(&signals) == libc::SIGHUP {
                if let Some(tls) = &listener_tls {
                    reload(tls);
                }
            }
            // The flag first: nothing after it (a log line to a closed pipe included) may
            // keep the relay from stopping.
            process
                .shutdown
                .store(true, std::sync::atomic::Ordering::Release);
            log_line!("pulsar-relay: shutting down");
        })
        .map_err(|e| Failure::Runtime(format!("cannot start the signal thread: {e}")))?;
    let relay = Relay::new(config, auth, shards, tls);
    runtime
        .run(move |core| relay.shard(core))
        .map_err(|e| Failure::Runtime(e.to_string()))
}

/// Pins glibc's mmap threshold, so that every allocation of 4 MiB or more is its own
/// mapping, unmapped when freed. Left dynamic, glibc raises the threshold to the largest
/// block freed so far: after the first login, each Argon2 verification's 19 MiB (64 MiB
/// for hashes made by the original relay) comes from the verifying thread's arena and
/// stays resident there when freed. The soak saw RSS climb from 90 to 400 MiB in a minute
/// of logins that way, with under 45 MiB ever live. The relay's own buffers stay far below
/// the threshold, so nothing on a hot path pays for a mapping.
fn return_large_blocks_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning, under the allocator's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// On stderr, so that a token printed on stdout can still be captured as it is.
fn warn_of_weak_secret(config: &Config) {
    if let Some(warning) = config.weak_secret_warning() {
        log_line!("pulsar-relay: {warning}");
    }
}

/// Loads the listener's certificate and Valkey's trust anchors, and checks the TLS session
/// with Valkey once: a certificate problem stops the relay here (exit 1), before it
/// serves, rather than leaving it unready and retrying.
fn load_tls(config: &Config) -> Result<Transport, Failure> {
    let server = &config.server;
    let listener = if server.tls_cert_file.is_empty() {
        None
    } else {
        let tls = ServerTls::load(
            std::path::Path::new(&server.tls_cert_file),
            std::path::Path::new(&server.tls_key_file),
        )
        .map_err(|e| Failure::Runtime(format!("server TLS: {e}")))?;
        Some(tls)
    };
    let valkey = match config.storage.backend {
        Backend::Memory => None,
        Backend::Valkey => transport::client_tls(&config.valkey).map_err(Failure::Runtime)?,
    };
    if let Some(tls) = &valkey {
        transport::check_at_start(&config.valkey, tls).map_err(Failure::Runtime)?;
    }
    Ok(Transport { listener, valkey })
}

fn reload(tls: &ServerTls) {
    match tls.reload() {
        Ok(()) => log_line!(
            "pulsar-relay: SIGHUP: TLS certificate reloaded from {}; new connections get it",
            tls.cert_path().display()
        ),
        Err(e) => log_line!(
            "pulsar-relay: SIGHUP: TLS certificate NOT reloaded, the previous one stays in use: {e}"
        ),
    }
}

/// SIGINT and SIGTERM stop the relay; SIGHUP (only with a TLS listener, else it keeps its
/// default action) reloads the certificate.
fn blocked_signals(reload_on_hangup: bool) -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if reload_on_hangup {
            libc::sigaddset(&mut set, libc::SIGHUP);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the signals in `set` and returns it.
fn wait_for_signal(set: &libc::sigset_t) -> libc::c_int {
    let mut signal = 0;
    // SAFETY: `set` is a valid signal set; sigwait only writes the received signal number.
    unsafe {
        libc::sigwait(set, &mut signal);
    }
    signal
}
