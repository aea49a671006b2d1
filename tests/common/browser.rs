//! A headless Chromium driven over the DevTools protocol (a WebSocket, with tungstenite):
//! navigate, evaluate JavaScript (awaiting promises), wait for a condition, and collect
//! what the page logged as errors (console errors, uncaught exceptions, failed loads).
//!
//! The browser is Debian's `chromium` (`PULSAR_TEST_CHROMIUM` names another binary); each
//! [`Browser`] has its own profile directory and process group, both gone when it drops.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use super::*;

pub struct Browser {
    child: Child,
    cdp: WsSocket,
    /// The DevTools session of the one page.
    session: String,
    next_id: u64,
    /// Error-level events the page produced so far, as text.
    errors: Vec<String>,
    profile: PathBuf,
}

/// The Chromium binary: `PULSAR_TEST_CHROMIUM`, else `chromium` on `PATH`.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("PULSAR_TEST_CHROMIUM") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|p| p.is_file())
    });
    found.expect(
        "chromium not found: run ./tools/test.sh (as root it installs Debian's `chromium` \
         package), or `sudo apt-get install chromium`, or set PULSAR_TEST_CHROMIUM",
    )
}

impl Browser {
    /// Starts a headless Chromium on a blank page.
    pub fn launch() -> Browser {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile =
            std::env::temp_dir().join(format!("pulsar-chromium-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create the browser profile directory");
        let mut cmd = Command::new(chromium());
        cmd.args([
            "--headless=new",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--remote-debugging-port=0",
            "about:blank",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Chromium refuses to run as root with its sandbox.
            cmd.arg("--no-sandbox");
        }
        let child = cmd.spawn().expect("cannot start chromium");
        // Chromium writes its DevTools port and browser path here once it listens.
        let active = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(20);
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&active) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break (port.to_string(), path.to_string());
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port within 20 s"
            );
            thread::sleep(Duration::from_millis(50));
        };
        let stream = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let (cdp, _) = tungstenite::client::client(format!("ws://127.0.0.1:{port}{path}"), stream)
            .expect("DevTools WebSocket handshake");
        let mut browser = Browser {
            child,
            cdp,
            session: String::new(),
            next_id: 0,
            errors: Vec::new(),
            profile,
        };
        let target = browser.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = browser.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({}));
        }
        browser
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
    }

    /// Runs a DevTools command on the page and returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(&session))
    }

    fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.cdp
            .send(Message::text(command.to_string()))
            .expect("send a DevTools command");
        loop {
            let text = match self.cdp.read() {
                Ok(Message::Text(text)) => text,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    panic!("DevTools did not answer {method} in time")
                }
                Err(e) => panic!("DevTools connection failed: {e}"),
            };
            let msg: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if msg["id"] == id {
                if let Some(err) = msg.get("error") {
                    panic!("DevTools {method} failed: {err}");
                }
                return msg["result"].clone();
            }
            self.note_event(&msg);
        }
    }

    /// Keeps what the page reports as an error.
    fn note_event(&mut self, msg: &Value) {
        let params = &msg["params"];
        let error = match msg["method"].as_str() {
            Some("Runtime.consoleAPICalled")
                if matches!(params["type"].as_str(), Some("error" | "assert")) =>
            {
                Some(format!("console.{}: {}", params["type"], params["args"]))
            }
            Some("Runtime.exceptionThrown") => Some(format!(
                "uncaught: {}",
                params["exceptionDetails"]["exception"]["description"]
                    .as_str()
                    .unwrap_or(&params["exceptionDetails"]["text"].to_string())
            )),
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => Some(format!(
                "log ({}): {} {}",
                params["entry"]["source"], params["entry"]["text"], params["entry"]["url"]
            )),
            _ => None,
        };
        self.errors.extend(error);
    }

    /// Loads `url` and waits until the document is complete.
    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_until(
            "document.readyState === 'complete'",
            Duration::from_secs(10),
        );
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value;
    /// panics on an exception.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        );
        if let Some(details) = result.get("exceptionDetails") {
            panic!("{expression} threw: {details}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` every 50 ms until it is `true`; panics after `timeout` with
    /// the page's errors.
    #[track_caller]
    pub fn wait_until(&mut self, expression: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.eval(expression) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "not true within {timeout:?}: {expression}\npage errors: {:#?}",
                self.errors
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the page logged as an error so far.
    pub fn errors(&mut self) -> Vec<String> {
        // A round trip collects the events already sent.
        self.eval("0");
        self.errors.clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the process group this browser was started in (its renderers
        // and helpers are in it too); nothing else is.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
