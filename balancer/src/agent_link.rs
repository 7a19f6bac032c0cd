//! Subscription to the deployment-agent's queue over WebSocket, and reports back.
//!
//! The link connects to `DEPLOYMENT_AGENT_URL` (with `Authorization: Bearer $AGENT_TOKEN`
//! when set), applies every newer `queue` frame, sends a `report` frame every
//! `REPORT_INTERVAL`, and reconnects with capped exponential back-off plus jitter. The last
//! good queue stays in force while the agent is unreachable. Bad frames are logged and
//! skipped; they never replace a good queue, and neither does an empty queue the agent has
//! not `observed` (see [`check_content`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use log::{debug, info, warn};
use protocol::backoff::Backoff;
use protocol::Message;
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::backends::Backends;
use crate::config::Config;
use crate::metrics::Metrics;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_BASE: Duration = Duration::from_millis(250);

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

/// What to do with a queue frame, newer by version, given what is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentCheck {
    Apply,
    /// Empty, not `observed` by the agent, and backends are in force: keep them.
    RefuseUnobservedEmpty,
}

/// An empty queue empties a non-empty table only if the agent has `observed` its pool
/// (then no app container runs and 503s are right). An agent that has not listed its
/// containers yet, or one from before the field, sends `observed: false`.
pub fn check_content(backends_in_force: usize, items: usize, observed: bool) -> ContentCheck {
    if items == 0 && backends_in_force > 0 && !observed {
        ContentCheck::RefuseUnobservedEmpty
    } else {
        ContentCheck::Apply
    }
}

/// What became of one text frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Applied,
    /// Same version as in force.
    Unchanged,
    /// Stale, malformed or of an unknown type.
    Skipped,
    /// An empty queue the agent has not observed (see [`check_content`]). It does not use up
    /// the connection's first-frame allowance: the agent's first observed queue may still go
    /// back in version.
    Refused,
}

/// Applies one text frame from the agent.
pub fn on_text(
    text: &str,
    first_on_connection: bool,
    backends: &Backends,
    metrics: &Metrics,
) -> Frame {
    match Message::decode(text) {
        Ok(Message::Queue(queue)) => {
            let table = backends.load();
            let current = table.version;
            match check_version(current, queue.version, first_on_connection) {
                VersionCheck::Apply => {
                    let in_force = table.backends.len();
                    drop(table);
                    if check_content(in_force, queue.items.len(), queue.observed)
                        == ContentCheck::RefuseUnobservedEmpty
                    {
                        warn!("agent sent an empty queue v{} it has not observed; the last good queue (v{current}, {in_force} backends) stays in force", queue.version);
                        metrics.frames_refused.fetch_add(1, Ordering::Relaxed);
                        return Frame::Refused;
                    }
                    if queue.version < current {
                        warn!("agent queue version went back from {current} to {} on a new connection (agent restarted?); applying it", queue.version);
                    }
                    backends.replace(&queue);
                    metrics.frames_applied.fetch_add(1, Ordering::Relaxed);
                    Frame::Applied
                }
                VersionCheck::Unchanged => {
                    debug!("queue v{} unchanged", queue.version);
                    Frame::Unchanged
                }
                VersionCheck::Stale => {
                    warn!(
                        "skipping stale queue v{} (v{current} in force)",
                        queue.version
                    );
                    metrics.frames_stale.fetch_add(1, Ordering::Relaxed);
                    Frame::Skipped
                }
            }
        }
        Ok(Message::Report(_)) => {
            warn!("skipping a report frame sent by the agent (reports go the other way)");
            metrics.frames_unknown.fetch_add(1, Ordering::Relaxed);
            Frame::Skipped
        }
        Err(e) => {
            let preview: String = text.chars().take(120).collect();
            warn!("skipping malformed frame from the agent ({e}): {preview:?}");
            metrics.frames_malformed.fetch_add(1, Ordering::Relaxed);
            Frame::Skipped
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
                        if on_text(text.as_str(), first, backends, metrics) != Frame::Refused {
                            first = false;
                        }
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

    #[test]
    fn version_rules() {
        assert_eq!(check_version(5, 6, false), VersionCheck::Apply);
        assert_eq!(check_version(5, 5, false), VersionCheck::Unchanged);
        assert_eq!(check_version(5, 5, true), VersionCheck::Apply);
        assert_eq!(check_version(5, 4, false), VersionCheck::Stale);
        assert_eq!(check_version(5, 1, true), VersionCheck::Apply);
        assert_eq!(check_version(0, 1, true), VersionCheck::Apply);
    }

    #[test]
    fn only_an_observed_queue_empties_the_table() {
        use ContentCheck::{Apply, RefuseUnobservedEmpty as Refuse};
        // (backends in force, items in the frame, observed) → decision
        let cases = [
            (1, 0, false, Refuse),
            (5, 0, false, Refuse),
            (1, 0, true, Apply),
            (5, 0, true, Apply),
            (0, 0, false, Apply),
            (0, 0, true, Apply),
            (5, 2, false, Apply),
            (5, 2, true, Apply),
            (0, 2, false, Apply),
        ];
        for (in_force, items, observed, want) in cases {
            assert_eq!(
                check_content(in_force, items, observed),
                want,
                "{in_force} in force, {items} items, observed={observed}"
            );
        }
    }

    #[test]
    fn a_refused_queue_keeps_version_and_first_frame_allowance() {
        use crate::config::EjectionConfig;
        use crate::selection::Strategy;
        use protocol::{Category, Queue, QueueItem};

        let frame = |version, ids: &[&str], observed| {
            let items = ids
                .iter()
                .map(|id| QueueItem {
                    id: id.to_string(),
                    name: id.to_string(),
                    address: format!("{id}:80"),
                    score: 90.0,
                    category: Category::Low,
                })
                .collect();
            Message::Queue(Queue {
                version,
                items,
                observed,
            })
            .encode()
        };
        let ejection = EjectionConfig {
            consecutive_failures: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(1),
        };
        let set = Backends::new(Strategy::Weighted, ejection);
        let m = Metrics::default();

        // An empty table takes an unobserved empty queue (nothing to lose).
        assert_eq!(
            on_text(&frame(1, &[], false), true, &set, &m),
            Frame::Applied
        );
        let f = on_text(&frame(5, &["a"], false), false, &set, &m);
        assert_eq!(f, Frame::Applied, "non-empty: applied whatever `observed`");

        // A restarted agent's first frame, before it has listed anything: refused.
        let f = on_text(&frame(1, &[], false), true, &set, &m);
        assert_eq!(f, Frame::Refused);
        assert_eq!((set.version(), set.load().backends.len()), (5, 1));
        assert_eq!(m.frames_refused.load(Ordering::Relaxed), 1);
        // Its first observed queue still goes back in version (the session keeps `first`).
        let f = on_text(&frame(2, &["b"], true), true, &set, &m);
        assert_eq!(f, Frame::Applied);
        assert_eq!(set.version(), 2);

        let f = on_text(&frame(3, &[], false), false, &set, &m);
        assert_eq!(f, Frame::Refused);
        assert_eq!(set.version(), 2, "the version in force does not move");
        assert_eq!(
            on_text(&frame(3, &[], true), false, &set, &m),
            Frame::Applied
        );
        assert_eq!((set.version(), set.load().backends.len()), (3, 0));
        assert_eq!(m.frames_refused.load(Ordering::Relaxed), 2);
        assert_eq!(m.frames_applied.load(Ordering::Relaxed), 4);
    }
}
