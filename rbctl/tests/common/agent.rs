//! The deployment-agent in-process for the agent commands, on the real Docker engine.
//!
//! - [`docker_and_image`]: the engine (`docker info`) and the app image
//!   (`RUSTYBALANCER_TEST_IMAGE`, default `rustybalancer/playground:latest`), or skip/fail.
//! - [`Pool`]: a network, the agent (`deployment_agent::run` on port 0) with a tiny pool,
//!   and on `Drop`: the agent stopped, its containers removed by label, the network removed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use testkit::docker_cli;

use super::{unique_app, Redis};

/// Default image, built by `jobs/build-images.sh playground`.
pub const DEFAULT_TEST_IMAGE: &str = "rustybalancer/playground:latest";
/// Port the playground listens on.
const PLAYGROUND_PORT: &str = "5000";

/// The test image when Docker answers and the image is present; else skip (fail under CI).
pub fn docker_and_image() -> Option<String> {
    if let Err(e) = docker_cli(&["info", "--format", "{{.ServerVersion}}"]) {
        return testkit::missing(&format!("the Docker engine is not reachable: {e}"));
    }
    let image =
        std::env::var("RUSTYBALANCER_TEST_IMAGE").unwrap_or_else(|_| DEFAULT_TEST_IMAGE.into());
    if docker_cli(&["image", "inspect", "--format", "{{.Id}}", &image]).is_err() {
        return testkit::missing(&format!(
            "test image {image} is missing: build it with `jobs/build-images.sh playground`"
        ));
    }
    Some(image)
}

/// An agent and everything it created; torn down on `Drop` (agent first).
pub struct Pool {
    pub http: SocketAddr,
    pub app: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), deployment_agent::StartError>>>,
    network: String,
}

impl Pool {
    /// Starts an agent for `image` with DEFAULT_CONTAINER=1, MAX_CONTAINERS=3, fast
    /// settings, and `token` as AGENT_TOKEN.
    pub async fn start(redis: &Redis, image: &str, token: &str) -> Pool {
        let app = unique_app();
        let network = format!("{app}-net");
        if let Err(e) = docker_cli(&["network", "create", "--driver", "bridge", &network]) {
            panic!("create test network {network}: {e}");
        }
        let port = redis.port.to_string();
        let mut vars: BTreeMap<&str, String> = [
            ("APP_IDENTIFIER", app.as_str()),
            ("DOCKER_IMAGE", image),
            ("TARGET_PORT", PLAYGROUND_PORT),
            ("DOCKER_NETWORK", network.as_str()),
            ("REDIS_HOST", redis.host.as_str()),
            ("REDIS_PORT", port.as_str()),
            ("BIND_ADDRESS", "127.0.0.1"),
            ("HOST_PORT_WS_DEPLOYMENT_AGENT", "0"),
            ("HOST_PORT_HTTP_DEPLOYMENT_AGENT", "0"),
            ("AGENT_TOKEN", token),
            ("SAMPLE_PERIOD", "500ms"),
            ("SCALE_CHECK_PERIOD", "1s"),
            ("COOLDOWN_PERIOD", "1s"),
            // Hold automatic scale-downs off: the test sets the size itself.
            ("SCALE_DOWN_STABILIZATION", "10m"),
            ("DRAIN_TIMEOUT", "10s"),
            ("STOP_TIMEOUT", "2s"),
            ("QUEUE_KEEPALIVE", "1s"),
            ("READY_TIMEOUT", "30s"),
            ("PROBE_TIMEOUT", "2s"),
            ("DEFAULT_CONTAINER", "1"),
            ("MAX_CONTAINERS", "3"),
            ("CONTAINER_MEMORY", "64MiB"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        if let Ok(host) = std::env::var("DOCKER_HOST") {
            if !host.is_empty() {
                vars.insert("DOCKER_HOST", host);
            }
        }
        let config = deployment_agent::config::Config::from_lookup(|k| vars.get(k).cloned())
            .unwrap_or_else(|e| panic!("agent test config is invalid:\n{e}"));
        let ws = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let http_addr = http.local_addr().expect("http addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(deployment_agent::run(config, ws, http, async move {
            let _ = stopped.await;
        }));
        Pool {
            http: http_addr,
            app,
            stop: Some(stop),
            task: Some(task),
            network,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Stops the agent (graceful, up to 10 s).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("the agent ended with an error: {e}"),
                Ok(Err(e)) => panic!("the agent task failed: {e}"),
                Err(_) => panic!("the agent did not stop within 10 s"),
            }
        }
    }

    fn remove_containers(&self) {
        let filter = format!("label=application={}", self.app);
        let Ok(ids) = docker_cli(&["ps", "-aq", "--filter", &filter]) else {
            return;
        };
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            if let Err(e) = docker_cli(&args) {
                eprintln!("cleanup of {}: {e}", self.app);
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.remove_containers();
        // A creation may have been in flight when the agent was aborted.
        std::thread::sleep(Duration::from_millis(300));
        self.remove_containers();
        if let Err(e) = docker_cli(&["network", "rm", &self.network]) {
            eprintln!("cleanup of network {}: {e}", self.network);
        }
    }
}
