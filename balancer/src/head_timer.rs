//! hyper's HTTP/1 header read timeout on one tokio timer per connection.
//!
//! hyper arms its header timer as soon as it waits for a request head: after every response
//! it asks its [`Timer`] for a new boxed sleep, polls it (a tokio timer entry goes into the
//! wheel) and drops it when the head has arrived (the entry comes out again). That cost about
//! 1,700 instructions per proxied request, 6 % of the balancer's CPU.
//!
//! [`ConnTimer`] is given to one connection only. Its sleeps share a single tokio [`Sleep`],
//! armed lazily: a deadline later than the armed one leaves the timer alone (the usual case:
//! each head's deadline is a little later than the last), and when the timer fires before the
//! deadline of the sleep that is waiting, it is re-armed for that deadline. So the wheel is
//! touched about once per `HEADER_READ_TIMEOUT` per connection instead of twice per request,
//! and a sleep still completes at its own deadline. The price is one spurious wake-up of the
//! connection's task per timeout period while it is busy, which hyper ignores.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The timer of one connection's HTTP/1 header read timeout (see the module docs).
#[derive(Clone, Default)]
pub struct ConnTimer {
    armed: Arc<Mutex<Armed>>,
}

#[derive(Default)]
struct Armed {
    /// Created on first use (it needs the runtime), then reset.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Where `sleep` is set to fire.
    deadline: Option<Instant>,
}

impl ConnTimer {
    pub fn new() -> ConnTimer {
        ConnTimer::default()
    }
}

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until((Instant::now() + duration).into_std())
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            armed: Arc::clone(&self.armed),
            deadline: Instant::from_std(deadline),
        })
    }

    /// tokio's clock, so that a paused clock in tests moves the deadlines too.
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

/// One of a [`ConnTimer`]'s sleeps.
struct HeadSleep {
    armed: Arc<Mutex<Armed>>,
    deadline: Instant,
}

impl hyper::rt::Sleep for HeadSleep {}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let mut armed = self
            .armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Armed {
            sleep,
            deadline: at,
        } = &mut *armed;
        let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // Armed later than this deadline (or not yet): bring it forward. Armed earlier: it
        // will wake this task first, and the deadline is checked again then. Either way the
        // timer says when time is up: no clock reading here.
        if at.is_none_or(|at| at > deadline) {
            sleep.as_mut().reset(deadline);
            *at = Some(deadline);
        }
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if *at == Some(deadline) {
            return Poll::Ready(());
        }
        // It fired for an earlier deadline (a sleep since dropped): now for this one.
        sleep.as_mut().reset(deadline);
        *at = Some(deadline);
        sleep.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    /// Polls `fut` once with a waker that counts its wake-ups.
    fn poll_counting(
        fut: &mut Pin<Box<dyn hyper::rt::Sleep>>,
        wakes: &Arc<std::sync::atomic::AtomicUsize>,
    ) -> Poll<()> {
        struct Count(Arc<std::sync::atomic::AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let waker = std::task::Waker::from(Arc::new(Count(Arc::clone(wakes))));
        fut.as_mut().poll(&mut Context::from_waker(&waker))
    }

    #[tokio::test(start_paused = true)]
    async fn each_sleep_completes_at_its_own_deadline() {
        let timer = ConnTimer::new();
        let start = Instant::now();
        // As hyper does: one sleep per head, each later than the last, dropped early.
        for i in 0..5u64 {
            let s = timer.sleep_until(timer.now() + Duration::from_millis(400));
            drop(s);
            tokio::time::advance(Duration::from_millis(10 * i)).await;
        }
        let mark = Instant::now();
        timer
            .sleep_until(timer.now() + Duration::from_millis(400))
            .await;
        assert_eq!(Instant::now() - mark, Duration::from_millis(400));
        assert!(Instant::now() - start >= Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_waits_past_the_armed_one() {
        let timer = ConnTimer::new();
        let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Arms the shared timer at 100 ms, then goes.
        let mut early = timer.sleep(Duration::from_millis(100));
        assert!(poll_counting(&mut early, &wakes).is_pending());
        drop(early);
        // A sleep until 300 ms leaves it armed at 100 ms ...
        let mut late = timer.sleep(Duration::from_millis(300));
        assert!(poll_counting(&mut late, &wakes).is_pending());
        tokio::time::advance(Duration::from_millis(150)).await;
        // ... is woken at 100 ms (spuriously), is still pending, and re-arms for 300 ms.
        assert!(wakes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        assert!(poll_counting(&mut late, &wakes).is_pending());
        let before = wakes.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::advance(Duration::from_millis(149)).await;
        assert_eq!(wakes.load(std::sync::atomic::Ordering::SeqCst), before);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(wakes.load(std::sync::atomic::Ordering::SeqCst) > before);
        assert!(poll_counting(&mut late, &wakes).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_brings_the_timer_forward() {
        let timer = ConnTimer::new();
        let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut long = timer.sleep(Duration::from_secs(10));
        assert!(poll_counting(&mut long, &wakes).is_pending());
        drop(long);
        let mut short = timer.sleep(Duration::from_millis(50));
        assert!(poll_counting(&mut short, &wakes).is_pending());
        tokio::time::advance(Duration::from_millis(51)).await;
        assert_eq!(wakes.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(poll_counting(&mut short, &wakes).is_ready());
    }
}
