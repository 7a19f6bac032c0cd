//! The task state machine in Redis (`balancer::tasks::store`, the Lua scripts), driven step by
//! step against a real `redis-server`, for the interleavings that are hard to reach through
//! HTTP:
//!
//! - `a_lapsed_lease_is_taken_over_and_the_stale_outcome_discarded`: consumer `a` starts an
//!   attempt and stalls; `b` claims the entry, starts attempt 2 and finishes it; `a`'s late
//!   outcome is refused (`Conflict`) and the task keeps `b`'s result.
//! - `a_taken_over_entry_with_no_backend_goes_back_to_the_queue`: `b` claims an entry but has
//!   no backend: the task is queued again (not left `running` with no entry), its lost
//!   attempt counted; when that was the last attempt the task is dead instead.
//! - `cancel_and_retry_follow_the_state_rules`.

use std::time::Duration;

use balancer::tasks::model::Status;
use balancer::tasks::now_ms;
use balancer::tasks::store::{Change, Start, Store, Submitted};
use testkit::RedisServer;

const TTL: Duration = Duration::from_secs(60);

async fn setup(app: &str) -> Option<(RedisServer, Store)> {
    let redis = RedisServer::start()?;
    let store = Store::connect(&redis.url(), app).expect("store");
    store.ensure_group().await.expect("group");
    Some((redis, store))
}

async fn submit(store: &Store, id: &str, max_attempts: &str) {
    let fields: [(&str, &[u8]); 6] = [
        ("method", b"POST"),
        ("path", b"/job"),
        ("headers", b"host: x\r\n"),
        ("body", b"payload"),
        ("attempts", b"0"),
        ("max_attempts", max_attempts.as_bytes()),
    ];
    let r = store
        .submit(id, None, now_ms(), 0, &fields)
        .await
        .expect("submit");
    assert_eq!(r, Submitted::Created);
}

async fn status(store: &Store, id: &str) -> Status {
    store
        .view(id)
        .await
        .expect("view")
        .expect("task exists")
        .status
}

#[tokio::test]
async fn a_lapsed_lease_is_taken_over_and_the_stale_outcome_discarded() {
    let Some((_redis, store)) = setup("lapsed-1").await else {
        return;
    };
    let id = "019ad9c1b6f3aaaaaaaaaaaaaaa1";
    submit(&store, id, "5").await;
    let entries = store.read_new("a", 10).await.expect("read");
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.task.as_deref(), Some(id));
    let Start::Run {
        attempt: 1,
        max_attempts: 5,
        request,
    } = store
        .start(&entry.id, id, "a", now_ms(), TTL)
        .await
        .expect("start")
    else {
        panic!("a could not start attempt 1");
    };
    assert_eq!(request[3].as_deref(), Some(&b"payload"[..]));
    assert!(
        store.renew(&entry.id, "a").await.unwrap(),
        "a holds the lease"
    );

    // `a` stalls past its lease; `b` takes the entry over.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let claimed = store
        .reclaim("b", Duration::from_millis(20), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, entry.id);
    assert!(
        !store.renew(&entry.id, "a").await.unwrap(),
        "a lost the lease"
    );
    let Start::Run { attempt: 2, .. } = store
        .start(&entry.id, id, "b", now_ms(), TTL)
        .await
        .expect("start")
    else {
        panic!("b could not start attempt 2");
    };
    let view = store.view(id).await.unwrap().unwrap();
    assert!(view.last_error.unwrap_or_default().contains("lapsed"));

    let result: [(&str, &[u8]); 5] = [
        ("r_status", b"200"),
        ("r_headers", b""),
        ("r_body", b"from b"),
        ("r_truncated", b"0"),
        ("r_size", b"6"),
    ];
    let b_done = store
        .finish(
            &entry.id,
            id,
            2,
            now_ms(),
            "succeeded",
            0,
            TTL,
            "app-b",
            "",
            &result,
        )
        .await
        .expect("b finishes");
    assert!(matches!(b_done, Change::Done(_)), "{b_done:?}");
    let a_late = store
        .finish(
            &entry.id,
            id,
            1,
            now_ms(),
            "failed",
            0,
            TTL,
            "app-a",
            "late",
            &[],
        )
        .await
        .expect("a's late outcome");
    assert!(matches!(a_late, Change::Conflict(_)), "{a_late:?}");
    assert_eq!(status(&store, id).await, Status::Succeeded);
    let stored = store.result(id).await.unwrap().expect("a result");
    assert_eq!(stored.body, b"from b");
}

