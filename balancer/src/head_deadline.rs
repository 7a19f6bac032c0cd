//! `HEADER_READ_TIMEOUT`: how long a connection may wait for a complete request head, kept by
//! the connection's own task instead of by hyper.
//!
//! The clock runs whenever no request is in flight: from the accept, and again from the end of
//! every response (when hyper has taken its last bytes, as for hyper's own header timer). It stops when a complete head has arrived (hyper calls the service). So a
//! client that sends its head byte by byte (slowloris) and an HTTP/1.1 keep-alive connection
//! that stays silent between requests are both closed `HEADER_READ_TIMEOUT` after the
//! connection became idle. On HTTP/2 the clock covers the first request only (streams are
//! multiplexed; `IDLE_TIMEOUT` bounds the rest). An upgraded connection (101) leaves hyper, and
//! this deadline with it.
//!
//! Why not hyper's own `header_read_timeout`: with it, hyper asks its timer for a new boxed
//! sleep for every request and, after every response, goes once more round its read loop to
//! start that sleep: about 1,400 instructions per proxied request, 6 % of the balancer's
//! CPU. Here a request costs two uncontended atomic additions ([`Gate::begin`] and the drop of
//! its [`Exchange`]), one clock reading when the connection goes idle, and no timer work: each
//! idle period's deadline is later than the one before, so the connection's one tokio timer
//! is re-armed only when it fires (about once per `HEADER_READ_TIMEOUT` on a busy
//! connection), for the deadline of the idle period then running, if any.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Set once the deadline no longer applies (HTTP/2 after its first request).
const OFF: u64 = 1;
/// One request in flight (bits 1..32 count them).
const BUSY_ONE: u64 = 1 << 1;
const BUSY_MASK: u64 = 0xffff_fffe;
/// One request served (bits 32..64 count them, wrapping).
const SERVED_ONE: u64 = 1 << 32;

/// What a connection's requests tell its [`HeadDeadline`]: how many are in flight and how many
/// have started, in one word.
#[derive(Default)]
pub struct Gate {
    state: AtomicU64,
}

impl Gate {
    /// A complete head arrived: the clock stops until the returned [`Exchange`] is dropped
    /// (with the response body, once it has been sent, or with the request if it is abandoned).
    pub fn begin(self: &Arc<Gate>) -> Exchange {
        self.state
            .fetch_add(SERVED_ONE + BUSY_ONE, Ordering::Relaxed);
        Exchange(Arc::clone(self))
    }

    /// True while no request of the connection is in flight (between responses, or before
    /// its first complete head).
    pub fn idle(&self) -> bool {
        self.state.load(Ordering::Relaxed) & BUSY_MASK == 0
    }

    /// No head deadline for this connection from now on.
    pub fn turn_off(&self) {
        self.state.fetch_or(OFF, Ordering::Relaxed);
    }
}

/// One request in flight on a connection; see [`Gate::begin`].
pub struct Exchange(Arc<Gate>);

impl Exchange {
    /// See [`Gate::turn_off`].
    pub fn turn_off(&self) {
        self.0.turn_off();
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.state.fetch_sub(BUSY_ONE, Ordering::Relaxed);
    }
}

/// The head deadline of one connection; polled by the connection's task after each poll of
/// the connection itself (see the module docs).
pub struct HeadDeadline {
    gate: Arc<Gate>,
    timeout: Duration,
    /// While idle: the requests served when the idleness was first seen, and its deadline.
    idle: Option<(u32, Instant)>,
    timer: Pin<Box<Sleep>>,
    /// The waker the timer last registered: polling it again with the same one while it has
    /// not fired would change nothing.
    armed_for: Option<Waker>,
}

impl HeadDeadline {
    /// A deadline for a connection accepted now, and the gate its requests report to.
    pub fn new(timeout: Duration) -> (HeadDeadline, Arc<Gate>) {
        let gate = Arc::new(Gate::default());
        let deadline = HeadDeadline {
            gate: Arc::clone(&gate),
            timeout,
            idle: None,
            timer: Box::pin(tokio::time::sleep(timeout)),
            armed_for: None,
        };
        (deadline, gate)
    }

