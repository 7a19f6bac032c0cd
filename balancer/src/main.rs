//! The `balancer` binary: parse the configuration, bind, run until SIGTERM/SIGINT.
//!
//! Usage: `balancer [--healthcheck]`; configuration from the environment (see
//! artefacts/configuration.md). `--healthcheck` probes the admin listener's `/health`
//! on loopback and exits 0 when it answers 200 (Docker's HEALTHCHECK in a scratch image).

use std::net::SocketAddr;
use std::process::ExitCode;

use balancer::config::{Config, RuntimeLayout};
use log::{error, info, warn};
use protocol::process::{self, EXIT_UNAVAILABLE};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return process::config_failure(&e),
    };
    if let Some(code) = process::handle_args("balancer", config.admin_port) {
        return code;
    }
    let threads = config.worker_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    config.worker_threads = Some(threads);
    #[cfg(feature = "mimalloc")]
    if balancer::memory::huge_pages_off(threads, std::env::var_os("MIMALLOC_ALLOW_THP").is_some()) {
        match balancer::memory::disable_huge_pages() {
            Ok(()) => info!("transparent huge pages off ({threads} worker threads; MIMALLOC_ALLOW_THP=1 turns them on)"),
            Err(e) => warn!("cannot turn transparent huge pages off: {e}"),
        }
    }
    let per_core = config.runtime_layout == RuntimeLayout::PerCore && threads > 1;
    // One thread, or one runtime per thread (`balancer::run` starts the others): the
    // current-thread scheduler skips the work-stealing machinery.
    let mut rt = if threads == 1 || per_core {
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
        let proxy = if per_core {
            // Each shard binds the address again (SO_REUSEPORT).
            balancer::shards::bind_shared(proxy_addr)
        } else {
            tokio::net::TcpListener::bind(proxy_addr).await
        };
        let (proxy, admin) = match (proxy, tokio::net::TcpListener::bind(admin_addr).await) {
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
            "balancer {} starting: strategy={}, {threads} worker threads ({}), agent={}",
            config.balancer_id,
            config.strategy.as_str(),
            if per_core {
                "a runtime each"
            } else {
                "one runtime"
            },
            config
                .agent_url
                .as_deref()
                .unwrap_or("none (static backends)")
        );
        balancer::run(config, proxy, admin, process::shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// mimalloc by default (the `mimalloc` feature; why: balancer/Cargo.toml). Without it the
/// system allocator (glibc malloc).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
