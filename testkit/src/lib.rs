//! Helpers shared by the integration tests of the workspace's crates.
//!
//! - [`RedisServer`]: a throwaway `redis-server` on a free loopback port with its own temp
//!   dir, killed on `Drop`; [`RedisServer::stop`] / [`RedisServer::resume`] restart it on the
//!   same port, and [`RedisServer::start_persistent`] keeps its data across restarts (AOF).
//! - [`missing`]: a component a test needs is absent: fail under `CI=true`, else skip
//!   with a message. Tests never pass silently in CI.
//! - [`free_port`].
//! - [`prom_check`]: a `/metrics` page parsed (`prometheus-parse` and a strict reader) and
//!   held to the Prometheus naming conventions.

pub mod prom_check;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether the tests run under CI (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Fails the test under CI, otherwise prints why it is skipped. Returns `None` for `let … else`.
pub fn missing<T>(what: &str) -> Option<T> {
    if in_ci() {
        panic!("CI=true and {what}");
    }
    eprintln!("SKIPPED: {what} (set CI=true to make this a failure)");
    None
}

/// Runs the `docker` CLI (stdin closed); its trimmed stdout, or an error with its stderr.
pub fn docker_cli(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run docker {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A `redis-server` child process on `127.0.0.1:<port>`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    binary: String,
    persistent: bool,
}

impl RedisServer {
    /// Starts `redis-server` (or `$RUSTYBALANCER_REDIS_SERVER`) on a free port, without
    /// persistence. `None` (skip) when the binary is missing outside CI.
    pub fn start() -> Option<RedisServer> {
        RedisServer::launch(false)
    }

    /// Like [`RedisServer::start`], with an append-only file fsynced on every write, so data
    /// survives [`RedisServer::stop`] + [`RedisServer::resume`] (as in the prod stack).
    pub fn start_persistent() -> Option<RedisServer> {
        RedisServer::launch(true)
    }

    fn launch(persistent: bool) -> Option<RedisServer> {
        let binary =
            std::env::var("RUSTYBALANCER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let found = Command::new(&binary)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return missing(&format!(
                "`{binary}` is not installed (apt-get install redis-server, or run jobs/test.sh)"
            ));
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rbtest-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create redis temp dir");
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            binary,
            persistent,
        };
        server.resume();
        Some(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL). Without persistence its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and waits until it answers `PING`.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let aof: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new(&self.binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--daemonize", "no"])
            .args(aof)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.answers_ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        panic!(
            "redis-server did not answer PING on port {} within 10s; log:\n{log}",
            self.port
        );
    }

    /// Stops and starts again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
