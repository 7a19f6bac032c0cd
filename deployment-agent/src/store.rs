//! The Redis edge: the only module that talks to Redis.
//!
//! # Key schema
//!
//! Every key lives under the prefix `rustybalancer:{app}:` where `{app}` is `APP_IDENTIFIER`,
//! so several agents (apps) can share one Redis.
//!
//! | key | type | content |
//! |---|---|---|
//! | `rustybalancer:{app}:containers` | set | ids of the containers the agent tracks |
//! | `rustybalancer:{app}:container:{id}` | hash | one [`Container`], flat fields (below) |
//! | `rustybalancer:{app}:desired` | string | desired pool size (decimal `usize`) |
//! | `rustybalancer:{app}:events` | list | [`Event`]s as JSON, newest first, trimmed to a bound |
//!
//! Container hash fields: `id`, `name`, `address`, `image`, `category` (`INIT`, `LU`, `MU`,
//! `HU`, `SUNDOWN`), `created_ms`; when scored, all five of `cpu_score`, `memory_score`,
//! `network_score`, `availability_score`, `overall_score` (decimal `f64`); and, when set,
//! `ready_ms`, `scored_ms`, `sundown_ms`, `sundown_version`, `sundown_balancers` (one id per line). An absent option is an absent
//! field: a save replaces the whole hash (`DEL` + `HSET` + `SADD` in one `MULTI`/`EXEC`), so
//! fields cleared in memory are cleared in Redis too.
//!
//! # Connection
//!
//! [`Store::connect`] builds a [`ConnectionManager`] lazily: it only fails on an invalid URL,
//! so the agent starts while Redis is down. The connection is opened on first use and
//! re-opened after a failure; connect and response timeouts are 2 s (and every call is
//! bounded by [`CALL_TIMEOUT`]), so while Redis is down calls fail fast with an error for
//! which [`is_unavailable`] is true, and work again once Redis is back, on the same `Store`.
//! The caller retries with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, Value};

use crate::model::{Category, Container, Event, Scores};

/// Time limit for opening a connection and for each response.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound for one store call, reconnect included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Redis URL {url:?}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: Box<RedisError>,
    },
    #[error("Redis unavailable (while trying to {op}): {source}")]
    Unavailable {
        op: String,
        #[source]
        source: Box<RedisError>,
    },
    #[error("Redis did not answer within {}s (while trying to {op})", CALL_TIMEOUT.as_secs())]
    Timeout { op: String },
    #[error("Redis refused to {op}: {source}")]
    Redis {
        op: String,
        #[source]
        source: Box<RedisError>,
    },
    #[error("malformed value at {key}: {reason}")]
    Malformed { key: String, reason: String },
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

/// True when Redis could not be reached or did not answer (back off and retry).
pub fn is_unavailable(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::Unavailable { .. } | StoreError::Timeout { .. }
    )
}

fn classify(op: &str, err: RedisError) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind};
    let op = op.to_owned();
    let down = err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.kind(),
            ErrorKind::Server(ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown)
        );
    if down {
        StoreError::Unavailable {
            op,
            source: Box::new(err),
        }
    } else {
        StoreError::Redis {
            op,
            source: Box::new(err),
        }
    }
}

