//! Wire-codec micro-benchmarks: HTTP request decoding and WebSocket frame encoding/decoding.
//!
//! `cargo bench --bench codec` prints time per iteration and a throughput that relates to the
//! macro numbers in benches/BENCHMARKS.md: requests/s for HTTP parsing (compare with the ingest
//! req/s), bytes/s for frames. Under `cargo test --all-targets` each benchmark runs once, as
//! a smoke test.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pulsar_relay::http::{Limits, RequestDecoder};
use pulsar_relay::ws::frame::{text_frame, FrameDecoder, Incoming};

/// The relay's default limits (`limits:` in config.example.yaml).
const LIMITS: Limits = Limits {
    max_header_bytes: 16 << 10,
    max_headers: 64,
    max_body_bytes: 1 << 20,
};

/// An HS256 token of the size the relay mints (sub, permissions, iat, exp).
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.\
eyJzdWIiOiJiZW5jaCIsInBlcm1pc3Npb25zIjpbInJlYWQiLCJ3cml0ZSIsImFkbWluIl0sImlhdCI6MTc5NTc3NTk2OSwiZXhwIjoxNzk1ODYyMzY5fQ.\
Zk8Qm3pXv1cN2yS7tH0aLw9eJrU4bD6fGiK5oPqRsTu";

/// The body `tools/bench/publish.lua` sends.
const BODY: &str = r#"{"topic":"bench-1","payload":{"n":12345,"text":"hello relay"}}"#;

/// A publish request as wrk sends it in `tools/bench/ingest.sh`.
fn publish_request() -> Vec<u8> {
    format!(
        "POST /api/v1/messages HTTP/1.1\r\n\
         Host: 127.0.0.1:8080\r\n\
         Content-Type: application/json\r\n\
         Authorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\n\
         \r\n\
         {BODY}",
        BODY.len()
    )
    .into_bytes()
}

/// The same request with the body sent in three chunks.
fn chunked_publish_request() -> Vec<u8> {
    let mut out = format!(
        "POST /api/v1/messages HTTP/1.1\r\n\
         Host: 127.0.0.1:8080\r\n\
         Content-Type: application/json\r\n\
         Authorization: Bearer {TOKEN}\r\n\
         Transfer-Encoding: chunked\r\n\
         \r\n"
    )
    .into_bytes();
    let body = BODY.as_bytes();
    for chunk in [&body[..20], &body[20..40], &body[40..]] {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Decodes every request in `buf`, as the connection loop does; returns the count.
fn decode_all(decoder: &mut RequestDecoder, buf: &[u8]) -> usize {
    let mut at = 0;
    let mut count = 0;
    while at < buf.len() {
        match decoder.decode(&buf[at..]) {
            Ok(Some((request, consumed))) => {
                black_box(&request);
                at += consumed;
                count += 1;
            }
            other => panic!("request {count} did not decode: {other:?}"),
        }
    }
    count
}

fn http_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("http_parse");
    let mut decoder = RequestDecoder::new(LIMITS);

    let single = publish_request();
    let chunked = chunked_publish_request();
    let pipelined = single.repeat(16);
    assert_eq!(decode_all(&mut decoder, &single), 1);
    assert_eq!(decode_all(&mut decoder, &chunked), 1);
    assert_eq!(decode_all(&mut decoder, &pipelined), 16);

    for (name, buf, requests) in [
        ("publish", &single, 1),
        ("publish_chunked", &chunked, 1),
        ("publish_pipelined_16", &pipelined, 16),
    ] {
        group.throughput(Throughput::Elements(requests));
        group.bench_function(name, |b| {
            b.iter(|| decode_all(&mut decoder, black_box(buf)))
        });
    }
    group.finish();
}

const SIZES: [(&str, usize); 3] = [("100B", 100), ("1KiB", 1 << 10), ("64KiB", 64 << 10)];

/// ASCII JSON-ish text of `len` bytes (valid UTF-8, as text frames require).
fn text(len: usize) -> Vec<u8> {
    br#"{"n":12345,"text":"hello relay"},"#.iter().copied().cycle().take(len).collect()
}

fn ws_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_text_frame_encode");
    for (label, len) in SIZES {
        let payload = text(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &payload, |b, p| {
            b.iter(|| text_frame(black_box(p)))
        });
    }
    group.finish();
}

/// A single masked client text frame, as a browser sends it (RFC 6455 §5.3).
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x81];
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

fn ws_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_masked_frame_decode");
    // The relay's default `limits.max_ws_message_bytes`.
    let mut decoder = FrameDecoder::new(1 << 20);
    for (label, len) in SIZES {
        let payload = text(len);
        let frame = masked_text_frame(&payload);
        match decoder.decode(&frame) {
            Ok(Some((Incoming::Text(got), consumed))) => {
                assert_eq!(got, payload);
                assert_eq!(consumed, frame.len());
            }
            other => panic!("{label} frame did not decode: {other:?}"),
        }
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &frame, |b, f| {
            b.iter(|| decoder.decode(black_box(f)))
        });
    }
    group.finish();
}

/// The RFC 3339 instant every message and publish answer carries, written for
/// consecutive milliseconds as a busy shard does.
fn instant(c: &mut Criterion) {
    let mut out = Vec::with_capacity(64);
    let mut ms = 1_764_676_800_000u64;
    c.bench_function("rfc3339", |b| {
        b.iter(|| {
            out.clear();
            ms += 1;
            pulsar_relay::text::push_rfc3339(black_box(ms), &mut out);
            black_box(&out);
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = http_parse, ws_encode, ws_decode, instant
}
criterion_main!(benches);
