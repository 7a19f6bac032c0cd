//! What both service binaries do the same way around their `main`: exit codes, reporting bad
//! configuration, the `--healthcheck` flag and waiting for SIGTERM/SIGINT.

use std::process::ExitCode;

use log::{error, info};

use crate::config::ConfigErrors;

/// Bad configuration or arguments (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;
/// A port cannot be bound or the runtime cannot start (sysexits `EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// Logs one line per bad variable and returns the exit code for bad configuration.
pub fn config_failure(errors: &ConfigErrors) -> ExitCode {
    for e in &errors.0 {
        error!("invalid configuration: {e}");
    }
    ExitCode::from(EXIT_CONFIG)
}

/// Handles the command line of `binary [--healthcheck]`: `None` to go on and serve,
/// `Some(code)` to exit at once (after a health check of `127.0.0.1:health_port/health`, or
/// on an unknown argument).
pub fn handle_args(binary: &str, health_port: u16) -> Option<ExitCode> {
    match std::env::args().nth(1).as_deref() {
        None => None,
        Some("--healthcheck") => Some(match crate::healthcheck::check(health_port) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                error!("healthcheck failed: {e}");
                ExitCode::FAILURE
            }
        }),
        Some(other) => {
            error!("unknown argument {other:?}; usage: {binary} [--healthcheck]");
            Some(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot listen for SIGTERM: {e}; only Ctrl-C will stop this process");
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
