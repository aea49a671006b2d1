//! The relay in a real browser (headless Chromium over the DevTools protocol): the console
//! renders live traffic without errors, an `EventSource` receives messages, and a page
//! using `/client.js` keeps receiving, without gap or repeat, across a relay restart.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Publishes `{"n": i}` to `topic` every 50 ms until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(relay: &Relay, topic: &str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, topic, halt) = (relay.addr, topic.to_string(), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let mut http = Http::connect(addr);
            let mut n = 0;
            while !halt.load(Ordering::Acquire) {
                http.publish(&topic, &format!("{{\"n\":{n}}}"));
                n += 1;
                thread::sleep(Duration::from_millis(50));
            }
        });
        Traffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn the_console_shows_live_traffic_and_logs_no_errors() {
    let relay = Relay::start();
    let _traffic = Traffic::start(&relay, "console-live");
    let admin = token_with("console-admin", &["admin", "read"], json!({}));
    let mut browser = Browser::launch();
    browser.navigate(&format!("http://{}/console#token={admin}", relay.addr));
    let wait = Duration::from_secs(10);
    browser.wait_until(
        r#"document.querySelector('#topics button[data-topic="console-live"]') !== null"#,
        wait,
    );
    // The token left the address bar for this tab's session storage.
    assert_eq!(browser.eval("location.hash"), json!(""));
    assert_eq!(
        browser.eval("sessionStorage.getItem('pulsar.console.token')"),
        json!(admin)
    );
    browser.wait_until(
        "Number(document.querySelector('#n-in').textContent) > 0",
        wait,
    );
    browser.wait_until(
        "document.querySelectorAll('#chart polyline').length > 0",
        wait,
    );
    // The live tail of the busy topic, through /client.js.
    browser.eval(r#"document.querySelector('#topics button[data-topic="console-live"]').click()"#);
    browser.wait_until(
        "document.querySelectorAll('#tail-log .id').length >= 3",
        wait,
    );
    // Everything it loaded came from the relay.
    assert_eq!(
        browser.eval(
            "performance.getEntriesByType('resource').every(e => e.name.startsWith(location.origin))"
        ),
        json!(true)
    );
    assert_eq!(browser.errors(), Vec::<String>::new());
}

#[test]
fn an_event_source_receives_messages() {
    let relay = Relay::start();
    let topic = topic_on("browser-es", 1);
    let earlier = relay.publish(&topic, r#"{"n":0}"#);
    let mut browser = Browser::launch();
    browser.navigate(&format!("http://{}/console", relay.addr));
    browser.eval(&format!(
        "window.got = []; \
         window.es = new EventSource('/api/v1/sse?topics={topic}&since=earliest&token={}'); \
         es.addEventListener('message', e => got.push([e.lastEventId, JSON.parse(e.data)])); \
         new Promise(resolve => es.onopen = resolve)",
        read_token()
    ));
    let mut ids = vec![earlier["message_id"].clone()];
    for n in 1..4 {
        ids.push(relay.publish(&topic, &format!("{{\"n\":{n}}}"))["message_id"].clone());
    }
    browser.wait_until("got.length === 4", Duration::from_secs(10));
    let got = browser.eval("got");
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(got[n][0], *id, "lastEventId is the message ID: {got}");
        assert_eq!(got[n][1]["message_id"], *id, "{got}");
        assert_eq!(got[n][1]["payload"], json!({"n": n}), "{got}");
    }
    assert_eq!(browser.errors(), Vec::<String>::new());
}

#[test]
fn a_client_js_page_keeps_receiving_across_a_relay_restart() {
    let mut relay = Relay::start();
    let port = relay.addr.port().to_string();
    let topic = topic_on("browser-restart", 0);
    let token = read_token();
    let mut browser = Browser::launch();
    browser.navigate(&format!("http://{}/console", relay.addr));
    // Three clients: WebSocket, SSE, and one whose WebSocket is blocked (it must fall back).
    browser.eval(&format!(
        "(async () => {{
           const {{ PulsarClient }} = await import('/client.js');
           class Blocked {{ constructor() {{ throw new Error('WebSocket blocked by the test'); }} }}
           window.got = {{ websocket: [], sse: [], fallback: [] }};
           window.clients = {{}};
           for (const [name, transport, WebSocket] of [
             ['websocket', 'websocket', undefined], ['sse', 'sse', undefined],
             ['fallback', 'auto', Blocked]]) {{
             clients[name] = new PulsarClient({{
               token: '{token}', topics: ['{topic}'], since: 'earliest', transport, WebSocket,
               minDelay: 100, maxDelay: 1000,
               onMessage: (m) => got[name].push(m.payload.n),
             }}).start();
           }}
         }})()"
    ));
    let all_live = "Object.values(clients).every(c => c.state === 'live')";
    browser.wait_until(all_live, Duration::from_secs(10));
    for n in 0..5 {
        relay.publish(&topic, &format!("{{\"n\":{n}}}"));
    }
    let received = |n: usize| format!("Object.values(got).every(g => g.length >= {n})");
    browser.wait_until(&received(5), Duration::from_secs(10));

    relay.kill9();
    browser.wait_until(
        "Object.values(clients).every(c => c.state !== 'live')",
        Duration::from_secs(10),
    );
    let relay = Relay::start_with(&[("PULSAR_SERVER_HTTP_PORT", &port)]);
    // Published before the clients are back: they must replay it from their cursors.
    for n in 5..10 {
        relay.publish(&topic, &format!("{{\"n\":{n}}}"));
    }
    browser.wait_until(&received(10), Duration::from_secs(15));
    browser.wait_until(all_live, Duration::from_secs(5));
    let got = browser.eval("got");
    let expected = json!((0..10).collect::<Vec<_>>());
    for name in ["websocket", "sse", "fallback"] {
        assert_eq!(got[name], expected, "{name}: no gap, no repeat: {got}");
    }
    assert_eq!(browser.eval("clients.fallback.transport"), json!("sse"));
    assert_eq!(
        browser.eval("clients.websocket.transport"),
        json!("websocket")
    );
}

