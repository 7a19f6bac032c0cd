//! `tasks …`: the balancer's task API (`Prefer: respond-async` and `/_tasks`).

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use serde_json::Value;

use crate::cli::{SubmitArgs, TaskId, TasksCommand};
use crate::error::{Error, EXIT_OK, EXIT_TASK_FAILED, EXIT_TIMEOUT};
use crate::format::{self, Align, Table};
use crate::http::{rejection, Outgoing, Reply};
use crate::{note, out, out_json, out_raw, Ctx};

/// The task API's prefix on the balancer (`TASK_PATH_PREFIX`, default).
const PREFIX: &str = "/_tasks";
/// Polling while waiting: first delay, doubling up to the cap.
const POLL_FIRST: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(1);

pub async fn run(ctx: &Ctx, cmd: TasksCommand) -> Result<u8, Error> {
    match cmd {
        TasksCommand::Submit(args) => submit(ctx, &args).await,
        TasksCommand::Status { id } => {
            let view = view(ctx, &id.0).await?;
            if ctx.json {
                out_json(&view, false)?;
            } else {
                out(&render_view(&view))?;
            }
            Ok(EXIT_OK)
        }
        TasksCommand::Result { id, include } => result(ctx, &id, include).await,
        TasksCommand::Wait { id, timeout } => {
            let (code, view) = wait(ctx, &id.0, timeout).await?;
            if ctx.json {
                out_json(&view, false)?;
            } else {
                out(&summary(&view, code, timeout))?;
            }
            Ok(code)
        }
        TasksCommand::List {
            status,
            limit,
            cursor,
        } => {
            let mut path = format!("{PREFIX}?limit={limit}");
            if let Some(s) = status {
                path.push_str(&format!("&status={}", s.as_str()));
            }
            if let Some(c) = cursor {
                path.push_str(&format!("&cursor={}", query_escape(&c)));
            }
            let page = ctx.http.get_json(&ctx.balancer, &path).await?;
            if ctx.json {
                out_json(&page, false)?;
            } else {
                out(&list_table(&page["tasks"]).render())?;
                if let Some(next) = page["next_cursor"].as_str() {
                    note(&format!("more tasks: add --cursor {next}"));
                }
            }
            Ok(EXIT_OK)
        }
        TasksCommand::Cancel { id } => {
            let out_ = Outgoing::new(Method::DELETE, format!("{PREFIX}/{}", id.0));
            let view = ctx.http.json(&ctx.balancer, out_).await?;
            if ctx.json {
                out_json(&view, false)?;
            } else {
                out(&format!("{}: {}", id.0, format::text(&view["status"])))?;
            }
            Ok(EXIT_OK)
        }
        TasksCommand::Retry { id } => {
            let out_ = Outgoing::new(Method::POST, format!("{PREFIX}/{}/retry", id.0));
            let view = ctx.http.json(&ctx.balancer, out_).await?;
            if ctx.json {
                out_json(&view, false)?;
            } else {
                out(&format!(
                    "{}: {} again",
                    id.0,
                    format::text(&view["status"])
                ))?;
            }
            Ok(EXIT_OK)
        }
    }
}

/// `GET /_tasks/{id}`.
async fn view(ctx: &Ctx, id: &str) -> Result<Value, Error> {
    ctx.http
        .get_json(&ctx.balancer, &format!("{PREFIX}/{id}"))
        .await
}

/// The request body from `--data`, `--data-file` or stdin (`-`).
fn body(args: &SubmitArgs) -> Result<Option<Bytes>, Error> {
    if let Some(d) = &args.data {
        return Ok(Some(Bytes::from(d.clone())));
    }
    let stdin = args.stdin.is_some() || args.data_file.as_deref() == Some(Path::new("-"));
    if stdin {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut buf)
            .map_err(|e| Error::Input(format!("cannot read the body from stdin: {e}")))?;
        return Ok(Some(Bytes::from(buf)));
    }
    match &args.data_file {
        Some(f) => std::fs::read(f)
            .map(|b| Some(Bytes::from(b)))
            .map_err(|e| Error::Input(format!("cannot read --data-file {}: {e}", f.display()))),
        None => Ok(None),
    }
}

