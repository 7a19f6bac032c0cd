//! `rbctl tasks …` against a real balancer (in-process) with real Redis and a real origin,
//! plus the command line's usage errors and unreachable services.
//!
//! - `submit_and_wait_prints_the_result_body`: bodies from --data, stdin and --data-file,
//!   headers, method defaults; the origin sees the request without `Prefer`.
//! - `submit_json_then_status_wait_result_list`: the 202 view, status, wait, result
//!   (raw and --include), list, idempotency keys.
//! - `failures_timeouts_cancel_and_retry`: exit 1 for failed/dead/cancelled, 2 on timeout,
//!   65 when the balancer refuses (409, 404).
//! - `a_balancer_without_tasks_is_reported`: 503 → 65; a proxied (not stored) submission → 76.
//! - `usage_errors_are_one_line_and_exit_64`, `unreachable_services_exit_69`.

mod common;

use std::time::{Duration, Instant};

use common::{rbctl, rbctl_with, Balancer, Origin, Redis};

struct World {
    balancer: Balancer,
    _origin: Origin,
    _redis: Redis,
}

impl World {
    async fn new() -> Option<World> {
        let redis = Redis::get()?;
        let origin = Origin::start().await;
        let balancer = Balancer::start(&redis, &origin).await;
        Some(World {
            balancer,
            _origin: origin,
            _redis: redis,
        })
    }

    /// `rbctl --balancer <url> args…`
    async fn run(&self, args: &[&str]) -> common::Run {
        self.run_with(args, None).await
    }

    async fn run_with(&self, args: &[&str], stdin: Option<&[u8]>) -> common::Run {
        let url = self.balancer.url();
        let mut all = vec!["--balancer", url.as_str()];
        all.extend_from_slice(args);
        rbctl_with(&all, &[], stdin).await
    }

