//! Waking `Prefer: wait=N` submissions when their task finishes.
//!
//! Whichever balancer finishes a task publishes its id on the `done` channel (inside the
//! same Lua script that records the final status). Every balancer keeps one subscriber
//! connection and wakes its local waiters. A waiter also re-reads the task every second, so
//! a message missed while the subscriber reconnects costs at most that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use log::{debug, info, warn};
use tokio::sync::{oneshot, watch};

use super::store::Store;

type Senders = HashMap<String, Vec<(u64, oneshot::Sender<()>)>>;

/// Local waiters by task id.
#[derive(Default)]
pub struct Waiters {
    map: Arc<Mutex<Senders>>,
    next: AtomicU64,
}

/// One registered wait; deregisters itself when dropped.
pub struct Waiter {
    pub rx: oneshot::Receiver<()>,
    id: String,
    token: u64,
    map: Arc<Mutex<Senders>>,
}

fn lock(m: &Mutex<Senders>) -> MutexGuard<'_, Senders> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Waiters {
    pub fn register(&self, id: &str) -> Waiter {
        let (tx, rx) = oneshot::channel();
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.map)
            .entry(id.to_string())
            .or_default()
            .push((token, tx));
        Waiter {
            rx,
            id: id.to_string(),
            token,
            map: self.map.clone(),
        }
    }

    /// Wakes everyone waiting for `id`.
    pub fn wake(&self, id: &str) {
        if let Some(senders) = lock(&self.map).remove(id) {
            for (_, tx) in senders {
                let _ = tx.send(());
            }
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.map).values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = lock(&self.map);
        if let Some(v) = map.get_mut(&self.id) {
            v.retain(|(t, _)| *t != self.token);
            if v.is_empty() {
                map.remove(&self.id);
            }
        }
    }
}

/// Subscribes to the `done` channel and wakes local waiters until shutdown; reconnects
/// with back-off while Redis is away.
pub async fn subscribe(store: Store, waiters: Arc<Waiters>, mut shutdown: watch::Receiver<bool>) {
    let channel = store.key("done");
    let mut delay = Duration::from_millis(100);
    let mut was_up = true;
    loop {
        let connected = async {
            let mut ps = store.client().get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let ps = tokio::select! {
            r = tokio::time::timeout(super::store::CALL_TIMEOUT, connected) => r,
            _ = crate::stopped(&mut shutdown) => return,
        };
        match ps {
            Ok(Ok(ps)) => {
                if !was_up {
                    info!("tasks: completion notifications resumed");
                }
                was_up = true;
                delay = Duration::from_millis(100);
                let mut messages = ps.into_on_message();
                loop {
                    tokio::select! {
                        m = messages.next() => match m {
                            Some(msg) => {
                                let id: String = msg.get_payload().unwrap_or_default();
                                waiters.wake(&id);
                            }
                            None => break,
                        },
                        _ = crate::stopped(&mut shutdown) => return,
                    }
                }
                debug!("tasks: notification connection closed; reconnecting");
            }
            Ok(Err(e)) => {
                if was_up {
                    warn!("tasks: cannot subscribe to completion notifications: {e}; retrying");
                }
                was_up = false;
            }
            Err(_) => {
                if was_up {
                    warn!("tasks: subscribing to completion notifications timed out; retrying");
                }
                was_up = false;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_wake_and_clean_up() {
        let w = Waiters::default();
        let mut a = w.register("t1");
        let mut b = w.register("t1");
        let c = w.register("t2");
        assert_eq!(w.len(), 3);
        w.wake("t1");
        assert!(a.rx.try_recv().is_ok());
        assert!(b.rx.try_recv().is_ok());
        drop(c);
        assert!(w.is_empty(), "a dropped waiter deregisters");
        w.wake("nobody");
    }
}
