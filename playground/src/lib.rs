//! RustyBalancer playground: a small demo backend to put behind the balancer.
//!
//! Routes: `GET /` (HTML page + `/static/*` assets), `GET /work?ms=N` (sleeps),
//! `GET /cpu?ms=N` (burns N ms of the handling thread's CPU time, so under a CPU
//! quota its latency grows with load), `ANY /echo[/...]` (echoes the request as
//! JSON), `GET /health`. Everything else is a JSON 404.
//!
//! Like a worker-pool app, `/cpu` and `/work` can be limited to N requests processed
//! at once (env `MAX_CONCURRENCY`, see [`App::with_max_concurrency`]); further ones
//! wait for a slot in arrival order. `/health`, `/`, the assets and `/echo` never wait.
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
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

pub use routes::router;

/// How long [`run`] waits for in-flight requests after shutdown is signalled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// State shared by all requests.
#[derive(Debug)]
pub struct App {
    hostname: String,
    index_html: Bytes,
    /// Slots for `/cpu` and `/work`; `None` means no limit.
    slots: Option<Slots>,
}

/// The concurrency limit of `/cpu` and `/work`: `limit` permits of `semaphore`.
#[derive(Debug)]
struct Slots {
    limit: usize,
    semaphore: Arc<Semaphore>,
}

impl App {
    /// Builds the app state for a container named `hostname`, with no limit on
    /// concurrent `/cpu` and `/work` requests.
    pub fn new(hostname: impl Into<String>) -> Self {
        let hostname = hostname.into();
        let index_html = assets::render_index(&hostname);
        App {
            hostname,
            index_html,
            slots: None,
        }
    }

    /// Limits `/cpu` and `/work` to `limit` requests processed at once (`None`: no
    /// limit). Further requests wait for a slot in FIFO order; the time they waited
    /// is reported as `queued_ms`. Other routes are never limited.
    ///
    /// `Some(0)` is treated as `Some(1)` and values above
    /// [`config::MAX_CONCURRENCY_LIMIT`] are capped (the `MAX_CONCURRENCY` parser,
    /// [`config::parse_max_concurrency`], rejects both).
    #[must_use]
    pub fn with_max_concurrency(mut self, limit: Option<usize>) -> Self {
        self.slots = limit.map(|n| {
            let limit = n.clamp(1, config::MAX_CONCURRENCY_LIMIT);
            Slots {
                limit,
                semaphore: Arc::new(Semaphore::new(limit)),
            }
        });
        self
    }

    /// The limit set by [`App::with_max_concurrency`], `None` when unlimited.
    pub fn max_concurrency(&self) -> Option<usize> {
        self.slots.as_ref().map(|slots| slots.limit)
    }

    /// Waits for a `/cpu` or `/work` slot, in FIFO order; `Ok(None)` at once when
    /// unlimited. The slot is freed when the permit is dropped. Fails only if the
    /// semaphore was closed, which this crate never does.
    pub(crate) async fn acquire_slot(&self) -> Result<Option<OwnedSemaphorePermit>, AcquireError> {
        match &self.slots {
            None => Ok(None),
            Some(slots) => Arc::clone(&slots.semaphore).acquire_owned().await.map(Some),
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
/// The hostname comes from [`config::detect_hostname`]; `/cpu` and `/work` are not
/// limited (see [`run_with_max_concurrency`]).
pub async fn run(listener: TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    run_with_max_concurrency(listener, None, shutdown).await
}

/// [`run`] with at most `max_concurrency` requests of `/cpu` and `/work` processed
/// at once (`None`: no limit), as set by `MAX_CONCURRENCY`; see
/// [`App::with_max_concurrency`].
pub async fn run_with_max_concurrency(
    listener: TcpListener,
    max_concurrency: Option<usize>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = App::new(config::detect_hostname()).with_max_concurrency(max_concurrency);
    serve(listener, Arc::new(app), shutdown, SHUTDOWN_GRACE).await
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
    match app.max_concurrency() {
        Some(limit) => info!(
            "/cpu and /work: at most {limit} request(s) processed at once, \
             others wait for a slot in FIFO order"
        ),
        None => info!("/cpu and /work: no concurrency limit"),
    }

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
