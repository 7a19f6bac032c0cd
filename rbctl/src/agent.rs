//! Commands against the agent's HTTP API: `status`, `scale`, `events`, `sundown`.

use std::collections::HashSet;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::cli::{EventsArgs, StatusArgs};
use crate::error::{Error, EXIT_OK};
use crate::format::{self, Align, Table};
use crate::http::Outgoing;
use crate::{note, out, out_json, Ctx};

/// Events fetched per poll with `--follow`, and when filtering by kind.
const FOLLOW_WINDOW: u64 = 200;
const KIND_WINDOW: u64 = 2_000;
const FOLLOW_PERIOD: Duration = Duration::from_secs(1);
/// Clear the screen and move the cursor home.
const CLEAR: &str = "\x1b[2J\x1b[H";

/// `GET /health` and `GET /stats` together: `{"health": …, "stats": […]}`.
async fn snapshot(ctx: &Ctx) -> Result<Value, Error> {
    let (health, stats) = tokio::join!(
        ctx.http.get_json(&ctx.agent, "/health"),
        ctx.http.get_json(&ctx.agent, "/stats")
    );
    let (health, stats) = (health?, stats?);
    if !stats.is_array() || !health.is_object() {
        return Err(Error::Protocol(format!(
            "the agent at {} answered GET /health or GET /stats with an unexpected shape",
            ctx.agent.base()
        )));
    }
    Ok(json!({ "health": health, "stats": stats }))
}

pub async fn status(ctx: &Ctx, args: &StatusArgs) -> Result<u8, Error> {
    if !args.watch {
        let snap = snapshot(ctx).await?;
        if ctx.json {
            out_json(&snap, false)?;
        } else {
            out(&render_status(ctx.agent.base(), &snap, format::now_ms()))?;
        }
        return Ok(EXIT_OK);
    }
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        // A failed refresh is shown and retried: a watch outlives restarts of the agent.
        match snapshot(ctx).await {
            Ok(snap) if ctx.json => out_json(&snap, true)?,
            Ok(snap) => {
                let screen = render_status(ctx.agent.base(), &snap, format::now_ms());
                out(&format!(
                    "{CLEAR}{screen}\n\nevery {:?} · Ctrl-C to quit",
                    args.interval
                ))?;
            }
            Err(e) if ctx.json => note(&format!("error: {}", e.one_line())),
            Err(e) => out(&format!(
                "{CLEAR}rbctl: error: {}\n\nretrying every {:?} · Ctrl-C to quit",
                e.one_line(),
                args.interval
            ))?,
        }
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            _ = &mut ctrl_c => return Ok(EXIT_OK),
        }
    }
}

/// The status screen: three summary lines, then one row per container.
pub fn render_status(base: &str, snap: &Value, now_ms: u64) -> String {
    let h = &snap["health"];
    let mut lines = Vec::new();
    let image = match h["image_ready"].as_bool() {
        Some(true) => "image ready",
        Some(false) => "image NOT READY",
        None => "image ?",
    };
    let token = match h["token_required"].as_bool() {
        Some(true) => ", token required",
        _ => "",
    };
    lines.push(format!(
        "agent {base}: {} (docker {}, redis {}, {image}{token})",
        format::text(&h["status"]),
        format::ok_down(&h["docker"]),
        format::ok_down(&h["redis"]),
    ));
    let bounds = match (h["min"].as_u64(), h["max"].as_u64()) {
        (Some(min), Some(max)) => format!(" (min {min}, max {max})"),
        _ => String::new(),
    };
    lines.push(format!(
        "pool: desired {}{bounds}, active {}, sundown {}",
        format::count(&h["desired"]),
        format::count(&h["active"]),
        sundown_count(h, &snap["stats"]),
    ));
    let busy = match h["host_cpu_busy"].as_f64() {
        Some(b) => format!(" (cpu busy {:.0}%)", b * 100.0),
        None => String::new(),
    };
    lines.push(format!(
        "balancers connected: {} · host saturated: {}{busy} · task queue depth: {}",
        format::count(&h["balancers"]),
        format::yes_no(&h["host_saturated"]),
        format::count(&h["task_queue_depth"]),
    ));
    lines.push(String::new());
    lines.push(container_table(&snap["stats"], now_ms).render());
    lines.join("\n")
}