#[test]
fn the_console_and_the_client_are_served_with_their_types_and_cache_rules() {
    let relay = Relay::start();
    let page = relay.request("GET", "/console", &[], b"");
    page.assert_status(200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    let policy = page.header("content-security-policy").unwrap_or_default();
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    let html = page.text();
    assert!(html.contains("import { PulsarClient } from '/client.js'"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the console refers to nothing outside the relay"
    );
    let module = relay.request("GET", "/client.js", &[], b"");
    module.assert_status(200);
    assert_eq!(
        module.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        module.header("cache-control"),
        Some("public, max-age=86400")
    );
    assert!(module.text().contains("export class PulsarClient"));
    let head = relay.http().request("HEAD", "/client.js", &[], b"");
    head.assert_status(200);
    assert_eq!(
        head.header("content-length"),
        Some(module.body.len().to_string().as_str())
    );
    relay
        .request("POST", "/console", &[], b"")
        .assert_error(405, "METHOD_NOT_ALLOWED");
}

#[test]
fn the_console_signs_in_with_a_password() {
    let relay = Relay::start_with(&[
        ("PULSAR_BOOTSTRAP_ADMIN_USERNAME", "operator"),
        ("PULSAR_BOOTSTRAP_ADMIN_PASSWORD", "console-password-1"),
    ]);
    relay.wait_ready(Duration::from_secs(10));
    let mut browser = Browser::launch();
    browser.navigate(&format!("http://{}/console", relay.addr));
    browser.wait_until(
        "!document.querySelector('#login').classList.contains('hidden')",
        Duration::from_secs(5),
    );
    browser.eval(
        "const form = document.querySelector('#login-form'); \
         form.username.value = 'operator'; form.password.value = 'wrong-password'; \
         form.requestSubmit()",
    );
    browser.wait_until(
        "document.querySelector('#login-error').textContent !== ''",
        Duration::from_secs(5),
    );
    browser.eval(
        "const again = document.querySelector('#login-form'); \
         again.password.value = 'console-password-1'; again.requestSubmit()",
    );
    browser.wait_until(
        "document.querySelector('#n-connections').textContent !== '–'",
        Duration::from_secs(10),
    );
    assert!(browser
        .eval("sessionStorage.getItem('pulsar.console.token')")
        .as_str()
        .is_some_and(|t| t.split('.').count() == 3));
}

#[test]
fn client_js_renews_its_token_before_it_expires() {
    let relay = Relay::start_with(&[("PULSAR_JWT_LEEWAY", "0s")]);
    let topic = topic_on("browser-renew", 1);
    let mut browser = Browser::launch();
    browser.navigate(&format!("http://{}/console", relay.addr));
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    };
    // Renewed a second before it expires, after both clients are live.
    let expiry = unix_now().as_secs() + 3;
    let short = token_with("renewer", &["read"], json!({"exp": expiry}));
    let fresh = token_with("renewer", &["read"], json!({}));
    browser.eval(&format!(
        "(async () => {{
           const {{ PulsarClient }} = await import('/client.js');
           window.got = {{ websocket: [], sse: [] }};
           window.connects = {{ websocket: 0, sse: 0 }};
           window.clients = {{}};
           for (const transport of ['websocket', 'sse']) {{
             clients[transport] = new PulsarClient({{
               token: '{short}', getToken: async () => '{fresh}', topics: ['{topic}'],
               transport, minDelay: 100, maxDelay: 1000, renewBefore: 1,
               onState: (s) => {{ if (s === 'connecting') connects[transport] += 1; }},
               onMessage: (m) => got[transport].push(m.payload.n),
             }}).start();
           }}
         }})()"
    ));
    browser.wait_until(
        "Object.values(clients).every(c => c.state === 'live')",
        Duration::from_secs(10),
    );
    // Past the first token's expiry: the WebSocket session renewed in place, the stream
    // reopened once with the new token; both still deliver everything.
    thread::sleep(Duration::from_secs(expiry + 1) - unix_now());
    for n in 0..3 {
        relay.publish(&topic, &format!("{{\"n\":{n}}}"));
    }
    browser.wait_until(
        "Object.values(got).every(g => g.length === 3)",
        Duration::from_secs(10),
    );
    assert_eq!(
        browser.eval("got"),
        json!({"websocket": [0, 1, 2], "sse": [0, 1, 2]})
    );
    assert_eq!(
        browser.eval("connects"),
        json!({"websocket": 1, "sse": 2}),
        "the WebSocket renewed with an auth frame, without reconnecting"
    );
    assert_eq!(browser.eval("clients.websocket.token"), json!(fresh));
}

