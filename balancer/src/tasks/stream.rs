//! The task stream: the consumer group, reading new entries, taking over lapsed leases,
//! and the dead-letter stream for entries that make no sense.

use std::time::Duration;

use log::debug;
use redis::Value;

use super::store::{bytes, classify, reply, text, Store, StoreError, BLOCK, CALL_TIMEOUT};

/// The consumer group every balancer's workers share.
pub const GROUP: &str = "workers";
/// Dead-letter entries kept (approximately).
const DEAD_LETTER_MAX: usize = 10_000;

/// One stream entry handed to this balancer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The stream entry id (`1700000000000-0`).
    pub id: String,
    /// Its `task` field, if it has one that is text.
    pub task: Option<String>,
    /// Every field, for the dead-letter record of an entry that makes no sense.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Store {
    /// Creates the consumer group (and the stream) if missing.
    pub async fn ensure_group(&self) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(self.key("stream"))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.query::<()>("create the consumer group", &cmd).await {
            Err(StoreError::Redis { source, .. }) if source.to_string().contains("BUSYGROUP") => {
                Ok(())
            }
            other => other,
        }
    }

    /// New entries for `consumer`, at most `count`, waiting up to [`BLOCK`] for some.
    pub async fn read_new(&self, consumer: &str, count: usize) -> Result<Vec<Entry>, StoreError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.key("stream"))
            .arg(">");
        let mut conn = self.blocking.clone();
        let op = "read the task stream";
        let value: Value =
            match tokio::time::timeout(BLOCK + CALL_TIMEOUT, cmd.query_async(&mut conn)).await {
                Ok(r) => r.map_err(|e| classify(op, e))?,
                Err(_) => return Err(StoreError::Timeout { op }),
            };
        // Nil on timeout; else [[stream, [[id, [field, value, …]], …]]] (a map under RESP3).
        let streams = match value {
            Value::Nil => return Ok(Vec::new()),
            Value::Array(streams) => streams
                .into_iter()
                .filter_map(|s| match s {
                    Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
            other => return Err(reply(op, format!("{other:?}"))),
        };
        Ok(streams.into_iter().flat_map(entries).collect())
    }

    /// Takes over up to `count` entries whose holder has not renewed them for `min_idle`
    /// (their balancer died or stalled).
    pub async fn reclaim(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(self.key("stream"))
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count);
        let value: Value = self.query("claim lapsed tasks", &cmd).await?;
        match value {
            Value::Array(mut parts) if parts.len() >= 2 => Ok(entries(parts.swap_remove(1))),
            other => Err(reply("claim lapsed tasks", format!("{other:?}"))),
        }
    }

    /// Moves an entry that makes no sense to the dead-letter stream, with the reason, and
    /// releases it so it is not read again.
    pub async fn dead_letter(&self, entry: &Entry, reason: &str) -> Result<(), StoreError> {
        let stream = self.key("stream");
        let mut xadd = redis::cmd("XADD");
        xadd.arg(self.key("dead-letter"))
            .arg("MAXLEN")
            .arg("~")
            .arg(DEAD_LETTER_MAX)
            .arg("*")
            .arg("entry")
            .arg(&entry.id)
            .arg("reason")
            .arg(reason);
        for (k, v) in &entry.fields {
            xadd.arg(format!("field:{k}")).arg(v.as_slice());
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(xadd)
            .ignore()
            .cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(&entry.id)
            .ignore()
            .cmd("XDEL")
            .arg(&stream)
            .arg(&entry.id)
            .ignore();
        self.pipe::<()>("dead-letter an entry", &pipe).await
    }
}

/// Parses `[[id, [field, value, …]], …]` (entries with a nil body, deleted meanwhile, are
/// kept with no fields).
fn entries(v: Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut parts) = item else {
            continue;
        };
        if parts.is_empty() {
            continue;
        }
        let body = if parts.len() > 1 {
            parts.swap_remove(1)
        } else {
            Value::Nil
        };
        let Some(id) = text(parts.first()) else {
            continue;
        };
        let flat: Vec<Value> = match body {
            Value::Array(f) => f,
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => Vec::new(),
        };
        let mut fields = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let (Some(k), Some(v)) = (text(Some(&k)), bytes(v)) {
                fields.push((k, v));
            }
        }
        let task = fields
            .iter()
            .find(|(k, _)| k == "task")
            .and_then(|(_, v)| String::from_utf8(v.clone()).ok());
        if task.is_none() {
            debug!("stream entry {id} has no task field");
        }
        out.push(Entry { id, task, fields });
    }
    out
}
