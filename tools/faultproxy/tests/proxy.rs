//! Each fault does what it says, on real sockets: a real upstream server on loopback, a
//! real client, and the proxy between them. Timing checks use lower bounds (a fault can
//! only make things slower) and upper bounds with several times the expected margin.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use pulsar_faultproxy::{control, Direction, FaultProxy, Segments};

const PROMPT: Duration = Duration::from_secs(5);

/// An upstream that runs `handler` on every connection it accepts, each on its own thread.
fn server(handler: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || handler(stream));
        }
    });
    addr
}

/// Echoes everything back; after the client's FIN, closes its side too.
fn echo(mut stream: TcpStream) {
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).unwrap();
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream.set_write_timeout(Some(PROMPT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).expect("read through the proxy");
    buf
}

/// Reads until EOF; panics on anything else.
fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).expect("read until EOF");
    out
}

/// What a read returns within `wait`: bytes, EOF (`Some(empty)`), or nothing (`None`).
fn try_read(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 65536];
    let got = match stream.read(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("read failed: {e}"),
    };
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    got
}

#[track_caller]
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROMPT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn a_clean_link_forwards_both_ways_and_passes_the_fin_on() {
    let proxy = FaultProxy::start(server(echo)).unwrap();
    let mut client = connect(&proxy);
    let data = pattern(1 << 20);
    let writer = {
        let mut client = client.try_clone().unwrap();
        let data = data.clone();
        thread::spawn(move || {
            client.write_all(&data).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
        })
    };
    let echoed = read_to_eof(&mut client);
    writer.join().unwrap();
    assert!(echoed == data, "echo differs from what was sent");
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.forwarded(Direction::Up), data.len() as u64);
    assert_eq!(proxy.forwarded(Direction::Down), data.len() as u64);
    drop(client);
    wait_until("the connection is gone from the count", || {
        proxy.connections() == 0
    });
}