#[tokio::test]
async fn a_taken_over_entry_with_no_backend_goes_back_to_the_queue() {
    let Some((_redis, store)) = setup("lapsed-2").await else {
        return;
    };
    for (id, max, want) in [
        ("019ad9c1b6f3aaaaaaaaaaaaaaa2", "5", Status::Queued),
        ("019ad9c1b6f3aaaaaaaaaaaaaaa3", "1", Status::Dead),
    ] {
        submit(&store, id, max).await;
        let entries = store.read_new("a", 10).await.expect("read");
        let entry = entries
            .iter()
            .find(|e| e.task.as_deref() == Some(id))
            .unwrap();
        assert!(matches!(
            store
                .start(&entry.id, id, "a", now_ms(), TTL)
                .await
                .unwrap(),
            Start::Run { attempt: 1, .. }
        ));
        tokio::time::sleep(Duration::from_millis(30)).await;
        // (The first round's attempt 2, never finished, is claimable too: skip it.)
        let claimed: Vec<_> = store
            .reclaim("b", Duration::from_millis(20), 10)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.task.as_deref() == Some(id))
            .collect();
        assert_eq!(claimed.len(), 1);
        let change = store
            .defer(&claimed[0].id, id, now_ms() + 50, now_ms(), TTL)
            .await
            .expect("defer");
        assert_eq!(status(&store, id).await, want, "{change:?}");
        let view = store.view(id).await.unwrap().unwrap();
        assert_eq!(view.attempts, 1, "the lost attempt counts");
        if want == Status::Queued {
            assert_eq!(change, Change::Queued);
            assert!(view.next_attempt_at.is_some());
            // Due again: promoted onto the stream and runnable as attempt 2.
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert_eq!(store.promote(now_ms(), 10).await.unwrap(), 1);
            let again = store.read_new("b", 10).await.unwrap();
            assert_eq!(again.len(), 1);
            assert!(matches!(
                store
                    .start(&again[0].id, id, "b", now_ms(), TTL)
                    .await
                    .unwrap(),
                Start::Run { attempt: 2, .. }
            ));
        } else {
            assert!(matches!(change, Change::Done(_)), "{change:?}");
        }
    }
}

#[tokio::test]
async fn cancel_and_retry_follow_the_state_rules() {
    let Some((_redis, store)) = setup("rules").await else {
        return;
    };
    let id = "019ad9c1b6f3aaaaaaaaaaaaaaa4";
    submit(&store, id, "1").await;
    assert!(matches!(store.retry(id).await.unwrap(), Change::Conflict(s) if s == "queued"));
    let entry = store.read_new("a", 10).await.unwrap().remove(0);
    store
        .start(&entry.id, id, "a", now_ms(), TTL)
        .await
        .unwrap();
    assert!(
        matches!(store.cancel(id, now_ms(), TTL).await.unwrap(), Change::Conflict(s) if s == "running")
    );
    let done = store
        .finish(
            &entry.id,
            id,
            1,
            now_ms(),
            "dead",
            0,
            TTL,
            "app",
            "boom",
            &[],
        )
        .await
        .unwrap();
    assert!(matches!(done, Change::Done(_)));
    assert_eq!(store.retry(id).await.unwrap(), Change::Queued);
    assert_eq!(status(&store, id).await, Status::Queued);
    assert!(matches!(
        store.cancel(id, now_ms(), TTL).await.unwrap(),
        Change::Done(_)
    ));
    assert_eq!(status(&store, id).await, Status::Cancelled);
    // The cancelled task's stream entry is skipped, not run.
    let entry = store.read_new("a", 10).await.unwrap().remove(0);
    assert!(matches!(
        store.start(&entry.id, id, "a", now_ms(), TTL).await.unwrap(),
        Start::Skip(s) if s == "cancelled"
    ));
    let unknown = "019ad9c1b6f3aaaaaaaaaaaaaaa5";
    assert_eq!(
        store.cancel(unknown, now_ms(), TTL).await.unwrap(),
        Change::Missing
    );
    assert_eq!(store.retry(unknown).await.unwrap(), Change::Missing);
}