async fn submit(ctx: &Ctx, args: &SubmitArgs) -> Result<u8, Error> {
    let body = body(args)?;
    let method = args.method.clone().unwrap_or(if body.is_some() {
        Method::POST
    } else {
        Method::GET
    });
    if args.headers.iter().any(|(name, _)| name == "prefer") {
        return Err(Error::Usage(
            "-H 'Prefer: …' is not allowed: rbctl sends `Prefer: respond-async` itself".to_owned(),
        ));
    }
    let mut req = Outgoing::new(method, args.path.clone());
    req.headers = args.headers.clone();
    req.headers.push((
        HeaderName::from_static("prefer"),
        HeaderValue::from_static("respond-async"),
    ));
    if let Some(key) = &args.idempotency_key {
        let value = HeaderValue::from_str(key).map_err(|_| {
            Error::Usage(format!(
                "--idempotency-key {key:?} has characters a header cannot carry"
            ))
        })?;
        req.headers
            .push((HeaderName::from_static("idempotency-key"), value));
    }
    req.body = body.unwrap_or_default();
    let request = req.describe();
    let reply = ctx.http.send(&ctx.balancer, req).await?;
    if reply.status != StatusCode::ACCEPTED {
        if reply.status.is_client_error() || reply.status.is_server_error() {
            return Err(rejection("balancer", &request, &reply));
        }
        return Err(Error::Protocol(format!(
            "the balancer at {} answered {request} with HTTP {} instead of 202 Accepted: it stored no task \
             and proxied the request (are tasks disabled on it, REDIS_HOST empty?)",
            ctx.balancer.base(),
            reply.status.as_u16()
        )));
    }
    let accepted = reply.json("balancer", &request)?;
    let Some(id) = accepted["id"].as_str().map(str::to_owned) else {
        return Err(Error::Protocol(format!(
            "the balancer's 202 to {request} has no task id: {accepted}"
        )));
    };
    if !args.wait {
        if ctx.json {
            out_json(&accepted, false)?;
        } else {
            out(&id)?;
        }
        return Ok(EXIT_OK);
    }
    let (code, view) = wait(ctx, &id, args.timeout).await?;
    if code == EXIT_TIMEOUT {
        note(&summary(&view, code, args.timeout));
        return Ok(code);
    }
    let path = format!("{PREFIX}/{id}/result");
    let reply = ctx
        .http
        .send(&ctx.balancer, Outgoing::new(Method::GET, path.clone()))
        .await?;
    if is_replay(&reply) {
        out_raw(&reply.body)?;
    } else if reply.status != StatusCode::CONFLICT {
        return Err(rejection("balancer", &format!("GET {path}"), &reply));
    }
    if code != EXIT_OK {
        note(&summary(&view, code, args.timeout));
    }
    Ok(code)
}

/// A stored response replayed by `GET /_tasks/{id}/result` (it carries `X-Task-Id`), as
/// opposed to an error of the task API itself.
fn is_replay(reply: &Reply) -> bool {
    reply.headers.contains_key("x-task-id")
}

async fn result(ctx: &Ctx, id: &TaskId, include: bool) -> Result<u8, Error> {
    let path = format!("{PREFIX}/{}/result", id.0);
    let reply = ctx
        .http
        .send(&ctx.balancer, Outgoing::new(Method::GET, path.clone()))
        .await?;
    if !is_replay(&reply) {
        return Err(rejection("balancer", &format!("GET {path}"), &reply));
    }
    if include {
        out(&head(&reply))?;
    }
    out_raw(&reply.body)?;
    Ok(EXIT_OK)
}

