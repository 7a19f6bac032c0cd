//! Test harness for the agent's I/O edges, against real components.
//!
//! - [`RedisServer`]: a throwaway `redis-server` on a free loopback port with its own temp
//!   dir, killed on `Drop`; [`RedisServer::stop`] / [`RedisServer::resume`] restart it on
//!   the same port.
//! - [`docker`] / [`docker_and_image`]: the local Docker engine and the test image
//!   (`RUSTYBALANCER_TEST_IMAGE`, default `rustybalancer/playground:latest`).
//! - [`unique_app`], [`LabelCleanup`], [`TestNetwork`]: unique names per test and `Drop`
//!   guards that remove what a test created even when it fails.
//! - [`http_get`] / [`http_request`] / [`wait_http_ok`]: a minimal HTTP/1.1 client over plain
//!   TCP; [`eventually`]: poll until a check passes or a deadline panics.
//! - [`agent`]: the agent in-process or as the real binary, and a fake balancer.
//!
//! A missing component (redis-server, Docker engine, test image) makes a test fail with a
//! clear message under `CI=true`; otherwise the test prints why it is skipped and returns.

#![allow(dead_code)]

pub mod agent;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deployment_agent::docker::Docker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Default image for Docker tests; built by `jobs/build-images.sh playground`.
pub const DEFAULT_TEST_IMAGE: &str = "rustybalancer/playground:latest";
/// Port the playground listens on (its `PORT` default).
pub const PLAYGROUND_PORT: u16 = 5000;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

#[allow(unused_imports)]
pub use testkit::{free_port, missing, RedisServer};

/// Best-effort logging for tests (`RUST_LOG=debug cargo test …`).
pub fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A unique `APP_IDENTIFIER` for one test: `rbtest-<pid>-<n>`.
pub fn unique_app() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("rbtest-{}-{n}", std::process::id())
}

/// The local Docker engine (`$DOCKER_HOST` or the default socket); `None` (skip) outside CI.
pub async fn docker() -> Option<Docker> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    match Docker::connect(&host).await {
        Ok(docker) => Some(docker),
        Err(e) => missing(&format!("the Docker engine is not reachable: {e}")),
    }
}

/// The image Docker tests run (`$RUSTYBALANCER_TEST_IMAGE`, default [`DEFAULT_TEST_IMAGE`]),
/// checked to exist locally (nothing can be pulled here).
pub fn test_image() -> Option<String> {
    let image =
        std::env::var("RUSTYBALANCER_TEST_IMAGE").unwrap_or_else(|_| DEFAULT_TEST_IMAGE.into());
    let present = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        Some(image)
    } else {
        missing(&format!(
            "test image {image} is missing: build it with `jobs/build-images.sh playground`"
        ))
    }
}

/// [`docker`] and [`test_image`] together.
pub async fn docker_and_image() -> Option<(Docker, String)> {
    let docker = docker().await?;
    let image = test_image()?;
    Some((docker, image))
}

pub use testkit::docker_cli;

/// Force-removes every container labelled `application=<app>` on `Drop`.
pub struct LabelCleanup(pub String);

impl Drop for LabelCleanup {
    fn drop(&mut self) {
        let filter = format!("label=application={}", self.0);
        let Ok(ids) = docker_cli(&["ps", "-aq", "--filter", &filter]) else {
            return;
        };
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            if let Err(e) = docker_cli(&args) {
                eprintln!("cleanup of {}: {e}", self.0);
            }
        }
    }
}

/// A user-defined bridge network (its containers get IPs the host can reach), removed on
/// `Drop`. Declare it *before* the [`LabelCleanup`] of the containers on it, so the
/// containers are removed first.
pub struct TestNetwork {
    pub name: String,
}

impl TestNetwork {
    pub fn create(app: &str) -> TestNetwork {
        let name = format!("{app}-net");
        if let Err(e) = docker_cli(&["network", "create", "--driver", "bridge", &name]) {
            panic!("create test network {name}: {e}");
        }
        TestNetwork { name }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        if let Err(e) = docker_cli(&["network", "rm", &self.name]) {
            eprintln!("cleanup of network {}: {e}", self.name);
        }
    }
}

/// `GET path` over a fresh TCP connection; returns the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    http_request(addr, "GET", path, &[], "").await
}

/// One HTTP/1.1 request over a fresh TCP connection (`Connection: close`, 10 s limit);
/// returns the status code and the body (as sent: no chunked decoding).
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write to {addr}: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line from {addr}: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("{method} {path} on {addr} timed out"))?
}

/// Polls `check` every `every` until it returns `Ok`, or panics after `within` with `what`
/// and the last error.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if started.elapsed() >= within {
            panic!("{what}: not within {within:?}; last: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Ids of every container (any state) labelled `application=<app>`, per the docker CLI.
pub fn labelled_containers(app: &str) -> Vec<String> {
    let filter = format!("label=application={app}");
    docker_cli(&["ps", "-aq", "--no-trunc", "--filter", &filter])
        .unwrap_or_else(|e| panic!("list containers of {app}: {e}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Polls `GET path` until it answers 200 or `within` passes.
pub async fn wait_http_ok(addr: &str, path: &str, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let last = match http_get(addr, path).await {
            Ok((200, body)) => return Ok(body),
            Ok((status, body)) => format!("status {status}: {body}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("GET {path} on {addr} never answered 200: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
