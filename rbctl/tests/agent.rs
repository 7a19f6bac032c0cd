//! `rbctl status | scale | events | sundown` against a real deployment-agent (in-process)
//! running a tiny pool (DEFAULT_CONTAINER=1, MAX_CONTAINERS=3) of the playground image on
//! the real Docker engine, with a real Redis and `AGENT_TOKEN` set.
//!
//! One scenario, in order: status (JSON and table), scale without/with the token,
//! events (JSON, --kind, table), sundown (SUNDOWN in status, 409/404 after), `events
//! --follow` printing a new event, `status --watch --json` refreshing.
//!
//! Needs Docker, the image (`RUSTYBALANCER_TEST_IMAGE`, default
//! `rustybalancer/playground:latest`, built by `jobs/build-images.sh playground`) and
//! redis-server; under CI=true a missing one fails the test.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::agent::{docker_and_image, Pool};
use common::{rbctl_with, Redis, Run};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const TOKEN: &str = "rbctl-test-token";
const POLL: Duration = Duration::from_millis(250);

/// `rbctl --agent <pool> args…`, token in the environment unless `token` is false.
async fn run(pool: &Pool, args: &[&str], token: bool) -> Run {
    let url = pool.url();
    let mut all = vec!["--agent", url.as_str()];
    all.extend_from_slice(args);
    let env: &[(&str, &str)] = if token {
        &[("AGENT_TOKEN", TOKEN)]
    } else {
        &[]
    };
    rbctl_with(&all, env, None).await
}

/// `status --json` until `check` accepts it (or panic after `within`).
async fn status_until(
    pool: &Pool,
    what: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let snap = run(pool, &["status", "--json"], false)
            .await
            .expect(0)
            .json();
        if check(&snap) {
            return snap;
        }
        if started.elapsed() > within {
            panic!("{what}: not within {within:?}; last status: {snap:#}");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn rows(snap: &Value) -> Vec<Value> {
    snap["stats"].as_array().cloned().unwrap_or_default()
}

fn state_of<'a>(snap: &'a Value, name: &str) -> Option<&'a str> {
    snap["stats"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["state"].as_str())
}