#[test]
fn latency_delays_every_byte_without_cutting_throughput() {
    let proxy = FaultProxy::start(server(echo)).unwrap();
    let mut client = connect(&proxy);
    proxy.latency(Direction::Down, Duration::from_millis(100), Duration::ZERO);
    let started = Instant::now();
    client.write_all(b"ping").unwrap();
    assert_eq!(read_exactly(&mut client, 4), b"ping");
    assert!(started.elapsed() >= Duration::from_millis(100));

    // Twenty messages 10 ms apart: each is late by the latency, not by the sum of them.
    let started = Instant::now();
    let sender = {
        let mut client = client.try_clone().unwrap();
        thread::spawn(move || {
            for i in 0..20u8 {
                client.write_all(&[i]).unwrap();
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let got = read_exactly(&mut client, 20);
    sender.join().unwrap();
    assert_eq!(got, (0..20).collect::<Vec<u8>>(), "order kept");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(290), "{took:?}");
    assert!(
        took < Duration::from_millis(1500),
        "20 × 100 ms would be 2 s; the latency must overlap: {took:?}"
    );

    // Back to a clean link: prompt again.
    proxy.latency(Direction::Down, Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    client.write_all(b"x").unwrap();
    read_exactly(&mut client, 1);
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[test]
fn jitter_varies_the_delay_but_never_reorders() {
    let proxy = FaultProxy::start(server(echo)).unwrap();
    proxy.latency(
        Direction::Up,
        Duration::from_millis(40),
        Duration::from_millis(30),
    );
    let mut client = connect(&proxy);
    let mut delays = Vec::new();
    for i in 0..20u8 {
        let started = Instant::now();
        client.write_all(&[i]).unwrap();
        assert_eq!(read_exactly(&mut client, 1), [i]);
        delays.push(started.elapsed());
    }
    let min = *delays.iter().min().unwrap();
    let max = *delays.iter().max().unwrap();
    assert!(min >= Duration::from_millis(10), "{delays:?}");
    assert!(
        max - min >= Duration::from_millis(5),
        "no jitter: {delays:?}"
    );

    // Back-to-back chunks with jitter still arrive in order.
    let data = pattern(200_000);
    let writer = {
        let mut client = client.try_clone().unwrap();
        let data = data.clone();
        thread::spawn(move || {
            for piece in data.chunks(1000) {
                client.write_all(piece).unwrap();
            }
        })
    };
    let echoed = read_exactly(&mut client, data.len());
    writer.join().unwrap();
    assert!(echoed == data, "jitter reordered bytes");
}

#[test]
fn bandwidth_limits_one_direction_only() {
    let proxy = FaultProxy::start(server(echo)).unwrap();
    proxy.bandwidth(Direction::Up, Some(100_000));
    let mut client = connect(&proxy);
    let data = pattern(50_000);
    let started = Instant::now();
    client.write_all(&data).unwrap();
    let echoed = read_exactly(&mut client, data.len());
    let took = started.elapsed();
    assert!(echoed == data);
    assert!(
        took >= Duration::from_millis(450),
        "50 kB at 100 kB/s took {took:?}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");

    // The other direction is not limited: the same bytes the other way are quick. A
    // server that sends on connect shows it.
    fn send_50k(mut stream: TcpStream) {
        let _ = stream.write_all(&pattern(50_000));
    }
    let proxy = FaultProxy::start(server(send_50k)).unwrap();
    proxy.bandwidth(Direction::Up, Some(100_000));
    let started = Instant::now();
    let mut client = connect(&proxy);
    assert!(read_to_eof(&mut client) == pattern(50_000));
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "the down direction was limited too: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_stall_holds_bytes_back_keeps_the_connection_open_and_flows_again_in_order() {
    let proxy = FaultProxy::start(server(echo)).unwrap();
    let mut client = connect(&proxy);
    client.write_all(b"before").unwrap();
    assert_eq!(read_exactly(&mut client, 6), b"before");

    proxy.stall(Direction::Both);
    client.write_all(b"during-1").unwrap();
    client.write_all(b"during-2").unwrap();
    assert_eq!(
        try_read(&mut client, Duration::from_millis(300)),
        None,
        "bytes (or EOF) got through a stall"
    );
    assert_eq!(proxy.connections(), 1, "the stall closed the connection");
    // A new connection during the stall is accepted but carries nothing.
    let mut second = connect(&proxy);
    second.write_all(b"new").unwrap();
    assert_eq!(try_read(&mut second, Duration::from_millis(200)), None);

    proxy.flow(Direction::Both);
    assert_eq!(read_exactly(&mut client, 16), b"during-1during-2");
    assert_eq!(read_exactly(&mut second, 3), b"new");
}

#[test]
fn a_stall_pushes_back_on_the_sender() {
    let proxy = FaultProxy::start(server(echo)).unwrap();
    proxy.stall(Direction::Up);
    let mut client = connect(&proxy);
    client
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // More than the kernel buffers and the proxy's queue hold: the writes must block.
    let chunk = vec![0u8; 1 << 20];
    let mut sent = 0usize;
    let blocked = (0..64).any(|_| match client.write(&chunk) {
        Ok(n) => {
            sent += n;
            false
        }
        Err(e) => {
            assert!(
                matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "{e}"
            );
            true
        }
    });
    assert!(blocked, "64 MiB went into a stalled link without blocking");
    assert_eq!(proxy.forwarded(Direction::Up), 0);
    proxy.flow(Direction::Up);
    wait_until("the held-back bytes are forwarded", || {
        proxy.forwarded(Direction::Up) == sent as u64
    });
}

#[test]
fn a_stall_of_one_direction_leaves_the_other_flowing() {
    fn greet_then_echo(mut stream: TcpStream) {
        let _ = stream.write_all(b"hello");
        echo(stream);
    }
    let proxy = FaultProxy::start(server(greet_then_echo)).unwrap();
    proxy.stall(Direction::Up);
    let mut client = connect(&proxy);
    assert_eq!(read_exactly(&mut client, 5), b"hello");
    client.write_all(b"held").unwrap();
    assert_eq!(try_read(&mut client, Duration::from_millis(300)), None);
    proxy.flow(Direction::Up);
    assert_eq!(read_exactly(&mut client, 4), b"held");
}

#[test]
fn half_closing_up_gives_the_server_eof_while_the_client_still_receives() {
    /// Reads until EOF, then answers with how many bytes it got, and closes.
    fn count_then_answer(mut stream: TcpStream) {
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        let _ = stream.write_all(format!("got {}", got.len()).as_bytes());
    }
    let proxy = FaultProxy::start(server(count_then_answer)).unwrap();
    let mut client = connect(&proxy);
    client.write_all(b"12345").unwrap();
    wait_until("the 5 bytes reached the server", || {
        proxy.forwarded(Direction::Up) == 5
    });
    proxy.half_close(Direction::Up);
    // Sent after the close: dropped, never counted by the server.
    client.write_all(b"lost").unwrap();
    assert_eq!(read_to_eof(&mut client), b"got 5");
}

#[test]
fn half_closing_down_gives_the_client_eof_while_the_server_still_receives() {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(PROMPT)).unwrap();
        let mut got = vec![0u8; 5];
        stream.read_exact(&mut got).unwrap();
        tx.send(got).unwrap();
    });
    let proxy = FaultProxy::start(upstream).unwrap();
    let mut client = connect(&proxy);
    wait_until("connected through", || proxy.connections() == 1);
    proxy.half_close(Direction::Down);
    assert_eq!(read_to_eof(&mut client), b"", "the client sees EOF");
    client.write_all(b"after").unwrap();
    assert_eq!(rx.recv_timeout(PROMPT).unwrap(), b"after");
}

#[test]
fn reset_sends_rst_to_both_ends() {
    let (tx, rx) = mpsc::channel::<std::io::Result<usize>>();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(PROMPT)).unwrap();
        let mut buf = [0u8; 16];
        tx.send(stream.read(&mut buf)).unwrap();
    });
    let proxy = FaultProxy::start(upstream).unwrap();
    let mut client = connect(&proxy);
    wait_until("connected through", || proxy.connections() == 1);
    proxy.reset();
    let mut buf = [0u8; 16];
    let err = client.read(&mut buf).expect_err("a reset, not data or EOF");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    let server_side = rx.recv_timeout(PROMPT).unwrap();
    assert_eq!(
        server_side.map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset)
    );
    wait_until("the connection is gone", || proxy.connections() == 0);
}

