//! The Redis edge of the task system: the only module that talks to Redis.
//!
//! # Layout (prefix `rustybalancer:{APP_IDENTIFIER}:tasks:`)
//!
//! | key | type | content |
//! |---|---|---|
//! | `task:{id}` | hash | the request (`method`, `path`, `headers`, `body`), its state and, once answered, the response (`r_*`); expires `TASK_RESULT_TTL` after it finishes |
//! | `stream` | stream, group `workers` | one entry `task={id}` per task ready to run; acknowledged and deleted when its attempt ends |
//! | `delayed` | sorted set | ids waiting for their not-before time (delay, retry back-off), scored by it in ms |
//! | `idx:all`, `idx:{status}` | sorted sets, score 0 | ids, which sort by submission time: the listing |
//! | `idem:{key}` | string | `"{id} {fingerprint}"` for an `Idempotency-Key`, expires after `TASK_IDEMPOTENCY_TTL` |
//! | `dead-letter` | stream (capped) | stream entries that could not be understood, with the reason |
//! | `done` | pub/sub channel | ids of tasks that just finished (wakes `Prefer: wait`) |
//!
//! Every state change is one Lua script (`lua/*.lua`), so it is atomic and balancers never
//! see half a transition. The scripts build keys from the prefix: one Redis server, no cluster.
//!
//! # Connections
//!
//! One multiplexed [`ConnectionManager`] for everything, with 1.5 s connect and response
//! timeouts and every call bounded by [`CALL_TIMEOUT`], so a Redis outage turns into a fast
//! [`StoreError::Unavailable`]; a second one for the blocking `XREADGROUP` (a blocked command
//! would hold up everything queued behind it on a shared connection).

use std::time::Duration;

use log::warn;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, Script, Value};

/// Upper bound for one call, reconnect included: a submission answers 503 within this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a worker's `XREADGROUP` blocks waiting for new entries.
pub const BLOCK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    #[error("Redis unavailable ({op}): {source}")]
    Unavailable {
        op: &'static str,
        #[source]
        source: Box<RedisError>,
    },
    #[error("Redis did not answer within {}s ({op})", CALL_TIMEOUT.as_secs())]
    Timeout { op: &'static str },
    #[error("Redis refused to {op}: {source}")]
    Redis {
        op: &'static str,
        #[source]
        source: Box<RedisError>,
    },
    #[error("unexpected reply to {op}: {detail}")]
    Reply { op: &'static str, detail: String },
}

impl StoreError {
    /// Redis could not be reached or did not answer: 503 and retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Timeout { .. }
        )
    }

    /// The consumer group (or the stream) is gone: Redis lost its data. Re-create it.
    pub fn is_no_group(&self) -> bool {
        matches!(self, StoreError::Redis { source, .. } if source.to_string().contains("NOGROUP"))
    }
}

pub(crate) fn classify(op: &'static str, err: RedisError) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind};
    // OOM: Redis is at `maxmemory` with `noeviction` (as it must be for a queue): transient,
    // so the caller answers 503 and the client retries, rather than a 500.
    let down = err.code() == Some("OOM")
        || err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.kind(),
            ErrorKind::Server(ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown)
        );
    let source = Box::new(err);
    if down {
        StoreError::Unavailable { op, source }
    } else {
        StoreError::Redis { op, source }
    }
}

pub(crate) fn reply(op: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Reply {
        op,
        detail: detail.into(),
    }
}

/// The task scripts, each prefixed with `lua/common.lua`.
struct Scripts {
    submit: Script,
    start: Script,
    finish: Script,
    defer: Script,
    cancel: Script,
    retry: Script,
    promote: Script,
    renew: Script,
}

impl Scripts {
    fn load() -> Scripts {
        let s = |body: &str| Script::new(&format!("{}{body}", include_str!("lua/common.lua")));
        Scripts {
            submit: s(include_str!("lua/submit.lua")),
            start: s(include_str!("lua/start.lua")),
            finish: s(include_str!("lua/finish.lua")),
            defer: s(include_str!("lua/defer.lua")),
            cancel: s(include_str!("lua/cancel.lua")),
            retry: s(include_str!("lua/retry.lua")),
            promote: s(include_str!("lua/promote.lua")),
            renew: s(include_str!("lua/renew.lua")),
        }
    }
}

/// The outcome of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Created,
    /// The `Idempotency-Key` was seen before, for task `id` with `fingerprint`.
    Exists {
        id: String,
        fingerprint: String,
    },
}

/// What `start` found.
#[derive(Debug)]
pub enum Start {
    Run {
        attempt: u32,
        max_attempts: u32,
        /// `method`, `path`, `headers`, `body`, `timeout_ms` as stored (`None` when absent).
        request: [Option<Vec<u8>>; 5],
    },
    /// No task hash: expired, deleted, or never there.
    Gone,
    /// Not runnable any more (cancelled or finished); the entry was released.
    Skip(String),
    /// A lapsed lease used up the last attempt: the task is now dead. Carries the callback URL.
    Dead(String),
}