/// `health.sundown`, or counted from the rows for an agent that does not report it.
fn sundown_count(health: &Value, stats: &Value) -> String {
    if let Some(n) = health["sundown"].as_u64() {
        return n.to_string();
    }
    let rows = stats.as_array().map(Vec::as_slice).unwrap_or_default();
    rows.iter()
        .filter(|r| state(r) == "SUNDOWN")
        .count()
        .to_string()
}

/// `state`, or `utilization_category` from an agent before the field.
fn state(row: &Value) -> String {
    match (&row["state"], &row["utilization_category"]) {
        (Value::String(s), _) | (Value::Null, Value::String(s)) => s.clone(),
        _ => "-".to_owned(),
    }
}

fn container_table(stats: &Value, now_ms: u64) -> Table {
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("STATE", Align::Left),
        ("SCORE", Align::Right),
        ("SHARE", Align::Right),
        ("REQ/S", Align::Right),
        ("P99 MS", Align::Right),
        ("IN FLIGHT", Align::Right),
        ("UPTIME", Align::Right),
    ]);
    let mut rows: Vec<&Value> = stats
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    rows.sort_by_key(|r| r["name"].as_str().unwrap_or_default().to_owned());
    for r in rows {
        let uptime = match (r["uptime_s"].as_f64(), r["created_ms"].as_u64()) {
            (Some(s), _) => format::age(s),
            (None, Some(created)) => format::age(now_ms.saturating_sub(created) as f64 / 1000.0),
            _ => "-".to_owned(),
        };
        table.row(vec![
            format::text(&r["name"]),
            state(r),
            format::number(&r["overall_score"], 1),
            format::share(&r["weight_share"]),
            format::number(&r["requests_per_s"], 1),
            format::number(&r["latency_p99_ms"], 1),
            format::count(&r["in_flight"]),
            uptime,
        ]);
    }
    table
}

pub async fn scale(ctx: &Ctx, desired: u64) -> Result<u8, Error> {
    let req = Outgoing::new(Method::POST, "/scale").json(&json!({ "desired": desired }));
    let answer = ctx.http.json(&ctx.agent, req).await?;
    if ctx.json {
        out_json(&answer, false)?;
        return Ok(EXIT_OK);
    }
    let applied = format::count(&answer["desired"]);
    let clamped = if answer["desired"].as_u64() == Some(desired) {
        ""
    } else {
        " (clamped to the bounds)"
    };
    out(&format!(
        "desired size {applied}{clamped}: requested {}, bounds min {} max {}",
        format::count(&answer["requested"]),
        format::count(&answer["min"]),
        format::count(&answer["max"]),
    ))?;
    Ok(EXIT_OK)
}