/// The agent's state in Redis; cheap to clone (clones share one connection).
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    prefix: Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Store {
    /// Prepares a store for `app` on the Redis at `url` (`redis://[:password@]host:port[/db]`).
    ///
    /// Lazy: fails only on an invalid URL. It tries one `PING` to log whether Redis is up,
    /// but returns the store either way (see the module docs). Needs a Tokio runtime.
    pub async fn connect(url: &str, app: &str) -> Result<Store, StoreError> {
        let invalid = |source| StoreError::InvalidUrl {
            url: redact(url),
            source: Box::new(source),
        };
        let client = redis::Client::open(url).map_err(invalid)?;
        let target = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(invalid)?;
        let store = Store {
            conn,
            prefix: Arc::from(format!("rustybalancer:{app}:")),
        };
        match store.ping().await {
            Ok(()) => info!("store: Redis at {target} is up (keys {}*)", store.prefix),
            Err(e) => warn!("store: Redis at {target} not reachable yet, will retry on use: {e}"),
        }
        Ok(store)
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>("ping", &redis::cmd("PING"))
            .await
            .map(|_| ())
    }

    /// Saves `c` (replacing its previous hash) and adds it to the container set, atomically.
    pub async fn save_container(&self, c: &Container) -> Result<(), StoreError> {
        let key = self.container_key(&c.id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&key)
            .ignore()
            .hset_multiple(&key, &container_fields(c))
            .ignore()
            .sadd(self.key("containers"), &c.id)
            .ignore();
        self.query_pipe::<()>(&format!("save container {}", c.id), &pipe)
            .await
    }

    /// One round's changes in one atomic pipeline: the containers whose record changed
    /// (each hash replaced), the ids to forget, and the desired size when it changed.
    pub async fn save_changes(
        &self,
        changed: &[&Container],
        forgotten: &[String],
        desired: Option<usize>,
    ) -> Result<(), StoreError> {
        if changed.is_empty() && forgotten.is_empty() && desired.is_none() {
            return Ok(());
        }
        let set = self.key("containers");
        let mut pipe = redis::pipe();
        pipe.atomic();
        for c in changed {
            let key = self.container_key(&c.id);
            pipe.del(&key)
                .ignore()
                .hset_multiple(&key, &container_fields(c))
                .ignore()
                .sadd(&set, &c.id)
                .ignore();
        }
        for id in forgotten {
            pipe.del(self.container_key(id))
                .ignore()
                .srem(&set, id)
                .ignore();
        }
        if let Some(n) = desired {
            pipe.set(self.key("desired"), n).ignore();
        }
        let what = format!(
            "save {} container(s), forget {}{}",
            changed.len(),
            forgotten.len(),
            if desired.is_some() {
                ", the desired size"
            } else {
                ""
            }
        );
        self.query_pipe::<()>(&what, &pipe).await
    }

    /// Forgets container `id` (hash and set membership), atomically. Absent ids are fine.
    pub async fn delete_container(&self, id: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.container_key(id))
            .ignore()
            .srem(self.key("containers"), id)
            .ignore();
        self.query_pipe::<()>(&format!("delete container {id}"), &pipe)
            .await
    }

    /// Every saved container, ordered by creation time. A malformed hash is logged and
    /// skipped; a set member without a hash is logged and removed from the set.
    pub async fn load_containers(&self) -> Result<Vec<Container>, StoreError> {
        let set_key = self.key("containers");
        let mut ids: Vec<String> = self
            .query("load container ids", redis::cmd("SMEMBERS").arg(&set_key))
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.container_key(id));
        }
        let hashes: Vec<Value> = self.query_pipe("load containers", &pipe).await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, value) in ids.iter().zip(hashes) {
            let key = self.container_key(id);
            let fields = match HashMap::<String, String>::from_redis_value(value) {
                Ok(fields) => fields,
                Err(e) => {
                    warn!("store: skipping malformed container hash {key}: {e}");
                    continue;
                }
            };
            if fields.is_empty() {
                warn!("store: container {id} is in {set_key} but has no hash; removing it from the set");
                let mut cmd = redis::cmd("SREM");
                cmd.arg(&set_key).arg(id);
                if let Err(e) = self
                    .query::<()>("remove a dangling container id", &cmd)
                    .await
                {
                    warn!("store: could not remove dangling id {id}: {e}");
                }
                continue;
            }
            match container_from_fields(id, &fields) {
                Ok(c) => out.push(c),
                Err(reason) => warn!("store: skipping malformed container hash {key}: {reason}"),
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    /// The persisted desired pool size, if any.
    pub async fn desired(&self) -> Result<Option<usize>, StoreError> {
        let key = self.key("desired");
        let raw: Option<String> = self
            .query("read the desired count", redis::cmd("GET").arg(&key))
            .await?;
        raw.map(|r| parse_field(&key, &r)).transpose()
    }

    pub async fn set_desired(&self, n: usize) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key("desired")).arg(n);
        self.query("save the desired count", &cmd).await
    }

    /// Records `event` and keeps only the newest `max` (at least 1), atomically.
    pub async fn push_event(&self, event: &Event, max: usize) -> Result<(), StoreError> {
        let json = serde_json::to_string(event).map_err(|source| StoreError::Encode {
            what: format!("event {}", event.kind),
            source,
        })?;
        let key = self.key("events");
        let last = isize::try_from(max.max(1)).unwrap_or(isize::MAX) - 1;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .lpush(&key, json)
            .ignore()
            .ltrim(&key, 0, last)
            .ignore();
        self.query_pipe::<()>(&format!("record event {}", event.kind), &pipe)
            .await
    }

    /// The newest `limit` events, newest first; malformed entries are logged and skipped.
    pub async fn events(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = self.key("events");
        let last = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(&key).arg(0).arg(last);
        let raw: Vec<String> = self.query("read events", &cmd).await?;
        Ok(raw
            .iter()
            .filter_map(|json| match serde_json::from_str(json) {
                Ok(event) => Some(event),
                Err(e) => {
                    warn!("store: skipping malformed event in {key}: {e}");
                    None
                }
            })
            .collect())
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn container_key(&self, id: &str) -> String {
        format!("{}container:{id}", self.prefix)
    }

    async fn query<T: FromRedisValue>(&self, op: &str, cmd: &Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async(&mut conn)).await {
            Ok(result) => result.map_err(|e| classify(op, e)),
            Err(_) => Err(StoreError::Timeout { op: op.to_owned() }),
        }
    }

    async fn query_pipe<T: FromRedisValue>(
        &self,
        op: &str,
        pipe: &Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(CALL_TIMEOUT, pipe.query_async(&mut conn)).await {
            Ok(result) => result.map_err(|e| classify(op, e)),
            Err(_) => Err(StoreError::Timeout { op: op.to_owned() }),
        }
    }
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn parse_field<T: std::str::FromStr>(key: &str, raw: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    raw.parse().map_err(|e| StoreError::Malformed {
        key: key.to_owned(),
        reason: format!("{raw:?}: {e}"),
    })
}

