//! The event log: every decision and lifecycle change, kept in memory (for `/events` while
//! Redis is away) and written to Redis by the round's persist step, in order, once per round.

use std::collections::VecDeque;

use log::info;

use crate::model::{now_ms, Event, EventKind};
use crate::store::{Store, StoreError};

/// Events kept in memory.
pub const MEMORY_EVENTS: usize = 200;

#[derive(Debug, Default)]
pub struct EventLog {
    /// Newest first, bounded.
    recent: VecDeque<Event>,
    /// Recorded but not yet written to Redis, newest first, bounded.
    unsaved: VecDeque<Event>,
}

impl EventLog {
    /// Records an event (logged at once, written to Redis by [`EventLog::flush`]).
    pub fn record(&mut self, kind: EventKind, reason: String, details: serde_json::Value) {
        info!("{kind}: {reason}");
        let event = Event {
            at_ms: now_ms(),
            kind,
            reason,
            details,
        };
        self.unsaved.push_front(event.clone());
        self.unsaved.truncate(MEMORY_EVENTS);
        self.recent.push_front(event);
        self.recent.truncate(MEMORY_EVENTS);
    }

    /// Newest first.
    pub fn recent(&self) -> impl Iterator<Item = &Event> {
        self.recent.iter()
    }

    pub fn unsaved(&self) -> usize {
        self.unsaved.len()
    }

    /// Writes the unsaved events to Redis, oldest first. With `lost_log` (Redis came back
    /// empty) everything memory holds is written again. Stops at the first failure; what is
    /// left stays unsaved for the next round.
    pub async fn flush(
        &mut self,
        store: &Store,
        max: usize,
        lost_log: bool,
    ) -> Result<usize, StoreError> {
        if lost_log {
            self.unsaved = self.recent.clone();
        }
        let mut written = 0;
        while let Some(event) = self.unsaved.back() {
            store.push_event(event, max).await?;
            self.unsaved.pop_back();
            written += 1;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_their_wire_names() {
        for (kind, name) in [
            (EventKind::ScaleUp, "scale_up"),
            (EventKind::ContainerReady, "container_ready"),
            (EventKind::DrainTimeout, "drain_timeout"),
        ] {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
            assert_eq!(kind.as_str(), name);
        }
        let future: EventKind = serde_json::from_str("\"container_teleported\"").unwrap();
        assert_eq!(future, EventKind::Other);
    }

    #[test]
    fn memory_is_bounded_and_newest_first() {
        let mut log = EventLog::default();
        for i in 0..MEMORY_EVENTS + 5 {
            log.record(EventKind::ScaleUp, format!("{i}"), serde_json::Value::Null);
        }
        assert_eq!(log.recent().count(), MEMORY_EVENTS);
        assert_eq!(log.unsaved(), MEMORY_EVENTS);
        let newest = log.recent().next().unwrap();
        assert_eq!(newest.reason, format!("{}", MEMORY_EVENTS + 4));
    }
}
