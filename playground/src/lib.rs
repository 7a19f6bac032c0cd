//! RustyBalancer playground: a small demo backend to put behind the balancer.
//!
//! Routes: `GET /` (HTML page + `/static/*` assets), `GET /work?ms=N` (sleeps),
//! `GET /cpu?ms=N` (burns CPU), `ANY /echo[/...]` (echoes the request as JSON),
//! `GET /health`. Everything else is a JSON 404.
//!
//! Serves HTTP/1.1 and h2c on one port and shuts down gracefully: see [`run`].

pub mod assets;
pub mod config;
pub mod respond;
pub mod routes;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use log::{debug, info, warn};
use tokio::net::TcpListener;

pub use routes::router;

/// How long [`run`] waits for in-flight requests after shutdown is signalled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// State shared by all requests.
#[derive(Debug)]
pub struct App {
    hostname: String,
    index_html: Bytes,
}

impl App {
    /// Builds the app state for a container named `hostname`.
    pub fn new(hostname: impl Into<String>) -> Self {
        let hostname = hostname.into();
        let index_html = assets::render_index(&hostname);
        App {
            hostname,
            index_html,
        }
    }

    /// The hostname reported in responses.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The rendered index page.
    pub fn index_html(&self) -> Bytes {
        self.index_html.clone()
    }
}

/// Serves the playground on `listener` until `shutdown` completes, then stops
/// accepting and waits up to [`SHUTDOWN_GRACE`] for in-flight requests.
///
/// The hostname comes from [`config::detect_hostname`].
pub async fn run(listener: TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let app = Arc::new(App::new(config::detect_hostname()));
    serve(listener, app, shutdown, SHUTDOWN_GRACE).await
}

/// [`run`] with the app state and grace period given explicitly.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    info!(
        "listening on {local} (HTTP/1.1 and h2c) as hostname {}",
        app.hostname()
    );

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    debug!("set_nodelay for {remote} failed: {e}");
                }
                let app = Arc::clone(&app);
                let service = service_fn(move |req| {
                    let app = Arc::clone(&app);
                    async move { Ok::<_, Infallible>(handle(&app, remote, req).await) }
                });
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!("connection from {remote} ended with error: {e}");
                    }
                });
            }
        }
    }

    drop(listener);
    info!(
        "shutdown requested: stopped accepting, waiting up to {}s for {} open connection(s)",
        grace.as_secs_f32(),
        graceful.count()
    );
    tokio::select! {
        () = graceful.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(grace) => {
            warn!("grace period of {}s expired, dropping remaining connections", grace.as_secs_f32());
        }
    }
    Ok(())
}

/// Routes a request and writes one access-log line (target `access`).
async fn handle(app: &App, remote: SocketAddr, req: http::Request<Incoming>) -> respond::Resp {
    let started = Instant::now();
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let version = req.version();
    let res = router(app, remote, req).await;
    info!(
        target: "access",
        "{remote} \"{method} {target} {version:?}\" {} {:.1}ms",
        res.status().as_u16(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    res
}
