//! The playground binary: parses configuration, binds, and calls [`playground::run_with_max_concurrency`].
//!
//! Usage: `playground [--healthcheck]`; env `PORT` (default 5000), `MAX_CONCURRENCY`
//! (requests of `/cpu` and `/work` processed at once; unset: no limit) and `RUST_LOG`
//! (default `info`; the per-request lines use target `access`).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use log::{error, info};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// `EX_USAGE` from sysexits.h: bad command line or configuration.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let mut healthcheck = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--healthcheck" => healthcheck = true,
            other => {
                error!("unknown argument {other:?}; usage: playground [--healthcheck]");
                return ExitCode::from(EX_USAGE);
            }
        }
    }
    let port = match playground::config::port_from_env() {
        Ok(port) => port,
        Err(msg) => {
            error!("{msg}");
            return ExitCode::from(EX_USAGE);
        }
    };

    if healthcheck {
        return match protocol::healthcheck::check(port) {
            Ok(status) => {
                info!("healthcheck ok: {status}");
                ExitCode::SUCCESS
            }
            Err(msg) => {
                error!("healthcheck failed: {msg}");
                ExitCode::FAILURE
            }
        };
    }

    let max_concurrency = match playground::config::max_concurrency_from_env() {
        Ok(limit) => limit,
        Err(msg) => {
            error!("{msg}");
            return ExitCode::from(EX_USAGE);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("failed to start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(port, max_concurrency));
    // Don't wait for a still-running /cpu burner past the grace period.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => {
            info!("exiting");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            error!("{msg}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(port: u16, max_concurrency: Option<usize>) -> Result<(), String> {
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("installing SIGTERM handler: {e}"))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| format!("installing SIGINT handler: {e}"))?;
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => info!("received SIGTERM"),
            _ = sigint.recv() => info!("received SIGINT"),
        }
    };
    playground::run_with_max_concurrency(listener, max_concurrency, shutdown)
        .await
        .map_err(|e| format!("server failed: {e}"))
}
