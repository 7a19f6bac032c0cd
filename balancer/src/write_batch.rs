//! Writes deferred to the end of the shard's turn.
//!
//! A shard (a current-thread runtime, [`crate::shards`]) wakes from `epoll_wait` with a
//! batch of ready sockets and runs their tasks one after the other. Each task used to write
//! its bytes (a request to a backend, a response to a client) as soon as it had them, so
//! the shard alternated reads and writes, and each write woke its peer (the backend or the
//! client, on another core) while the shard still had reads to do. Here a task hands a
//! small, complete write to its shard's queue instead and goes on to wait for the answer as
//! before; the shard's flusher task, woken by the first write queued, runs after the tasks
//! that were already ready and makes every queued write in a row. The shard so reads
//! everything the last `epoll_wait` reported and then writes, the order HAProxy makes its
//! system calls in. On the benchmark's loopback set-up that cut the kernel time per proxied
//! request by about 1 µs of 25–40 µs (median of 22 interleaved rounds; see
//! `artefacts/bench-proxy-notes.md`), for about 520 more user-space instructions.
//!
//! A queued write is not waited for: the task is not polled again for it (polling a task's
//! whole future once more cost as much as the grouping saved). Only when the write did not
//! go out whole, because the socket's buffer was full (rare for the small writes queued
//! here) or it failed, does the flusher wake the task, which finishes the write itself or
//! fails as it would have on its own write ([`Deferred::poll_fault`]).
//!
//! Queueing is used only on a thread whose runtime is a current-thread one and where
//! [`install`] ran (the flusher must run on the same thread as the tasks that queue); a
//! [`Deferred`] used elsewhere writes nothing and says so, and the caller writes itself.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::net::TcpStream;
use tokio::runtime::{Handle, RuntimeFlavor};

/// Largest write queued; a longer one is written by its task (it is copied into the queue).
pub const MAX_QUEUED: usize = 16 * 1024;

thread_local! {
    /// The writes queued on this thread since its flusher last ran.
    static QUEUE: RefCell<Vec<Arc<Slot>>> = const { RefCell::new(Vec::new()) };
    /// The flusher's waker, woken by the first write queued in a turn.
    static FLUSHER: RefCell<Option<Waker>> = const { RefCell::new(None) };
    /// Whether this thread has a flusher ([`install`]).
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Starts the calling thread's flusher, if its runtime is a current-thread one and it has
/// none yet. The flusher lives as long as the runtime and stops when the runtime drops it.
/// The flusher belongs to the thread: a thread must not serve from a second current-thread
/// runtime while the first still exists (the balancer runs one per thread: the main one,
/// each shard's, a test's).
pub fn install() {
    let current_thread =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
    if !current_thread || ACTIVE.with(Cell::get) {
        return;
    }
    ACTIVE.with(|a| a.set(true));
    tokio::spawn(flusher());
}

/// Whether writes queued on this thread will be made.
fn active() -> bool {
    ACTIVE.with(Cell::get)
}

/// Ends the thread's flusher: writes what is still queued (once, without waiting) and
/// turns queueing off, so that a later runtime on the thread can start its own.
struct FlusherGuard;

impl Drop for FlusherGuard {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(false));
        FLUSHER.with(|f| f.borrow_mut().take());
        flush_queued();
    }
}

async fn flusher() {
    let _guard = FlusherGuard;
    poll_fn(|cx| {
        flush_queued();
        FLUSHER.with(|f| {
            let mut f = f.borrow_mut();
            match f.as_ref() {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *f = Some(cx.waker().clone()),
            }
        });
        Poll::<()>::Pending
    })
    .await;
}

/// Makes every queued write, in the order queued.
fn flush_queued() {
    let mut queued = QUEUE.with(|q| std::mem::take(&mut *q.borrow_mut()));
    for slot in queued.drain(..) {
        slot.flush();
    }
    // The vector goes back for the next turn (no allocation per turn).
    QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        if q.is_empty() {
            *q = queued;
        }
    });
}

/// Where a queued write is.
#[derive(Debug)]
enum Phase {
    /// Nothing queued (or the last write went out whole).
    Idle,
    Queued,
    /// The socket took only the first `n` bytes; the rest is for the task.
    Partial(usize),
    /// Writing failed after `n` bytes.
    Failed(io::Error, usize),
}

struct State {
    phase: Phase,
    bytes: Vec<u8>,
    /// The task to wake when the write does not go out whole (or, with `wake_on_done`, when
    /// it has been made at all).
    waker: Option<Waker>,
    wake_on_done: bool,
    /// The socket, kept open until the write is made (for an upstream connection, whose
    /// owner may drop it meanwhile).
    keep: Option<Arc<TcpStream>>,
}

