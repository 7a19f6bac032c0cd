//! A small Chrome DevTools Protocol driver for browser tests: headless Chromium as a child
//! process, spoken to over its browser WebSocket (tokio-tungstenite + serde_json).
//!
//! - [`find_chromium`]: `$RUSTYBALANCER_CHROMIUM`, else `chromium` / `chromium-browser` /
//!   `google-chrome` on `PATH`; `None` (skip) when missing outside CI, a failure under CI.
//! - [`Browser::launch`]: starts it with `--headless=new --remote-debugging-port=0` and its
//!   own profile directory, reads the port from the `DevTools listening on ws://…` line on
//!   stderr, connects; killed (its whole process group) and the profile removed on `Drop`.
//! - [`Browser::new_page`]: `Target.createTarget` + `Target.attachToTarget {flatten: true}`:
//!   one session per page over the same socket; `Runtime`, `Log` and `Page` enabled.
//! - [`Page`]: `navigate`, `eval` (returnByValue, awaitPromise; a thrown exception is an
//!   `Err`), `wait_for` (poll an expression until truthy), `set_viewport`, `screenshot`.
//! - Console errors, uncaught exceptions and `Log` errors of every page are collected;
//!   [`Browser::problems`] returns them (a test asserts there are none).

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one CDP command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, WsMessage>;
type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>;

/// The Chromium binary: `$RUSTYBALANCER_CHROMIUM` or the first of the usual names on `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("RUSTYBALANCER_CHROMIUM") {
        if !path.is_empty() {
            let path = PathBuf::from(path);
            if path.is_file() {
                return Some(path);
            }
            return testkit::missing(&format!(
                "RUSTYBALANCER_CHROMIUM={} does not exist",
                path.display()
            ));
        }
    }
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&dirs) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    testkit::missing(
        "no Chromium found (set RUSTYBALANCER_CHROMIUM or install Debian's `chromium` package; \
         jobs/test.sh installs it)",
    )
}

/// The shared connection state: pending calls by id, and what pages complained about.
struct Conn {
    sink: tokio::sync::Mutex<Sink>,
    next_id: AtomicU64,
    pending: Pending,
    /// Console errors, exceptions and `Log` errors, as one line each.
    problems: Mutex<Vec<String>>,
    /// Every console message (for failure output).
    console: Mutex<Vec<String>>,
}

impl Conn {
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.sink
            .lock()
            .await
            .send(WsMessage::text(msg.to_string()))
            .await
            .map_err(|e| format!("{method}: send: {e}"))?;
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(result)) => result.map_err(|e| format!("{method}: {e}")),
            Ok(Err(_)) => Err(format!("{method}: the browser connection closed")),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(format!("{method}: no answer within {CALL_TIMEOUT:?}"))
            }
        }
    }

    /// Dispatches one frame from the browser: an answer or an event.
    fn on_frame(&self, text: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if let Some(id) = msg["id"].as_u64() {
            if let Some(tx) = self.pending.lock().unwrap().remove(&id) {
                let result = match msg.get("error") {
                    Some(e) => Err(e.to_string()),
                    None => Ok(msg["result"].clone()),
                };
                let _ = tx.send(result);
            }
            return;
        }
        let params = &msg["params"];
        match msg["method"].as_str().unwrap_or("") {
            "Runtime.consoleAPICalled" => {
                let kind = params["type"].as_str().unwrap_or("log");
                let args: Vec<String> = params["args"]
                    .as_array()
                    .map(|a| a.iter().map(remote_text).collect())
                    .unwrap_or_default();
                let line = format!("console.{kind}: {}", args.join(" "));
                if matches!(kind, "error" | "assert") {
                    self.problems.lock().unwrap().push(line.clone());
                }
                self.console.lock().unwrap().push(line);
            }
            "Runtime.exceptionThrown" => {
                let d = &params["exceptionDetails"];
                let what = d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str())
                    .unwrap_or("?");
                self.problems.lock().unwrap().push(format!(
                    "uncaught exception at {}:{}: {what}",
                    d["url"].as_str().unwrap_or(""),
                    d["lineNumber"]
                ));
            }
            "Log.entryAdded" => {
                let e = &params["entry"];
                let line = format!(
                    "log {} ({}): {} {}",
                    e["level"].as_str().unwrap_or("?"),
                    e["source"].as_str().unwrap_or("?"),
                    e["text"].as_str().unwrap_or(""),
                    e["url"].as_str().unwrap_or("")
                );
                if e["level"] == "error" {
                    self.problems.lock().unwrap().push(line.clone());
                }
                self.console.lock().unwrap().push(line);
            }
            _ => {}
        }
    }
}

