//! Giving memory back after a burst.
//!
//! Allocators keep freed memory for reuse: after a thousand slow clients have gone, the
//! process would keep the RSS they needed. When the number of open connections has fallen to
//! half of its peak since the last time (a burst ended; checked every second) the free
//! memory is handed back: with mimalloc (the default) by `mi_collect` on every runtime
//! worker, with glibc malloc (`--no-default-features`) by `malloc_trim(0)`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::metrics::Metrics;

/// Bursts smaller than this many connections are not worth a trim.
const MIN_PEAK: u64 = 64;
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Whether a burst that peaked at `peak` open connections has ended (`now` open).
pub fn burst_ended(peak: u64, now: u64) -> bool {
    peak >= MIN_PEAK && now.saturating_mul(2) <= peak
}

/// Watches the open connection count and trims after each burst; runs until dropped.
/// `shards`: the runtimes of the other proxy shards ([`crate::shards`]), whose threads
/// free memory of their own.
pub async fn trim_after_bursts(metrics: Arc<Metrics>, shards: Vec<Handle>) {
    let mut peak = 0;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        let now = metrics.connections_active.load(Ordering::Relaxed);
        peak = peak.max(now);
        if burst_ended(peak, now) {
            log::debug!("connections fell from {peak} to {now}: returning free memory");
            give_back(&shards).await;
            peak = now;
        }
    }
}

/// Whether huge pages are turned off for a process with `threads` worker threads, when
/// `MIMALLOC_ALLOW_THP` is unset (set, mimalloc itself obeys it). mimalloc asks for
/// transparent huge pages for its arenas; with one worker thread that saved about 2 % CPU per
/// request on the proxy benchmark, for ~5 MiB more RSS. With one heap per thread (the
/// per-core shards) the RSS grew by ~8 MiB at 256 connections on two threads (31.9 instead of
/// 23.9 MiB) and the CPU per request did not measurably change, so they are turned off.
pub fn huge_pages_off(threads: usize, allow_thp_set: bool) -> bool {
    threads > 1 && !allow_thp_set
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`, which also
/// covers the memory mimalloc has already mapped); the error when the kernel refuses.
#[cfg(target_os = "linux")]
pub fn disable_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory descriptor.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub fn disable_huge_pages() -> std::io::Result<()> {
    Ok(())
}

/// glibc: one `malloc_trim` for the whole process, on a blocking thread (it walks every
/// arena and can take a while after a large burst).
#[cfg(not(feature = "mimalloc"))]
async fn give_back(_shards: &[Handle]) {
    let _ = tokio::task::spawn_blocking(trim).await;
}

/// mimalloc: each thread's heap holds the pages it freed and only that thread can give them
/// back (`mi_collect`), so a collection is run as a task on every runtime worker in turn
/// (a worker runs a task it spawned itself first, and yields between them), and on every
/// other shard's thread.
#[cfg(feature = "mimalloc")]
async fn give_back(shards: &[Handle]) {
    let collect = || async {
        // SAFETY: mi_collect only frees the calling thread's empty pages and purges
        // unused arena memory; it has no preconditions.
        unsafe { libmimalloc_sys::mi_collect(true) }
    };
    let workers = Handle::current().metrics().num_workers();
    for _ in 0..workers.max(1) {
        let _ = tokio::spawn(collect()).await;
    }
    for shard in shards {
        let _ = shard.spawn(collect()).await;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
fn trim() {
    // SAFETY: malloc_trim only walks and releases the allocator's free memory; it takes
    // the allocator's own locks and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(
    not(all(target_os = "linux", target_env = "gnu")),
    not(feature = "mimalloc")
))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_go_with_several_threads_unless_asked_for() {
        assert!(!huge_pages_off(1, false));
        assert!(huge_pages_off(2, false));
        assert!(
            !huge_pages_off(2, true),
            "MIMALLOC_ALLOW_THP set: mimalloc decides"
        );
    }

    #[test]
    fn trims_only_when_a_real_burst_has_halved() {
        assert!(!burst_ended(10, 0), "too small to matter");
        assert!(!burst_ended(1000, 501));
        assert!(burst_ended(1000, 500));
        assert!(burst_ended(64, 0));
        assert!(!burst_ended(0, 0));
    }
}