pub async fn sundown(ctx: &Ctx, name: &str) -> Result<u8, Error> {
    let req = Outgoing::new(Method::POST, "/sundown").json(&json!({ "name": name }));
    let answer = ctx.http.json(&ctx.agent, req).await?;
    if ctx.json {
        out_json(&answer, false)?;
        return Ok(EXIT_OK);
    }
    out(&format!(
        "{} (id {}) is SUNDOWN: drained, then stopped; desired size now {}",
        format::text(&answer["name"]),
        short_id(answer["id"].as_str().unwrap_or("-")),
        format::count(&answer["desired"]),
    ))?;
    Ok(EXIT_OK)
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `GET /events`, newest first, filtered by kind.
async fn fetch_events(ctx: &Ctx, fetch: u64, kind: Option<&str>) -> Result<Vec<Value>, Error> {
    let list = ctx
        .http
        .get_json(&ctx.agent, &format!("/events?limit={fetch}"))
        .await?;
    let Value::Array(list) = list else {
        return Err(Error::Protocol(format!(
            "the agent at {} answered GET /events with something other than an array",
            ctx.agent.base()
        )));
    };
    Ok(list
        .into_iter()
        .filter(|e| kind.is_none_or(|k| e["kind"].as_str() == Some(k)))
        .collect())
}

pub async fn events(ctx: &Ctx, args: &EventsArgs) -> Result<u8, Error> {
    let kind = args.kind.as_deref();
    let fetch = match (kind, args.follow) {
        (Some(_), _) => KIND_WINDOW,
        (None, true) => args.limit.max(FOLLOW_WINDOW),
        (None, false) => args.limit,
    };
    let newest_first = fetch_events(ctx, fetch, kind).await?;
    let shown: Vec<Value> = newest_first
        .iter()
        .take(args.limit as usize)
        .cloned()
        .collect();
    if !args.follow {
        if ctx.json {
            out_json(&Value::Array(shown), false)?;
        } else {
            let oldest_first: Vec<&Value> = shown.iter().rev().collect();
            out(&event_table(&oldest_first, true).render())?;
        }
        return Ok(EXIT_OK);
    }
    let mut header = !ctx.json;
    print_events(ctx, shown.iter().rev().collect(), &mut header)?;
    let mut seen = Seen::new(&newest_first);
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_PERIOD) => {}
            _ = &mut ctrl_c => return Ok(EXIT_OK),
        }
        match fetch_events(ctx, fetch, kind).await {
            Ok(list) => {
                let fresh = seen.update(&list);
                print_events(ctx, fresh.iter().collect(), &mut header)?;
            }
            // Keep following through a restart of the agent.
            Err(e) => note(&format!("error: {}", e.one_line())),
        }
    }
}

/// With `--follow`: one compact JSON document per line, or table rows (the header once).
fn print_events(ctx: &Ctx, oldest_first: Vec<&Value>, header: &mut bool) -> Result<(), Error> {
    if oldest_first.is_empty() {
        return Ok(());
    }
    if ctx.json {
        for e in oldest_first {
            out_json(e, true)?;
        }
        return Ok(());
    }
    let text = event_table(&oldest_first, *header).render();
    *header = false;
    out(&text)
}

fn event_table(oldest_first: &[&Value], header: bool) -> EventLines {
    let mut table = Table::new(&[
        ("TIME (UTC)", Align::Left),
        ("KIND", Align::Left),
        ("REASON", Align::Left),
    ]);
    for e in oldest_first {
        let at = e["at_ms"].as_u64().map_or("-".to_owned(), format::utc);
        table.row(vec![
            at,
            format::text(&e["kind"]),
            format::text(&e["reason"]),
        ]);
    }
    EventLines { table, header }
}

/// Event rows; without the header line when following (it was printed once).
struct EventLines {
    table: Table,
    header: bool,
}

impl EventLines {
    fn render(&self) -> String {
        let text = self.table.render();
        if self.header || self.table.is_empty() {
            return text;
        }
        text.split_once('\n')
            .map_or(String::new(), |(_, rows)| rows.to_owned())
    }
}

/// Which events `--follow` has printed: those of the previous poll. An event is new when it
/// was not in the previous poll and is not older than the oldest event of that poll (so
/// one that slid out of the window cannot come back).
struct Seen {
    previous: HashSet<String>,
    oldest_ms: u64,
}

impl Seen {
    fn new(newest_first: &[Value]) -> Seen {
        let mut seen = Seen {
            previous: HashSet::new(),
            oldest_ms: 0,
        };
        seen.remember(newest_first);
        seen
    }

    fn remember(&mut self, newest_first: &[Value]) {
        self.previous = newest_first.iter().map(Value::to_string).collect();
        if let Some(oldest) = newest_first
            .iter()
            .filter_map(|e| e["at_ms"].as_u64())
            .min()
        {
            self.oldest_ms = self.oldest_ms.max(oldest);
        }
    }

