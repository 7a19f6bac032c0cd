//! Graceful shutdown through `run`'s shutdown future, and the real binary's exit codes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};

/// An origin whose `/slow` answers after `delay`; everything else at once.
async fn slow_origin(delay: Duration) -> Origin {
    Origin::start(handler(move |req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(delay).await;
            text(200, "slow done")
        } else {
            text(200, "fast")
        }
    }))
    .await
}

/// Status, `Connection` header and body of a response, or what went wrong.
type Outcome = Result<(u16, Option<String>, bytes::Bytes), String>;

/// Sends `GET path` in the background and returns the pending result.
fn spawn_get(b: &Balancer, path: &str) -> tokio::task::JoinHandle<Outcome> {
    let url = b.url(path);
    tokio::spawn(async move {
        let resp = client()
            .request(Request::get(url).body(Full::default()).unwrap())
            .await
            .map_err(|e| format!("request: {e:?}"))?;
        let status = resp.status().as_u16();
        let connection = resp
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap_or("?").to_string());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?
            .to_bytes();
        Ok((status, connection, body))
    })
}

async fn refuses_connections(addr: std::net::SocketAddr) -> bool {
    eventually(Duration::from_secs(2), || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_connections() {
    let origin = slow_origin(Duration::from_millis(600)).await;
    let mut b = Balancer::over(&[&origin], &[("SHUTDOWN_GRACE", "5s")]).await;
    // A keep-alive connection that is idle when the shutdown comes.
    let mut idle = RawConn::connect(b.addr).await;
    idle.send(b"GET /fast HTTP/1.1\r\nhost: balancer\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(idle.response().await.expect("no response").status, 200);

    let slow = spawn_get(&b, "/slow");
    assert!(eventually(Duration::from_secs(2), || async { origin.hits() == 2 }).await);
    let asked = Instant::now();
    let run = b.shutdown();

    assert!(refuses_connections(b.addr).await, "proxy still accepting");
    assert!(refuses_connections(b.admin).await, "admin still accepting");
    assert!(
        idle.closed_within(Duration::from_secs(1)).await.is_some(),
        "idle keep-alive connection not closed at shutdown"
    );
    let (status, connection, body) = slow.await.unwrap().expect("in-flight request failed");
    assert_eq!((status, &body[..]), (200, &b"slow done"[..]));
    assert_eq!(
        connection.as_deref(),
        Some("close"),
        "keep-alive ends with the request"
    );
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run did not return within SHUTDOWN_GRACE")
        .unwrap();
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "run returned after {took:?}: it should not wait the whole grace once idle"
    );
}

#[tokio::test]
async fn a_request_longer_than_the_grace_is_cut_when_run_returns() {
    let origin = slow_origin(Duration::from_secs(10)).await;
    let mut b = Balancer::over(&[&origin], &[("SHUTDOWN_GRACE", "400ms")]).await;
    let slow = spawn_get(&b, "/slow");
    assert!(eventually(Duration::from_secs(2), || async { origin.hits() == 1 }).await);
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), b.shutdown())
        .await
        .expect("run did not return after the grace")
        .unwrap();
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_millis(1500),
        "run returned after {took:?}, SHUTDOWN_GRACE is 400ms"
    );
    // Once `run` has returned nothing of the balancer may keep serving: the request is
    // cut, not answered 10 s later by a connection task that outlived `run`.
    let outcome = tokio::time::timeout(Duration::from_secs(2), slow)
        .await
        .expect("the in-flight request outlived run()")
        .unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
}

// ---- the real binary ------------------------------------------------------------------

/// Kills the child if the test fails half-way.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn balancer_command(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_balancer"));
    cmd.env_clear()
        .env("RUST_LOG", "info")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "balancer still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_configuration_exits_64_naming_every_bad_variable() {
    let out = balancer_command(&[("REQUEST_TIMEOUT", "soon"), ("MAX_CONNECTIONS", "none")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("REQUEST_TIMEOUT"), "{stderr}");
    assert!(stderr.contains("MAX_CONNECTIONS"), "{stderr}");
    assert!(
        !stderr.contains("listening"),
        "bound a port despite bad config: {stderr}"
    );
}

#[test]
fn a_port_in_use_exits_69_naming_the_variable() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = balancer_command(&[
        ("BIND_ADDRESS", "127.0.0.1"),
        ("HOST_PORT_HTTP_BALANCER", port.as_str()),
        ("HOST_PORT_ADMIN_BALANCER", "0"),
        ("DEPLOYMENT_AGENT_URL", ""),
        ("STATIC_BACKENDS", "127.0.0.1:9"),
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("HOST_PORT_HTTP_BALANCER"), "{stderr}");
}

/// `GET path` over a plain socket; the status code, or `None` if the connection failed.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split(' ').nth(1)?.parse().ok()
}

#[test]
fn sigterm_stops_the_binary_with_exit_code_0() {
    let mut child = Reaper(
        balancer_command(&[
            ("BIND_ADDRESS", "127.0.0.1"),
            ("HOST_PORT_HTTP_BALANCER", "0"),
            ("HOST_PORT_ADMIN_BALANCER", "0"),
            ("DEPLOYMENT_AGENT_URL", ""),
            ("STATIC_BACKENDS", "127.0.0.1:9"),
            ("SHUTDOWN_GRACE", "2s"),
            ("WORKER_THREADS", "2"),
        ])
        .spawn()
        .unwrap(),
    );
    // Log lines, read on a thread; the listeners log their port-0 addresses.
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let mut admin = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("admin listener never logged its address: {log:#?}"));
        admin = line
            .split_once("admin listening on ")
            .map(|(_, a)| a.trim().to_string());
        log.push(line);
    }
    let admin = admin.unwrap();
    // Serving (so the signal handlers are installed): /health answers.
    assert_eq!(http_status(&admin, "/health"), Some(200), "{log:#?}");

    let pid = child.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = wait_exit(&mut child.0, Duration::from_secs(5));
    reader.join().unwrap();
    log.extend(rx.try_iter());
    assert_eq!(status.code(), Some(0), "{log:#?}");
    let log = log.join("\n");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("balancer stopped"), "{log}");
    assert!(
        http_status(&admin, "/health").is_none(),
        "still serving after exit"
    );
}
