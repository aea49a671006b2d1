//! Producer side: single and bulk publish, IDs, ordering, fan-out across shards, payload
//! fidelity and TTL.

mod common;

use std::collections::{HashMap, HashSet};
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[test]
fn publish_returns_201_receipt_with_id_topic_and_timestamp() {
    let relay = Relay::start();
    let topic = "receipts.orders:v1";
    let token = rw_token();
    let resp = relay.request(
        "POST",
        "/api/v1/messages",
        &[
            auth_header(&token).as_pair(),
            ("Content-Type", "application/json"),
        ],
        br#"{"topic":"receipts.orders:v1","payload":{"n":1}}"#,
    );
    resp.assert_status(201);
    assert!(
        resp.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        resp.headers
    );
    let receipt = resp.json();
    assert_eq!(receipt["topic"], topic);
    let (ms, _) = parse_id(id_of(&receipt));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        ms.abs_diff(now_ms) < 60_000,
        "id ms {ms} far from now {now_ms}"
    );
    let ts = receipt["timestamp"].as_str().expect("timestamp string");
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "timestamp {ts:?} is not RFC 3339 UTC with milliseconds"
    );
}

#[test]
fn message_ids_strictly_increase_per_topic() {
    let relay = Relay::start();
    for topic in topics_on_each_shard("ids") {
        let mut http = relay.http();
        let ids: Vec<(u64, u64)> = (0..50)
            .map(|i| parse_id(id_of(&http.publish(&topic, &i.to_string()))))
            .collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{topic}: ids not increasing: {pair:?}");
        }
    }
}

