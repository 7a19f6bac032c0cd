//! Per-core serving (`RUNTIME_LAYOUT=per-core`, the default).
//!
//! With `N` worker threads the proxy runs as `N` shards: the caller's runtime is shard 0
//! (it also runs the admin listener, the agent link and the task workers) and every other
//! shard is a thread with a current-thread runtime of its own. Each shard accepts on its
//! own listening socket, bound to the same address with `SO_REUSEPORT` so the kernel
//! spreads new connections over them, and serves its connections start to end: a client
//! connection, the upstream connections its requests use and the timers that watch them
//! all belong to one thread's reactor, so no task is handed between threads and no wake-up
//! crosses a core (the work-stealing runtime paid for both on every request). What the
//! shards share is read-mostly or atomic: the backend queue, the cache, the metrics and
//! the connection cap.
//!
//! Idle upstream connections are kept per shard ([`PerShard`]): a connection's socket is
//! registered with the reactor of the shard that opened it.
//!
//! When a listener cannot be bound again (one bound without `SO_REUSEPORT`, as tests do)
//! the shards share its file description instead: every shard's reactor hears of a new
//! connection and the first to call `accept` takes it.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Listen backlog of the sockets bound here (std's own is 128).
const BACKLOG: u32 = 1024;

/// A shard keeps a connection it accepted unless it serves at least this many more than the
/// least busy shard ([`choose`]).
pub const MOVE_AT: u64 = 2;

thread_local! {
    /// The shard this thread serves; 0 for every thread not started by [`spawn`].
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Slots a [`PerShard`] made from now on has: the most shards any balancer of this process
/// has asked for.
static PLANNED: AtomicUsize = AtomicUsize::new(1);

/// The shard of the calling thread.
pub fn current() -> usize {
    SHARD.with(Cell::get)
}

/// The slots a [`PerShard`] made now gets.
pub fn planned() -> usize {
    PLANNED.load(Ordering::Relaxed)
}

/// Makes every [`PerShard`] created from now on hold at least `count` slots.
pub fn plan(count: usize) {
    PLANNED.fetch_max(count.max(1), Ordering::Relaxed);
}

/// One `T` per shard (a counter, a locked pool); a thread uses its shard's.
pub struct PerShard<T> {
    slots: Box<[T]>,
}

impl<T: Default> Default for PerShard<T> {
    fn default() -> Self {
        PerShard::with_slots(planned())
    }
}

impl<T: Default> PerShard<T> {
    pub fn with_slots(n: usize) -> Self {
        PerShard {
            slots: (0..n.max(1)).map(|_| T::default()).collect(),
        }
    }
}

impl<T> PerShard<T> {
    /// The calling thread's slot (shards past the slot count wrap around: still correct,
    /// only not local).
    pub fn local(&self) -> &T {
        self.slot(current())
    }

    pub fn slot(&self, shard: usize) -> &T {
        &self.slots[shard % self.slots.len()]
    }

    /// Every slot, in shard order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.slots.iter()
    }
}

/// Which shard serves a connection that shard `me` accepted, given the connections each
/// shard serves now (`open`, by shard): `me`, unless it serves at least [`MOVE_AT`] more than
/// the least busy shard, which then gets it.
///
/// `SO_REUSEPORT` spreads connections by a hash of their addresses, not by load: 64
/// connections typically land 36 / 28 on two shards, and the busier shard sets the tail
/// latency of all of them. Envoy's "exact balance" evens them out the same way (by count,
/// at accept time); nginx and HAProxy share one accept queue, where an idle worker takes
/// more. The slack of [`MOVE_AT`] keeps a shard from passing on connections back and forth
/// over a difference of one.
pub fn choose(open: &[u64], me: usize) -> usize {
    let Some((least, &fewest)) = open.iter().enumerate().min_by_key(|&(_, n)| *n) else {
        return me;
    };
    match open.get(me) {
        Some(&mine) if mine >= fewest.saturating_add(MOVE_AT) => least,
        _ => me,
    }
}