/// Reads lines from a running `rbctl` until `accept` returns true for one (or panics).
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    what: &str,
    within: Duration,
    accept: impl Fn(&Value) -> bool,
) {
    let found = tokio::time::timeout(within, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not one JSON document per line ({e}): {line}"));
            if accept(&v) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{what}");
}

fn spawn(pool: &Pool, args: &[&str]) -> tokio::process::Child {
    let url = pool.url();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_rbctl"))
        .arg("--agent")
        .arg(&url)
        .args(args)
        .env_remove("RBCTL_AGENT")
        .env("AGENT_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn rbctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_scale_events_sundown_against_a_real_pool() {
    let Some(image) = docker_and_image() else {
        return;
    };
    let Some(redis) = Redis::get() else { return };
    let mut pool = Pool::start(&redis, &image, TOKEN).await;
    let started = Instant::now();

    // status: the one container of the minimum pool, with the new fields.
    let snap = status_until(&pool, "one container", Duration::from_secs(40), |s| {
        rows(s).len() == 1 && s["health"]["active"] == 1
    })
    .await;
    let health = &snap["health"];
    assert_eq!(
        (
            health["desired"].as_u64(),
            health["min"].as_u64(),
            health["max"].as_u64()
        ),
        (Some(1), Some(1), Some(3)),
        "{snap:#}"
    );
    assert_eq!(health["token_required"], true, "{snap:#}");
    let first = rows(&snap)[0]["name"]
        .as_str()
        .expect("container name")
        .to_owned();
    let table = run(&pool, &["status"], false).await.expect(0);
    assert!(
        table.stdout.contains("pool: desired 1 (min 1, max 3)"),
        "{table:#?}"
    );
    assert!(table.stdout.contains("token required"), "{table:#?}");
    assert!(
        table.stdout.contains("NAME") && table.stdout.contains(&first),
        "{table:#?}"
    );
    eprintln!("pool of 1 after {:?}:\n{}", started.elapsed(), table.stdout);

    // scale: refused without the token (one line, exit 65), applied with it.
    let refused = run(&pool, &["scale", "2"], false).await.expect(65);
    refused.one_line_error("HTTP 401 unauthorized");
    let bad_token = run(&pool, &["scale", "2", "--token", "wrong"], false)
        .await
        .expect(65);
    bad_token.one_line_error("HTTP 401");
    let scaled = run(&pool, &["scale", "2", "--token", TOKEN], false)
        .await
        .expect(0);
    assert_eq!(
        scaled.stdout,
        "desired size 2: requested 2, bounds min 1 max 3\n"
    );
    let answer = run(&pool, &["scale", "2", "--json"], true)
        .await
        .expect(0)
        .json();
    assert_eq!(
        (answer["requested"].as_u64(), answer["desired"].as_u64()),
        (Some(2), Some(2))
    );
    status_until(&pool, "two containers", Duration::from_secs(40), |s| {
        s["health"]["desired"] == 2 && rows(s).len() == 2
    })
    .await;
    eprintln!("pool of 2 after {:?}", started.elapsed());

    // events: scale_manual is recorded; --kind filters; the table has it too.
    let events = run(&pool, &["events", "--json", "--limit", "50"], false)
        .await
        .expect(0)
        .json();
    let kinds: Vec<&str> = events
        .as_array()
        .expect("events array")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"scale_manual"), "{kinds:?}");
    let manual = run(
        &pool,
        &["events", "--kind", "scale_manual", "--json"],
        false,
    )
    .await
    .expect(0)
    .json();
    let manual = manual.as_array().expect("events array");
    assert!(
        !manual.is_empty() && manual.iter().all(|e| e["kind"] == "scale_manual"),
        "{manual:?}"
    );
    let table = run(&pool, &["events", "-n", "5"], false).await.expect(0);
    assert!(table.stdout.starts_with("TIME (UTC)"), "{table:#?}");
    eprintln!("{}", table.stdout);

    // sundown: needs the token; the container turns SUNDOWN (or is already drained and
    // gone) and the desired size drops back to 1.
    run(&pool, &["sundown", &first], false)
        .await
        .expect(65)
        .one_line_error("HTTP 401");
    let done = run(&pool, &["sundown", &first, "--json"], true)
        .await
        .expect(0)
        .json();
    assert_eq!(
        (done["name"].as_str(), done["desired"].as_u64()),
        (Some(first.as_str()), Some(1)),
        "{done}"
    );
    // The agent publishes the change with its next control round (SAMPLE_PERIOD 500ms).
    let after = status_until(&pool, "SUNDOWN (or drained)", Duration::from_secs(5), |s| {
        s["health"]["desired"] == 1 && state_of(s, &first).is_none_or(|st| st == "SUNDOWN")
    })
    .await;
    let state = state_of(&after, &first).map(str::to_owned);
    if state.is_none() {
        // Drained and removed already: the event must name it.
        let recorded = run(
            &pool,
            &["events", "--kind", "container_sundown", "--json"],
            false,
        )
        .await
        .expect(0)
        .json();
        assert!(recorded.to_string().contains(&first), "{recorded:#}");
    }
    eprintln!("after sundown: {first} is {state:?}");
    let again = run(&pool, &["sundown", &first], true).await.expect(65);
    assert!(
        again.stderr.contains("HTTP 409") || again.stderr.contains("HTTP 404"),
        "{again:#?}"
    );
    run(&pool, &["sundown", "no-such-container"], true)
        .await
        .expect(65)
        .one_line_error("HTTP 404 not_found");

    // events --follow prints the new scale_manual as it arrives (one JSON per line).
    let since = common_now_ms();
    let mut follow = spawn(&pool, &["events", "--follow", "--json", "-n", "1"]);
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    tokio::time::sleep(Duration::from_millis(500)).await;
    run(&pool, &["scale", "2"], true).await.expect(0);
    read_until(
        &mut lines,
        "the new scale_manual event",
        Duration::from_secs(10),
        |e| e["kind"] == "scale_manual" && e["at_ms"].as_u64() >= Some(since),
    )
    .await;
    follow.kill().await.expect("stop follow");

    // status --watch --json: one document per refresh.
    let mut watch = spawn(
        &pool,
        &["status", "--watch", "--json", "--interval", "300ms"],
    );
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    for n in 0..2 {
        read_until(
            &mut lines,
            &format!("watch refresh {n}"),
            Duration::from_secs(5),
            |s| s["health"]["desired"] == 2 && s["stats"].is_array(),
        )
        .await;
    }
    watch.kill().await.expect("stop watch");

    pool.stop().await;
    eprintln!("scenario done in {:?}", started.elapsed());
}

fn common_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
