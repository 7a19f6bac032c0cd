//! The WebSocket server balancers subscribe to (`HOST_PORT_WS_DEPLOYMENT_AGENT`, path `/ws`).
//!
//! - The queue frame is encoded once per change by the control loop and shared (an
//!   `Arc<str>` in a `watch` channel): subscribers never trigger any computation.
//! - On connect a subscriber gets the current queue at once, then every new version, and the
//!   current frame again every `QUEUE_KEEPALIVE` (≤ 5 s) so a silent agent is noticed.
//! - With `AGENT_TOKEN` set, the upgrade needs `Authorization: Bearer <token>`; otherwise 401.
//! - Incoming `report` frames are kept per connection in [`Reports`]; malformed frames, unknown
//!   types and binary frames are logged and ignored, never fatal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use log::{debug, info, warn};
use protocol::net::{Accepted, Acceptor, IdleTimeout};
use protocol::{Message, Report};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::lifecycle::BalancerView;
use crate::model::{now_ms, Millis};

/// Largest frame accepted from a balancer (reports are a few KiB).
const MAX_FRAME_BYTES: usize = 1 << 20;
/// Reports kept for the control loop between two rounds (beyond it the oldest are dropped).
const MAX_PENDING_REPORTS: usize = 10_000;
/// Concurrent subscribers (balancers); more wait in the listen backlog.
const MAX_SUBSCRIBERS: usize = 1024;
/// A subscriber connection with no byte read or written for this long is closed (the agent
/// sends a frame every `QUEUE_KEEPALIVE`, at most 5 s; balancers report every second).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The queue as published: its version and the encoded frame shared by every subscriber.
#[derive(Debug, Clone)]
pub struct QueueFrame {
    pub version: u64,
    pub text: Arc<str>,
}

/// One report as received.
#[derive(Debug, Clone)]
pub struct Pending {
    pub at_ms: Millis,
    /// The subscriber connection it came on (two balancers that share a name stay apart).
    pub connection: u64,
    pub report: Report,
}

/// What one connected balancer has told us.
#[derive(Debug, Clone)]
struct Subscriber {
    peer: String,
    connected_ms: Millis,
    latest: Option<(Report, Millis)>,
}

/// Reports received from connected balancers, keyed by connection.
#[derive(Debug, Default)]
pub struct Reports {
    subscribers: Mutex<HashMap<u64, Subscriber>>,
    /// Reports not yet folded into scores by the control loop, with when they arrived and
    /// the connection they came on.
    pending: Mutex<Vec<Pending>>,
    next_id: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
}

impl Reports {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Subscriber>> {
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn connect(&self, peer: String) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Subscriber {
                peer,
                connected_ms: now_ms(),
                latest: None,
            },
        );
        id
    }

    fn disconnect(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Records a report from connection `id`.
    pub fn record(&self, id: u64, report: Report) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let at = now_ms();
        if let Some(s) = self.lock().get_mut(&id) {
            s.latest = Some((report.clone(), at));
        }
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: the loop takes them every round; a stalled loop must not grow this.
        if pending.len() >= MAX_PENDING_REPORTS {
            pending.remove(0);
        }
        pending.push(Pending {
            at_ms: at,
            connection: id,
            report,
        });
    }

    /// Reports received since the last call (for scoring and the traffic windows).
    pub fn take_pending(&self) -> Vec<Pending> {
        std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Number of connected balancers.
    pub fn connected(&self) -> usize {
        self.lock().len()
    }

    /// Total `report` frames received / malformed frames ignored.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.received.load(Ordering::Relaxed),
            self.malformed.load(Ordering::Relaxed),
        )
    }

    /// Each connected balancer's latest view of `container_id`, for drain decisions. A
    /// balancer that has not reported yet counts as version 0 (so it holds a drain until it
    /// reports or the drain times out).
    pub fn views_for(&self, container_id: &str) -> Vec<BalancerView> {
        self.lock()
            .values()
            .map(|s| match &s.latest {
                Some((r, _)) => BalancerView {
                    balancer: r.balancer.clone(),
                    queue_version: r.queue_version,
                    in_flight: r
                        .backends
                        .iter()
                        .find(|b| b.id == container_id)
                        .map_or(0, |b| b.in_flight),
                },
                None => BalancerView {
                    balancer: s.peer.clone(),
                    queue_version: 0,
                    in_flight: 0,
                },
            })
            .collect()
    }

    /// Requests in flight to `container_id` summed over the balancers' latest reports.
    pub fn in_flight(&self, container_id: &str) -> u64 {
        self.views_for(container_id)
            .iter()
            .map(|v| v.in_flight)
            .sum()
    }

    /// `(peer or balancer id, connected_ms, last report ms)` of every subscriber.
    pub fn subscribers(&self) -> Vec<(String, Millis, Option<Millis>)> {
        self.lock()
            .values()
            .map(|s| {
                let name = s
                    .latest
                    .as_ref()
                    .map_or_else(|| s.peer.clone(), |(r, _)| r.balancer.clone());
                (name, s.connected_ms, s.latest.as_ref().map(|(_, at)| *at))
            })
            .collect()
    }
}

