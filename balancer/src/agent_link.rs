//! Subscription to the deployment-agent's queue over WebSocket, and reports back.
//!
//! The link connects to `DEPLOYMENT_AGENT_URL` (with `Authorization: Bearer $AGENT_TOKEN`
//! when set), applies every newer `queue` frame, sends a `report` frame every
//! `REPORT_INTERVAL`, and reconnects with capped exponential back-off plus jitter. The last
//! good queue stays in force while the agent is unreachable. Bad frames are logged and
//! skipped; they never replace a good queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use log::{debug, info, warn};
use protocol::Message;
use rand::Rng;
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::backends::Backends;
use crate::config::Config;
use crate::metrics::Metrics;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_BASE: Duration = Duration::from_millis(250);

/// Capped exponential back-off with jitter: attempt n waits a uniform time in
/// `[d/2, d]` with `d = min(max, base · 2ⁿ)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        d.mul_f64(rng.random_range(0.5..=1.0))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// What to do with a queue frame of `incoming` version while `current` is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionCheck {
    Apply,
    /// Same version: a keep-alive resend, nothing to do.
    Unchanged,
    /// Older than what is in force: skip.
    Stale,
}

/// Versions must grow within a connection. The first frame of a new connection is always
/// applied, even if it goes backwards (the agent restarted with a fresh counter; warned).
pub fn check_version(current: u64, incoming: u64, first_on_connection: bool) -> VersionCheck {
    if incoming > current || first_on_connection {
        VersionCheck::Apply
    } else if incoming == current {
        VersionCheck::Unchanged
    } else {
        VersionCheck::Stale
    }
}

/// Applies one text frame from the agent.
pub fn on_text(text: &str, first_on_connection: bool, backends: &Backends, metrics: &Metrics) {
    match Message::decode(text) {
        Ok(Message::Queue(queue)) => {
            let current = backends.version();
            match check_version(current, queue.version, first_on_connection) {
                VersionCheck::Apply => {
                    if queue.version < current {
                        warn!("agent queue version went back from {current} to {} on a new connection (agent restarted?); applying it", queue.version);
                    }
                    backends.replace(&queue);
                    metrics.frames_applied.fetch_add(1, Ordering::Relaxed);
                }
                VersionCheck::Unchanged => debug!("queue v{} unchanged", queue.version),
                VersionCheck::Stale => {
                    warn!(
                        "skipping stale queue v{} (v{current} in force)",
                        queue.version
                    );
                    metrics.frames_stale.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(Message::Report(_)) => {
            warn!("skipping a report frame sent by the agent (reports go the other way)");
            metrics.frames_unknown.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            let preview: String = text.chars().take(120).collect();
            warn!("skipping malformed frame from the agent ({e}): {preview:?}");
            metrics.frames_malformed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs the link until `shutdown` turns true.
pub async fn run(
    config: Arc<Config>,
    url: String,
    backends: Arc<Backends>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(BACKOFF_BASE, config.reconnect_max);
    loop {
        if *shutdown.borrow() {
            break;
        }
        match connect(&url, config.agent_token.as_deref()).await {
            Ok(ws) => {
                backoff.reset();
                metrics.agent_connected.store(true, Ordering::Relaxed);
                metrics.agent_connects.fetch_add(1, Ordering::Relaxed);
                info!("connected to agent at {url}");
                let reason = session(ws, &config, &backends, &metrics, &mut shutdown).await;
                metrics.agent_connected.store(false, Ordering::Relaxed);
                if *shutdown.borrow() {
                    break;
                }
                warn!(
                    "agent link lost ({reason}); keeping queue v{}",
                    backends.version()
                );
            }
            Err(e) => warn!("cannot reach agent at {url}: {e}"),
        }
        let delay = backoff.next_delay(&mut rand::rng());
        info!("reconnecting to agent in {delay:?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
    info!("agent link stopped");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, token: Option<&str>) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "AGENT_TOKEN is not a valid header value".to_string())?;
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// One connected session; returns why it ended.
async fn session(
    ws: Ws,
    config: &Config,
    backends: &Backends,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
) -> String {
    let (mut sink, mut stream) = ws.split();
    let mut first = true;
    let mut deadline = Instant::now() + config.agent_stale_after;
    let mut reports = tokio::time::interval_at(
        Instant::now() + config.report_interval,
        config.report_interval,
    );
    reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            frame = timeout_at(deadline, stream.next()) => {
                let frame = match frame {
                    Err(_) => return format!("no frame for {:?}", config.agent_stale_after),
                    Ok(None) => return "connection closed".to_string(),
                    Ok(Some(Err(e))) => return format!("read error: {e}"),
                    Ok(Some(Ok(frame))) => frame,
                };
                deadline = Instant::now() + config.agent_stale_after;
                match frame {
                    WsMessage::Text(text) => {
                        on_text(text.as_str(), first, backends, metrics);
                        first = false;
                    }
                    WsMessage::Binary(b) => {
                        warn!("skipping a binary frame of {} bytes from the agent", b.len());
                        metrics.frames_malformed.fetch_add(1, Ordering::Relaxed);
                    }
                    WsMessage::Close(c) => return format!("closed by agent: {c:?}"),
                    WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
                }
            }
            _ = reports.tick() => {
                let mut report = backends.report(&config.balancer_id, config.report_interval);
                report.task_queue_depth = metrics.task_queue_depth();
                let text = Message::Report(report).encode();
                if let Err(e) = sink.send(WsMessage::Text(text.into())).await {
                    return format!("write error: {e}");
                }
            }
            _ = crate::stopped(shutdown) => {
                if let Err(e) = sink.send(WsMessage::Close(None)).await {
                    debug!("close frame not sent: {e}");
                }
                return "shutdown".to_string();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut rng = SmallRng::seed_from_u64(5);
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay(&mut rng)).collect();
        let caps = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (got, cap) in d.iter().zip(caps) {
            let cap = Duration::from_millis(cap);
            assert!(*got <= cap && *got >= cap / 2, "{got:?} vs {cap:?}");
        }
        assert!(d.windows(2).any(|w| w[0] != w[1]) || d[4] != Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn version_rules() {
        assert_eq!(check_version(5, 6, false), VersionCheck::Apply);
        assert_eq!(check_version(5, 5, false), VersionCheck::Unchanged);
        assert_eq!(check_version(5, 5, true), VersionCheck::Apply);
        assert_eq!(check_version(5, 4, false), VersionCheck::Stale);
        assert_eq!(check_version(5, 1, true), VersionCheck::Apply);
        assert_eq!(check_version(0, 1, true), VersionCheck::Apply);
    }
}