#[test]
fn publish_and_receive_across_shards() {
    let relay = Relay::start();
    let topics = topics_on_each_shard("fanout");
    // Several connections, so the kernel spreads subscribers over both shards; each one
    // subscribes to a topic of each owner.
    let mut subscribers: Vec<Ws> = (0..6).map(|_| relay.ws()).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    for ws in &mut subscribers {
        ws.subscribe(&names, json!({}));
    }
    // Producers on fresh connections, so both accepting shards publish to both owners.
    let mut receipts: HashMap<String, Vec<String>> = HashMap::new();
    for round in 0..6 {
        for topic in &topics {
            let r = relay.publish(topic, &format!(r#"{{"round":{round},"topic":"{topic}"}}"#));
            assert_eq!(r["topic"], topic.as_str());
            receipts
                .entry(topic.clone())
                .or_default()
                .push(id_of(&r).to_string());
        }
    }
    for (n, ws) in subscribers.iter_mut().enumerate() {
        let mut got: HashMap<String, Vec<String>> = HashMap::new();
        for _ in 0..12 {
            let d = ws.recv_delivery();
            let topic = d["topic"].as_str().unwrap().to_string();
            assert_eq!(d["payload"]["topic"], topic.as_str(), "{d}");
            let round = d["payload"]["round"].as_u64().unwrap() as usize;
            assert_eq!(
                receipts[&topic][round],
                id_of(&d),
                "subscriber {n}: delivery id differs from the receipt"
            );
            assert!(d["metadata"].is_null(), "{d}");
            assert!(d["timestamp"].is_string(), "{d}");
            got.entry(topic).or_default().push(id_of(&d).to_string());
        }
        assert_eq!(got, receipts, "subscriber {n} got a different set or order");
    }
}

#[test]
fn several_subscribers_get_the_same_message_id() {
    let relay = Relay::start();
    for topic in topics_on_each_shard("same-id") {
        let mut subs: Vec<Ws> = (0..4).map(|_| relay.ws()).collect();
        for ws in &mut subs {
            ws.subscribe(&[&topic], json!({}));
        }
        let receipt = relay.publish(&topic, r#""hello""#);
        for ws in &mut subs {
            let d = ws.recv_delivery();
            assert_eq!(d["message_id"], receipt["message_id"]);
            assert_eq!(d["topic"], topic.as_str());
            assert_eq!(d["payload"], "hello");
            assert_eq!(d["timestamp"], receipt["timestamp"]);
        }
    }
}

#[test]
fn per_topic_order_under_concurrent_producers() {
    const PRODUCERS: usize = 4;
    const EACH: usize = 200;
    let relay = Relay::start();
    let topic = topic_on("concurrent", 1);
    let mut subs: Vec<Ws> = (0..2).map(|_| relay.ws()).collect();
    for ws in &mut subs {
        ws.subscribe(&[&topic], json!({}));
    }
    let addr = relay.addr;
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let topic = topic.clone();
            thread::spawn(move || {
                let mut http = Http::connect(addr);
                (0..EACH)
                    .map(|seq| {
                        let r = http.publish(&topic, &format!(r#"{{"p":{p},"seq":{seq}}}"#));
                        id_of(&r).to_string()
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let mut published: HashSet<String> = HashSet::new();
    for handle in producers {
        let ids = handle.join().expect("producer thread");
        // Receipts of one producer's sequential requests are increasing too.
        for pair in ids.windows(2) {
            assert!(parse_id(&pair[0]) < parse_id(&pair[1]), "{pair:?}");
        }
        published.extend(ids);
    }
    assert_eq!(published.len(), PRODUCERS * EACH, "duplicate receipts");

    for ws in &mut subs {
        let mut seen = HashSet::new();
        let mut last_id = (0, 0);
        let mut next_seq = [0u64; PRODUCERS];
        for _ in 0..PRODUCERS * EACH {
            let d = ws.recv_delivery();
            let id = id_of(&d).to_string();
            assert!(parse_id(&id) > last_id, "id {id} after {last_id:?}");
            last_id = parse_id(&id);
            assert!(published.contains(&id), "unknown id {id}");
            assert!(seen.insert(id.clone()), "duplicate delivery of {id}");
            let p = d["payload"]["p"].as_u64().unwrap() as usize;
            let seq = d["payload"]["seq"].as_u64().unwrap();
            assert_eq!(seq, next_seq[p], "producer {p} out of order");
            next_seq[p] += 1;
        }
        assert_eq!(seen, published);
    }
}

#[test]
fn bulk_with_mixed_valid_and_invalid_items() {
    let relay = Relay::start();
    let [a, b]: [String; 2] = topics_on_each_shard("bulk").try_into().unwrap();
    let mut ws = relay.ws();
    ws.subscribe(&[&a, &b], json!({}));

    let body = json!({"messages": [
        {"topic": a, "payload": {"i": 0}},
        {"topic": "not a topic", "payload": 1},
        {"topic": b, "payload": {"i": 2}, "metadata": {"k": "v"}},
        {"topic": a},
        {"topic": a, "payload": 4, "ttl": 0},
        {"topic": b, "payload": 5, "metadata": {"k": 5}},
        {"topic": a, "payload": {"i": 6}, "ttl": 60},
        "not an object",
    ]});
    let token = rw_token();
    let resp = relay.request(
        "POST",
        "/api/v1/messages/bulk",
        &[auth_header(&token).as_pair()],
        body.to_string().as_bytes(),
    );
    resp.assert_status(207);
    let reply = resp.json();
    let results = reply["results"].as_array().expect("results array");
    assert_eq!(results.len(), 8, "{reply}");
    let expected: [Result<&str, &str>; 8] = [
        Ok(a.as_str()),
        Err("INVALID_TOPIC"),
        Ok(b.as_str()),
        Err("MISSING_FIELD"),
        Err("INVALID_TTL"),
        Err("INVALID_METADATA"),
        Ok(a.as_str()),
        Err("INVALID_MESSAGE"),
    ];
    for (i, (result, want)) in results.iter().zip(expected).enumerate() {
        match want {
            Ok(topic) => {
                assert_eq!(result["status"], "accepted", "item {i}: {result}");
                assert_eq!(result["topic"], topic, "item {i}: {result}");
                assert!(result["error"].is_null(), "item {i}: {result}");
                parse_id(id_of(result));
            }
            Err(code) => {
                assert_eq!(result["status"], "rejected", "item {i}: {result}");
                assert!(result["message_id"].is_null(), "item {i}: {result}");
                assert_eq!(result["error"]["code"], code, "item {i}: {result}");
            }
        }
    }
    assert_eq!(
        reply["summary"],
        json!({"total": 8, "accepted": 3, "rejected": 5})
    );
    // Same topic, request order: increasing IDs.
    assert!(parse_id(id_of(&results[0])) < parse_id(id_of(&results[6])));

    // Exactly the accepted items are delivered, with their IDs.
    // IDs are per topic: two topics may use the same ID, so key by both.
    let key = |v: &Value| format!("{}/{}", v["topic"].as_str().unwrap(), id_of(v));
    let accepted: HashMap<String, usize> = [0usize, 2, 6]
        .into_iter()
        .map(|i| (key(&results[i]), i))
        .collect();
    let mut got = HashMap::new();
    for _ in 0..3 {
        let d = ws.recv_delivery();
        let i = *accepted
            .get(&key(&d))
            .unwrap_or_else(|| panic!("unexpected delivery {d}"));
        assert_eq!(d["payload"]["i"], i as u64, "{d}");
        got.insert(i, d);
    }
    assert_eq!(got[&2]["metadata"], json!({"k": "v"}));
    assert!(got[&0]["metadata"].is_null());
    // Nothing rejected was published: a replay of both topics holds just the three.
    let mut replay = relay.ws();
    replay.subscribe(&[&a, &b], json!({"since": "earliest"}));
    let frames = replay.collect_until_pong();
    let mut ids: Vec<String> = frames.iter().map(key).collect();
    ids.sort();
    let mut want: Vec<String> = accepted.keys().cloned().collect();
    want.sort();
    assert_eq!(ids, want);
}

#[test]
fn bulk_rejects_bad_batches_as_a_whole() {
    let relay = Relay::start_with(&[("PULSAR_LIMITS_MAX_BULK_MESSAGES", "5")]);
    let token = rw_token();
    let topic = topic_on("bulk-size", 0);
    let item = json!({"topic": topic, "payload": 1});
    let cases: Vec<(String, &str)> = vec![
        (json!({"messages": []}).to_string(), "INVALID_BATCH_SIZE"),
        (
            json!({"messages": vec![item.clone(); 6]}).to_string(),
            "INVALID_BATCH_SIZE",
        ),
        (json!({"messages": 5}).to_string(), "INVALID_JSON"),
        ("[1,2]".to_string(), "INVALID_JSON"),
        ("{\"messages\": [".to_string(), "INVALID_JSON"),
        (json!({}).to_string(), "MISSING_FIELD"),
    ];
    for (body, code) in &cases {
        let resp = relay.request(
            "POST",
            "/api/v1/messages/bulk",
            &[auth_header(&token).as_pair()],
            body.as_bytes(),
        );
        assert_eq!(resp.status, 422, "{body}: {}", resp.text());
        assert_eq!(resp.code(), *code, "{body}");
    }
    // At the limit is fine, and nothing from the rejected batches was published.
    let resp = relay.request(
        "POST",
        "/api/v1/messages/bulk",
        &[auth_header(&token).as_pair()],
        json!({"messages": vec![item; 5]}).to_string().as_bytes(),
    );
    resp.assert_status(207);
    assert_eq!(resp.json()["summary"]["accepted"], 5);
    let mut ws = relay.ws();
    ws.subscribe(&[&topic], json!({"since": "earliest"}));
    assert_eq!(ws.collect_until_pong().len(), 5);
}

#[test]
fn payload_and_metadata_are_relayed_byte_identical() {
    let relay = Relay::start();
    let payload = r#"{"b":1.50,"a":[1e3]}"#;
    let spaced = r#"{ "z" : [ 1.0 , -0.0 , 12345678901234567890123 ], "y" : "\u00e9\n" }"#;
    let metadata = r#"{"zeta":"1","alpha":"2"}"#;
    for topic in topics_on_each_shard("fidelity") {
        let mut ws = relay.ws();
        ws.subscribe(&[&topic], json!({}));
        let mut http = relay.http();
        let first = http.publish(&topic, payload);
        let second = http.publish_body(&format!(
            r#"{{"topic":"{topic}","payload":{spaced},"metadata":{metadata}}}"#
        ));

        let text = ws.recv_text();
        assert!(
            text.contains(&format!(r#""payload":{payload},"#)),
            "payload not verbatim in {text}"
        );
        assert!(text.contains(&format!(r#""message_id":"{}""#, id_of(&first))));
        let text = ws.recv_text();
        assert!(
            text.contains(&format!(r#""payload":{spaced},"#)),
            "payload not verbatim in {text}"
        );
        assert!(
            text.contains(&format!(r#""metadata":{metadata}"#)),
            "metadata not verbatim in {text}"
        );
        assert!(text.contains(&format!(r#""message_id":"{}""#, id_of(&second))));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["metadata"]["zeta"], "1");

        // The poll reply carries the same bytes.
        let resp = relay.poll(&format!("topics={topic}&since=earliest&timeout=1"));
        resp.assert_status(200);
        let body = resp.text();
        assert!(body.contains(&format!(r#""payload":{payload},"#)), "{body}");
        assert!(body.contains(&format!(r#""payload":{spaced},"#)), "{body}");
    }
}

#[test]
fn expired_messages_are_not_delivered_or_replayed() {
    let relay = Relay::start();
    for topic in topics_on_each_shard("ttl") {
        let mut live = relay.ws();
        live.subscribe(&[&topic], json!({}));
        let mut http = relay.http();
        let short = http.publish_body(&format!(
            r#"{{"topic":"{topic}","payload":"short","ttl":1}}"#
        ));
        let long = http.publish_body(&format!(
            r#"{{"topic":"{topic}","payload":"long","ttl":3600}}"#
        ));
        let forever = http.publish(&topic, r#""forever""#);
        // While fresh, a TTL message is delivered like any other.
        for receipt in [&short, &long, &forever] {
            assert_eq!(live.recv_delivery()["message_id"], receipt["message_id"]);
        }

        thread::sleep(Duration::from_millis(1500));

        let mut ws = relay.ws();
        ws.subscribe(&[&topic], json!({"since": "earliest"}));
        let replayed: Vec<Value> = ws
            .collect_until_pong()
            .iter()
            .map(|v| v["payload"].clone())
            .collect();
        assert_eq!(replayed, [json!("long"), json!("forever")], "{topic}");

        let resp = relay.poll(&format!("topics={topic}&since=earliest&timeout=1"));
        let ids: Vec<Value> = resp.json()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message_id"].clone())
            .collect();
        assert_eq!(
            ids,
            [long["message_id"].clone(), forever["message_id"].clone()]
        );

        // Replaying from just before the expired message skips it too.
        let mut ws = relay.ws();
        let before = parse_id(id_of(&short));
        let since = if before.1 > 0 {
            format!("{}-{}", before.0, before.1 - 1)
        } else {
            format!("{}-0", before.0 - 1)
        };
        ws.subscribe(&[&topic], json!({"since": since}));
        let frames = ws.collect_until_pong();
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0]["message_id"], long["message_id"]);
    }
}

#[test]
fn escaped_topic_name_is_the_same_topic() {
    let relay = Relay::start();
    for topic in topics_on_each_shard("escaped") {
        let mut ws = relay.ws();
        ws.subscribe(&[&topic], json!({}));
        // `e` written as a JSON escape.
        let escaped = topic.replacen('e', "\\u0065", 1);
        assert_ne!(escaped, topic);
        let receipt = relay
            .http()
            .publish_body(&format!(r#"{{"topic":"{escaped}","payload":{{"x":1}}}}"#));
        assert_eq!(receipt["topic"], topic.as_str());
        let d = ws.recv_delivery();
        assert_eq!(d["message_id"], receipt["message_id"]);
        assert_eq!(d["topic"], topic.as_str());
        assert_eq!(d["payload"], json!({"x": 1}));
    }
}
