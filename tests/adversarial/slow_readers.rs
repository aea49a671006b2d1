//! Subscribers that never read: cut off, and their queues bounded, while readers get everything in order.

use std::io::{ErrorKind, Write};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use super::common::*;
use super::support::*;

#[test]
fn never_reading_subscribers_are_cut_off_while_a_reader_gets_everything_in_order() {
    const SLOW: usize = 20;
    let relay = Relay::start_with(&[("PULSAR_DELIVERY_MAX_OUTBOUND_BYTES", "64KiB")]);
    let baseline = Baseline::take(&relay);
    let topic = topic_on("firehose", 1);

    let mut slow: Vec<Ws> = (0..SLOW)
        .map(|_| {
            let mut ws = ws_small_rcvbuf(&relay, 4096);
            ws.subscribe(&[&topic], json!({}));
            ws
        })
        .collect();
    let mut reader = relay.ws();
    reader.set_read_timeout(PROMPT);
    reader.subscribe(&[&topic], json!({}));

    // 1 KiB messages in bulk requests of 16 (well under the 64 KiB limit per burst, so the
    // reader, which keeps up, is never at risk); the producer waits for the reader after
    // each burst. It runs until every never-reading subscriber has been cut off, bounded
    // by a message count and a time limit.
    const BURST: usize = 16;
    const MAX_MESSAGES: usize = 24 * 1024;
    let fill = "x".repeat(1000);
    let token = rw_token();
    let mut producer = relay.http();
    let started = Instant::now();
    let mut published = 0usize;
    let mut last_id = (0u64, 0u64);
    let mut max_rss = 0;
    let mut disconnects = 0.0;
    while published < MAX_MESSAGES && started.elapsed() < Duration::from_secs(8) {
        let items: Vec<String> = (published..published + BURST)
            .map(|n| format!(r#"{{"topic":"{topic}","payload":{{"n":{n},"fill":"{fill}"}}}}"#))
            .collect();
        let body = format!(r#"{{"messages":[{}]}}"#, items.join(","));
        producer
            .request(
                "POST",
                "/api/v1/messages/bulk",
                &[auth_header(&token).as_pair()],
                body.as_bytes(),
            )
            .assert_status(207);
        for _ in 0..BURST {
            let got = reader.recv_delivery();
            assert_eq!(
                got["payload"]["n"], published,
                "the reader lost or reordered"
            );
            let id = parse_id(id_of(&got));
            assert!(id > last_id, "IDs out of order: {id:?} after {last_id:?}");
            last_id = id;
            published += 1;
        }
        if published.is_multiple_of(BURST * 64) {
            max_rss = max_rss.max(relay.rss_kib());
            disconnects = relay
                .metrics()
                .sum("pulsar_slow_consumer_disconnects_total");
            if disconnects >= SLOW as f64 {
                break;
            }
        }
    }
    max_rss = max_rss.max(relay.rss_kib());
    eprintln!(
        "published {published} x 1 KiB in {:?}; max RSS {max_rss} KiB (baseline {} KiB)",
        started.elapsed(),
        baseline.rss_kib
    );
    assert!(
        max_rss <= baseline.rss_kib + 64 * 1024,
        "RSS grew to {max_rss} KiB with never-reading subscribers (baseline {} KiB)",
        baseline.rss_kib
    );
    let disconnects = disconnects.max(
        relay
            .metrics()
            .sum("pulsar_slow_consumer_disconnects_total"),
    );
    assert_eq!(
        disconnects, SLOW as f64,
        "after {published} messages, not every never-reading subscriber was cut off"
    );
    assert!(relay.metrics().sum("pulsar_messages_dropped_total") > 0.0);

    // Each never-reading subscriber, once it reads, finds what was already on the wire
    // (in order, a prefix of the stream) and then close code 4000.
    for (i, ws) in slow.iter_mut().enumerate() {
        ws.set_read_timeout(PROMPT);
        let mut next = 0u64;
        loop {
            match ws.next_message() {
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(text.as_str()).unwrap();
                    assert_eq!(v["payload"]["n"], next, "slow subscriber {i}");
                    next += 1;
                }
                Message::Close(Some(frame)) => {
                    assert_eq!(
                        u16::from(frame.code),
                        4000,
                        "slow subscriber {i}: {frame:?}"
                    );
                    break;
                }
                other => panic!("slow subscriber {i}: unexpected {other:?}"),
            }
            assert!(
                (next as usize) < published,
                "slow subscriber {i} received everything and was never cut off"
            );
        }
    }
    drop(slow);

    // The reader is unaffected and still live.
    let r = relay.publish(&topic, r#"{"n":"after"}"#);
    assert_eq!(reader.recv_delivery()["message_id"], r["message_id"]);
    reader.close();
    // The hot tier legitimately keeps up to 10,000 of these messages (~12 MiB).
    drop(producer);
    baseline.assert_recovered(&relay, 64);
}

/// How a flood from a client that never reads ended.
#[derive(Debug)]
enum FloodEnd {
    /// The relay's RSS passed the limit (the test has failed).
    MemoryLimit,
    /// The relay closed or reset the connection.
    Closed,
    /// The time was up: the relay kept taking the frames (or held them off with
    /// back-pressure) within the memory limit.
    Deadline,
}

/// Writes `first`, then `next` every `pause`, to a client socket that never reads, for at
/// most `duration`, watching the relay's RSS. A write that times out is retried (a slow
/// relay is not a closed one); frames are never cut. Returns how it ended, how many
/// payloads were written completely and the highest RSS seen.
fn flood_without_reading(
    relay: &Relay,
    ws: &mut Ws,
    first: &[u8],
    next: &[u8],
    pause: Duration,
    duration: Duration,
    limit_kib: u64,
) -> (FloodEnd, usize, u64) {
    let stream = ws.sock.get_mut();
    stream
        .set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    let mut writes = 0;
    let mut max_rss = 0;
    let mut payload = first;
    let mut offset = 0;
    let mut last_rss_check = Instant::now();
    let end = loop {
        if last_rss_check.elapsed() >= Duration::from_millis(20) || offset == 0 {
            last_rss_check = Instant::now();
            max_rss = max_rss.max(relay.rss_kib());
            if max_rss > limit_kib {
                break FloodEnd::MemoryLimit;
            }
        }
        if started.elapsed() >= duration {
            break FloodEnd::Deadline;
        }
        match stream.write(&payload[offset..]) {
            Ok(0) => break FloodEnd::Closed,
            Ok(n) => offset += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break FloodEnd::Closed,
        }
        if offset == payload.len() {
            writes += 1;
            payload = next;
            offset = 0;
            thread::sleep(pause);
        }
    };
    // Let the relay work through what it has read.
    thread::sleep(Duration::from_millis(300));
    (end, writes, max_rss.max(relay.rss_kib()))
}

/// `delivery.max_outbound_bytes` is documented as the bound on unsent bytes queued per
/// connection. A client that never reads but keeps asking for replays (unsubscribe, then
/// subscribe with `since=earliest`, under the default frame rate) must not be able to make
/// the relay queue more and more for it.
#[test]
fn a_never_reading_client_cannot_queue_unbounded_replays() {
    let relay = Relay::start_with(&[("PULSAR_DELIVERY_MAX_OUTBOUND_BYTES", "64KiB")]);
    let baseline = Baseline::take(&relay);
    let topic = topic_on("replayed", 0);
    // A topic with a full hot tier (10,000 small messages) to replay.
    let token = rw_token();
    let mut producer = relay.http();
    for chunk in 0..10 {
        let items: Vec<String> = (0..1000)
            .map(|n| format!(r#"{{"topic":"{topic}","payload":{}}}"#, chunk * 1000 + n))
            .collect();
        producer
            .request(
                "POST",
                "/api/v1/messages/bulk",
                &[auth_header(&token).as_pair()],
                format!(r#"{{"messages":[{}]}}"#, items.join(",")).as_bytes(),
            )
            .assert_status(207);
    }
    drop(producer);
    let unsubscribe = json!({"type": "unsubscribe", "topics": [topic]}).to_string();
    let subscribe =
        json!({"type": "subscribe", "topics": [topic], "since": "earliest"}).to_string();
    let pair = [
        masked_frame(0x1, unsubscribe.as_bytes()),
        masked_frame(0x1, subscribe.as_bytes()),
    ]
    .concat();
    // 90 pairs at once (within the default 200 frames/s burst), then one pair every 12 ms
    // (under 200 frames/s, so the frame rate limit never steps in).
    let burst = pair.repeat(90);
    let mut ws = ws_small_rcvbuf(&relay, 4096);
    let limit = baseline.rss_kib + 64 * 1024;
    let (end, writes, max_rss) = flood_without_reading(
        &relay,
        &mut ws,
        &burst,
        &pair,
        Duration::from_millis(12),
        Duration::from_secs(6),
        limit,
    );
    let pairs = 89 + writes;
    eprintln!(
        "{pairs} unsubscribe + subscribe(since=earliest) pairs, ended by {end:?}; max RSS \
         {max_rss} KiB (baseline {} KiB)",
        baseline.rss_kib
    );
    assert!(
        max_rss <= limit,
        "relay RSS grew to {max_rss} KiB (baseline {} KiB) queueing {pairs} replays of 10,000 \
         messages for a client that never reads them: replays escape \
         delivery.max_outbound_bytes",
        baseline.rss_kib
    );
    drop(ws);
    baseline.assert_recovered(&relay, 64);
}

/// The same bound for control frames: pings from a client that never reads its pongs (with
/// the frame rate limit switched off, `limits.ws_frame_rate: 0`, as the README allows).
#[test]
fn a_never_reading_client_cannot_queue_unbounded_pongs() {
    let relay = Relay::start_with(&[
        ("PULSAR_DELIVERY_MAX_OUTBOUND_BYTES", "64KiB"),
        ("PULSAR_LIMITS_WS_FRAME_RATE", "0"),
    ]);
    let baseline = Baseline::take(&relay);
    let pings = masked_frame(0x9, &[b'p'; 125]).repeat(1000);
    let mut ws = ws_small_rcvbuf(&relay, 4096);
    let limit = baseline.rss_kib + 64 * 1024;
    let (end, writes, max_rss) = flood_without_reading(
        &relay,
        &mut ws,
        &pings,
        &pings,
        Duration::ZERO,
        Duration::from_secs(6),
        limit,
    );
    eprintln!(
        "{} pings of 125 bytes, ended by {end:?}; max RSS {max_rss} KiB (baseline {} KiB)",
        writes * 1000,
        baseline.rss_kib
    );
    assert!(
        max_rss <= limit,
        "relay RSS grew to {max_rss} KiB (baseline {} KiB) queueing pongs for {} pings from a \
         client that never reads them: control frames escape delivery.max_outbound_bytes",
        baseline.rss_kib,
        writes * 1000
    );
    drop(ws);
    baseline.assert_recovered(&relay, 64);
}
