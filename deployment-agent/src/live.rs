//! The dashboard's live feed: every snapshot the control loop publishes is folded into the
//! [`History`] once and rendered once as a server-sent event, then fanned out to every
//! `GET /stream` client through a broadcast channel. A slow client skips ticks (it lags
//! the broadcast) instead of queueing them: memory per client is a few events at most.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::history::{History, Tick, WINDOW};
use crate::reconcile::Snapshot;

/// `GET /stream` clients served at once; more get a 503.
pub const MAX_STREAMS: usize = 64;
/// A comment line this often keeps idle proxies and the API's idle timeout from closing
/// a stream between ticks.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Ticks a stream may fall behind before it skips some.
const LAG: usize = 8;

/// History, tick fan-out and the stream slots.
pub struct Live {
    history: Mutex<History>,
    ticks: broadcast::Sender<Bytes>,
    slots: Arc<Semaphore>,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            history: Mutex::new(History::new(WINDOW)),
            ticks: broadcast::channel(LAG).0,
            slots: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }
}

/// One server-sent event (`data` must be a single line, as serialized JSON is).
pub fn event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

impl Live {
    /// The `GET /history` document.
    pub fn history_json(&self) -> serde_json::Value {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .to_json()
    }

    /// Records every new snapshot until `shutdown` flips; `render` turns the snapshot and
    /// what it added into the event sent to the streams.
    pub async fn record(
        self: Arc<Live>,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        mut shutdown: watch::Receiver<bool>,
        render: impl Fn(&Snapshot, &Tick) -> Bytes,
    ) {
        loop {
            let snap = snapshots.borrow_and_update().clone();
            let tick = self
                .history
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(&snap);
            if let Some(tick) = tick {
                // No receiver is not an error: nobody is watching.
                let _ = self.ticks.send(render(&snap, &tick));
            }
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { break },
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
    }

    /// A stream body for one client, or `None` when [`MAX_STREAMS`] are open.
    pub fn subscribe(&self, mut shutdown: watch::Receiver<bool>) -> Option<SseBody> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        let (tx, rx) = mpsc::channel::<Bytes>(2);
        let mut ticks = self.ticks.subscribe();
        tokio::spawn(async move {
            if tx
                .send(Bytes::from_static(b"retry: 2000\n\n"))
                .await
                .is_err()
            {
                return;
            }
            let mut keepalive = tokio::time::interval(KEEPALIVE);
            keepalive.reset();
            loop {
                let next = tokio::select! {
                    tick = ticks.recv() => match tick {
                        Ok(bytes) => bytes,
                        // Too slow for the feed: skip to the newest ticks.
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = keepalive.tick() => Bytes::from_static(b": keep-alive\n\n"),
                    () = tx.closed() => break,
                    _ = shutdown.wait_for(|s| *s) => break,
                };
                if tx.send(next).await.is_err() {
                    break;
                }
            }
        });
        Some(SseBody { rx, _slot: permit })
    }
}

/// The body of a `GET /stream` response: ends when the agent stops.
pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
    _slot: OwnedSemaphorePermit,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|next| next.map(|bytes| Ok(Frame::data(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn snap(at_ms: u64) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            at_ms,
            desired: 2,
            ..Snapshot::default()
        })
    }

    async fn next_text(body: &mut SseBody) -> String {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a frame within 5 s")
            .expect("the stream is open")
            .expect("infallible");
        String::from_utf8(frame.into_data().expect("data").to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn snapshots_become_history_and_stream_events_and_slots_are_bounded() {
        let live = Arc::new(Live::default());
        let (snap_tx, snap_rx) = watch::channel(snap(0));
        let (stop_tx, stop_rx) = watch::channel(false);
        let recorder = tokio::spawn(live.clone().record(snap_rx, stop_rx.clone(), |s, t| {
            event(
                "tick",
                &format!("{{\"at\":{},\"desired\":{}}}", s.at_ms, t.sample.desired),
            )
        }));
        let mut body = live.subscribe(stop_rx.clone()).expect("a slot");
        assert_eq!(next_text(&mut body).await, "retry: 2000\n\n");
        // Give the stream's task time to subscribe before the first tick.
        tokio::task::yield_now().await;
        snap_tx.send_replace(snap(1_000));
        assert_eq!(
            next_text(&mut body).await,
            "event: tick\ndata: {\"at\":1000,\"desired\":2}\n\n"
        );
        snap_tx.send_replace(snap(2_000));
        assert!(next_text(&mut body).await.contains("\"at\":2000"));
        assert_eq!(
            live.history_json()["samples"].as_array().map(Vec::len),
            Some(2)
        );

        let mut held = Vec::new();
        while let Some(b) = live.subscribe(stop_rx.clone()) {
            held.push(b);
        }
        assert_eq!(held.len(), MAX_STREAMS - 1);
        drop(held);
        assert!(live.subscribe(stop_rx.clone()).is_some(), "slots come back");

        stop_tx.send_replace(true);
        recorder.await.expect("recorder ends");
        let end = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the stream ends at shutdown");
        assert!(end.is_none());
    }
}