/// Settings of the WebSocket server.
#[derive(Debug, Clone)]
pub struct PushConfig {
    pub token: Option<String>,
    pub keepalive: Duration,
}

/// Serves `/ws` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    cfg: PushConfig,
    queue: watch::Receiver<Option<QueueFrame>>,
    reports: Arc<Reports>,
    shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let acceptor = Acceptor::new("websocket", listener, MAX_SUBSCRIBERS, IDLE_TIMEOUT);
    let mut stopping = shutdown.clone();
    let stop = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            accepted = acceptor.next(stop.as_mut()) => {
                let Some(Accepted { stream, peer, permit }) = accepted else { break };
                let sub = subscriber(
                    stream,
                    peer.to_string(),
                    cfg.clone(),
                    queue.clone(),
                    reports.clone(),
                    shutdown.clone(),
                );
                conns.spawn(async move {
                    let _slot = permit;
                    sub.await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Subscribers see the same shutdown signal and send a Close frame.
    while conns.join_next().await.is_some() {}
}

// The callback's signature is tungstenite's; its large error type is not ours to box.
#[allow(clippy::result_large_err)]
fn handshake_check(
    token: Option<&str>,
) -> impl FnOnce(&Request, Response) -> Result<Response, ErrorResponse> + '_ {
    move |req: &Request, resp: Response| {
        if req.uri().path() != "/ws" {
            return Err(refusal(
                StatusCode::NOT_FOUND,
                "the WebSocket endpoint is /ws",
            ));
        }
        if let Some(token) = token {
            let presented = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if !protocol::auth::bearer_matches(presented, token) {
                return Err(refusal(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong Authorization: Bearer token",
                ));
            }
        }
        Ok(resp)
    }
}

fn refusal(status: StatusCode, message: &str) -> ErrorResponse {
    let mut r = http::Response::new(Some(serde_json::json!({ "error": message }).to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn subscriber(
    stream: IdleTimeout<TcpStream>,
    peer: String,
    cfg: PushConfig,
    mut queue: watch::Receiver<Option<QueueFrame>>,
    reports: Arc<Reports>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ws_cfg = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        handshake_check(cfg.token.as_deref()),
        Some(ws_cfg),
    );
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            info!("websocket handshake from {peer} refused or failed: {e}");
            return;
        }
        Err(_) => {
            info!("websocket handshake from {peer} timed out");
            return;
        }
    };
    let id = reports.connect(peer.clone());
    info!("balancer subscribed from {peer}");
    let (mut sink, mut source) = ws.split();
    let mut keepalive = tokio::time::interval(cfg.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once: that sends the current queue on connect.
    let reason = loop {
        tokio::select! {
            _ = keepalive.tick() => {
                // Nothing before the pool has been observed (see `Outputs::queue`).
                let text = queue.borrow_and_update().as_ref().map(|f| f.text.clone());
                if let Some(text) = text {
                    if let Err(e) = sink.send(WsMessage::text(text.as_ref())).await {
                        break format!("send failed: {e}");
                    }
                }
            }
            changed = queue.changed() => {
                if changed.is_err() {
                    // The control loop has ended: the agent is stopping. Say goodbye properly
                    // even if this branch wins the race with the shutdown signal below.
                    if let Err(e) = sink.send(WsMessage::Close(None)).await {
                        debug!("close frame to {peer} not sent: {e}");
                    }
                    break "agent stopping".to_string();
                }
                let text = queue.borrow_and_update().as_ref().map(|f| f.text.clone());
                if let Some(text) = text {
                    if let Err(e) = sink.send(WsMessage::text(text.as_ref())).await {
                        break format!("send failed: {e}");
                    }
                    keepalive.reset();
                }
            }
            incoming = source.next() => match incoming {
                None => break "connection closed".to_string(),
                Some(Err(e)) => break format!("read failed: {e}"),
                Some(Ok(WsMessage::Text(text))) => match Message::decode(text.as_str()) {
                    Ok(Message::Report(report)) => {
                        debug!("report from {} (v{}, {} backends)", report.balancer, report.queue_version, report.backends.len());
                        reports.record(id, report);
                    }
                    Ok(Message::Queue(_)) => {
                        reports.malformed.fetch_add(1, Ordering::Relaxed);
                        warn!("ignoring a queue frame sent by subscriber {peer}");
                    }
                    Err(e) => {
                        reports.malformed.fetch_add(1, Ordering::Relaxed);
                        warn!("ignoring malformed frame from {peer}: {e}");
                    }
                },
                Some(Ok(WsMessage::Binary(_))) => {
                    reports.malformed.fetch_add(1, Ordering::Relaxed);
                    warn!("ignoring binary frame from {peer}");
                }
                Some(Ok(WsMessage::Close(_))) => break "closed by balancer".to_string(),
                Some(Ok(_)) => {}
            },
            _ = shutdown.changed() => {
                if let Err(e) = sink.send(WsMessage::Close(None)).await {
                    debug!("close frame to {peer} not sent: {e}");
                }
                break "agent stopping".to_string();
            }
        }
    };
    reports.disconnect(id);
    info!("balancer {peer} unsubscribed: {reason}");
}