/// How a state-changing call on one task came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Done; the callback URL to notify, if the task finished and has one (else empty).
    Done(String),
    /// Back in the queue (a retry).
    Queued,
    /// The task is in another state (returned) than the change needs.
    Conflict(String),
    /// No such task.
    Missing,
}

/// Task state in Redis; cheap to clone (clones share the connections).
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    pub(crate) blocking: ConnectionManager,
    client: redis::Client,
    prefix: String,
    scripts: std::sync::Arc<Scripts>,
}

fn manager(client: &redis::Client, response: Duration) -> Result<ConnectionManager, StoreError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(IO_TIMEOUT))
        .set_response_timeout(Some(response))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| StoreError::InvalidUrl(e.to_string()))
}

impl Store {
    /// Prepares the store for `app` at `url`; lazy: fails only on an invalid URL.
    pub fn connect(url: &str, app: &str) -> Result<Store, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        Ok(Store {
            conn: manager(&client, IO_TIMEOUT)?,
            blocking: manager(&client, BLOCK + IO_TIMEOUT)?,
            client,
            prefix: format!("rustybalancer:{app}:tasks:"),
            scripts: std::sync::Arc::new(Scripts::load()),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// A client for a dedicated connection (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| classify(op, e)),
            Err(_) => Err(StoreError::Timeout { op }),
        }
    }

