//! The operators' dashboard (`GET /`) in headless Chromium, driven over the Chrome DevTools
//! protocol (tests/common/cdp.rs), against the real thing: the agent in-process on the real
//! Docker engine (playground image) and a real `redis-server`, and a real balancer in-process
//! subscribed to it, with tasks on the same Redis. Traffic and one task go through the
//! balancer so every panel has something to show.
//!
//! Checks: no console error or exception; the table matches `GET /stats` (names and state
//! badges); the three charts have points; the tasks panel lists the task and its result link
//! works (same origin); the controls are locked without a token, a wrong token shows the
//! agent's JSON `message`, the right one sets the desired size (seen in `GET /health`) and
//! retires a container (seen in `GET /stats`); at phone width nothing but the tables scrolls
//! sideways.
//!
//! Screenshots (1366×900 laptop, 390×844 phone, and the laptop view with no balancer and
//! Redis down) are written to `target/dashboard/` on every run, and copied to
//! `artefacts/dashboard-{laptop,phone,degraded}.png` when `RUSTYBALANCER_SCREENSHOTS=1`.
//!
//! Run: `cargo test -p deployment-agent --test dashboard -- --nocapture` (needs Docker,
//! `redis-server`, Chromium (`RUSTYBALANCER_CHROMIUM` or `chromium` on PATH) and
//! `rustybalancer/playground:latest`; under CI=true a missing one fails).

