//! The `balancer` binary: parse the configuration, bind, run until SIGTERM/SIGINT.
//!
//! Usage: `balancer [--healthcheck]`; configuration from the environment (see
//! artefacts/configuration.md). `--healthcheck` probes the admin listener's `/health`
//! on loopback and exits 0 when it answers 200 (Docker's HEALTHCHECK in a scratch image).

use std::net::SocketAddr;
use std::process::ExitCode;

use balancer::config::Config;
use log::{error, info};

/// sysexits.h EX_CONFIG-style code for bad configuration.
const EXIT_CONFIG: u8 = 64;
/// EX_UNAVAILABLE-style code when a port cannot be bound or the runtime cannot start.
const EXIT_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("--healthcheck") => {
            return match protocol::healthcheck::check(config.admin_port) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("healthcheck failed: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(other) => {
            error!("unknown argument {other:?}; usage: balancer [--healthcheck]");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let threads = config.worker_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    // One thread: the current-thread scheduler skips the work-stealing machinery.
    let mut rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    rt.enable_all();
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    rt.block_on(async move {
        let proxy_addr = SocketAddr::new(config.bind_address, config.http_port);
        let admin_addr = SocketAddr::new(config.bind_address, config.admin_port);
        let (proxy, admin) = match (
            tokio::net::TcpListener::bind(proxy_addr).await,
            tokio::net::TcpListener::bind(admin_addr).await,
        ) {
            (Ok(p), Ok(a)) => (p, a),
            (p, a) => {
                if let Err(e) = p {
                    error!("cannot listen on {proxy_addr} (HOST_PORT_HTTP_BALANCER): {e}");
                }
                if let Err(e) = a {
                    error!("cannot listen on {admin_addr} (HOST_PORT_ADMIN_BALANCER): {e}");
                }
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
        info!(
            "balancer {} starting: strategy={}, agent={}",
            config.balancer_id,
            config.strategy.as_str(),
            config
                .agent_url
                .as_deref()
                .unwrap_or("none (static backends)")
        );
        balancer::run(config, proxy, admin, shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot listen for SIGTERM: {e}; only Ctrl-C will stop the balancer");
            if let Err(e) = tokio::signal::ctrl_c().await {
                error!("cannot listen for Ctrl-C either: {e}");
                std::future::pending::<()>().await;
            }
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => info!("SIGINT received"),
            Err(e) => error!("Ctrl-C handler failed: {e}"),
        },
    }
}

/// mimalloc: measurably faster than glibc malloc for the proxy's many small, short-lived
/// allocations (see artefacts/bench-proxy.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