    pub(crate) async fn pipe<T: FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(CALL_TIMEOUT, pipe.query_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| classify(op, e)),
            Err(_) => Err(StoreError::Timeout { op }),
        }
    }

    /// Runs a script with the prefix as `ARGV[1]` followed by `args`.
    async fn script(
        &self,
        op: &'static str,
        script: &Script,
        args: &[&[u8]],
    ) -> Result<Vec<Value>, StoreError> {
        let mut inv = script.prepare_invoke();
        inv.arg(self.prefix.as_bytes());
        for a in args {
            inv.arg(*a);
        }
        let mut conn = self.conn.clone();
        let value: Value =
            match tokio::time::timeout(CALL_TIMEOUT, inv.invoke_async(&mut conn)).await {
                Ok(r) => r.map_err(|e| classify(op, e))?,
                Err(_) => return Err(StoreError::Timeout { op }),
            };
        match value {
            Value::Array(items) => Ok(items),
            Value::Int(n) => Ok(vec![Value::Int(n)]),
            other => Err(reply(op, format!("{other:?}"))),
        }
    }

    /// Stores a new task (fields of its hash in `fields`) and queues it, or finds the task an
    /// `Idempotency-Key` already names. Atomic.
    #[allow(clippy::too_many_arguments)]
    pub async fn submit(
        &self,
        id: &str,
        idempotency: Option<(&str, &str, Duration)>,
        now_ms: u64,
        not_before_ms: u64,
        fields: &[(&str, &[u8])],
    ) -> Result<Submitted, StoreError> {
        let (key, fp, ttl) = idempotency.unwrap_or(("", "", Duration::ZERO));
        let (ttl, now, nb) = (ms_str(ttl), now_ms.to_string(), not_before_ms.to_string());
        let mut args: Vec<&[u8]> = vec![
            id.as_bytes(),
            key.as_bytes(),
            fp.as_bytes(),
            ttl.as_bytes(),
            now.as_bytes(),
            nb.as_bytes(),
        ];
        for (k, v) in fields {
            args.push(k.as_bytes());
            args.push(v);
        }
        let r = self
            .script("store a task", &self.scripts.submit, &args)
            .await?;
        match (text(r.first()).as_deref(), text(r.get(1))) {
            (Some("created"), _) => Ok(Submitted::Created),
            (Some("exists"), Some(prev)) => {
                let (id, fingerprint) = prev.split_once(' ').unwrap_or((prev.as_str(), ""));
                Ok(Submitted::Exists {
                    id: id.to_string(),
                    fingerprint: fingerprint.to_string(),
                })
            }
            _ => Err(reply("store a task", format!("{r:?}"))),
        }
    }

    /// Starts an attempt for `entry`'s task (see `lua/start.lua`).
    pub async fn start(
        &self,
        entry: &str,
        task: &str,
        consumer: &str,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<Start, StoreError> {
        let (now, ttl) = (now_ms.to_string(), ms_str(ttl));
        let op = "start a task";
        let args: [&[u8]; 5] = [
            entry.as_bytes(),
            task.as_bytes(),
            consumer.as_bytes(),
            now.as_bytes(),
            ttl.as_bytes(),
        ];
        let mut r = self
            .script(op, &self.scripts.start, &args)
            .await?
            .into_iter();
        let tag = text(r.next().as_ref());
        match tag.as_deref() {
            Some("run") => {
                let attempt = int(r.next().as_ref()).ok_or_else(|| reply(op, "attempt"))?;
                let max = int(r.next().as_ref()).ok_or_else(|| reply(op, "max_attempts"))?;
                let Some(Value::Array(fields)) = r.next() else {
                    return Err(reply(op, "request fields"));
                };
                let mut request: [Option<Vec<u8>>; 5] = Default::default();
                for (slot, v) in request.iter_mut().zip(fields) {
                    *slot = bytes(v);
                }
                Ok(Start::Run {
                    attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                    max_attempts: u32::try_from(max).unwrap_or(1),
                    request,
                })
            }
            Some("gone") => Ok(Start::Gone),
            Some("skip") => Ok(Start::Skip(text(r.next().as_ref()).unwrap_or_default())),
            Some("dead") => Ok(Start::Dead(text(r.next().as_ref()).unwrap_or_default())),
            _ => Err(reply(op, format!("{tag:?}"))),
        }
    }

    /// Records the end of an attempt (see `lua/finish.lua`). `result` holds the `r_*` fields
    /// when the attempt got a response.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        &self,
        entry: &str,
        task: &str,
        attempt: u32,
        now_ms: u64,
        verdict: &str,
        next_ms: u64,
        ttl: Duration,
        backend: &str,
        error: &str,
        result: &[(&str, &[u8])],
    ) -> Result<Change, StoreError> {
        let (attempt, now, next, ttl) = (
            attempt.to_string(),
            now_ms.to_string(),
            next_ms.to_string(),
            ms_str(ttl),
        );
        let mut args: Vec<&[u8]> = vec![
            entry.as_bytes(),
            task.as_bytes(),
            attempt.as_bytes(),
            now.as_bytes(),
            verdict.as_bytes(),
            next.as_bytes(),
            ttl.as_bytes(),
            backend.as_bytes(),
            error.as_bytes(),
        ];
        for (k, v) in result {
            args.push(k.as_bytes());
            args.push(v);
        }
        let r = self
            .script("record a task attempt", &self.scripts.finish, &args)
            .await?;
        change("record a task attempt", &r)
    }

    /// Puts a queued task back for later without counting an attempt (no backend).
    /// Puts a task back for later without counting an attempt (no backend); see
    /// `lua/defer.lua` for an entry taken over from a lapsed lease.
    pub async fn defer(
        &self,
        entry: &str,
        task: &str,
        not_before_ms: u64,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<Change, StoreError> {
        let (nb, now, ttl) = (not_before_ms.to_string(), now_ms.to_string(), ms_str(ttl));
        let args: [&[u8]; 5] = [
            entry.as_bytes(),
            task.as_bytes(),
            nb.as_bytes(),
            now.as_bytes(),
            ttl.as_bytes(),
        ];
        let r = self
            .script("defer a task", &self.scripts.defer, &args)
            .await?;
        change("defer a task", &r)
    }

    pub async fn cancel(
        &self,
        task: &str,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<Change, StoreError> {
        let (now, ttl) = (now_ms.to_string(), ms_str(ttl));
        let args: [&[u8]; 3] = [task.as_bytes(), now.as_bytes(), ttl.as_bytes()];
        let r = self
            .script("cancel a task", &self.scripts.cancel, &args)
            .await?;
        change("cancel a task", &r)
    }

    pub async fn retry(&self, task: &str) -> Result<Change, StoreError> {
        let args: [&[u8]; 1] = [task.as_bytes()];
        let r = self
            .script("retry a task", &self.scripts.retry, &args)
            .await?;
        change("retry a task", &r)
    }

    /// Moves due delayed tasks onto the stream; returns how many.
    pub async fn promote(&self, now_ms: u64, max: usize) -> Result<u64, StoreError> {
        let (now, max) = (now_ms.to_string(), max.to_string());
        let args: [&[u8]; 2] = [now.as_bytes(), max.as_bytes()];
        let r = self
            .script("promote due tasks", &self.scripts.promote, &args)
            .await?;
        Ok(int(r.first()).unwrap_or(0).max(0) as u64)
    }

    /// Renews this consumer's lease on `entry`; `false` when another balancer took it.
    pub async fn renew(&self, entry: &str, consumer: &str) -> Result<bool, StoreError> {
        let args: [&[u8]; 2] = [entry.as_bytes(), consumer.as_bytes()];
        let r = self
            .script("renew a lease", &self.scripts.renew, &args)
            .await?;
        Ok(int(r.first()) == Some(1))
    }

    pub(crate) async fn cmd<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &Cmd,
    ) -> Result<T, StoreError> {
        self.query(op, cmd).await
    }
}

fn ms_str(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

fn change(op: &'static str, r: &[Value]) -> Result<Change, StoreError> {
    match text(r.first()).as_deref() {
        Some("done") | Some("cancelled") => Ok(Change::Done(text(r.get(1)).unwrap_or_default())),
        Some("queued") => Ok(Change::Queued),
        Some("conflict") | Some("stale") | Some("skip") => {
            Ok(Change::Conflict(text(r.get(1)).unwrap_or_default()))
        }
        Some("missing") => Ok(Change::Missing),
        _ => Err(reply(op, format!("{r:?}"))),
    }
}

/// A reply element as text.
pub(crate) fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".into()),
        Value::Int(n) => Some(n.to_string()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

pub(crate) fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Int(n) => Some(*n),
        other => text(Some(other))?.parse().ok(),
    }
}

pub(crate) fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Nil => None,
        other => {
            warn!("unexpected Redis value where bytes were expected: {other:?}");
            None
        }
    }
}