/// The hash fields of `c` (absent options are absent fields).
fn container_fields(c: &Container) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", c.id.clone()),
        ("name", c.name.clone()),
        ("address", c.address.clone()),
        ("image", c.image.clone()),
        ("category", c.category.as_str().to_owned()),
        ("created_ms", c.created_ms.to_string()),
    ];
    if let Some(s) = c.scores {
        fields.extend([
            ("cpu_score", s.cpu.to_string()),
            ("memory_score", s.memory.to_string()),
            ("network_score", s.network.to_string()),
            ("availability_score", s.availability.to_string()),
            ("overall_score", s.overall.to_string()),
        ]);
    }
    let optional = [
        ("ready_ms", c.ready_ms),
        ("scored_ms", c.scored_ms),
        ("sundown_ms", c.sundown_ms),
        ("sundown_version", c.sundown_version),
    ];
    fields.extend(
        optional
            .into_iter()
            .filter_map(|(name, v)| v.map(|v| (name, v.to_string()))),
    );
    if !c.sundown_balancers.is_empty() {
        // One id per line: ids are host names or configured names, never multi-line.
        fields.push(("sundown_balancers", c.sundown_balancers.join("\n")));
    }
    fields
}

/// Rebuilds a [`Container`] from its hash fields; `Err` names the first bad field.
fn container_from_fields(id: &str, f: &HashMap<String, String>) -> Result<Container, String> {
    fn required<'a>(f: &'a HashMap<String, String>, name: &str) -> Result<&'a str, String> {
        f.get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("missing field {name}"))
    }
    fn number<T: std::str::FromStr>(
        f: &HashMap<String, String>,
        name: &str,
    ) -> Result<Option<T>, String> {
        f.get(name)
            .map(|raw| {
                raw.parse()
                    .map_err(|_| format!("field {name}: {raw:?} is not a number"))
            })
            .transpose()
    }
    let stored_id = required(f, "id")?;
    if stored_id != id {
        return Err(format!("field id {stored_id:?} does not match the key"));
    }
    let raw_category = required(f, "category")?;
    let category: Category =
        serde_json::from_value(serde_json::Value::String(raw_category.to_owned()))
            .map_err(|_| format!("field category: unknown category {raw_category:?}"))?;
    let score_names = [
        "cpu_score",
        "memory_score",
        "network_score",
        "availability_score",
        "overall_score",
    ];
    let scores: Vec<Option<f64>> = score_names
        .iter()
        .map(|name| number(f, name))
        .collect::<Result<_, _>>()?;
    let scores = match scores.as_slice() {
        [Some(cpu), Some(memory), Some(network), Some(availability), Some(overall)] => {
            Some(Scores {
                cpu: *cpu,
                memory: *memory,
                network: *network,
                availability: *availability,
                overall: *overall,
            })
        }
        [None, None, None, None, None] => None,
        _ => return Err("some but not all score fields are present".to_owned()),
    };
    Ok(Container {
        id: id.to_owned(),
        name: required(f, "name")?.to_owned(),
        address: required(f, "address")?.to_owned(),
        image: required(f, "image")?.to_owned(),
        category,
        scores,
        created_ms: number(f, "created_ms")?.ok_or("missing field created_ms")?,
        ready_ms: number(f, "ready_ms")?,
        scored_ms: number(f, "scored_ms")?,
        sundown_ms: number(f, "sundown_ms")?,
        sundown_version: number(f, "sundown_version")?,
        sundown_balancers: f
            .get("sundown_balancers")
            .map(|v| v.lines().map(str::to_owned).collect())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Container {
        Container {
            id: "abc".into(),
            name: "rustybalancer-app-1".into(),
            address: "172.20.0.5:5000".into(),
            image: "rustybalancer/playground:latest".into(),
            category: Category::Medium,
            scores: Some(Scores {
                cpu: 12.5,
                memory: 0.1 + 0.2,
                network: 100.0,
                availability: 99.999,
                overall: 55.25,
            }),
            created_ms: 1,
            ready_ms: Some(2),
            scored_ms: None,
            sundown_ms: None,
            sundown_version: Some(42),
            sundown_balancers: vec!["bal-1".into(), "bal-2".into()],
        }
    }

    fn as_map(c: &Container) -> HashMap<String, String> {
        container_fields(c)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    #[test]
    fn fields_round_trip() {
        let c = sample();
        assert_eq!(container_from_fields("abc", &as_map(&c)), Ok(c.clone()));
        let bare = Container {
            scores: None,
            ready_ms: None,
            sundown_version: None,
            sundown_balancers: Vec::new(),
            category: Category::Init,
            ..c
        };
        let fields = as_map(&bare);
        assert!(!fields.contains_key("cpu_score") && !fields.contains_key("ready_ms"));
        assert_eq!(container_from_fields("abc", &fields), Ok(bare));
    }

    #[test]
    fn rejects_malformed_fields() {
        let good = as_map(&sample());
        let cases: [(&str, Option<&str>); 5] = [
            ("category", Some("XX")),
            ("created_ms", Some("soon")),
            ("cpu_score", None),
            ("name", None),
            ("id", Some("other")),
        ];
        for (field, value) in cases {
            let mut f = good.clone();
            match value {
                Some(v) => f.insert(field.to_owned(), v.to_owned()),
                None => f.remove(field),
            };
            assert!(
                container_from_fields("abc", &f).is_err(),
                "{field}={value:?}"
            );
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://:secret@redis:6379/0"),
            "redis://***@redis:6379/0"
        );
        assert_eq!(redact("redis://redis:6379"), "redis://redis:6379");
    }
}