    /// Submits and returns the task id (plain output: the id alone on stdout).
    async fn submit(&self, args: &[&str]) -> String {
        let mut all = vec!["tasks", "submit"];
        all.extend_from_slice(args);
        let run = self.run(&all).await.expect(0);
        let id = run.stdout.trim().to_owned();
        assert!(
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "not a task id: {run:#?}"
        );
        id
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_wait_prints_the_result_body() {
    let Some(w) = World::new().await else { return };

    let run = w
        .run(&[
            "tasks",
            "submit",
            "/echo?x=1",
            "--data",
            "hello",
            "-H",
            "X-Test: yes",
            "--wait",
        ])
        .await
        .expect(0);
    assert!(
        run.stderr.is_empty(),
        "no progress line without a terminal: {run:#?}"
    );
    let seen = run.json();
    assert_eq!(seen["method"], "POST", "a body makes it a POST");
    assert_eq!(seen["uri"], "/echo?x=1");
    assert_eq!(seen["body"], "hello");
    assert_eq!(seen["x_test"], "yes");
    assert!(seen["prefer"].is_null(), "Prefer is not forwarded: {seen}");
    assert!(seen["task_id"].is_string(), "it ran as a task: {seen}");

    let run = w
        .run_with(
            &["tasks", "submit", "/echo", "-", "--wait"],
            Some(b"from stdin"),
        )
        .await
        .expect(0);
    assert_eq!(run.json()["body"], "from stdin");

    let file = std::env::temp_dir().join(format!("rbctl-test-body-{}", std::process::id()));
    std::fs::write(&file, "from a file").expect("write body file");
    let path = file.to_string_lossy().into_owned();
    let run = w
        .run(&[
            "tasks",
            "submit",
            "-X",
            "put",
            "/echo",
            "--data-file",
            &path,
            "--wait",
        ])
        .await;
    let _ = std::fs::remove_file(&file);
    let seen = run.expect(0).json();
    assert_eq!(
        (seen["method"].as_str(), seen["body"].as_str()),
        (Some("PUT"), Some("from a file"))
    );

    let seen = w
        .run(&["tasks", "submit", "/echo", "--wait"])
        .await
        .expect(0)
        .json();
    assert_eq!(seen["method"], "GET", "no body: GET");

    let missing = w
        .run(&[
            "tasks",
            "submit",
            "/echo",
            "--data-file",
            "/nonexistent/rbctl-body",
        ])
        .await
        .expect(66);
    missing.one_line_error("cannot read --data-file /nonexistent/rbctl-body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_json_then_status_wait_result_list() {
    let Some(w) = World::new().await else { return };

    let accepted = w
        .run(&["tasks", "submit", "/echo", "--data", "x", "--json"])
        .await
        .expect(0)
        .json();
    let id = accepted["id"]
        .as_str()
        .expect("id in the 202 view")
        .to_owned();
    assert_eq!(accepted["location"], format!("/_tasks/{id}"));
    assert!(accepted["status"].is_string(), "{accepted}");

    let done = w
        .run(&["tasks", "wait", &id, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(
        (done["id"].as_str(), done["status"].as_str()),
        (Some(id.as_str()), Some("succeeded"))
    );
    let plain = w.run(&["tasks", "wait", &id]).await.expect(0);
    assert!(
        plain
            .stdout
            .starts_with(&format!("task {id} succeeded (attempt 1/2): HTTP 200")),
        "{plain:#?}"
    );

    let view = w
        .run(&["tasks", "status", &id, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(view["result"]["status"], 200);
    assert_eq!(view["path"], "/echo");
    let table = w.run(&["tasks", "status", &id]).await.expect(0);
    assert!(
        table.stdout.contains("succeeded") && table.stdout.contains("POST /echo"),
        "{table:#?}"
    );

    let raw = w.run(&["tasks", "result", &id]).await.expect(0);
    let body: serde_json::Value =
        serde_json::from_str(&raw.stdout).expect("stored body is the echo");
    assert_eq!(body["body"], "x");
    let inc = w
        .run(&["tasks", "result", &id, "--include"])
        .await
        .expect(0);
    assert!(inc.stdout.starts_with("HTTP 200 OK\n"), "{inc:#?}");
    assert!(
        inc.stdout.contains(&format!("x-task-id: {id}\n")),
        "{inc:#?}"
    );
    assert!(inc.stdout.contains("x-origin: rbctl-test\n"), "{inc:#?}");
    assert!(
        inc.stdout.ends_with(&format!("\n\n{}", raw.stdout)),
        "{inc:#?}"
    );

    let page = w.run(&["tasks", "list", "--json"]).await.expect(0).json();
    let ids: Vec<&str> = page["tasks"]
        .as_array()
        .expect("tasks array")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert!(ids.contains(&id.as_str()), "{page}");
    let table = w
        .run(&["tasks", "list", "--status", "succeeded"])
        .await
        .expect(0);
    assert!(table.stdout.starts_with("ID "), "{table:#?}");
    assert!(table.stdout.contains(&id), "{table:#?}");
    let queued = w
        .run(&["tasks", "list", "--status", "queued", "--json"])
        .await
        .expect(0)
        .json();
    assert!(!queued.to_string().contains(&id), "{queued}");

    let key = format!("k-{}", common::unique_app());
    let first = w
        .submit(&["/echo", "--data", "same", "--idempotency-key", &key])
        .await;
    let second = w
        .submit(&["/echo", "--data", "same", "--idempotency-key", &key])
        .await;
    assert_eq!(first, second, "the same key and request give the same task");
    let reused = w
        .run(&[
            "tasks",
            "submit",
            "/echo",
            "--data",
            "other",
            "--idempotency-key",
            &key,
        ])
        .await
        .expect(65);
    reused.one_line_error("HTTP 422 idempotency_key_reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_timeouts_cancel_and_retry() {
    let Some(w) = World::new().await else { return };

    // A 400 fails at once: the stored body on stdout, why on stderr, exit 1.
    let bad = w
        .run(&["tasks", "submit", "/bad", "--wait"])
        .await
        .expect(1);
    assert_eq!(bad.stdout, "bad request, never retried");
    assert!(
        bad.stderr.contains("failed (attempt 1/2): HTTP 400"),
        "{bad:#?}"
    );

    // 500 twice: dead (TASK_MAX_ATTEMPTS=2).
    let dead = w.submit(&["/fail"]).await;
    let run = w
        .run(&["tasks", "wait", &dead, "--timeout", "10s"])
        .await
        .expect(1);
    assert!(
        run.stdout
            .contains(&format!("task {dead} dead (attempt 2/2)")),
        "{run:#?}"
    );
    let retried = w
        .run(&["tasks", "retry", &dead, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(retried["id"], dead.as_str());
    let run = w.run(&["tasks", "wait", &dead, "--json"]).await.expect(1);
    assert_eq!(run.json()["status"], "dead", "retried, and dead again");
    let ok = w.submit(&["/echo"]).await;
    w.run(&["tasks", "wait", &ok]).await.expect(0);
    w.run(&["tasks", "retry", &ok])
        .await
        .expect(65)
        .one_line_error("HTTP 409 not_retryable");

    // Still running at the timeout: exit 2, soon after the timeout.
    let slow = w.submit(&["/slow"]).await;
    let started = Instant::now();
    let run = w
        .run(&["tasks", "wait", &slow, "--timeout", "500ms"])
        .await
        .expect(2);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );
    assert!(run.stdout.contains("timed out"), "{run:#?}");
    let run = w
        .run(&["tasks", "submit", "/slow", "--wait", "--timeout", "300ms"])
        .await
        .expect(2);
    assert!(
        run.stdout.is_empty() && run.stderr.contains("timed out"),
        "{run:#?}"
    );
    w.run(&["tasks", "result", &slow])
        .await
        .expect(65)
        .one_line_error("HTTP 409 not_finished");

    // A delayed task is queued: cancel it once (then 409), and waiting says cancelled (1).
    let delayed = w.submit(&["/echo", "-H", "X-Task-Delay: 30s"]).await;
    let run = w.run(&["tasks", "cancel", &delayed]).await.expect(0);
    assert_eq!(run.stdout, format!("{delayed}: cancelled\n"));
    w.run(&["tasks", "cancel", &delayed])
        .await
        .expect(65)
        .one_line_error("HTTP 409 not_cancellable");
    w.run(&["tasks", "wait", &delayed]).await.expect(1);

    let unknown = "0123456789abcdef0123456789ab";
    w.run(&["tasks", "status", unknown])
        .await
        .expect(65)
        .one_line_error("HTTP 404 not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_without_tasks_is_reported() {
    let origin = Origin::start().await;
    let balancer = Balancer::without_tasks(&origin).await;
    let url = balancer.url();
    rbctl(&["--balancer", &url, "tasks", "list"])
        .await
        .expect(65)
        .one_line_error("HTTP 503 tasks_disabled");
    let run = rbctl(&["--balancer", &url, "tasks", "submit", "/echo", "--wait"])
        .await
        .expect(76);
    run.one_line_error("instead of 202 Accepted: it stored no task");
    assert!(run.stdout.is_empty(), "{run:#?}");
}

#[tokio::test]
async fn usage_errors_are_one_line_and_exit_64() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "a command is missing"),
        (&["tasks"], "see 'rbctl tasks --help'"),
        (&["--bogus", "status"], "unexpected argument '--bogus'"),
        (&["tasks", "submit"], "PATH"),
        (&["tasks", "submit", "echo"], "must start with '/'"),
        (
            &["tasks", "submit", "/x", "-H", "nocolon"],
            "expected 'Name: value'",
        ),
        (
            &["tasks", "submit", "/x", "-", "--data", "y"],
            "cannot be used with",
        ),
        (
            &["tasks", "wait", "abc", "--timeout", "soon"],
            "not a duration",
        ),
        (&["tasks", "status", "../etc"], "not a task id"),
        (&["tasks", "list", "--status", "sleeping"], "sleeping"),
        (&["scale", "many"], "many"),
        (
            &["tasks", "submit", "/x", "-H", "Prefer: wait=5"],
            "rbctl sends `Prefer: respond-async` itself",
        ),
        (
            &["--agent", "https://x:1", "status"],
            "scheme https is not supported",
        ),
    ];
    for (args, needle) in cases {
        let run = rbctl(args).await;
        assert_eq!(run.code, 64, "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
        run.one_line_error(needle);
    }
    for args in [
        &["--help"][..],
        &["tasks", "submit", "--help"],
        &["status", "-h"],
    ] {
        let run = rbctl(args).await.expect(0);
        assert!(run.stdout.contains("Usage: rbctl"), "{args:?}: {run:#?}");
    }
}

#[tokio::test]
async fn unreachable_services_exit_69() {
    let port = testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let run = rbctl(&["--balancer", &url, "tasks", "list"])
        .await
        .expect(69);
    run.one_line_error(&format!(
        "cannot reach the balancer at {url} (GET /_tasks?limit=20): connection refused"
    ));
    let run = rbctl_with(&["status", "--json"], &[("RBCTL_AGENT", &url)], None)
        .await
        .expect(69);
    run.one_line_error(&format!("cannot reach the agent at {url}"));
    assert!(run.stdout.is_empty());
}
