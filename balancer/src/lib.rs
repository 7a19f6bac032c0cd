//! RustyBalancer's data plane: a score-weighted reverse proxy fed by the agent's queue.
//!
//! # Layout
//! - [`config`]: typed configuration, parsed once from the environment.
//! - [`selection`]: pure backend selection (alias table, round robin, p2c) and weights.
//! - [`backends`]: the queue in force (`ArcSwap`), per-backend counters, outlier ejection.
//! - [`agent_link`]: WebSocket subscription to the agent, reports, reconnect back-off.
//! - [`proxy`]: the request path (cache, pick, forward, retry, upgrade).
//! - [`dispatch`]: one request to a backend (pick, send, connect retry), for proxy and tasks.
//! - [`tasks`]: task submissions (`Prefer: respond-async`, `/_tasks`), stored in Redis, run
//!   by workers on every balancer.
//! - [`upstream`]: per-backend keep-alive HTTP/1.1 connection pools; a response body returns
//!   its connection to the pool when it ends; a stall watchdog per connection.
//! - [`h1`]: the balancer's own HTTP/1.1 client for requests whose body is in memory (framing,
//!   chunked decoding and head parsing are pure and unit-tested); hyper's client for the rest.
//! - [`request_body`], [`body`], [`headers`]: streamed request bodies with limits, response
//!   bodies (a streamed one holds the backend's in-flight count until it ends), header
//!   rewriting.
//! - [`strict`]: HTTP's message rules checked before forwarding (`Host`, `CONNECT`,
//!   transfer codings, header count); pure.
//! - [`cache`]: caching policy (pure) and the moka store.
//! - [`server`]: accept loops, connection limits, idle timeout, graceful shutdown.
//! - [`front`]: the own HTTP/1.1 front end for bodiless requests; a connection goes on to
//!   hyper's server (HTTP/1.1 with bodies and upgrades, h2c) at the first request it does not
//!   take.
//! - [`shards`]: one current-thread runtime per worker thread for the proxy listener
//!   (`RUNTIME_LAYOUT=per-core`), each with its own socket and upstream connections.
//! - [`write_batch`]: small complete writes (a request to a backend, a response to a client)
//!   queued per shard and made together at the end of its turn, after its reads.
//! - [`admin`], [`metrics`], [`histogram`]: `/health`, `/metrics`, `/queue`.
//! - [`memory`]: free memory handed back to the system after a burst of connections.
//! - [`budget`]: the retry budget. [`error`]: errors mapped to HTTP answers.

pub mod admin;
pub mod agent_link;
pub mod backends;
pub mod body;
pub mod budget;
pub mod cache;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod front;
pub mod h1;
pub mod head_deadline;
pub mod headers;
pub mod histogram;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod request_body;
pub mod selection;
pub mod server;
pub mod shards;
pub mod strict;
pub mod tasks;
pub mod upstream;
pub mod write_batch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use log::{error, info};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backends::{static_queue, Backends};
use crate::config::{Config, RuntimeLayout};
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::tasks::Tasks;

