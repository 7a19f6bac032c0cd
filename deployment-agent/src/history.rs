//! The dashboard's memory: one [`Sample`] of the pool per control round over the last
//! [`WINDOW`], and the scaling decisions in that time as [`Mark`]s. Pure: fed with the
//! snapshots the control loop publishes, no I/O (served by `GET /history` and `/stream`).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use crate::model::{Category, Event, EventKind, Millis};
use crate::reconcile::Snapshot;

/// How far back the history goes.
pub const WINDOW: Duration = Duration::from_secs(600);

/// The pool at the end of one control round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub at_ms: Millis,
    pub desired: usize,
    /// Containers not in SUNDOWN (INIT included).
    pub active: usize,
    pub sundown: usize,
    pub init: usize,
    /// Pool totals from the balancers' reports (`PANIC_WINDOW`); `None` when no balancer
    /// reported on any container in that window.
    pub requests_per_s: Option<f64>,
    /// The worst container's p99: a pool-wide percentile cannot be rebuilt from
    /// per-container ones, and the worst is what an operator looks for.
    pub latency_p99_ms: Option<f64>,
    pub errors_per_s: Option<f64>,
    pub in_flight: Option<f64>,
    /// Overall score per container name (`None` until scored).
    pub scores: BTreeMap<String, Option<f64>>,
}

/// A scaling decision on the time axis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mark {
    pub at_ms: Millis,
    pub kind: EventKind,
    pub reason: String,
}

/// What one round added: the sample, and the events recorded since the previous round
/// (newest first).
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub sample: Sample,
    pub events: Vec<Event>,
}

/// The kinds of events drawn as marks on the pool-size chart.
pub fn is_mark(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::ScaleUp
            | EventKind::ScaleDown
            | EventKind::ScaleManual
            | EventKind::ContainerSundown
    )
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Sample {
    /// The sample of one snapshot.
    pub fn of(snap: &Snapshot) -> Sample {
        let mut sample = Sample {
            at_ms: snap.at_ms,
            desired: snap.desired,
            active: snap.active,
            sundown: 0,
            init: 0,
            requests_per_s: None,
            latency_p99_ms: None,
            errors_per_s: None,
            in_flight: None,
            scores: BTreeMap::new(),
        };
        let add = |slot: &mut Option<f64>, x: f64| *slot = Some(slot.unwrap_or(0.0) + x);
        for v in &snap.containers {
            let c = &v.container;
            match c.category {
                Category::Sundown => sample.sundown += 1,
                Category::Init => sample.init += 1,
                _ => {}
            }
            sample
                .scores
                .insert(c.name.clone(), c.overall().map(round3));
            if let Some(t) = &v.traffic {
                add(&mut sample.requests_per_s, t.requests_per_s);
                add(&mut sample.errors_per_s, t.errors_per_s);
                add(&mut sample.in_flight, t.in_flight);
                if let Some(p99) = t.latency_p99_ms {
                    sample.latency_p99_ms = Some(sample.latency_p99_ms.map_or(p99, |m| m.max(p99)));
                }
            }
        }
        for x in [
            &mut sample.requests_per_s,
            &mut sample.latency_p99_ms,
            &mut sample.errors_per_s,
            &mut sample.in_flight,
        ] {
            *x = x.map(round3);
        }
        sample
    }
}

/// The last [`WINDOW`] of samples and marks.
#[derive(Debug, Clone, Default)]
pub struct History {
    window_ms: Millis,
    samples: VecDeque<Sample>,
    marks: VecDeque<Mark>,
    /// The newest event already seen, to find the new ones in the next snapshot.
    newest_seen: Option<Event>,
}

impl History {
    pub fn new(window: Duration) -> History {
        History {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            ..History::default()
        }
    }

    /// Adds the round `snap` describes; returns what it added. A snapshot with no time (the
    /// placeholder before the first round) or not newer than the last sample adds nothing.
    pub fn record(&mut self, snap: &Snapshot) -> Option<Tick> {
        if snap.at_ms == 0 || self.samples.back().is_some_and(|s| s.at_ms >= snap.at_ms) {
            return None;
        }
        let sample = Sample::of(snap);
        // `recent_events` is newest first; the new ones are those before the newest seen
        // (all of them if it has scrolled out of the bounded list).
        let events: Vec<Event> = snap
            .recent_events
            .iter()
            .take_while(|e| Some(*e) != self.newest_seen.as_ref())
            .cloned()
            .collect();
        if let Some(newest) = snap.recent_events.first() {
            self.newest_seen = Some(newest.clone());
        }
        for e in events.iter().rev().filter(|e| is_mark(e.kind)) {
            self.marks.push_back(Mark {
                at_ms: e.at_ms,
                kind: e.kind,
                reason: e.reason.clone(),
            });
        }
        self.samples.push_back(sample.clone());
        let horizon = snap.at_ms.saturating_sub(self.window_ms);
        while self.samples.front().is_some_and(|s| s.at_ms < horizon) {
            self.samples.pop_front();
        }
        while self.marks.front().is_some_and(|m| m.at_ms < horizon) {
            self.marks.pop_front();
        }
        Some(Tick { sample, events })
    }