    /// `Ready` once the connection has been idle (no request in flight) for longer than the
    /// timeout; `Pending` otherwise, with a wake-up registered for when that may happen.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let state = self.gate.state.load(Ordering::Relaxed);
        if state & OFF != 0 {
            return Poll::Pending;
        }
        let due = if state & BUSY_MASK != 0 {
            self.idle = None;
            None
        } else {
            let served = (state >> 32) as u32;
            match self.idle {
                Some((seen, due)) if seen == served => Some(due),
                _ => {
                    // Idle since just now (this is polled right after the connection, which
                    // is where the last response ended).
                    // Deadlines only move later, so the armed timer fires first and is
                    // re-armed then.
                    let due = Instant::now() + self.timeout;
                    self.idle = Some((served, due));
                    Some(due)
                }
            }
        };
        loop {
            if self.timer.is_elapsed() {
                // Busy: nothing is due; the timer is re-armed once the connection is idle.
                let Some(due) = due else {
                    return Poll::Pending;
                };
                if due <= Instant::now() {
                    return Poll::Ready(());
                }
                self.timer.as_mut().reset(due);
                self.armed_for = None;
            }
            if self
                .armed_for
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                self.armed_for = Some(cx.waker().clone());
                return Poll::Pending;
            }
            // Fired while being armed: look at the deadline again.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expired(d: &mut HeadDeadline) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        d.poll_expired(&mut cx).is_ready()
    }

    /// Lets the paused clock run to `by` from the test's start, firing due timers.
    async fn advance(by: Duration) {
        tokio::time::advance(by).await;
        tokio::task::yield_now().await;
    }

    /// Asserts that `d` expires `after` from now (to within 10 ms), letting the clock run.
    async fn expires_after(d: &mut HeadDeadline, after: Duration, what: &str) {
        advance(after - Duration::from_millis(10)).await;
        assert!(!expired(d), "{what}: expired too early");
        advance(Duration::from_millis(20)).await;
        assert!(expired(d), "{what}: not expired in time");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_timeout_for_its_first_head() {
        let (mut d, _gate) = HeadDeadline::new(Duration::from_secs(10));
        assert!(!expired(&mut d));
        expires_after(&mut d, Duration::from_secs(10), "the idle period").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_stops_the_clock_and_its_end_restarts_it() {
        let (mut d, gate) = HeadDeadline::new(Duration::from_secs(10));
        assert!(!expired(&mut d));
        advance(Duration::from_secs(5)).await;
        let exchange = gate.begin();
        assert!(!expired(&mut d));
        // A request far longer than the timeout.
        advance(Duration::from_secs(60)).await;
        assert!(!expired(&mut d), "expired while a request was in flight");
        drop(exchange);
        assert!(!expired(&mut d));
        expires_after(
            &mut d,
            Duration::from_secs(10),
            "the idle period after the response",
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_request_between_two_polls_restarts_the_clock() {
        let (mut d, gate) = HeadDeadline::new(Duration::from_secs(10));
        assert!(!expired(&mut d));
        advance(Duration::from_secs(8)).await;
        // Begun and ended without a poll in between: the served count tells.
        drop(gate.begin());
        assert!(!expired(&mut d));
        advance(Duration::from_secs(8)).await;
        assert!(!expired(&mut d), "the old idle period was still counted");
        advance(Duration::from_secs(3)).await;
        assert!(expired(&mut d));
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_is_re_armed_for_the_idle_period_running_when_it_fires() {
        let (mut d, gate) = HeadDeadline::new(Duration::from_secs(10));
        let exchange = gate.begin();
        assert!(!expired(&mut d));
        advance(Duration::from_secs(3)).await;
        drop(exchange);
        // The timer is armed for t=10 s; the deadline is now t=13 s, found when it fires.
        // Then the next idle period starts at t=14 s and ends at t=24 s.
        assert!(!expired(&mut d));
        advance(Duration::from_secs(8)).await;
        assert!(!expired(&mut d));
        let exchange = gate.begin();
        assert!(!expired(&mut d));
        advance(Duration::from_secs(3)).await;
        drop(exchange);
        assert!(!expired(&mut d));
        expires_after(&mut d, Duration::from_secs(10), "the idle period").await;
    }

    #[tokio::test(start_paused = true)]
    async fn turned_off_it_never_expires() {
        let (mut d, gate) = HeadDeadline::new(Duration::from_secs(1));
        let exchange = gate.begin();
        exchange.turn_off();
        drop(exchange);
        advance(Duration::from_secs(60)).await;
        assert!(!expired(&mut d));
    }

    /// The timer wakes the connection's task when the deadline passes (the task is not
    /// polled otherwise while the client is silent), also when it went idle while the timer
    /// was armed for an earlier deadline.
    #[tokio::test(start_paused = true)]
    async fn the_task_is_woken_when_the_deadline_passes() {
        let (mut d, gate) = HeadDeadline::new(Duration::from_secs(10));
        let start = Instant::now();
        let waiter = tokio::spawn(async move {
            // Like the connection's task: the response ends (at t=4 s) inside a poll of the
            // connection, and the deadline is polled right after.
            let mut exchange = Some(gate.begin());
            let mut response = std::pin::pin!(tokio::time::sleep(Duration::from_secs(4)));
            std::future::poll_fn(|cx| {
                if exchange.is_some() && response.as_mut().poll(cx).is_ready() {
                    exchange = None;
                }
                d.poll_expired(cx)
            })
            .await;
            Instant::now()
        });
        let waited = waiter.await.unwrap() - start;
        assert_eq!(waited, Duration::from_secs(14), "expired after {waited:?}");
    }
}
