//! Wire types shared by the deployment-agent and the balancer.
//!
//! Every frame on the agent's WebSocket (`/ws`) is one JSON text frame holding one
//! [`Message`], tagged by its `type` field:
//!
//! - `queue` (agent → balancer): the full weighted backend list, see [`Queue`].
//! - `report` (balancer → agent): what one balancer observed per backend, see [`Report`].
//!
//! Unknown fields are ignored everywhere so either side can grow the format without
//! breaking the other. An unknown `type` fails to decode; receivers log and skip it.

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod auth;
pub mod backoff;
pub mod config;
pub mod healthcheck;
pub mod net;
pub mod process;
pub mod prom;
pub mod redis_target;
pub mod units;
pub mod weights;

/// Utilization category of a backend container, as decided by the agent.
///
/// The categories name how *busy* a container is, and scores run the other way: a score is
/// 100 when idle and 0 when saturated, so a **low** score means **high** utilization. The
/// thresholds below are the agent's defaults (`LU_THRESHOLD`, `MU_THRESHOLD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Category {
    /// Started and accepting connections, not scored yet.
    #[serde(rename = "INIT")]
    Init,
    /// Low utilization: mostly idle, a high score (≥ 70).
    #[serde(rename = "LU")]
    Low,
    /// Medium utilization: a middling score (≥ 40, below the LU threshold).
    #[serde(rename = "MU")]
    Medium,
    /// High utilization: busy, a *low* score (< 40). Not "high score": this is the busiest
    /// category.
    #[serde(rename = "HU")]
    High,
    /// Chosen for removal: receives no new requests and is stopped once drained.
    #[serde(rename = "SUNDOWN")]
    Sundown,
}

impl Category {
    /// The name used on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Init => "INIT",
            Category::Low => "LU",
            Category::Medium => "MU",
            Category::High => "HU",
            Category::Sundown => "SUNDOWN",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One backend in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueItem {
    /// Stable identifier (the container id).
    pub id: String,
    /// Human-readable name (the container name).
    pub name: String,
    /// `host:port` the balancer connects to.
    pub address: String,
    /// Overall score, 0 (saturated) ..= 100 (idle).
    pub score: f64,
    pub category: Category,
}

/// The full backend list. `version` increases with every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    pub version: u64,
    pub items: Vec<QueueItem>,
    /// The agent built this list from the pool it has listed (Docker) in this run, so an
    /// empty `items` means no app container is running. Receivers never let a queue without
    /// it empty a non-empty backend table (an agent that has not observed anything yet, or
    /// one from before this field, must not take every backend away).
    #[serde(default)]
    pub observed: bool,
}

/// What one balancer observed for one backend during the last report interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendReport {
    /// The backend's [`QueueItem::id`].
    pub id: String,
    /// Requests sent to it during the interval (attempts started). Above `requests` while a
    /// backlog builds up, below while one is worked off; absent from older balancers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    /// Requests completed (response headers received or failed) during the interval.
    pub requests: u64,
    /// Of those, transport failures, timeouts and 5xx answers.
    pub errors: u64,
    /// Requests in flight at the time of the report (response bodies still streaming count).
    pub in_flight: u64,
    /// Median time to response headers during the interval, milliseconds.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile time to response headers during the interval, milliseconds.
    pub latency_p99_ms: Option<f64>,
}

/// A balancer's periodic report to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Identifies the reporting balancer (its host name or a random id).
    pub balancer: String,
    /// Length of the interval the counters cover, milliseconds.
    pub interval_ms: u64,
    /// Queue version the balancer was using when it sent the report.
    pub queue_version: u64,
    pub backends: Vec<BackendReport>,
    /// Tasks waiting in the app's shared task queue (delayed ones included), as this
    /// balancer last read it from Redis; absent when tasks are disabled or Redis is away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_queue_depth: Option<u64>,
}

/// One WebSocket frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Message {
    Queue(Queue),
    Report(Report),
}

impl Message {
    /// Decodes a text frame.
    pub fn decode(text: &str) -> Result<Message, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Encodes to the text-frame form.
    pub fn encode(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys,
        // and non-finite floats become `null`.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_brief_example() {
        let text = r#"{"type":"queue","version":42,"items":[
          {"id":"3f9c","name":"rustybalancer-app-3","address":"172.20.0.7:5000","score":83.5,"category":"LU"}]}"#;
        let msg = Message::decode(text).unwrap();
        let Message::Queue(q) = msg else {
            panic!("not a queue: {msg:?}")
        };
        assert_eq!(q.version, 42);
        assert_eq!(q.items[0].address, "172.20.0.7:5000");
        assert_eq!(q.items[0].category, Category::Low);
    }

    #[test]
    fn observed_defaults_to_false() {
        let Ok(Message::Queue(q)) = Message::decode(r#"{"type":"queue","version":1,"items":[]}"#)
        else {
            panic!("not a queue")
        };
        assert!(!q.observed);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let text = r#"{"type":"queue","version":1,"extra":true,"items":[
          {"id":"a","name":"n","address":"h:1","score":1,"category":"SUNDOWN","cpu":3}]}"#;
        assert!(matches!(Message::decode(text), Ok(Message::Queue(_))));
    }

    #[test]
    fn unknown_type_and_malformed_frames_fail() {
        assert!(Message::decode(r#"{"type":"hello"}"#).is_err());
        assert!(Message::decode(r#"{"version":1,"items":[]}"#).is_err());
        assert!(Message::decode("not json").is_err());
        assert!(Message::decode(r#"{"type":"queue","version":-1,"items":[]}"#).is_err());
        let bad_cat = r#"{"type":"queue","version":1,"items":[{"id":"a","name":"n","address":"h:1","score":1,"category":"XX"}]}"#;
        assert!(Message::decode(bad_cat).is_err());
    }

    #[test]
    fn round_trips() {
        let msgs = [
            Message::Queue(Queue {
                observed: true,
                version: 7,
                items: vec![QueueItem {
                    id: "id".into(),
                    name: "name".into(),
                    address: "127.0.0.1:80".into(),
                    score: 55.25,
                    category: Category::Init,
                }],
            }),
            Message::Report(Report {
                balancer: "b1".into(),
                interval_ms: 1000,
                queue_version: 7,
                backends: vec![BackendReport {
                    id: "id".into(),
                    started: Some(12),
                    requests: 10,
                    errors: 1,
                    in_flight: 2,
                    latency_p50_ms: Some(1.5),
                    latency_p99_ms: None,
                }],
                task_queue_depth: Some(3),
            }),
        ];
        for m in msgs {
            let text = m.encode();
            assert_eq!(Message::decode(&text).unwrap(), m, "{text}");
        }
        assert!(Message::Report(Report {
            balancer: "b".into(),
            interval_ms: 1,
            queue_version: 0,
            backends: vec![],
            task_queue_depth: None,
        })
        .encode()
        .starts_with(r#"{"type":"report""#));
    }
}