/// `HTTP 200 OK`, the headers, and a blank line (like `curl -i`).
fn head(reply: &Reply) -> String {
    let reason = reply.status.canonical_reason().unwrap_or("");
    let mut text = format!("HTTP {} {reason}", reply.status.as_u16())
        .trim_end()
        .to_owned();
    for (name, value) in &reply.headers {
        text.push_str(&format!(
            "\n{name}: {}",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push('\n');
    text
}

/// Polls the task until it is final or `timeout` passes: `(exit code, last view)`.
async fn wait(ctx: &Ctx, id: &str, timeout: Duration) -> Result<(u8, Value), Error> {
    let started = Instant::now();
    let mut progress = Progress::new();
    let mut delay = POLL_FIRST;
    loop {
        let view = view(ctx, id).await?;
        let Some(status) = view["status"].as_str() else {
            progress.clear();
            return Err(Error::Protocol(format!(
                "the task view has no status: {view}"
            )));
        };
        let code = match status {
            "succeeded" => Some(EXIT_OK),
            "failed" | "dead" | "cancelled" => Some(EXIT_TASK_FAILED),
            _ => None,
        };
        let elapsed = started.elapsed();
        if let Some(code) = code {
            progress.clear();
            return Ok((code, view));
        }
        if elapsed >= timeout {
            progress.clear();
            return Ok((EXIT_TIMEOUT, view));
        }
        progress.show(&format!(
            "task {id}: {status}{} · {}",
            attempts(&view),
            format::elapsed(elapsed.as_secs_f64())
        ));
        tokio::time::sleep(delay.min(timeout - elapsed)).await;
        delay = (delay * 2).min(POLL_MAX);
    }
}

/// ` (attempt 2/5)` once an attempt was made.
fn attempts(view: &Value) -> String {
    match (view["attempts"].as_u64(), view["max_attempts"].as_u64()) {
        (Some(a), Some(m)) if a > 0 => format!(" (attempt {a}/{m})"),
        _ => String::new(),
    }
}

/// One line about a waited-for task.
fn summary(view: &Value, code: u8, timeout: Duration) -> String {
    let id = format::text(&view["id"]);
    let status = format::text(&view["status"]);
    let mut line = format!("task {id} {status}{}", attempts(view));
    if let Some(r) = view["result"].as_object() {
        line.push_str(&format!(
            ": HTTP {} from the backend, {} bytes",
            format::count(&r["status"]),
            format::count(&r["bytes"])
        ));
    }
    if let Some(e) = view["last_error"].as_str() {
        if code != EXIT_OK {
            line.push_str(&format!("; last error: {e}"));
        }
    }
    if code == EXIT_TIMEOUT {
        line.push_str(&format!(
            "; not finished after {} (timed out)",
            format::elapsed(timeout.as_secs_f64())
        ));
    }
    line
}

/// The status view as aligned `field  value` lines.
pub fn render_view(view: &Value) -> String {
    let result = match view["result"].as_object() {
        Some(r) => format!(
            "HTTP {}, {} bytes{}",
            format::count(&r["status"]),
            format::count(&r["bytes"]),
            if r["truncated"].as_bool() == Some(true) {
                " (truncated)"
            } else {
                ""
            }
        ),
        None => "-".to_owned(),
    };
    let fields = [
        ("id", format::text(&view["id"])),
        ("status", format::text(&view["status"])),
        (
            "request",
            format!(
                "{} {}",
                format::text(&view["method"]),
                format::text(&view["path"])
            ),
        ),
        (
            "attempts",
            format!(
                "{}/{}",
                format::count(&view["attempts"]),
                format::count(&view["max_attempts"])
            ),
        ),
        ("backend", format::text(&view["backend"])),
        ("last error", format::text(&view["last_error"])),
        ("submitted", format::text(&view["submitted_at"])),
        ("started", format::text(&view["started_at"])),
        ("finished", format::text(&view["finished_at"])),
        ("next attempt", format::text(&view["next_attempt_at"])),
        ("result", result),
        ("callback", format::text(&view["callback_url"])),
        ("idempotency key", format::text(&view["idempotency_key"])),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn list_table(tasks: &Value) -> Table {
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("STATUS", Align::Left),
        ("METHOD", Align::Left),
        ("PATH", Align::Left),
        ("ATTEMPTS", Align::Right),
        ("RESULT", Align::Right),
        ("SUBMITTED", Align::Left),
    ]);
    for t in tasks.as_array().map(Vec::as_slice).unwrap_or_default() {
        table.row(vec![
            format::text(&t["id"]),
            format::text(&t["status"]),
            format::text(&t["method"]),
            format::text(&t["path"]),
            format!(
                "{}/{}",
                format::count(&t["attempts"]),
                format::count(&t["max_attempts"])
            ),
            format::count(&t["result"]["status"]),
            format::text(&t["submitted_at"]),
        ]);
    }
    table
}

/// Percent-encodes what may not appear in a query value.
fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The progress line on stderr, only when stderr is a terminal (redrawn in place).
struct Progress {
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn show(&mut self, line: &str) {
        if self.tty {
            let mut e = std::io::stderr().lock();
            // Progress is best effort.
            let _ = write!(e, "\r\x1b[2K{line}");
            let _ = e.flush();
            self.shown = true;
        }
    }

    fn clear(&mut self) {
        if self.shown {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K");
            let _ = e.flush();
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use serde_json::json;

    #[test]
    fn summaries_name_the_outcome() {
        let view = json!({"id": "t1", "status": "dead", "attempts": 3, "max_attempts": 3,
                          "last_error": "HTTP 500", "result": {"status": 500, "bytes": 4}});
        assert_eq!(
            summary(&view, EXIT_TASK_FAILED, Duration::from_secs(1)),
            "task t1 dead (attempt 3/3): HTTP 500 from the backend, 4 bytes; last error: HTTP 500"
        );
        let view = json!({"id": "t2", "status": "queued", "attempts": 0, "max_attempts": 5});
        assert_eq!(
            summary(&view, EXIT_TIMEOUT, Duration::from_millis(500)),
            "task t2 queued; not finished after 0.5s (timed out)"
        );
    }

    #[test]
    fn views_render_every_field() {
        let view = json!({"id": "t1", "status": "succeeded", "method": "POST", "path": "/echo",
                          "attempts": 1, "max_attempts": 5, "backend": "a (127.0.0.1:1)",
                          "last_error": null, "result": {"status": 200, "bytes": 5, "truncated": true}});
        let text = render_view(&view);
        assert!(
            text.starts_with("id               t1\nstatus           succeeded\n"),
            "{text}"
        );
        assert!(text.contains("request          POST /echo\n"));
        assert!(text.contains("attempts         1/5\n"));
        assert!(text.contains("result           HTTP 200, 5 bytes (truncated)\n"));
        assert!(text.contains("last error       -\n"));
    }

    #[test]
    fn heads_look_like_curl_include() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("x-task-id", HeaderValue::from_static("t1"));
        let reply = Reply {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            headers,
            body: Bytes::new(),
        };
        assert!(is_replay(&reply));
        assert_eq!(
            head(&reply),
            "HTTP 500 Internal Server Error\ncontent-type: text/plain\nx-task-id: t1\n"
        );
    }

    #[test]
    fn cursors_are_escaped() {
        assert_eq!(query_escape("abc-1_2.~"), "abc-1_2.~");
        assert_eq!(query_escape("a b&c=d/+"), "a%20b%26c%3Dd%2F%2B");
    }
}
