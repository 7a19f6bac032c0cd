//! Publishing the queue: one frame per change, with a version that only grows.
//!
//! Versions are `max(previous + 1, wall-clock ms)`: increasing within a run, and across agent
//! restarts too without Redis (the clock has moved on). Nothing is published before the pool
//! has been observed (the channel holds `None` until then).

use std::sync::Arc;

use log::debug;
use protocol::{Message, Queue, QueueItem};
use tokio::sync::watch;

use crate::model::Millis;
use crate::push::QueueFrame;

pub struct Publisher {
    tx: watch::Sender<Option<QueueFrame>>,
    version: u64,
    published: Option<Vec<QueueItem>>,
}

impl Publisher {
    pub fn new(tx: watch::Sender<Option<QueueFrame>>) -> Publisher {
        Publisher {
            tx,
            version: 0,
            published: None,
        }
    }

    /// The version of the queue in force (0 before the first).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Publishes `items` if they differ from what is in force; returns the new version, or
    /// `None` when nothing changed.
    pub fn publish(&mut self, mut items: Vec<QueueItem>, now: Millis) -> Option<u64> {
        items.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        if self.published.as_ref() == Some(&items) {
            return None;
        }
        self.version = next_version(self.version, now);
        let text: Arc<str> = Message::Queue(Queue {
            version: self.version,
            items: items.clone(),
            observed: true,
        })
        .encode()
        .into();
        debug!("publishing queue v{} ({} items)", self.version, items.len());
        self.published = Some(items);
        self.tx.send_replace(Some(QueueFrame {
            version: self.version,
            text,
        }));
        Some(self.version)
    }
}

/// The version after `previous`: at least one more, and at least the wall clock.
pub fn next_version(previous: u64, now: Millis) -> u64 {
    (previous + 1).max(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Category;

    fn item(id: &str) -> QueueItem {
        QueueItem {
            id: id.into(),
            name: format!("app-{id}"),
            address: "10.0.0.2:5000".into(),
            score: 90.0,
            category: Category::Low,
        }
    }

    #[test]
    fn versions_only_grow_and_unchanged_queues_are_not_republished() {
        let (tx, rx) = watch::channel(None);
        let mut p = Publisher::new(tx);
        assert!(rx.borrow().is_none(), "nothing before the first publish");
        let v1 = p
            .publish(vec![], 1_000)
            .expect("the first queue goes out, even empty");
        assert_eq!(v1, 1_000);
        assert_eq!(p.publish(vec![], 2_000), None);
        let v2 = p.publish(vec![item("b"), item("a")], 1_500).unwrap();
        assert_eq!(v2, 1_500);
        // Same items in another order: no new version.
        assert_eq!(p.publish(vec![item("a"), item("b")], 3_000), None);
        // The clock went backwards (a restart on another host): still increasing.
        let v3 = p.publish(vec![item("a")], 10).unwrap();
        assert_eq!(v3, 1_501);
        let frame = rx.borrow().clone().unwrap();
        assert_eq!(frame.version, v3);
        assert!(frame.text.contains("\"observed\":true"));
    }
}
