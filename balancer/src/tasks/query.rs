//! Reading tasks back: one task's status, its stored result, a page of the listing, queue
//! gauges, and the janitor that keeps the indexes to what still exists.

use redis::Value;
use serde::Serialize;

use super::model::{id_time_ms, rfc3339, Status};
use super::store::{bytes, int, text, Store, StoreError};

/// Hash fields a status view reads, in this order.
const VIEW_FIELDS: [&str; 16] = [
    "status",
    "method",
    "path",
    "attempts",
    "max_attempts",
    "backend",
    "last_error",
    "submitted_ms",
    "started_ms",
    "finished_ms",
    "next_attempt_ms",
    "r_status",
    "r_size",
    "r_truncated",
    "callback",
    "idempotency_key",
];

/// A task as `GET /_tasks/{id}` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskView {
    pub id: String,
    pub status: Status,
    pub method: String,
    pub path: String,
    pub attempts: u32,
    pub max_attempts: u32,
    /// The backend of the latest attempt (`name (address)`).
    pub backend: Option<String>,
    pub last_error: Option<String>,
    pub submitted_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// When a queued task becomes runnable (delay or retry back-off).
    pub next_attempt_at: Option<String>,
    /// The stored response, once there is one.
    pub result: Option<ResultInfo>,
    pub callback_url: Option<String>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResultInfo {
    pub status: u16,
    /// Size of the response body as the backend sent it.
    pub bytes: u64,
    /// The stored body was cut at `TASK_MAX_RESULT_BYTES`.
    pub truncated: bool,
}

/// A stored response.
#[derive(Debug, Clone)]
pub struct StoredResult {
    pub status: u16,
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
    pub truncated: bool,
}

impl TaskView {
    /// Builds the view from the values of [`VIEW_FIELDS`]; `Err` says what is malformed.
    fn from_values(id: &str, values: Vec<Value>) -> Result<Option<TaskView>, String> {
        let mut v: Vec<Option<String>> = values
            .into_iter()
            .map(|x| bytes(x).map(|b| String::from_utf8_lossy(&b).into_owned()))
            .collect();
        v.resize(VIEW_FIELDS.len(), None);
        let Some(status) = v[0].take() else {
            return Ok(None);
        };
        let status = Status::parse(&status).ok_or_else(|| format!("unknown status {status:?}"))?;
        let num = |i: usize| -> Result<Option<u64>, String> {
            v[i].as_deref()
                .map(|s| {
                    s.parse::<u64>()
                        .map_err(|_| format!("{} is {s:?}", VIEW_FIELDS[i]))
                })
                .transpose()
        };
        let at = |i: usize| num(i).map(|n| n.map(rfc3339));
        let submitted = num(7)?.or_else(|| id_time_ms(id)).unwrap_or(0);
        let result = match num(11)? {
            Some(s) => Some(ResultInfo {
                status: u16::try_from(s).map_err(|_| "r_status out of range")?,
                bytes: num(12)?.unwrap_or(0),
                truncated: v[13].as_deref() == Some("1"),
            }),
            None => None,
        };
        Ok(Some(TaskView {
            id: id.to_string(),
            status,
            method: v[1].clone().unwrap_or_default(),
            path: v[2].clone().unwrap_or_default(),
            attempts: u32::try_from(num(3)?.unwrap_or(0)).unwrap_or(u32::MAX),
            max_attempts: u32::try_from(num(4)?.unwrap_or(0)).unwrap_or(u32::MAX),
            backend: v[5].clone(),
            last_error: v[6].clone(),
            submitted_at: rfc3339(submitted),
            started_at: at(8)?,
            finished_at: at(9)?,
            next_attempt_at: if status == Status::Queued {
                at(10)?
            } else {
                None
            },
            result,
            callback_url: v[14].clone(),
            idempotency_key: v[15].clone(),
        }))
    }
}

/// Queue gauges for metrics and the report to the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Tasks waiting to run (delayed ones included).
    pub queued: u64,
    pub running: u64,
    /// Of the queued, those waiting for a not-before time.
    pub delayed: u64,
    /// Submission time of the oldest queued task.
    pub oldest_queued_ms: Option<u64>,
}