/// A console argument as text: its value, else its description.
fn remote_text(arg: &Value) -> String {
    match &arg["value"] {
        Value::String(s) => s.clone(),
        Value::Null => arg["description"]
            .as_str()
            .or(arg["type"].as_str())
            .unwrap_or("?")
            .to_owned(),
        v => v.to_string(),
    }
}

/// Headless Chromium with one DevTools connection.
pub struct Browser {
    child: Option<Child>,
    profile: PathBuf,
    conn: Arc<Conn>,
    reader: JoinHandle<()>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Browser {
    /// Starts `binary` headless with a fresh profile and connects to it.
    pub async fn launch(binary: &Path) -> Result<Browser, String> {
        use std::os::unix::process::CommandExt;

        static LAUNCHED: AtomicU64 = AtomicU64::new(0);
        let profile = std::env::temp_dir().join(format!(
            "rb-chromium-{}-{}",
            std::process::id(),
            LAUNCHED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&profile).map_err(|e| format!("create {profile:?}: {e}"))?;
        let mut child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--mute-audio",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so Drop can end the browser and all its helpers.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;

        // Read stderr on a thread for the whole run (a full pipe would block the browser);
        // hand over the DevTools URL and keep the last lines for failure messages.
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let (url_tx, url_rx) = std::sync::mpsc::channel::<String>();
        if let Some(pipe) = child.stderr.take() {
            let lines = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        let _ = url_tx.send(url.trim().to_owned());
                    }
                    let mut l = lines.lock().unwrap();
                    if l.len() >= 40 {
                        l.pop_front();
                    }
                    l.push_back(line);
                }
            });
        }
        let url = tokio::task::spawn_blocking(move || url_rx.recv_timeout(Duration::from_secs(30)))
            .await
            .map_err(|e| format!("wait for chromium: {e}"))?;
        let url = match url {
            Ok(url) => url,
            Err(_) => {
                let tail: Vec<String> = stderr.lock().unwrap().iter().cloned().collect();
                kill_group(&mut child);
                let _ = std::fs::remove_dir_all(&profile);
                return Err(format!(
                    "chromium printed no DevTools URL within 30 s; stderr:\n{}",
                    tail.join("\n")
                ));
            }
        };
        let (ws, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok(ws) => ws,
            Err(e) => {
                kill_group(&mut child);
                let _ = std::fs::remove_dir_all(&profile);
                return Err(format!("connect to {url}: {e}"));
            }
        };
        let (sink, mut source) = ws.split();
        let conn = Arc::new(Conn {
            sink: tokio::sync::Mutex::new(sink),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            problems: Mutex::new(Vec::new()),
            console: Mutex::new(Vec::new()),
        });
        let reader = tokio::spawn({
            let conn = conn.clone();
            async move {
                while let Some(Ok(frame)) = source.next().await {
                    if let WsMessage::Text(text) = frame {
                        conn.on_frame(text.as_str());
                    }
                }
                // Closed: fail whatever still waits.
                conn.pending.lock().unwrap().clear();
            }
        });
        Ok(Browser {
            child: Some(child),
            profile,
            conn,
            reader,
            stderr,
        })
    }

    /// A new page (tab) with its own session, `Runtime`, `Log` and `Page` domains enabled.
    pub async fn new_page(&self) -> Result<Page, String> {
        let target = self
            .conn
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = target["targetId"]
            .as_str()
            .ok_or_else(|| format!("Target.createTarget answered {target}"))?;
        let attached = self
            .conn
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| format!("Target.attachToTarget answered {attached}"))?
            .to_owned();
        let page = Page {
            conn: self.conn.clone(),
            session,
            target: target_id.to_owned(),
        };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            page.call(domain, json!({})).await?;
        }
        Ok(page)
    }

    /// Console errors, uncaught exceptions and `Log` errors seen so far, on every page.
    pub fn problems(&self) -> Vec<String> {
        self.conn.problems.lock().unwrap().clone()
    }

    /// Every console and `Log` line seen so far.
    pub fn console(&self) -> Vec<String> {
        self.conn.console.lock().unwrap().clone()
    }

    /// The last lines Chromium wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let l = self.stderr.lock().unwrap();
        l.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// SIGTERM to the browser's process group, then SIGKILL after 3 s if it is still there.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let signal = |sig: &str| {
        let _ = Command::new("kill")
            .args([sig, "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            // Helpers of the group may outlive the main process by a moment.
            signal("-KILL");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal("-KILL");
    let _ = child.kill();
    let _ = child.wait();
}

/// One page (tab), attached with its own session.
pub struct Page {
    conn: Arc<Conn>,
    session: String,
    target: String,
}

impl Page {
    /// One CDP command in this page's session.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.conn.call(Some(&self.session), method, params).await
    }

    /// Runs `source` in every document this page loads from now on, before its scripts.
    pub async fn add_init_script(&self, source: &str) -> Result<(), String> {
        self.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": source}),
        )
        .await
        .map(|_| ())
    }

    /// Closes the tab.
    pub async fn close(self) -> Result<(), String> {
        self.conn
            .call(None, "Target.closeTarget", json!({"targetId": self.target}))
            .await
            .map(|_| ())
    }

    /// Navigates and waits (up to 15 s) for `document.readyState == "complete"`.
    pub async fn navigate(&self, url: &str) -> Result<(), String> {
        let nav = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = nav["errorText"].as_str() {
            return Err(format!("navigate to {url}: {e}"));
        }
        self.wait_for(
            "the page to load",
            "document.readyState === 'complete'",
            Duration::from_secs(15),
        )
        .await
        .map(|_| ())
    }

    /// Evaluates `expression` in the page (promises awaited) and returns its value as JSON;
    /// an exception is an `Err` with its description.
    pub async fn eval(&self, expression: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": expression,
                    "returnByValue": true,
                    "awaitPromise": true,
                    "userGesture": true,
                }),
            )
            .await?;
        if let Some(d) = r.get("exceptionDetails") {
            let what = d["exception"]["description"]
                .as_str()
                .or(d["text"].as_str())
                .unwrap_or("?");
            return Err(format!("evaluate {expression:?}: {what}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expression` every 100 ms until it is truthy (not false/null/0/""); returns
    /// its value, or an error naming `what` and the last value after `within`.
    pub async fn wait_for(
        &self,
        what: &str,
        expression: &str,
        within: Duration,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + within;
        loop {
            let last = self.eval(expression).await;
            match &last {
                Ok(v) if truthy(v) => return Ok(v.clone()),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!("{what}: not within {within:?}; last: {last:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Emulates a viewport of `width`×`height` CSS pixels.
    pub async fn set_viewport(
        &self,
        width: u32,
        height: u32,
        scale: f64,
        mobile: bool,
    ) -> Result<(), String> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile}),
        )
        .await
        .map(|_| ())
    }

    /// A PNG of the whole page (beyond the viewport), at the emulated scale.
    pub async fn screenshot(&self) -> Result<Vec<u8>, String> {
        let m = self.call("Page.getLayoutMetrics", json!({})).await?;
        let size = &m["cssContentSize"];
        let (w, h) = (
            size["width"].as_f64().unwrap_or(800.0),
            size["height"].as_f64().unwrap_or(600.0),
        );
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1},
                }),
            )
            .await?;
        let data = shot["data"]
            .as_str()
            .ok_or("Page.captureScreenshot returned no data")?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("screenshot: bad base64: {e}"))
    }
}

/// JavaScript truthiness of a JSON value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