    /// The new events of this poll, oldest first.
    fn update(&mut self, newest_first: &[Value]) -> Vec<Value> {
        let fresh: Vec<Value> = newest_first
            .iter()
            .rev()
            .filter(|e| !self.previous.contains(&e.to_string()))
            .filter(|e| e["at_ms"].as_u64().unwrap_or(u64::MAX) >= self.oldest_ms)
            .cloned()
            .collect();
        self.remember(newest_first);
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at: u64, kind: &str) -> Value {
        json!({"at_ms": at, "kind": kind, "reason": format!("{kind} at {at}"), "details": {}})
    }

    #[test]
    fn follow_prints_only_new_events_oldest_first() {
        let mut seen = Seen::new(&[ev(20, "b"), ev(10, "a")]);
        assert!(seen.update(&[ev(20, "b"), ev(10, "a")]).is_empty());
        let fresh = seen.update(&[ev(40, "d"), ev(30, "c"), ev(20, "b")]);
        assert_eq!(fresh, vec![ev(30, "c"), ev(40, "d")]);
        // Same millisecond, different event: still new.
        let fresh = seen.update(&[ev(40, "e"), ev(40, "d"), ev(30, "c")]);
        assert_eq!(fresh, vec![ev(40, "e")]);
        // An old event reappearing (another source) is not printed again.
        assert!(seen.update(&[ev(40, "e"), ev(10, "a")]).is_empty());
    }

    #[test]
    fn status_screen_shows_the_summary_and_one_row_per_container() {
        let snap = json!({
            "health": {"status": "ok", "docker": true, "redis": true, "image_ready": true,
                       "desired": 2, "active": 2, "min": 1, "max": 3, "sundown": 1,
                       "balancers": 1, "host_saturated": false, "host_cpu_busy": 0.123,
                       "task_queue_depth": 4, "token_required": true},
            "stats": [
                {"name": "app-2", "state": "SUNDOWN", "overall_score": 80.0, "weight_share": null,
                 "requests_per_s": null, "latency_p99_ms": null, "in_flight": 1, "uptime_s": 5.0},
                {"name": "app-1", "utilization_category": "LU", "overall_score": 91.25,
                 "weight_share": 1.0, "requests_per_s": 12.5, "latency_p99_ms": 8.14,
                 "in_flight": 0, "created_ms": 1_000}
            ]
        });
        let text = render_status("http://a:2550", &snap, 185_000);
        assert_eq!(
            text,
            "agent http://a:2550: ok (docker ok, redis ok, image ready, token required)\n\
             pool: desired 2 (min 1, max 3), active 2, sundown 1\n\
             balancers connected: 1 · host saturated: no (cpu busy 12%) · task queue depth: 4\n\
             \n\
             NAME   STATE    SCORE   SHARE  REQ/S  P99 MS  IN FLIGHT  UPTIME\n\
             app-1  LU        91.2  100.0%   12.5     8.1          0   3m04s\n\
             app-2  SUNDOWN   80.0       -      -       -          1      5s"
        );
    }

    #[test]
    fn an_older_agent_without_the_new_fields_still_renders() {
        let snap = json!({"health": {"status": "degraded", "docker": false}, "stats": []});
        let text = render_status("http://a", &snap, 0);
        assert!(text.starts_with("agent http://a: degraded (docker DOWN, redis ?, image ?)"));
        assert!(text.contains("pool: desired -, active -, sundown 0"));
        assert!(text.ends_with("NAME  STATE  SCORE  SHARE  REQ/S  P99 MS  IN FLIGHT  UPTIME"));
    }

    #[test]
    fn follow_rows_drop_the_header_after_the_first_batch() {
        let (a, b) = (ev(0, "scale_up"), ev(1_000, "scale_manual"));
        let first = event_table(&[&a], true).render();
        assert!(first.starts_with("TIME (UTC)"), "{first}");
        let next = event_table(&[&b], false).render();
        assert_eq!(
            next,
            "1970-01-01 00:00:01  scale_manual  scale_manual at 1000"
        );
    }
}
