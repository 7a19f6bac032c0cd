//! The workers of one balancer, and its share of the housekeeping.
//!
//! - **fetch**: while a worker is free and a backend is selectable, `XREADGROUP` new entries
//!   (up to the free workers) under this balancer's consumer name.
//! - **reclaim**: `XAUTOCLAIM` entries whose lease lapsed (not renewed for `TASK_LEASE`: their
//!   balancer died or stalled) and run them here.
//! - **jobs**: each entry runs as one attempt ([`super::attempt`]) holding a worker slot.
//! - **housekeeping**: due delayed tasks onto the stream (100 ms), queue gauges (1 s), index
//!   sweep and forgotten consumers (60 s).
//!
//! On shutdown, fetching stops and running attempts get `SHUTDOWN_GRACE` to finish; any
//! still running then are abandoned, and their leases lapse so another balancer takes them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, error, info, warn};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::store::{Store, StoreError};
use super::stream::Entry;
use super::{notify, now_ms, Tasks};

/// Most entries read or claimed at once.
const MAX_BATCH: usize = 64;
const PROMOTE_EVERY: Duration = Duration::from_millis(100);
/// Delayed tasks moved per script call (one short Redis script each)...
const PROMOTE_BATCH: usize = 500;
/// ... and at most this many calls per tick.
const PROMOTE_MAX_BATCHES: usize = 100;
const STATS_EVERY: Duration = Duration::from_secs(1);
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Consumers idle this long with nothing pending are removed from the group.
const FORGET_CONSUMERS_AFTER_MS: u64 = 86_400_000;

/// One stream entry for a worker, with the worker slot it holds.
pub(super) struct Job {
    pub entry: Entry,
    pub permit: OwnedSemaphorePermit,
}

/// Adds free worker slots to `held`, up to [`MAX_BATCH`], without waiting.
fn take_free(permits: &Arc<Semaphore>, held: &mut Vec<OwnedSemaphorePermit>) {
    while held.len() < MAX_BATCH {
        match permits.clone().try_acquire_owned() {
            Ok(p) => held.push(p),
            Err(_) => break,
        }
    }
}

/// Hands each entry to a worker with one of the `held` slots; `false` once the workers are
/// gone (shutdown).
async fn hand_out(
    entries: Vec<Entry>,
    held: &mut Vec<OwnedSemaphorePermit>,
    tx: &mpsc::Sender<Job>,
) -> bool {
    for entry in entries {
        let Some(permit) = held.pop() else {
            // Never more entries than slots were asked for.
            break;
        };
        let job = Job { entry, permit };
        if tx.send(job).await.is_err() {
            return false;
        }
    }
    true
}

