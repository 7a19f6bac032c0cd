//! The `deployment-agent` binary: parse the configuration, bind, run until SIGTERM/SIGINT.
//!
//! Usage: `deployment-agent [--healthcheck]`; configuration from the environment (see
//! artefacts/configuration.md). `--healthcheck` probes the HTTP API's `/health` on loopback
//! and exits 0 on a 200 answer (Docker's HEALTHCHECK in a scratch image).

use std::net::SocketAddr;
use std::process::ExitCode;

use deployment_agent::config::Config;
use log::{error, info};
use protocol::process::{self, EXIT_UNAVAILABLE};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return process::config_failure(&e),
    };
    if let Some(code) = process::handle_args("deployment-agent", config.http_port) {
        return code;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    rt.block_on(async move {
        let ws_addr = SocketAddr::new(config.bind, config.ws_port);
        let http_addr = SocketAddr::new(config.bind, config.http_port);
        let (ws, http) = match (
            tokio::net::TcpListener::bind(ws_addr).await,
            tokio::net::TcpListener::bind(http_addr).await,
        ) {
            (Ok(w), Ok(h)) => (w, h),
            (w, h) => {
                if let Err(e) = w {
                    error!("cannot listen on {ws_addr} (HOST_PORT_WS_DEPLOYMENT_AGENT): {e}");
                }
                if let Err(e) = h {
                    error!("cannot listen on {http_addr} (HOST_PORT_HTTP_DEPLOYMENT_AGENT): {e}");
                }
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
        info!(
            "deployment-agent starting: app {} image {} port {}, pool {}..={}",
            config.app,
            config.image,
            config.target_port,
            config.scaling.min_containers,
            config.scaling.max_containers
        );
        match deployment_agent::run(config, ws, http, process::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e}");
                ExitCode::from(EXIT_UNAVAILABLE)
            }
        }
    })
}
