//! `pulsar-faultproxy --listen ADDR --upstream ADDR [--control ADDR]`: one fault-injecting
//! proxy, driven by the line protocol of `pulsar_faultproxy::control` on stdin and, with
//! `--control`, on a TCP port (one connection or many, one command per line). It runs
//! until it is killed; stdin reaching its end does not stop it.
//!
//! Owns: the command line and the control channels. Must not: forward bytes itself.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use pulsar_faultproxy::{control, FaultProxy};

const USAGE: &str =
    "usage: pulsar-faultproxy --listen HOST:PORT --upstream HOST:PORT [--control HOST:PORT]

Forwards every connection to --listen to --upstream, with the faults set by commands
read from stdin and from connections to --control (one per line, answered `ok` or
`error: ...`): latency, bandwidth, stall, flow, segments, half-close, reset,
reset-after, clear, status. See the crate documentation for their arguments.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("pulsar-faultproxy: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let proxy = match FaultProxy::bind(options.listen, options.upstream) {
        Ok(proxy) => Arc::new(proxy),
        Err(e) => {
            eprintln!(
                "pulsar-faultproxy: cannot listen on {}: {e}",
                options.listen
            );
            return ExitCode::from(1);
        }
    };
    let control = match options.control.map(TcpListener::bind).transpose() {
        Ok(control) => control,
        Err(e) => {
            eprintln!("pulsar-faultproxy: cannot open the control port: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "pulsar-faultproxy listening on {} -> {}",
        proxy.addr(),
        proxy.upstream()
    );
    if let Some(listener) = control {
        if let Ok(addr) = listener.local_addr() {
            println!("pulsar-faultproxy control on {addr}");
        }
        let proxy = Arc::clone(&proxy);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let proxy = Arc::clone(&proxy);
                thread::spawn(move || {
                    let Ok(mut answers) = stream.try_clone() else {
                        return;
                    };
                    serve_lines(&proxy, BufReader::new(stream), &mut answers);
                });
            }
        });
    }
    let _ = std::io::stdout().flush();
    serve_lines(&proxy, std::io::stdin().lock(), &mut std::io::stdout());
    // Stdin is done (e.g. </dev/null in a script): the control port and the proxy go on.
    loop {
        thread::park();
    }
}

/// Answers each command line of `lines` on `answers` until either side closes.
fn serve_lines(proxy: &FaultProxy, lines: impl BufRead, answers: &mut impl Write) {
    for line in lines.lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let answer = match control::execute(proxy, &line) {
            Ok(text) if text.is_empty() => "ok".to_string(),
            Ok(text) => format!("ok {text}"),
            Err(e) => format!("error: {e}"),
        };
        if writeln!(answers, "{answer}")
            .and_then(|()| answers.flush())
            .is_err()
        {
            return;
        }
    }
}

struct Options {
    listen: SocketAddr,
    upstream: SocketAddr,
    control: Option<SocketAddr>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let (mut listen, mut upstream, mut control) = (None, None, None);
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let slot = match flag.as_str() {
                "--listen" => &mut listen,
                "--upstream" => &mut upstream,
                "--control" => &mut control,
                other => return Err(format!("unknown argument `{other}`")),
            };
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs HOST:PORT"))?;
            *slot = Some(address(value).map_err(|e| format!("{flag}: {e}"))?);
        }
        Ok(Options {
            listen: listen.ok_or("--listen is required")?,
            upstream: upstream.ok_or("--upstream is required")?,
            control,
        })
    }
}

fn address(text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("`{text}` is not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}