#[path = "common/cdp.rs"]
mod cdp;
mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdp::{Browser, Page};
use common::agent::{get_json, stats, wait_scored_pool, Agent, AgentEnv, Cleanup};
use common::{eventually, http_get, http_request, RedisServer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "dashboard-test-token";
const POLL: Duration = Duration::from_millis(200);

/// `balancer::run` on already-bound listeners; [`BalancerTask::stop`] shuts it down
/// gracefully (its agent link and task workers with it), `Drop` signals and aborts.
struct BalancerTask {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl BalancerTask {
    fn start(
        proxy: TcpListener,
        admin: TcpListener,
        agent_ws: &str,
        redis_port: u16,
    ) -> BalancerTask {
        let vars = [
            ("BIND_ADDRESS", "127.0.0.1".to_owned()),
            ("HOST_PORT_HTTP_BALANCER", "0".to_owned()),
            ("HOST_PORT_ADMIN_BALANCER", "0".to_owned()),
            ("DEPLOYMENT_AGENT_URL", format!("ws://{agent_ws}/ws")),
            ("AGENT_TOKEN", TOKEN.to_owned()),
            ("REPORT_INTERVAL", "250ms".to_owned()),
            ("BALANCER_ID", "dashboard-test".to_owned()),
            ("REDIS_HOST", "127.0.0.1".to_owned()),
            ("REDIS_PORT", redis_port.to_string()),
        ];
        let config = balancer::config::Config::from_lookup(|k| {
            vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|e| panic!("balancer test config is invalid:\n{e}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(balancer::run(config, proxy, admin, async move {
            let _ = stopped.await;
        }));
        BalancerTask {
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(15), task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("balancer task failed: {e}"),
                Err(_) => panic!("balancer did not stop within 15 s"),
            }
        }
    }
}

impl Drop for BalancerTask {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Sequential `GET /work?ms=5` through the balancer, ~20 a second, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Load {
    fn start(balancer: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, ok) = (stop.clone(), ok.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((200, _)) = http_get(&balancer, "/work?ms=5").await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            }
        });
        Load { stop, ok, task }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// Evaluates `js` or fails the test with the browser's complaint.
async fn eval(page: &Page, js: &str) -> Value {
    page.eval(js).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn wait_page(page: &Page, what: &str, js: &str, within: Duration) -> Value {
    page.wait_for(what, js, within)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Sets an input's value as a user would (an `input` event follows).
fn fill(id: &str, value: &str) -> String {
    format!(
        "(() => {{ const i = document.getElementById({id:?}); i.focus(); i.value = {value:?}; \
         i.dispatchEvent(new Event('input', {{bubbles: true}})); i.blur(); return true; }})()"
    )
}

fn click(id: &str) -> String {
    format!("(() => {{ document.getElementById({id:?}).click(); return true; }})()")
}

/// `(name, state)` of every row of the dashboard's table, in page order.
const TABLE_JS: &str = "[...document.querySelectorAll('#containers tbody tr')]\
    .map(tr => [tr.dataset.name, tr.querySelector('.badge').textContent])";

/// Where screenshots go: `$CARGO_TARGET_DIR` or the workspace's `target/`, `dashboard/`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("dashboard")
}

fn save_screenshot(name: &str, png: &[u8]) {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {dir:?}: {e}"));
    let path = dir.join(format!("dashboard-{name}.png"));
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
    eprintln!("screenshot: {}", path.display());
    if std::env::var("RUSTYBALANCER_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let art = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../artefacts"))
            .join(format!("dashboard-{name}.png"));
        std::fs::write(&art, png).unwrap_or_else(|e| panic!("write {art:?}: {e}"));
        eprintln!("screenshot copied to {}", art.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_shows_the_pool_and_its_controls_work() {
    common::init_logging();
    let started = Instant::now();
    let Some(chromium) = cdp::find_chromium() else {
        return;
    };
    let Some((_docker, image)) = common::docker_and_image().await else {
        return;
    };
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let app = common::unique_app();
    // Drop order (reverse of declaration): browser, load, balancer, agent, containers and
    // network, Redis.
    let cleanup = Cleanup::new(&app);

    // The balancer's listeners first: the agent needs its address (BALANCER_URL), the
    // balancer needs the agent's WebSocket address.
    let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let balancer_addr = proxy.local_addr().expect("proxy addr").to_string();
    let env = AgentEnv::new(&app, &image, cleanup.network(), redis.port())
        .set("MAX_CONTAINERS", 4)
        .set("AGENT_TOKEN", TOKEN)
        .set("BALANCER_URL", format!("http://{balancer_addr}"))
        // The pool's size is the test's: no scale-up on a busy machine (scores stay above
        // 1), and no scale-down of the idle pool while the test looks at it.
        .set("HIGH_LOAD_THRESHOLD", 1)
        .set("CRITICAL_LOAD_THRESHOLD", 1)
        .set("SCALE_DOWN_STABILIZATION", "300s");
    let agent = Agent::start(&env).await;
    let http = agent.http();
    let balancer = BalancerTask::start(proxy, admin, &agent.ws(), redis.port());

    wait_scored_pool(&http, 2, Duration::from_secs(60)).await;
    eventually(
        "the balancer connected to the agent",
        Duration::from_secs(10),
        POLL,
        || async {
            let h = get_json(&http, "/health").await?;
            (h["balancers"].as_u64() >= Some(1))
                .then_some(())
                .ok_or_else(|| format!("{h}"))
        },
    )
    .await;
    let load = Load::start(balancer_addr.clone());

    // One task through the balancer, run to completion.
    let (status, body) = http_request(
        &balancer_addr,
        "POST",
        "/echo",
        &[("Prefer", "respond-async"), ("Content-Type", "text/plain")],
        "hello from the dashboard test",
    )
    .await
    .expect("submit a task");
    assert_eq!(status, 202, "task submission answered {status}: {body}");
    let submitted: Value = serde_json::from_str(&body).expect("task answer is JSON");
    let task_id = submitted["id"].as_str().expect("task id").to_owned();
    eventually("the task succeeded", Duration::from_secs(15), POLL, || {
        let (addr, id) = (balancer_addr.clone(), task_id.clone());
        async move {
            let (status, body) = http_get(&addr, &format!("/_tasks/{id}")).await?;
            (status == 200 && body.contains("\"succeeded\""))
                .then_some(())
                .ok_or(format!("{status}: {body}"))
        }
    })
    .await;
    eprintln!(
        "pool, balancer and task ready after {:?}",
        started.elapsed()
    );

    // The page, at laptop size.
    let browser = Browser::launch(&chromium)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let page = browser.new_page().await.unwrap_or_else(|e| panic!("{e}"));
    page.set_viewport(1366, 900, 1.0, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    page.navigate(&format!("http://{http}/"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_page(
        &page,
        "the live indicator",
        "document.getElementById('conn').dataset.state === 'live'",
        Duration::from_secs(10),
    )
    .await;

    // The table shows the pool as /stats does.
    eventually(
        "the table matches /stats",
        Duration::from_secs(10),
        POLL,
        || async {
            let rows = stats(&http).await?;
            let mut want: Vec<(String, String)> = rows
                .iter()
                .map(|r| {
                    (
                        r["name"].as_str().unwrap_or("?").to_owned(),
                        r["state"].as_str().unwrap_or("?").to_owned(),
                    )
                })
                .collect();
            want.sort();
            let shown = page.eval(TABLE_JS).await?;
            let mut got: Vec<(String, String)> =
                serde_json::from_value(shown.clone()).map_err(|e| format!("{shown}: {e}"))?;
            got.sort();
            (got == want && got.len() == 2)
                .then_some(())
                .ok_or(format!("page {got:?}, /stats {want:?}"))
        },
    )
    .await;
    let states = eval(&page, TABLE_JS).await;
    for row in states.as_array().expect("rows") {
        let state = row[1].as_str().unwrap_or("");
        assert!(
            ["LU", "MU", "HU"].contains(&state),
            "a scored container shows {state}"
        );
    }

    // The charts fill up: two score lines, the pool lines, requests from the balancer.
    wait_page(
        &page,
        "points in every chart",
        "(() => { const n = (sel) => [...document.querySelectorAll(sel)]\
            .map(p => Number(p.dataset.points)); \
          const scores = n('#chart-scores path.series').filter(c => c >= 3).length; \
          const pool = n('#chart-pool path.series').filter(c => c >= 3).length; \
          const rps = n('#chart-traffic path[data-series=\"requests/s\"]')[0] || 0; \
          return scores >= 2 && pool >= 3 && rps >= 3; })()",
        Duration::from_secs(15),
    )
    .await;
    assert!(
        load.ok.load(Ordering::Relaxed) > 0,
        "no request went through the balancer"
    );
    // ... and keep growing with the stream's ticks (not only from the initial /history).
    let samples_js = "Number(document.getElementById('chart-pool').dataset.points) / 3";
    let before = eval(&page, samples_js).await.as_f64().unwrap_or(0.0);
    wait_page(
        &page,
        "new samples from the stream",
        &format!(
            "{samples_js} >= {} && document.getElementById('conn').dataset.state === 'live'",
            before + 3.0
        ),
        Duration::from_secs(10),
    )
    .await;

    // The tasks panel lists the task, and its result link answers (same origin).
    let row = format!("#tasks tr[data-task=\"{task_id}\"]");
    wait_page(
        &page,
        "the task in the tasks panel",
        &format!(
            "(() => {{ const r = document.querySelector('{row}'); \
               return r && r.querySelector('.badge').textContent === 'succeeded'; }})()"
        ),
        Duration::from_secs(12),
    )
    .await;
    let result = eval(
        &page,
        &format!(
            "(async () => {{ const a = document.querySelector('{row} a[href$=\"/result\"]'); \
               const same = new URL(a.href).origin === location.origin; \
               const r = await fetch(a.href); return [same, r.status, await r.text()]; }})()"
        ),
    )
    .await;
    assert_eq!(result[0], true, "the result link leaves the agent's origin");
    assert_eq!(result[1], 200, "the result link answered {result}");
    assert!(
        result[2]
            .as_str()
            .is_some_and(|b| b.contains("hello from the dashboard test")),
        "the result is not the echoed request: {result}"
    );

    let problems = browser.problems();
    assert!(
        problems.is_empty(),
        "console errors on load:\n{}",
        problems.join("\n")
    );

    // The fallback: a browser without EventSource polls, and shows the same pool.
    let polling = browser.new_page().await.unwrap_or_else(|e| panic!("{e}"));
    polling
        .add_init_script("delete window.EventSource; window.EventSource = undefined;")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    polling
        .navigate(&format!("http://{http}/"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_page(
        &polling,
        "the polling fallback",
        "document.getElementById('conn').dataset.state === 'polling' && \
         document.querySelectorAll('#containers tbody tr').length === 2 && \
         Number(document.getElementById('chart-pool').dataset.points) > 0 && \
         document.getElementById('banners').textContent.includes('polling every 2 s')",
        Duration::from_secs(10),
    )
    .await;
    polling.close().await.unwrap_or_else(|e| panic!("{e}"));

    // Controls: locked without a token.
    let locked = eval(
        &page,
        "[document.getElementById('desired-fieldset').disabled, \
          document.querySelectorAll('button.sundown').length]",
    )
    .await;
    assert_eq!(
        locked,
        serde_json::json!([true, 0]),
        "controls without a token"
    );

    // A wrong token: the agent's JSON message is shown, nothing changes.
    eval(&page, &fill("token-input", "not-the-token")).await;
    eval(&page, &click("token-save")).await;
    eval(&page, &fill("desired-input", "3")).await;
    eval(&page, &click("desired-set")).await;
    let msg = wait_page(
        &page,
        "the error of a wrong token",
        "(() => { const m = document.getElementById('control-msg'); \
           return m.classList.contains('error') && m.textContent; })()",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        msg.as_str()
            .is_some_and(|m| m.contains("Authorization: Bearer")),
        "the message of the 401 is not shown: {msg}"
    );
    let h = get_json(&http, "/health").await.expect("health");
    assert_eq!(h["desired"], 2, "a refused request changed the pool: {h}");

    // The right token: set the desired size to 3.
    eval(&page, &fill("token-input", TOKEN)).await;
    eval(&page, &click("token-save")).await;
    eval(&page, &fill("desired-input", "3")).await;
    eval(&page, &click("desired-set")).await;
    wait_page(
        &page,
        "the answer of POST /scale",
        "document.getElementById('control-msg').textContent === 'desired size set to 3'",
        Duration::from_secs(5),
    )
    .await;
    eventually(
        "desired 3 in /health",
        Duration::from_secs(5),
        POLL,
        || async {
            let h = get_json(&http, "/health").await?;
            (h["desired"] == 3).then_some(()).ok_or(format!("{h}"))
        },
    )
    .await;
    let stored = eval(
        &page,
        "sessionStorage.length === 1 && localStorage.length === 0",
    )
    .await;
    assert_eq!(stored, true, "the token must live in sessionStorage only");

    // Retire one of the scored containers from its row.
    let victim = states[0][0].as_str().expect("a name").to_owned();
    wait_page(
        &page,
        "a sundown button per row",
        &format!("!!document.querySelector('button.sundown[data-name=\"{victim}\"]')"),
        Duration::from_secs(5),
    )
    .await;
    eval(
        &page,
        &format!(
            "(() => {{ window.confirm = () => true; \
               document.querySelector('button.sundown[data-name=\"{victim}\"]').click(); \
               return true; }})()"
        ),
    )
    .await;
    wait_page(
        &page,
        "the answer of POST /sundown",
        &format!(
            "document.getElementById('control-msg').textContent.startsWith('{victim} is marked SUNDOWN')"
        ),
        Duration::from_secs(5),
    )
    .await;
    eventually(
        "the container retired in /stats",
        Duration::from_secs(10),
        POLL,
        || async {
            let rows = stats(&http).await?;
            let row = rows.iter().find(|r| r["name"] == victim.as_str());
            match row {
                None => Ok(()),
                Some(r) if r["state"] == "SUNDOWN" => Ok(()),
                Some(r) => Err(format!("{victim} is {}", r["state"])),
            }
        },
    )
    .await;
    // Both decisions appear as marks on the pool chart.
    wait_page(
        &page,
        "scale_manual and container_sundown marks",
        "!!document.querySelector('#chart-pool .mark-scale_manual') && \
         !!document.querySelector('#chart-pool .mark-container_sundown')",
        Duration::from_secs(10),
    )
    .await;

    // Let a few more ticks land, then the laptop screenshot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let png = page.screenshot().await.unwrap_or_else(|e| panic!("{e}"));
    save_screenshot("laptop", &png);

    // Phone: the page fits the width; only the tables scroll sideways.
    page.set_viewport(390, 844, 2.0, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_page(
        &page,
        "the charts re-drawn at phone width",
        "Number(document.getElementById('chart-pool').getAttribute('viewBox').split(' ')[2]) < 400",
        Duration::from_secs(5),
    )
    .await;
    let fit = eval(
        &page,
        "(() => { const wrap = document.querySelector('#containers').parentElement; \
           return [document.documentElement.scrollWidth <= window.innerWidth, \
                   wrap.scrollWidth > wrap.clientWidth]; })()",
    )
    .await;
    assert_eq!(
        fit,
        serde_json::json!([true, true]),
        "at 390 px the page must not overflow and the table must scroll in its box"
    );
    let png = page.screenshot().await.unwrap_or_else(|e| panic!("{e}"));
    save_screenshot("phone", &png);

    // Nothing but the deliberate 401 of the wrong token reached the console.
    let problems: Vec<String> = browser
        .problems()
        .into_iter()
        .filter(|p| !(p.contains("(network)") && p.contains("401") && p.contains("/scale")))
        .collect();
    assert!(
        problems.is_empty(),
        "console errors:\n{}\nall console output:\n{}",
        problems.join("\n"),
        browser.console().join("\n")
    );

    // Degraded states, as an operator meets them (back at laptop size).
    page.set_viewport(1366, 900, 1.0, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let banners = "document.getElementById('banners').textContent";
    // (a) No balancer: the traffic figures are unavailable, the task API cannot be reached,
    // and the page says so.
    drop(load);
    balancer.stop().await;
    wait_page(
        &page,
        "the no-balancer banner and the tasks panel's reason",
        &format!(
            "{banners}.includes('no balancer connected: traffic figures unavailable') && \
             document.getElementById('tasks-note').textContent.startsWith('tasks not in use: ') && \
             !document.getElementById('tasks-note').hidden && \
             document.getElementById('tasks-counts').hidden && \
             [...document.querySelectorAll('#containers tbody tr')]\
               .every(tr => tr.cells[8].textContent === '–')"
        ),
        Duration::from_secs(12),
    )
    .await;
    // (b) Redis down, then back.
    redis.stop();
    wait_page(
        &page,
        "the Redis banner",
        &format!("{banners}.includes('Redis unreachable')"),
        Duration::from_secs(15),
    )
    .await;
    let png = page.screenshot().await.unwrap_or_else(|e| panic!("{e}"));
    save_screenshot("degraded", &png);
    redis.resume();
    wait_page(
        &page,
        "the Redis banner gone",
        &format!("!{banners}.includes('Redis unreachable')"),
        Duration::from_secs(20),
    )
    .await;
    // (c) The agent stops: the stream is lost, polling fails: offline.
    agent.stop().await;
    wait_page(
        &page,
        "the offline indicator",
        &format!(
            "document.getElementById('conn').dataset.state === 'offline' && \
             {banners}.includes('agent unreachable')"
        ),
        Duration::from_secs(10),
    )
    .await;
    eprintln!("dashboard test done in {:?}", started.elapsed());
}