/// Binds a listening socket on `addr` that further shards can bind again
/// (`SO_REUSEADDR` and `SO_REUSEPORT`). Needs a runtime.
pub fn bind_shared(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// How a further shard listens next to `first`.
pub enum Sibling {
    /// Its own socket on the same address (`SO_REUSEPORT`).
    Own(std::net::TcpListener),
    /// `first`'s socket, shared.
    Shared(std::net::TcpListener),
}

impl Sibling {
    /// A listener for another shard: its own socket on `first`'s address when `first` was
    /// bound with [`bind_shared`], otherwise a duplicate of `first`. Needs a runtime.
    pub fn of(first: &TcpListener) -> io::Result<Sibling> {
        match bind_shared(first.local_addr()?) {
            Ok(own) => Ok(Sibling::Own(own.into_std()?)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let shared = std::net::TcpListener::from(first.as_fd().try_clone_to_owned()?);
                shared.set_nonblocking(true)?;
                Ok(Sibling::Shared(shared))
            }
            Err(e) => Err(e),
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Sibling::Own(_) => "its own socket (SO_REUSEPORT)",
            Sibling::Shared(_) => "the first shard's socket (bound without SO_REUSEPORT)",
        }
    }

    /// The listener, registered with the calling thread's runtime.
    pub fn into_tokio(self) -> io::Result<TcpListener> {
        let (Sibling::Own(l) | Sibling::Shared(l)) = self;
        TcpListener::from_std(l)
    }
}

/// A shard's thread.
pub struct ShardThread {
    pub handle: Handle,
    done: oneshot::Receiver<()>,
}

impl ShardThread {
    /// Completes when the shard's work has returned and its runtime has been shut down
    /// (its remaining tasks dropped).
    pub async fn finished(self) {
        // An error means the thread ended without saying so (a panic): finished as well.
        let _ = self.done.await;
    }
}

/// Starts shard `index` (at least 1): a thread named `shard-{index}` running `work` on a
/// current-thread runtime of its own.
pub fn spawn<F, Fut>(index: usize, work: F) -> io::Result<ShardThread>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let (tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("shard-{index}"))
        .spawn(move || {
            SHARD.with(|s| s.set(index));
            runtime.block_on(work());
            drop(runtime);
            let _ = tx.send(());
        })?;
    Ok(ShardThread { handle, done })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_moves_only_to_a_clearly_less_busy_shard() {
        // Level, or one apart: kept.
        assert_eq!(choose(&[5, 5], 0), 0);
        assert_eq!(choose(&[6, 5], 0), 0);
        assert_eq!(choose(&[5, 6], 1), 1);
        // Two or more apart: to the least busy.
        assert_eq!(choose(&[7, 5], 0), 1);
        assert_eq!(choose(&[5, 9, 3, 4], 1), 2);
        assert_eq!(choose(&[0, 2], 1), 0);
        // The least busy shard itself keeps it, however busy the others are.
        assert_eq!(choose(&[40, 2, 90], 1), 1);
        // Ties among the least busy: the first of them.
        assert_eq!(choose(&[9, 3, 3], 0), 1);
        // A shard past the slots (or none at all) keeps what it accepted.
        assert_eq!(choose(&[1, 1], 5), 5);
        assert_eq!(choose(&[], 0), 0);
        assert_eq!(choose(&[u64::MAX, u64::MAX], 0), 0);
    }

    #[test]
    fn choosing_evens_out_a_hashed_spread() {
        // Accepts arrive 3:1 at shard 0 (a hash can do that); each is placed by `choose`.
        let mut open = [0u64; 2];
        for n in 0..64 {
            let me = usize::from(n % 4 == 3);
            open[choose(&open, me)] += 1;
        }
        assert!(open[0].abs_diff(open[1]) < MOVE_AT, "{open:?}");
        assert_eq!(open.iter().sum::<u64>(), 64);
    }

    #[test]
    fn a_thread_uses_its_shards_slot() {
        let slots: std::sync::Arc<PerShard<std::sync::Mutex<Vec<usize>>>> =
            std::sync::Arc::new(PerShard::with_slots(3));
        slots.local().lock().unwrap().push(current());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for i in 1..=3 {
                let slots = slots.clone();
                let t = spawn(i, move || async move {
                    slots.local().lock().unwrap().push(current());
                })
                .unwrap();
                t.finished().await;
            }
        });
        // Shard 3 wraps onto slot 0.
        let seen: Vec<Vec<usize>> = slots.iter().map(|s| s.lock().unwrap().clone()).collect();
        assert_eq!(seen, [vec![0, 3], vec![1], vec![2]]);
    }

    #[tokio::test]
    async fn siblings_bind_again_or_share() {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let shared = bind_shared(loopback).unwrap();
        let sibling = Sibling::of(&shared).unwrap();
        assert!(matches!(sibling, Sibling::Own(_)), "{}", sibling.describe());
        let own = sibling.into_tokio().unwrap();
        assert_eq!(own.local_addr().unwrap(), shared.local_addr().unwrap());

        let plain = TcpListener::bind(loopback).await.unwrap();
        let sibling = Sibling::of(&plain).unwrap();
        assert!(
            matches!(sibling, Sibling::Shared(_)),
            "{}",
            sibling.describe()
        );
        let dup = sibling.into_tokio().unwrap();
        let addr = plain.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The connection waits in the one queue both descriptors accept from.
        let (_, peer) = dup.accept().await.unwrap();
        assert_eq!(peer.ip(), addr.ip());
    }
}