/// One connection's queued write, shared by the connection's owner and the flusher.
struct Slot {
    fd: RawFd,
    /// `false` exactly when `state.phase` is `Idle`: set under the lock, read without it, so
    /// that the owner's checks between writes (several per request) take no lock.
    busy: AtomicBool,
    state: Mutex<State>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Slot {
    /// Makes the write if it is still queued.
    fn flush(&self) {
        let mut st = lock(&self.state);
        if !matches!(st.phase, Phase::Queued) {
            return;
        }
        st.phase = match send_all(self.fd, &st.bytes) {
            Ok(n) if n == st.bytes.len() => Phase::Idle,
            Ok(n) => Phase::Partial(n),
            Err((e, n)) => Phase::Failed(e, n),
        };
        st.keep = None;
        let done = matches!(st.phase, Phase::Idle);
        if done {
            self.busy.store(false, Ordering::Release);
        }
        // Taken either way: a pooled upstream connection must not keep the task that last
        // used it alive.
        let waker = st.waker.take();
        if st.wake_on_done || !done {
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// Writes `bytes` to `fd` until done, the socket is full or it fails: how much went out.
fn send_all(fd: RawFd, bytes: &[u8]) -> Result<usize, (io::Error, usize)> {
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: `rest` is valid for reads of its length; `fd` is a socket kept open by the
        // slot's owner (or `keep`) while the write is queued.
        let n = unsafe {
            libc::send(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(n) {
            Ok(0) => return Err((io::ErrorKind::WriteZero.into(), sent)),
            Ok(n) => sent += n,
            Err(_) => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => return Ok(sent),
                    _ => return Err((e, sent)),
                }
            }
        }
    }
    Ok(sent)
}

/// What a connection's deferred write came to, for its owner.
#[derive(Debug)]
pub enum Outcome {
    /// Made whole (or nothing was queued).
    Done,
    /// Only the first `sent` bytes went out: `rest` is still to be written, by the owner.
    Rest { rest: Vec<u8>, sent: usize },
    /// Failed after this many bytes.
    Failed(io::Error, usize),
}

/// A connection's handle on its deferred writes; one write is queued at a time.
///
/// Dropping it while a write is queued makes that write at once (without waiting), so that
/// a response is not lost when its connection's task ends before the flusher runs.
pub struct Deferred {
    slot: Arc<Slot>,
}

impl Deferred {
    /// A handle for the socket `fd`, if the calling thread has a flusher. `fd` must stay
    /// open as long as the handle, or be passed as `keep` with each write.
    pub fn new(fd: RawFd) -> Option<Deferred> {
        active().then(|| Deferred {
            slot: Arc::new(Slot {
                fd,
                busy: AtomicBool::new(false),
                state: Mutex::new(State {
                    phase: Phase::Idle,
                    bytes: Vec::new(),
                    waker: None,
                    wake_on_done: false,
                    keep: None,
                }),
            }),
        })
    }

    /// Queues `parts`, written one after the other, for the end of the shard's turn. `false`
    /// (nothing queued; the caller writes): the thread has no flusher, the parts are longer
    /// than [`MAX_QUEUED`], or an earlier write has not been settled ([`Deferred::poll_fault`]
    /// or [`Deferred::settle`]).
    pub fn queue(&self, parts: &[&[u8]], keep: Option<&Arc<TcpStream>>) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_QUEUED || !active() {
            return false;
        }
        {
            let mut st = lock(&self.slot.state);
            if !matches!(st.phase, Phase::Idle) {
                return false;
            }
            st.bytes.clear();
            for p in parts {
                st.bytes.extend_from_slice(p);
            }
            st.phase = Phase::Queued;
            self.slot.busy.store(true, Ordering::Release);
            st.wake_on_done = false;
            st.keep = keep.cloned();
        }
        let first = QUEUE.with(|q| {
            let mut q = q.borrow_mut();
            q.push(self.slot.clone());
            q.len() == 1
        });
        if first {
            FLUSHER.with(|f| {
                if let Some(w) = f.borrow().as_ref() {
                    w.wake_by_ref();
                }
            });
        }
        true
    }

    /// For a task that waits for something else (the answer to what it wrote): `Pending`
    /// while the write is queued or went out whole (the task is woken only if it does not),
    /// `Ready` with what the owner must do about a write that did not go out whole. Once
    /// `Ready`, the slot is free for the next write.
    pub fn poll_fault(&self, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.poll_state(cx, false)
    }

    fn poll_state(&self, cx: &mut Context<'_>, wake_on_done: bool) -> Poll<Outcome> {
        if !self.slot.busy.load(Ordering::Acquire) {
            return if wake_on_done {
                Poll::Ready(Outcome::Done)
            } else {
                Poll::Pending
            };
        }
        let mut st = lock(&self.slot.state);
        let phase = std::mem::replace(&mut st.phase, Phase::Idle);
        if !matches!(phase, Phase::Queued) {
            self.slot.busy.store(false, Ordering::Release);
        }
        match phase {
            Phase::Idle if wake_on_done => Poll::Ready(Outcome::Done),
            Phase::Idle => Poll::Pending,
            Phase::Queued => {
                st.phase = Phase::Queued;
                st.wake_on_done = wake_on_done;
                match st.waker.as_ref() {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Phase::Partial(n) => Poll::Ready(Outcome::Rest {
                rest: st.bytes.split_off(n),
                sent: n,
            }),
            Phase::Failed(e, n) => Poll::Ready(Outcome::Failed(e, n)),
        }
    }

    /// Waits until the queued write, if any, has been made: `Done`, or what is left to do.
    pub async fn settle(&self) -> Outcome {
        poll_fn(|cx| self.poll_state(cx, true)).await
    }

    /// Whether no write is queued or left to settle.
    pub fn is_idle(&self) -> bool {
        !self.slot.busy.load(Ordering::Acquire)
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        if !self.is_idle() {
            self.slot.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn nothing_is_queued_without_a_current_thread_runtime() {
        install();
        let (a, _b) = pair().await;
        assert!(Deferred::new(a.as_raw_fd()).is_none());
    }

    #[tokio::test]
    async fn queued_writes_go_out_in_order_after_the_ready_tasks() {
        install();
        let (a, mut b) = pair().await;
        let d = Deferred::new(a.as_raw_fd()).expect("a current-thread runtime queues");
        assert!(d.queue(&[b"hello, ", b"world"], None));
        // One write at a time: a second is refused until the first is settled.
        assert!(!d.queue(&[b"again"], None));
        // Not made yet: the flusher runs after the tasks that are ready.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(d.poll_fault(&mut cx).is_pending());
        assert!(matches!(d.settle().await, Outcome::Done));
        let mut got = [0u8; 12];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello, world");
        assert!(d.queue(&[b"!"], None));
        assert!(matches!(d.settle().await, Outcome::Done));
        assert_eq!(b.read_u8().await.unwrap(), b'!');
    }

    #[tokio::test]
    async fn a_write_too_long_for_the_queue_is_left_to_the_caller() {
        install();
        let (a, _b) = pair().await;
        let d = Deferred::new(a.as_raw_fd()).unwrap();
        assert!(!d.queue(&[&vec![0u8; MAX_QUEUED + 1]], None));
        assert!(d.queue(&[&vec![0u8; MAX_QUEUED]], None));
    }

    #[tokio::test]
    async fn what_a_full_socket_does_not_take_goes_back_to_the_owner() {
        install();
        let (a, mut b) = pair().await;
        let d = Deferred::new(a.as_raw_fd()).unwrap();
        // Fill the socket's buffers (the peer reads nothing yet).
        let chunk = vec![7u8; MAX_QUEUED];
        let mut queued = 0usize;
        let rest = loop {
            assert!(d.queue(&[&chunk], None));
            queued += chunk.len();
            match d.settle().await {
                Outcome::Done => continue,
                Outcome::Rest { rest, .. } => break rest,
                Outcome::Failed(e, _) => panic!("write failed: {e}"),
            }
        };
        assert!(!rest.is_empty() && rest.len() <= chunk.len());
        // The peer gets every byte: those the flusher wrote, then the rest written here.
        let reader = tokio::spawn(async move {
            let mut total = 0usize;
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = b.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                assert!(buf[..n].iter().all(|&x| x == 7));
                total += n;
            }
            total
        });
        let mut a = a;
        tokio::io::AsyncWriteExt::write_all(&mut a, &rest)
            .await
            .unwrap();
        drop(d);
        drop(a);
        assert_eq!(reader.await.unwrap(), queued);
    }

    #[tokio::test]
    async fn a_failed_write_wakes_its_task_with_the_error() {
        install();
        let (a, _b) = pair().await;
        // This side's sending half is shut: a write then fails (EPIPE).
        // SAFETY: `a` is an open socket.
        assert_eq!(unsafe { libc::shutdown(a.as_raw_fd(), libc::SHUT_WR) }, 0);
        let d = Deferred::new(a.as_raw_fd()).unwrap();
        assert!(d.queue(&[b"x"], None));
        // Waiting for the answer only: woken because the write failed.
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            poll_fn(|cx| d.poll_fault(cx)),
        )
        .await
        .expect("the flusher wakes a task whose write failed");
        assert!(matches!(outcome, Outcome::Failed(_, 0)), "{outcome:?}");
        // The slot is free again.
        assert!(d.queue(&[b"y"], None));
    }

    #[tokio::test]
    async fn a_write_still_queued_when_its_owner_goes_is_made_at_once() {
        install();
        let (a, mut b) = pair().await;
        let d = Deferred::new(a.as_raw_fd()).unwrap();
        assert!(d.queue(&[b"last words"], None));
        drop(d);
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }
}