#[test]
fn the_readme_page_using_client_js_works_from_a_file() {
    let relay = Relay::start();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let section = &readme[readme
        .find("### Receive in a browser")
        .expect("README has a \"Receive in a browser\" section")..];
    let start = section.find("```html\n").expect("an html block") + "```html\n".len();
    let page = &section[start..start + section[start..].find("```").unwrap()];
    let page = page.replace("127.0.0.1:8080", &relay.addr.to_string());
    let path = std::env::temp_dir().join(format!("pulsar-readme-page-{}.html", std::process::id()));
    std::fs::write(&path, page).expect("write the page");
    let mut browser = Browser::launch();
    browser.navigate(&format!("file://{}#token={}", path.display(), read_token()));
    // The page subscribes live: publish until its first message shows.
    let shown = eventually(Duration::from_secs(10), || {
        relay.publish("notifications", r#"{"hello":"browser"}"#);
        browser.eval("document.querySelectorAll('#log li').length > 0") == json!(true)
    });
    let _ = std::fs::remove_file(&path);
    assert!(
        shown,
        "the README page showed nothing: {:?}",
        browser.errors()
    );
    assert_eq!(
        browser.eval("document.querySelector('#log li').textContent"),
        json!(r#"{"hello":"browser"}"#)
    );
    assert_eq!(browser.errors(), Vec::<String>::new());
}
