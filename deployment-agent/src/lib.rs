//! RustyBalancer's deployment-agent: runs one app image as a pool of Docker containers,
//! scores them, scales the pool and publishes the weighted queue to balancers.
//!
//! # Layout
//! - [`model`]: plain data shared by every module (container record, stats sample, event).
//! - [`config`]: every environment variable, parsed once into [`config::Config`].
//! - Pure decision code, no I/O: [`scoring`] (sub-scores and the overall score),
//!   [`scaler`] (scale up / down decisions), [`lifecycle`] (categories, drain completion,
//!   reconcile planning), [`traffic`] (the balancers' reports over sliding windows),
//!   [`host`] (the host's CPU use; reading `/proc/stat` is its one I/O call).
//! - Edges, one external system each: [`docker`] (the only bollard user), [`store`] (the only
//!   Redis user), [`probe`] (TCP/HTTP probes of app containers).
//! - Serving: [`push`] (the balancers' WebSocket), [`api`] (HTTP API and dashboard).
//! - [`reconcile`]: the control loop, one pipeline per round: observe → score → decide (pure)
//!   → act → publish → persist.
pub mod api;
pub mod config;
pub mod docker;
pub mod history;
pub mod host;
pub mod lifecycle;
pub mod live;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod push;
pub mod reconcile;
pub mod scaler;
pub mod scoring;
pub mod store;
pub mod task_view;
pub mod traffic;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::push::{QueueFrame, Reports};
use crate::reconcile::{Controller, Outputs, Snapshot};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("docker: {0}")]
    Docker(#[from] docker::DockerError),
    #[error("redis: {0}")]
    Store(#[from] store::StoreError),
}

/// Runs the agent on already-bound listeners until `shutdown` resolves: the WebSocket
/// server, the HTTP API and the control loop. App containers keep running afterwards.
pub async fn run(
    config: Config,
    ws_listener: TcpListener,
    http_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let cfg = Arc::new(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);

    // The engine may be restarting: retry while it is unreachable, fail on a bad address.
    let docker = {
        let mut backoff = Duration::from_millis(200);
        loop {
            match docker::Docker::connect(&cfg.docker_host).await {
                Ok(d) => break d,
                Err(e) if docker::is_unavailable(&e) => {
                    warn!("docker engine not reachable yet, retrying in {backoff:?}: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
    };

    // Connecting is lazy: Redis may be down now; the control loop retries every tick.
    let store = store::Store::connect(&cfg.redis_url(), &cfg.app).await?;

    // Nothing to publish until the control loop has observed the pool.
    let (queue_tx, queue_rx) = watch::channel::<Option<QueueFrame>>(None);
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let reports = Arc::new(Reports::default());

    let push = push::serve(
        ws_listener,
        push::PushConfig {
            token: cfg.token.clone(),
            keepalive: cfg.queue_keepalive,
        },
        queue_rx.clone(),
        reports.clone(),
        stop_rx.clone(),
    );
    let api = api::serve(
        http_listener,
        api::ApiState {
            token: cfg.token.clone(),
            snapshot: snap_rx,
            queue: queue_rx,
            reports: reports.clone(),
            store: store.clone(),
            commands: cmd_tx,
            bounds: (cfg.scaling.min_containers, cfg.scaling.max_containers),
            live: Arc::new(live::Live::default()),
            tasks: cfg.balancer_url.as_deref().map(task_view::TaskApi::new),
            stop: stop_rx.clone(),
        },
        stop_rx.clone(),
    );
    let controller = Controller::new(
        cfg.clone(),
        docker,
        store,
        reports,
        Outputs {
            queue: queue_tx,
            snapshot: snap_tx,
        },
    );
    let control = controller.run(cmd_rx, stop_rx);
    let stopper = async {
        shutdown.await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    };
    tokio::join!(push, api, control, stopper);
    Ok(())
}