/// How long the admin listener waits for open requests at shutdown.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// Completes once the shutdown flag is raised (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Runs the balancer on already-bound listeners until `shutdown` completes, then drains
/// in-flight requests for up to `SHUTDOWN_GRACE` and returns.
///
/// With `RUNTIME_LAYOUT=per-core` and `WORKER_THREADS` = N > 1 the proxy listener is served
/// by N shards ([`shards`]): the caller's runtime (which should then be a current-thread
/// one) and N - 1 threads started here; bind `proxy_listener` with
/// [`shards::bind_shared`] so each gets a socket of its own. `WORKER_THREADS` unset
/// counts as one here (the binary sets it to the CPU count).
pub async fn run(
    config: Config,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let config = Arc::new(config);
    let shard_count = match config.runtime_layout {
        RuntimeLayout::PerCore => config.worker_threads.unwrap_or(1).max(1),
        RuntimeLayout::Shared => 1,
    };
    // Before the metrics and any backend's connection pool exist.
    shards::plan(shard_count);
    let metrics = Arc::new(Metrics::default());
    let backends = Arc::new(Backends::new(config.strategy, config.ejection.clone()));
    if !config.static_backends.is_empty() {
        backends.replace(&static_queue(&config.static_backends));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move { stopped(&mut rx).await };

    let agent = config.agent_url.clone().map(|url| {
        tokio::spawn(agent_link::run(
            config.clone(),
            url,
            backends.clone(),
            metrics.clone(),
            stop_rx.clone(),
        ))
    });

    let dispatch = Arc::new(Dispatcher::new(
        backends,
        upstream::Dial {
            connect_timeout: config.connect_timeout,
            buffer_bytes: config.limits.upstream_buffer_bytes,
            stall_timeout: Some(config.limits.idle_timeout),
            stalls: metrics.stalled_readers.clone(),
        },
        config.retry_budget,
        metrics.clone(),
    ));
    let tasks = Arc::new(Tasks::new(
        &config,
        dispatch.clone(),
        metrics.clone(),
        stop_rx.clone(),
    ));
    let workers = tokio::spawn(tasks.clone().run());
    let proxy = Arc::new(Proxy::new(
        &config,
        dispatch,
        Some(tasks),
        metrics.clone(),
        stop_rx.clone(),
    ));
    let proxy_handler = {
        let proxy = proxy.clone();
        move |req, peer| Arc::clone(&proxy).handle(req, peer)
    };
    let admin_handler = {
        let (proxy, metrics) = (proxy.clone(), metrics.clone());
        move |req, _peer| {
            let resp = admin::handle(&req, &proxy, &metrics);
            async move { resp }
        }
    };
    let cap = protocol::net::cap(config.limits.max_connections);
    let mut links = server::shard_links(shard_count).into_iter();
    let first_link = (shard_count > 1).then(|| links.next()).flatten();
    let mut others = Vec::new();
    for (index, link) in (1..shard_count).zip(links) {
        let sibling = match shards::Sibling::of(&proxy_listener) {
            Ok(s) => s,
            Err(e) => {
                error!(
                    "proxy shard {index}: no listening socket ({e}); serving with {index} shards"
                );
                break;
            }
        };
        let how = sibling.describe();
        let serve_shard = {
            let (cap, limits, metrics) = (cap.clone(), config.limits.clone(), metrics.clone());
            let (grace, handler, stop) = (
                config.shutdown_grace,
                proxy_handler.clone(),
                stop_rx.clone(),
            );
            move || async move {
                match sibling.into_tokio() {
                    Ok(listener) => {
                        let stopped = stopped(stop);
                        server::serve(
                            "proxy",
                            listener,
                            cap,
                            limits,
                            Some(metrics),
                            grace,
                            handler,
                            Some(link),
                            stopped,
                        )
                        .await;
                    }
                    Err(e) => error!("proxy shard {index}: cannot listen: {e}"),
                }
            }
        };
        match shards::spawn(index, serve_shard) {
            Ok(thread) => {
                info!("proxy shard {index} started on {how}");
                others.push(thread);
            }
            Err(e) => {
                error!("proxy shard {index}: cannot start ({e}); serving with {index} shards");
                break;
            }
        }
    }
    let trimmer = tokio::spawn(memory::trim_after_bursts(
        metrics.clone(),
        others.iter().map(|t| t.handle.clone()).collect(),
    ));
    let proxy_server = server::serve(
        "proxy",
        proxy_listener,
        cap,
        config.limits.clone(),
        Some(metrics.clone()),
        config.shutdown_grace,
        proxy_handler,
        first_link,
        stopped(stop_rx.clone()),
    );
    let others_finished = async move {
        for thread in others {
            thread.finished().await;
        }
    };
    let admin_server = server::serve(
        "admin",
        admin_listener,
        protocol::net::cap(config.limits.max_connections),
        config.limits.clone(),
        None,
        ADMIN_GRACE,
        admin_handler,
        None,
        stopped(stop_rx.clone()),
    );
    let trigger = async move {
        shutdown.await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
        // Keep the sender alive so receivers see `true`, not a closed channel.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = async { tokio::join!(proxy_server, admin_server, others_finished) } => {}
        _ = trigger => {}
    }
    if let Err(e) = workers.await {
        log::error!("task workers failed: {e}");
    }
    if let Some(agent) = agent {
        if let Err(e) = agent.await {
            log::error!("agent link task failed: {e}");
        }
    }
    trimmer.abort();
    info!("balancer stopped");
}