impl Store {
    /// One task's status view; `None` if there is no such task.
    pub async fn view(&self, id: &str) -> Result<Option<TaskView>, StoreError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key(&format!("task:{id}")))
            .arg(&VIEW_FIELDS[..]);
        let values: Vec<Value> = self.cmd("read a task", &cmd).await?;
        TaskView::from_values(id, values).map_err(|detail| StoreError::Reply {
            op: "read a task",
            detail: format!("task {id}: {detail}"),
        })
    }

    /// The stored response of a task, if any.
    pub async fn result(&self, id: &str) -> Result<Option<StoredResult>, StoreError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key(&format!("task:{id}")))
            .arg(&["r_status", "r_headers", "r_body", "r_truncated"][..]);
        let mut values: Vec<Value> = self.cmd("read a task result", &cmd).await?;
        values.resize(4, Value::Nil);
        let Some(status) = int(values.first()).and_then(|s| u16::try_from(s).ok()) else {
            return Ok(None);
        };
        let mut it = values.into_iter().skip(1);
        let headers = it.next().and_then(bytes).unwrap_or_default();
        let body = it.next().and_then(bytes).unwrap_or_default();
        let truncated = it.next().and_then(bytes).is_some_and(|t| t == b"1");
        Ok(Some(StoredResult {
            status,
            headers,
            body,
            truncated,
        }))
    }

    /// Up to `limit` tasks, newest first, with `status` (or any), after `cursor` (an id from
    /// the previous page). Returns the page and the cursor for the next one, if there may be
    /// more. Ids whose task has expired are dropped from the index on the way.
    pub async fn list(
        &self,
        status: Option<Status>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<TaskView>, Option<String>), StoreError> {
        let index = self.key(&format!("idx:{}", status.map_or("all", Status::as_str)));
        let max = cursor.map_or_else(|| "+".to_string(), |c| format!("({c}"));
        let mut cmd = redis::cmd("ZREVRANGEBYLEX");
        cmd.arg(&index)
            .arg(max)
            .arg("-")
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        let ids: Vec<String> = self.cmd("list tasks", &cmd).await?;
        let next = (ids.len() == limit).then(|| ids.last().cloned()).flatten();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(self.key(&format!("task:{id}")))
                .arg(&VIEW_FIELDS[..]);
        }
        let rows: Vec<Vec<Value>> = if ids.is_empty() {
            Vec::new()
        } else {
            self.pipe("list tasks", &pipe).await?
        };
        let mut out = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for (id, row) in ids.iter().zip(rows) {
            match TaskView::from_values(id, row) {
                // The index lags a status change made between the two reads: skip it.
                Ok(Some(view)) if status.is_none_or(|s| s == view.status) => out.push(view),
                Ok(Some(_)) => {}
                Ok(None) => gone.push(id.clone()),
                Err(e) => log::warn!("tasks: skipping malformed task {id} in a listing: {e}"),
            }
        }
        if !gone.is_empty() {
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(&index).arg(&gone);
            if let Err(e) = self.cmd::<()>("trim a task index", &cmd).await {
                log::debug!("tasks: could not trim {index}: {e}");
            }
        }
        Ok((out, next))
    }

    /// Queue gauges in one round trip.
    pub async fn stats(&self) -> Result<QueueStats, StoreError> {
        let mut pipe = redis::pipe();
        pipe.zcard(self.key("idx:queued"))
            .zcard(self.key("idx:running"))
            .zcard(self.key("delayed"))
            .cmd("ZRANGEBYLEX")
            .arg(self.key("idx:queued"))
            .arg("-")
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(1);
        let (queued, running, delayed, oldest): (u64, u64, u64, Vec<String>) =
            self.pipe("read queue gauges", &pipe).await?;
        Ok(QueueStats {
            queued,
            running,
            delayed,
            oldest_queued_ms: oldest.first().and_then(|id| id_time_ms(id)),
        })
    }

    /// Tasks per status, as indexed (finished tasks stay counted until their
    /// `TASK_RESULT_TTL` expiry is swept from the index).
    pub async fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        let mut pipe = redis::pipe();
        for status in Status::ALL {
            pipe.zcard(self.key(&format!("idx:{}", status.as_str())));
        }
        let counts: Vec<u64> = self.pipe("count tasks", &pipe).await?;
        Ok(Status::ALL.into_iter().zip(counts).collect())
    }

    /// Drops index entries whose task hash has expired, oldest first, in batches of `batch`,
    /// while at least half of a batch is gone; returns how many were dropped. Live tasks are
    /// never touched: only ids with no hash are removed.
    pub async fn sweep(&self, batch: usize) -> Result<usize, StoreError> {
        let mut dropped = 0;
        for name in std::iter::once("all").chain(Status::ALL.iter().map(|s| s.as_str())) {
            let index = self.key(&format!("idx:{name}"));
            let mut start = "-".to_string();
            loop {
                let mut cmd = redis::cmd("ZRANGEBYLEX");
                cmd.arg(&index)
                    .arg(&start)
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(batch);
                let ids: Vec<String> = self.cmd("sweep task indexes", &cmd).await?;
                if ids.is_empty() {
                    break;
                }
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.exists(self.key(&format!("task:{id}")));
                }
                let exists: Vec<bool> = self.pipe("sweep task indexes", &pipe).await?;
                let gone: Vec<&String> = ids
                    .iter()
                    .zip(&exists)
                    .filter(|(_, e)| !**e)
                    .map(|(id, _)| id)
                    .collect();
                if !gone.is_empty() {
                    let mut cmd = redis::cmd("ZREM");
                    cmd.arg(&index).arg(&gone);
                    self.cmd::<()>("sweep task indexes", &cmd).await?;
                    dropped += gone.len();
                }
                if gone.len() * 2 < ids.len() || ids.len() < batch {
                    break;
                }
                start = format!("({}", ids[ids.len() - 1]);
            }
        }
        Ok(dropped)
    }

    /// Removes consumers (of balancers long gone) that hold no entries and have been idle
    /// for over `idle_ms`; returns how many.
    pub async fn forget_consumers(&self, idle_ms: u64) -> Result<usize, StoreError> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("CONSUMERS").arg(self.key("stream")).arg("workers");
        let consumers: Vec<Value> = self.cmd("list consumers", &cmd).await?;
        let mut removed = 0;
        for c in consumers {
            let pairs: Vec<Value> = match c {
                Value::Array(a) => a,
                Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => continue,
            };
            let field = |name: &str| {
                pairs
                    .chunks(2)
                    .find(|kv| text(kv.first()).as_deref() == Some(name))
                    .and_then(|kv| kv.get(1))
            };
            let (Some(name), Some(pending), Some(idle)) = (
                text(field("name")),
                int(field("pending")),
                int(field("idle")),
            ) else {
                continue;
            };
            if pending == 0 && u64::try_from(idle).unwrap_or(0) > idle_ms {
                let mut del = redis::cmd("XGROUP");
                del.arg("DELCONSUMER")
                    .arg(self.key("stream"))
                    .arg("workers")
                    .arg(&name);
                self.cmd::<()>("remove a consumer", &del).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> Vec<Value> {
        VIEW_FIELDS
            .iter()
            .map(|f| {
                pairs
                    .iter()
                    .find(|(k, _)| k == f)
                    .map_or(Value::Nil, |(_, v)| {
                        Value::BulkString(v.as_bytes().to_vec())
                    })
            })
            .collect()
    }

    #[test]
    fn views_from_fields() {
        let id = "019ad9c1b6f3aaaaaaaaaaaaaaaa";
        assert_eq!(TaskView::from_values(id, values(&[])), Ok(None));
        let v = TaskView::from_values(
            id,
            values(&[
                ("status", "succeeded"),
                ("method", "POST"),
                ("path", "/work?ms=5"),
                ("attempts", "2"),
                ("max_attempts", "5"),
                ("submitted_ms", "1764631835123"),
                ("finished_ms", "1764631836000"),
                ("next_attempt_ms", "1764631835500"),
                ("r_status", "200"),
                ("r_size", "12"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(v.status, Status::Succeeded);
        assert_eq!((v.attempts, v.max_attempts), (2, 5));
        assert_eq!(v.submitted_at, "2025-12-01T23:30:35.123Z");
        assert_eq!(v.finished_at.as_deref(), Some("2025-12-01T23:30:36.000Z"));
        assert_eq!(v.next_attempt_at, None, "only shown while queued");
        assert_eq!(
            v.result,
            Some(ResultInfo {
                status: 200,
                bytes: 12,
                truncated: false
            })
        );
        assert!(TaskView::from_values(id, values(&[("status", "weird")])).is_err());
        assert!(
            TaskView::from_values(id, values(&[("status", "queued"), ("attempts", "x")])).is_err()
        );
    }
}
