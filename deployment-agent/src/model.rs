//! Plain data shared by the agent's modules: what a managed container is, what Docker
//! tells us about it, one stats sample, one event. No I/O here.

use serde::{Deserialize, Serialize};

pub use protocol::Category;

/// Label marking a container as managed by a deployment-agent.
pub const LABEL_MANAGED: &str = "rustybalancer.managed";
/// Label holding `APP_IDENTIFIER` (the brief's `application=$APP_IDENTIFIER`).
pub const LABEL_APPLICATION: &str = "application";
/// Label holding the port the app listens on, so an adopted container's address is known.
pub const LABEL_PORT: &str = "rustybalancer.port";

/// Milliseconds since the Unix epoch; the only clock type pure code sees.
pub type Millis = u64;

/// Sub-scores and the overall score of one container, each 0 (saturated) ..= 100 (idle).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub cpu: f64,
    pub memory: f64,
    pub network: f64,
    pub availability: f64,
    pub overall: f64,
}

/// One managed container as the agent tracks it (and persists it in Redis).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    /// Docker container id (full).
    pub id: String,
    /// Docker container name, e.g. `rustybalancer-app-3`.
    pub name: String,
    /// `ip:port` on the app network that balancers connect to (empty until known).
    pub address: String,
    /// Image reference the container runs.
    pub image: String,
    /// INIT until scored, then LU/MU/HU from the score, SUNDOWN once chosen for removal.
    pub category: Category,
    /// Latest scores; `None` until the first scoring round that had enough data.
    pub scores: Option<Scores>,
    /// When the agent created (or first adopted) it.
    pub created_ms: Millis,
    /// When it first accepted a TCP connection on the target port (entered the queue as INIT).
    pub ready_ms: Option<Millis>,
    /// When it was last scored.
    pub scored_ms: Option<Millis>,
    /// When it was marked SUNDOWN.
    pub sundown_ms: Option<Millis>,
    /// Queue version that first published it as SUNDOWN (drain waits for reports at or above it).
    pub sundown_version: Option<u64>,
    /// Balancers (report ids) connected when that version went out: the drain also waits for
    /// those that have disconnected since (they may still route to it) until they report
    /// again or the drain times out.
    pub sundown_balancers: Vec<String>,
}

#[cfg(test)]
impl Container {
    /// A ready container for unit tests: id `id-{name}`, every sub-score `overall`.
    pub fn fixture(name: &str, category: Category, overall: Option<f64>) -> Container {
        Container {
            id: format!("id-{name}"),
            name: name.into(),
            address: "10.0.0.2:5000".into(),
            image: "img".into(),
            category,
            scores: overall.map(|overall| Scores {
                cpu: overall,
                memory: overall,
                network: overall,
                availability: overall,
                overall,
            }),
            created_ms: 1_000,
            ready_ms: Some(2_000),
            scored_ms: None,
            sundown_ms: None,
            sundown_version: None,
            sundown_balancers: Vec::new(),
        }
    }
}

impl Container {
    /// Counts toward the pool size (everything but SUNDOWN).
    pub fn is_active(&self) -> bool {
        self.category != Category::Sundown
    }

    /// Has been scored and is not leaving: counts toward the load average.
    pub fn is_scored_active(&self) -> bool {
        matches!(
            self.category,
            Category::Low | Category::Medium | Category::High
        ) && self.scores.is_some()
    }

    /// Published to balancers (ready and not yet removed; SUNDOWN items stay visible
    /// with weight 0 so balancers stop sending new requests).
    pub fn is_published(&self) -> bool {
        self.ready_ms.is_some() && !self.address.is_empty()
    }

    pub fn overall(&self) -> Option<f64> {
        self.scores.map(|s| s.overall)
    }
}

/// What Docker reports about one of our containers (any state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub id: String,
    pub name: String,
    pub image: String,
    /// `running` (and not restarting/paused/exited/dead).
    pub running: bool,
    /// `ip:port` on the app network, when running and attached.
    pub address: Option<String>,
    /// Docker's creation time.
    pub created_ms: Millis,
}

/// One raw sample of Docker's stats API for one container (cumulative counters as
/// Docker gives them; `pre*` are Docker's previous-read values in the same frame).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StatsSample {
    pub at_ms: Millis,
    /// `cpu_stats.cpu_usage.total_usage`, nanoseconds.
    pub cpu_total_ns: u64,
    /// `precpu_stats.cpu_usage.total_usage`.
    pub precpu_total_ns: u64,
    /// `cpu_stats.system_cpu_usage`, nanoseconds (all CPUs of the host).
    pub system_ns: u64,
    /// `precpu_stats.system_cpu_usage`.
    pub presystem_ns: u64,
    /// `cpu_stats.online_cpus` (falls back to the per-CPU array length, then 1).
    pub online_cpus: u32,
    /// Memory in use: `memory_stats.usage` minus page cache (`inactive_file` on cgroup v2,
    /// `total_inactive_file` on v1) when present.
    pub mem_used: u64,
    /// `memory_stats.limit` (the host's memory when the container has no limit).
    pub mem_limit: u64,
    /// Sum over interfaces of `rx_bytes`.
    pub net_rx_bytes: u64,
    /// Sum over interfaces of `tx_bytes`.
    pub net_tx_bytes: u64,
}

/// What an [`Event`] records; on the wire and in Redis as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The control loop grew the desired size.
    ScaleUp,
    /// The control loop shrank the desired size (victims marked SUNDOWN).
    ScaleDown,
    /// `POST /scale` set the desired size.
    ScaleManual,
    ContainerStarted,
    /// It accepts connections: published as INIT.
    ContainerReady,
    /// A running labelled container the agent had no record of.
    ContainerAdopted,
    /// Its record's container is gone from Docker (it will be replaced).
    ContainerVanished,
    /// Exited, dead, or never ready: removed and replaced.
    ContainerReplaced,
    ContainerSundown,
    ContainerDrained,
    DrainTimeout,
    ContainerRemoved,
    /// The host's CPUs are saturated: scale-ups are held.
    HostSaturated,
    /// The host's CPUs are no longer saturated.
    HostRecovered,
    /// A kind this version does not know (written by a newer agent).
    #[serde(other)]
    Other,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ScaleUp => "scale_up",
            EventKind::ScaleDown => "scale_down",
            EventKind::ScaleManual => "scale_manual",
            EventKind::ContainerStarted => "container_started",
            EventKind::ContainerReady => "container_ready",
            EventKind::ContainerAdopted => "container_adopted",
            EventKind::ContainerVanished => "container_vanished",
            EventKind::ContainerReplaced => "container_replaced",
            EventKind::ContainerSundown => "container_sundown",
            EventKind::ContainerDrained => "container_drained",
            EventKind::DrainTimeout => "drain_timeout",
            EventKind::ContainerRemoved => "container_removed",
            EventKind::HostSaturated => "host_saturated",
            EventKind::HostRecovered => "host_recovered",
            EventKind::Other => "other",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One recorded decision or lifecycle event (kept, bounded, in Redis; served at `/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: Millis,
    pub kind: EventKind,
    /// One human-readable line: why.
    pub reason: String,
    /// The figures behind it (scores, counts, thresholds, ids).
    #[serde(default)]
    pub details: serde_json::Value,
}

/// Current wall-clock time in [`Millis`].
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