    /// Oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    /// Oldest first.
    pub fn marks(&self) -> impl Iterator<Item = &Mark> {
        self.marks.iter()
    }

    /// The `GET /history` document.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "window_s": self.window_ms / 1000,
            "samples": self.samples,
            "marks": self.marks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::ContainerView;
    use crate::traffic::Observed;

    fn view(name: &str, category: Category, score: Option<f64>, rps: Option<f64>) -> ContainerView {
        ContainerView {
            traffic: rps.map(|r| Observed {
                requests_per_s: r,
                started_per_s: r,
                in_flight: r / 10.0,
                latency_p50_ms: Some(r / 2.0),
                latency_p99_ms: Some(r),
                errors_per_s: 0.5,
            }),
            ..ContainerView::fixture(name, category, score)
        }
    }

    fn event(at_ms: Millis, kind: EventKind, reason: &str) -> Event {
        Event {
            at_ms,
            kind,
            reason: reason.into(),
            details: serde_json::Value::Null,
        }
    }

    fn snap(at_ms: Millis, events: &[Event]) -> Snapshot {
        Snapshot {
            at_ms,
            desired: 3,
            active: 2,
            containers: vec![
                view("a", Category::Low, Some(90.123_44), Some(10.0)),
                view("b", Category::Init, None, None),
                view("c", Category::Sundown, Some(50.0), Some(4.0)),
            ],
            recent_events: events.iter().rev().cloned().collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_sample_sums_the_traffic_and_keeps_the_worst_p99() {
        let s = Sample::of(&snap(5_000, &[]));
        assert_eq!((s.desired, s.active, s.sundown, s.init), (3, 2, 1, 1));
        assert_eq!(s.requests_per_s, Some(14.0));
        assert_eq!(s.errors_per_s, Some(1.0));
        assert_eq!(s.in_flight, Some(1.4));
        assert_eq!(s.latency_p99_ms, Some(10.0));
        assert_eq!(s.scores["a"], Some(90.123));
        assert_eq!(s.scores["b"], None);
        // No report at all: no figure, not a zero.
        let mut quiet = snap(5_000, &[]);
        for v in &mut quiet.containers {
            v.traffic = None;
        }
        let q = Sample::of(&quiet);
        assert_eq!((q.requests_per_s, q.latency_p99_ms), (None, None));
    }

    #[test]
    fn new_events_are_found_once_and_scaling_ones_become_marks() {
        let mut h = History::new(WINDOW);
        let e1 = event(1_000, EventKind::ContainerStarted, "started a");
        let e2 = event(1_500, EventKind::ScaleUp, "desired 2 -> 3");
        let t = h.record(&snap(2_000, &[e1.clone(), e2.clone()])).unwrap();
        assert_eq!(t.events, vec![e2.clone(), e1.clone()]);
        // Same events again: nothing new.
        let t = h.record(&snap(4_000, &[e1.clone(), e2.clone()])).unwrap();
        assert!(t.events.is_empty());
        let e3 = event(5_000, EventKind::ScaleManual, "desired set to 4");
        let t = h.record(&snap(6_000, &[e1, e2, e3.clone()])).unwrap();
        assert_eq!(t.events, vec![e3]);
        let marks: Vec<EventKind> = h.marks().map(|m| m.kind).collect();
        assert_eq!(marks, [EventKind::ScaleUp, EventKind::ScaleManual]);
        assert_eq!(h.samples().count(), 3);
    }

    #[test]
    fn the_window_is_trimmed_and_stale_snapshots_ignored() {
        let mut h = History::new(Duration::from_secs(10));
        assert!(
            h.record(&snap(0, &[])).is_none(),
            "the placeholder snapshot"
        );
        let old = event(1_000, EventKind::ScaleDown, "desired 3 -> 2");
        for t in 1..=20u64 {
            assert!(h
                .record(&snap(t * 1_000, std::slice::from_ref(&old)))
                .is_some());
        }
        assert!(h.record(&snap(20_000, &[])).is_none(), "not newer");
        let times: Vec<Millis> = h.samples().map(|s| s.at_ms).collect();
        assert_eq!(times.first(), Some(&10_000));
        assert_eq!(times.len(), 11);
        assert_eq!(h.marks().count(), 0, "the mark at 1 s is out of the window");
        let doc = h.to_json();
        assert_eq!(doc["window_s"], 10);
        assert_eq!(doc["samples"].as_array().map(Vec::len), Some(11));
    }
}
