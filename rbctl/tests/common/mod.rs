//! Test harness: the built `rbctl` binary run against real services on loopback.
//!
//! - [`rbctl`]: runs the binary (clean environment: no `RBCTL_*`, no `AGENT_TOKEN`) and
//!   returns its exit code, stdout and stderr.
//! - [`Redis`]: `RUSTYBALANCER_TEST_REDIS_URL` (jobs/test.sh) or a throwaway
//!   `testkit::RedisServer`.
//! - [`Origin`]: a tiny hyper origin: `POST /echo` answers its request as JSON, `/fail` 500,
//!   `/bad` 400, `/slow` after 3 s.
//! - [`Balancer`]: `balancer::run` in-process on port 0 with tasks on Redis, static over
//!   one origin.
//! - [`agent`]: the deployment-agent in-process over a tiny Docker pool.

#![allow(dead_code)]

pub mod agent;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }

    /// Asserts the exit code, showing everything when it differs.
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        self
    }

    /// Asserts a one-line `rbctl: error: …` on stderr containing `needle`.
    pub fn one_line_error(&self, needle: &str) {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {self:#?}");
        assert!(
            lines[0].starts_with("rbctl: error: ") && lines[0].contains(needle),
            "expected an error line with {needle:?}: {self:#?}"
        );
    }
}

/// Runs `rbctl args…` with `env` and optional stdin; 60 s at most.
pub async fn rbctl_with(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rbctl"));
    cmd.args(args)
        .env_remove("RBCTL_AGENT")
        .env_remove("RBCTL_BALANCER")
        .env_remove("AGENT_TOKEN")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn rbctl");
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data).await.expect("write rbctl stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("rbctl {args:?} ran for more than 60 s"))
        .expect("wait for rbctl");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub async fn rbctl(args: &[&str]) -> Run {
    rbctl_with(args, &[], None).await
}

/// A Redis to use: the one jobs/test.sh provides, or a throwaway server.
pub struct Redis {
    pub host: String,
    pub port: u16,
    _server: Option<testkit::RedisServer>,
}

impl Redis {
    /// `None` (skip) when neither is available outside CI; fails under `CI=true`.
    pub fn get() -> Option<Redis> {
        if let Ok(url) = std::env::var("RUSTYBALANCER_TEST_REDIS_URL") {
            let rest = url.trim_start_matches("redis://");
            let rest = rest.split('/').next().unwrap_or(rest);
            let (host, port) = rest.rsplit_once(':').unwrap_or_else(|| {
                panic!("RUSTYBALANCER_TEST_REDIS_URL={url}: expected redis://host:port")
            });
            let port = port
                .parse()
                .unwrap_or_else(|_| panic!("RUSTYBALANCER_TEST_REDIS_URL={url}: bad port"));
            return Some(Redis {
                host: host.to_owned(),
                port,
                _server: None,
            });
        }
        let server = testkit::RedisServer::start()?;
        Some(Redis {
            host: "127.0.0.1".to_owned(),
            port: server.port(),
            _server: Some(server),
        })
    }
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A unique app identifier: `rbctl-test-<pid>-<n>`.
pub fn unique_app() -> String {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("rbctl-test-{}-{n}", std::process::id())
}

/// The test origin; stops on `Drop`.
pub struct Origin {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Origin {
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(|req| async move {
                        Ok::<_, Infallible>(answer(req).await)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin { addr, task }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let reply = |status: u16, ctype: &str, body: Bytes| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("x-origin", "rbctl-test")
            .body(Full::new(body))
            .expect("response")
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match parts.uri.path() {
        "/echo" => {
            let seen = serde_json::json!({
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "body": String::from_utf8_lossy(&body),
                "x_test": header("x-test"),
                "prefer": header("prefer"),
                "task_id": header("x-task-id"),
            });
            reply(200, "application/json", Bytes::from(seen.to_string()))
        }
        "/fail" => reply(500, "text/plain", Bytes::from_static(b"boom")),
        "/bad" => reply(
            400,
            "text/plain",
            Bytes::from_static(b"bad request, never retried"),
        ),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            reply(200, "text/plain", Bytes::from_static(b"slow"))
        }
        _ => reply(404, "text/plain", Bytes::from_static(b"no such page")),
    }
}

/// `balancer::run` in this process, stopped on `Drop`.
pub struct Balancer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Balancer {
    /// Tasks on `redis` under a unique app, static over `origin`, fast retries, 2 attempts.
    pub async fn start(redis: &Redis, origin: &Origin) -> Balancer {
        Balancer::launch(Some(redis), origin).await
    }

    /// Without Redis: tasks disabled (`/_tasks` answers 503, `Prefer` is ignored).
    pub async fn without_tasks(origin: &Origin) -> Balancer {
        Balancer::launch(None, origin).await
    }

    async fn launch(redis: Option<&Redis>, origin: &Origin) -> Balancer {
        let host = redis.map_or(String::new(), |r| r.host.clone());
        let port = redis.map_or(6379, |r| r.port).to_string();
        let origin_addr = origin.addr.to_string();
        let app = unique_app();
        let vars: HashMap<&str, &str> = HashMap::from([
            ("BIND_ADDRESS", "127.0.0.1"),
            ("HOST_PORT_HTTP_BALANCER", "0"),
            ("HOST_PORT_ADMIN_BALANCER", "0"),
            ("DEPLOYMENT_AGENT_URL", ""),
            ("BALANCER_ID", "rbctl-test"),
            ("STATIC_BACKENDS", origin_addr.as_str()),
            ("REDIS_HOST", host.as_str()),
            ("REDIS_PORT", port.as_str()),
            ("APP_IDENTIFIER", app.as_str()),
            ("TASK_RETRY_BASE", "20ms"),
            ("TASK_RETRY_MAX", "100ms"),
            ("TASK_MAX_ATTEMPTS", "2"),
        ]);
        let config = balancer::config::Config::from_lookup(|k| vars.get(k).map(|v| v.to_string()))
            .unwrap_or_else(|e| panic!("balancer test config: {e}"));
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = proxy.local_addr().expect("proxy addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(balancer::run(config, proxy, admin, async {
            let _ = stopped.await;
        }));
        Balancer {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}