#[test]
fn reset_after_cuts_the_stream_at_the_byte() {
    fn send_100(mut stream: TcpStream) {
        let _ = stream.write_all(&pattern(100));
        thread::sleep(PROMPT);
    }
    let proxy = FaultProxy::start(server(send_100)).unwrap();
    proxy.reset_after(Direction::Down, 37);
    assert!(proxy.reset_pending(Direction::Down));
    let mut client = connect(&proxy);
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let err = loop {
        match client.read(&mut buf) {
            Ok(0) => panic!("EOF instead of a reset after {} bytes", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert_eq!(got, pattern(37), "exactly the bytes before the cut");
    assert!(
        !proxy.reset_pending(Direction::Down),
        "the reset is one-shot"
    );

    // The next connection is not cut.
    let mut client = connect(&proxy);
    assert_eq!(read_exactly(&mut client, 100), pattern(100));
}

#[test]
fn segments_deliver_byte_by_byte() {
    fn send_20(mut stream: TcpStream) {
        let _ = stream.write_all(&pattern(20));
    }
    let proxy = FaultProxy::start(server(send_20)).unwrap();
    proxy.segments(
        Direction::Down,
        Some(Segments {
            size: 1,
            gap: Duration::from_millis(10),
        }),
    );
    let started = Instant::now();
    let mut client = connect(&proxy);
    let mut got = Vec::new();
    let mut reads = 0;
    let mut buf = [0u8; 64];
    loop {
        match client.read(&mut buf).unwrap() {
            0 => break,
            n => {
                reads += 1;
                got.extend_from_slice(&buf[..n]);
            }
        }
    }
    assert_eq!(got, pattern(20));
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "{:?}",
        started.elapsed()
    );
    // One read per byte unless this thread was descheduled for a whole gap.
    assert!(reads >= 10, "20 bytes arrived in {reads} reads");
}

#[test]
fn an_unreachable_upstream_resets_the_client() {
    let upstream = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = FaultProxy::start(upstream).unwrap();
    let mut client = connect(&proxy);
    let mut buf = [0u8; 1];
    match client.read(&mut buf) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
    assert_eq!(proxy.accepted(), 0);
}

#[test]
fn dropping_the_proxy_resets_its_connections() {
    let proxy = FaultProxy::start(server(echo)).unwrap();
    let mut client = connect(&proxy);
    client.write_all(b"x").unwrap();
    read_exactly(&mut client, 1);
    drop(proxy);
    let mut buf = [0u8; 1];
    let err = client.read(&mut buf).expect_err("a reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
}

#[test]
fn control_commands_set_the_faults_and_refuse_bad_lines() {
    let proxy = FaultProxy::start(server(echo)).unwrap();
    let run = |line: &str| control::execute(&proxy, line);
    assert_eq!(run("latency down 50ms 10ms"), Ok(String::new()));
    assert_eq!(run("bandwidth up 1000"), Ok(String::new()));
    assert_eq!(run("stall both"), Ok(String::new()));
    assert_eq!(run("segments up 1 2ms"), Ok(String::new()));
    let [up, down] = proxy.faults();
    assert_eq!(down.latency, Duration::from_millis(50));
    assert_eq!(down.jitter, Duration::from_millis(10));
    assert_eq!(up.bandwidth, Some(1000));
    assert_eq!(down.bandwidth, None);
    assert!(up.stalled && down.stalled);
    assert_eq!(
        up.segments,
        Some(Segments {
            size: 1,
            gap: Duration::from_millis(2)
        })
    );
    assert_eq!(run("flow up"), Ok(String::new()));
    assert!(!proxy.faults()[0].stalled && proxy.faults()[1].stalled);
    assert_eq!(run("reset-after down 10"), Ok(String::new()));
    assert!(proxy.reset_pending(Direction::Down));
    let status = run("status").unwrap();
    assert!(status.starts_with("connections=0 accepted=0"), "{status}");
    assert!(
        status.contains("down=[stalled latency=50ms±10ms]"),
        "{status}"
    );
    assert_eq!(run("clear"), Ok(String::new()));
    assert_eq!(proxy.faults(), [Default::default(); 2]);
    assert!(!proxy.reset_pending(Direction::Both));

    for bad in [
        "",
        "stall",
        "stall sideways",
        "latency up fast",
        "latency up 5m",
        "segments up 0",
        "bandwidth up -1",
        "reset now",
        "explode",
    ] {
        assert!(run(bad).is_err(), "`{bad}` was accepted");
    }
    assert_eq!(
        proxy.faults(),
        [Default::default(); 2],
        "a bad line changed something"
    );
}

/// The binary: its control port changes the faults of the connections it forwards.
#[test]
fn the_binary_is_driven_through_its_control_port() {
    let upstream = server(echo);
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulsar-faultproxy"))
        .args(["--listen", "127.0.0.1:0", "--upstream"])
        .arg(upstream.to_string())
        .args(["--control", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let child = Kill(child);
    let mut lines = std::io::BufReader::new(stdout);
    let mut line = |what: &str| {
        let mut text = String::new();
        std::io::BufRead::read_line(&mut lines, &mut text).unwrap();
        assert!(text.starts_with(what), "expected `{what}…`, got {text:?}");
        text.trim_end().to_string()
    };
    let listening = line("pulsar-faultproxy listening on ");
    let proxy_addr: SocketAddr = listening
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    let control_line = line("pulsar-faultproxy control on ");
    let control_addr: SocketAddr = control_line.rsplit(' ').next().unwrap().parse().unwrap();

    let mut client = TcpStream::connect(proxy_addr).unwrap();
    client.set_read_timeout(Some(PROMPT)).unwrap();
    client.write_all(b"a").unwrap();
    assert_eq!(read_exactly(&mut client, 1), b"a");

    let mut control = TcpStream::connect(control_addr).unwrap();
    control.set_read_timeout(Some(PROMPT)).unwrap();
    let mut answers = std::io::BufReader::new(control.try_clone().unwrap());
    let mut ask = |command: &str| {
        writeln!(control, "{command}").unwrap();
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut answers, &mut answer).unwrap();
        answer.trim_end().to_string()
    };
    assert_eq!(ask("stall both"), "ok");
    client.write_all(b"b").unwrap();
    assert_eq!(try_read(&mut client, Duration::from_millis(300)), None);
    assert!(ask("status").starts_with("ok connections=1 accepted=1"));
    assert!(ask("stall nowhere").starts_with("error: "));
    // Stdin takes the same commands.
    writeln!(stdin, "flow both").unwrap();
    assert_eq!(line("ok"), "ok");
    assert_eq!(read_exactly(&mut client, 1), b"b");
    drop(child);
}