impl Tasks {
    /// Runs the workers and housekeeping until shutdown, then drains running attempts.
    pub async fn run(self: Arc<Self>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        info!(
            "tasks: {} workers as consumer {} on Redis {} (prefix {}, lease {:?})",
            self.cfg.workers,
            self.consumer,
            self.redis_at,
            store.prefix(),
            self.cfg.lease
        );
        let permits = Arc::new(Semaphore::new(self.cfg.workers));
        let (tx, mut rx) = mpsc::channel::<Job>(self.cfg.workers);
        let loops = async {
            tokio::join!(
                self.fetch_loop(&store, &permits, tx.clone()),
                self.reclaim_loop(&store, &permits, tx.clone()),
                self.housekeeping(&store),
                notify::subscribe(store.clone(), self.waiters.clone(), self.shutdown.clone()),
            )
        };
        let mut loops = std::pin::pin!(loops);
        let mut jobs = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut loops => break,
                Some(job) = rx.recv() => {
                    jobs.spawn(self.clone().job(job));
                }
                Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                    if let Err(e) = done {
                        error!("tasks: a worker failed: {e}");
                    }
                }
            }
        }
        if !jobs.is_empty() {
            info!(
                "tasks: waiting up to {:?} for {} running attempts",
                self.shutdown_grace,
                jobs.len()
            );
        }
        let drain = async { while jobs.join_next().await.is_some() {} };
        if tokio::time::timeout(self.shutdown_grace, drain)
            .await
            .is_err()
        {
            warn!(
                "tasks: {} attempts still running after the grace period; abandoned (their leases lapse and another balancer takes them over)",
                jobs.len()
            );
            jobs.abort_all();
        }
        info!("tasks: workers stopped");
    }

    pub(super) fn selectable(&self) -> bool {
        self.dispatch.backends().load().selector.eligible() > 0
    }

    /// Records that Redis answers (or not), logging only the transitions.
    pub(super) fn redis_state(&self, up: Result<(), &StoreError>) {
        let was = self.metrics.redis_up.swap(up.is_ok(), Ordering::Relaxed);
        match up {
            Ok(()) if !was => info!("tasks: Redis at {} is reachable", self.redis_at),
            Err(e) if was => warn!(
                "tasks: Redis at {} unavailable: {e}; retrying",
                self.redis_at
            ),
            Err(e) => debug!("tasks: Redis still unavailable: {e}"),
            Ok(()) => {}
        }
    }

    /// Sleeps `d` unless shutdown comes first; `false` on shutdown.
    async fn pause(&self, d: Duration) -> bool {
        let mut stop = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = crate::stopped(&mut stop) => false,
        }
    }

    /// Records a Redis failure and waits `backoff` (then doubled, up to 5 s) before the next
    /// try; `false` on shutdown.
    async fn after_failure(&self, e: &StoreError, backoff: &mut Duration) -> bool {
        self.redis_state(Err(e));
        let go_on = self.pause(*backoff).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
        go_on
    }

    async fn fetch_loop(&self, store: &Store, permits: &Arc<Semaphore>, tx: mpsc::Sender<Job>) {
        let mut stop = self.shutdown.clone();
        let mut group_ready = false;
        let mut backoff = Duration::from_millis(100);
        loop {
            let first = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = crate::stopped(&mut stop) => return,
            };
            let mut held = vec![first];
            take_free(permits, &mut held);
            if !self.selectable() {
                // Leave the tasks in the stream for a balancer that has backends.
                drop(held);
                if !self.pause(Duration::from_millis(250)).await {
                    return;
                }
                continue;
            }
            if !group_ready {
                match store.ensure_group().await {
                    Ok(()) => group_ready = true,
                    Err(e) => {
                        drop(held);
                        if !self.after_failure(&e, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let read = tokio::select! {
                r = store.read_new(&self.consumer, held.len()) => r,
                _ = crate::stopped(&mut stop) => return,
            };
            match read {
                Ok(entries) => {
                    self.redis_state(Ok(()));
                    backoff = Duration::from_millis(100);
                    if !hand_out(entries, &mut held, &tx).await {
                        return;
                    }
                }
                Err(e) if e.is_no_group() => {
                    info!("tasks: the consumer group is gone (Redis lost its data?); creating it again");
                    group_ready = false;
                }
                Err(e) => {
                    drop(held);
                    if !self.after_failure(&e, &mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    async fn reclaim_loop(&self, store: &Store, permits: &Arc<Semaphore>, tx: mpsc::Sender<Job>) {
        let every = (self.cfg.lease / 3).clamp(Duration::from_millis(250), Duration::from_secs(10));
        loop {
            if !self.pause(every).await {
                return;
            }
            let mut held = Vec::new();
            take_free(permits, &mut held);
            if held.is_empty() || !self.selectable() {
                continue;
            }
            match store
                .reclaim(&self.consumer, self.cfg.lease, held.len())
                .await
            {
                Ok(entries) => {
                    for entry in &entries {
                        info!(
                            "tasks: took over stream entry {} (task {}) after its lease lapsed",
                            entry.id,
                            entry.task.as_deref().unwrap_or("?")
                        );
                    }
                    let n = entries.len() as u64;
                    self.metrics.reclaimed.fetch_add(n, Ordering::Relaxed);
                    if !hand_out(entries, &mut held, &tx).await {
                        return;
                    }
                }
                Err(e) if e.is_no_group() => debug!("tasks: no consumer group to reclaim from yet"),
                Err(e) => self.redis_state(Err(&e)),
            }
        }
    }

    /// Moves due delayed tasks onto the stream, in batches until none is left (a burst of
    /// retries or delayed tasks becomes runnable at once, not at one batch per tick).
    async fn promote_due(&self, store: &Store) {
        for _ in 0..PROMOTE_MAX_BATCHES {
            match store.promote(now_ms(), PROMOTE_BATCH).await {
                Ok(n) if n < PROMOTE_BATCH as u64 => return,
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => return self.redis_state(Err(&e)),
            }
        }
    }

    async fn housekeeping(&self, store: &Store) {
        let mut stop = self.shutdown.clone();
        let mut promote = tokio::time::interval(PROMOTE_EVERY);
        let mut stats = tokio::time::interval(STATS_EVERY);
        let mut sweep =
            tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
        for i in [&mut promote, &mut stats, &mut sweep] {
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = promote.tick() => self.promote_due(store).await,
                _ = stats.tick() => {
                    let s = store.stats().await;
                    self.shared.task_queue_depth.store(
                        s.as_ref().map_or(u64::MAX, |s| s.queued),
                        Ordering::Relaxed,
                    );
                    if let Ok(mut slot) = self.metrics.stats.lock() {
                        *slot = s.as_ref().ok().copied();
                    }
                    self.redis_state(s.as_ref().map(|_| ()));
                }
                _ = sweep.tick() => {
                    match store.sweep(256).await {
                        Ok(0) => {}
                        Ok(n) => debug!("tasks: swept {n} expired ids from the indexes"),
                        Err(e) => debug!("tasks: index sweep failed: {e}"),
                    }
                    match store.forget_consumers(FORGET_CONSUMERS_AFTER_MS).await {
                        Ok(0) => {}
                        Ok(n) => info!("tasks: removed {n} idle consumers of balancers long gone"),
                        Err(e) => debug!("tasks: consumer clean-up failed: {e}"),
                    }
                }
                _ = crate::stopped(&mut stop) => return,
            }
        }
    }
}
