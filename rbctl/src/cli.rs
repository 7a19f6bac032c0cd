//! The command line (clap derive) and the parsers of its values: durations, `K: V`
//! headers, task ids and paths. A bad value is a usage error (exit 64).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use http::header::{HeaderName, HeaderValue};
use http::Method;

/// Command-line client of RustyBalancer: the agent's pool (status, scale, events, sundown)
/// and the balancer's task API.
#[derive(Debug, Parser)]
#[command(
    name = "rbctl",
    version,
    propagate_version = true,
    after_help = "Exit codes: 0 ok; 1 task failed/dead/cancelled; 2 task wait timed out; \
                  64 usage error; 65 the service refused the request (4xx/5xx); \
                  66 input unreadable; 69 service unreachable; 76 unexpected answer."
)]
pub struct Cli {
    /// Agent HTTP API base URL.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "RBCTL_AGENT",
        default_value = "http://localhost:2550",
        value_name = "URL"
    )]
    pub agent: String,

    /// Balancer public base URL (task API).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "RBCTL_BALANCER",
        default_value = "http://localhost:2548",
        value_name = "URL"
    )]
    pub balancer: String,

    /// Agent token (Authorization: Bearer), needed by scale and sundown when the agent has AGENT_TOKEN.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "AGENT_TOKEN",
        hide_env_values = true,
        value_name = "T"
    )]
    pub token: Option<String>,

    /// Print the services' JSON instead of tables (one compact document per line when
    /// following or watching).
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pool and balancers at a glance (agent GET /health and GET /stats).
    Status(StatusArgs),
    /// Set the pool's desired size (agent POST /scale; clamped to the pool bounds).
    Scale {
        /// Desired number of containers.
        desired: u64,
    },
    /// Recorded scaling decisions and lifecycle events (agent GET /events), oldest first.
    Events(EventsArgs),
    /// Mark a container SUNDOWN: drained, then stopped; the desired size drops by one
    /// (agent POST /sundown).
    Sundown {
        /// Container name or id.
        name: String,
    },
    /// Asynchronous tasks through the balancer's task API (/_tasks).
    #[command(subcommand)]
    Tasks(TasksCommand),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Refresh until Ctrl-C (clears the screen; with --json prints one document per refresh).
    #[arg(long, short)]
    pub watch: bool,
    /// Refresh period with --watch (e.g. 500ms, 2s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = positive_duration)]
    pub interval: Duration,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// How many events to show (the most recent).
    #[arg(long, short = 'n', default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    /// Only events of this kind (scale_up, scale_down, scale_manual, container_started,
    /// container_ready, container_sundown, container_removed, drain_timeout, …).
    #[arg(long, value_name = "K")]
    pub kind: Option<String>,
    /// Keep polling every second and print new events as they arrive, until Ctrl-C.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Submit a request as a task (the request itself, with `Prefer: respond-async`).
    Submit(SubmitArgs),
    /// A task's status (GET /_tasks/{id}).
    Status { id: TaskId },
    /// A finished task's stored response body, raw, to stdout (GET /_tasks/{id}/result).
    Result {
        id: TaskId,
        /// Print the stored status line and headers before the body.
        #[arg(long, short)]
        include: bool,
    },
    /// Wait for a task to finish: exit 0 succeeded, 1 failed/dead/cancelled, 2 timeout.
    Wait {
        id: TaskId,
        /// Give up after this long (exit 2).
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = positive_duration)]
        timeout: Duration,
    },
    /// List tasks, newest first (GET /_tasks).
    List {
        /// Only tasks in this state.
        #[arg(long)]
        status: Option<TaskStatus>,
        /// At most this many (1..=1000).
        #[arg(long, short = 'n', default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
        /// Continue a listing from the `next_cursor` of a previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Cancel a queued task (DELETE /_tasks/{id}).
    Cancel { id: TaskId },
    /// Queue a failed or dead task again (POST /_tasks/{id}/retry).
    Retry { id: TaskId },
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Request method [default: POST with a body, else GET].
    #[arg(long, short = 'X', value_name = "M", value_parser = method)]
    pub method: Option<Method>,
    /// Path and query of the request, e.g. /reports/build?month=11.
    #[arg(value_name = "PATH", value_parser = request_path)]
    pub path: String,
    /// `-`: read the body from stdin.
    #[arg(value_name = "-", value_parser = stdin_marker, conflicts_with_all = ["data", "data_file"])]
    pub stdin: Option<StdinMarker>,
    /// Request body.
    #[arg(long, short, value_name = "STRING", conflicts_with = "data_file")]
    pub data: Option<String>,
    /// Request body from a file (`-` for stdin).
    #[arg(long, value_name = "F")]
    pub data_file: Option<PathBuf>,
    /// Extra request header, repeatable.
    #[arg(long = "header", short = 'H', value_name = "K: V", value_parser = header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Idempotency-Key header: the same key and request give the same task.
    #[arg(long, value_name = "K")]
    pub idempotency_key: Option<String>,
    /// Wait for the task, then print its result body (exit codes as `tasks wait`).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (exit 2).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = positive_duration, requires = "wait")]
    pub timeout: Duration,
}

/// The positional `-` of `tasks submit`.
#[derive(Debug, Clone, Copy)]
pub struct StdinMarker;

/// A task state, as the balancer names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Dead,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Dead => "dead",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

/// A task id: letters, digits, `-` and `_` (it goes into a URL path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskId(pub String);

impl std::str::FromStr for TaskId {
    type Err = String;

    fn from_str(s: &str) -> Result<TaskId, String> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(TaskId(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a task id (letters, digits, '-' and '_', as printed by `tasks submit`)"
            ))
        }
    }
}

/// `500ms`, `2s`, `1.5s`, `1m`, `1h`, or seconds; more than zero.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match protocol::units::parse_duration(s) {
        Some(d) if !d.is_zero() => Ok(d),
        Some(_) => Err("must be more than zero".to_owned()),
        None => Err(format!(
            "{s:?} is not a duration (examples: 500ms, 2s, 1.5s, 1m, 1h; a bare number is seconds)"
        )),
    }
}

/// `Name: value` (the value may be empty; spaces around it are trimmed).
pub fn header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let Some((name, value)) = s.split_once(':') else {
        return Err(format!("{s:?} is not a header: expected 'Name: value'"));
    };
    let name = name.trim();
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of {name} has characters a header cannot carry"))?;
    Ok((name, value))
}

/// A request method (case-insensitive; CONNECT is refused by the balancer anyway).
pub fn method(s: &str) -> Result<Method, String> {
    Method::from_bytes(s.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{s:?} is not an HTTP method"))
}

/// A path with optional query: starts with `/`, valid in a request line.
pub fn request_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!(
            "{s:?} must start with '/' (e.g. /reports/build?month=11)"
        ));
    }
    s.parse::<http::uri::PathAndQuery>()
        .map(|p| p.to_string())
        .map_err(|e| format!("{s:?} is not a valid path: {e}"))
}

fn stdin_marker(s: &str) -> Result<StdinMarker, String> {
    if s == "-" {
        Ok(StdinMarker)
    } else {
        Err(format!(
            "unexpected {s:?}: the only argument after PATH is '-' (body from stdin); use --data for a literal body"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(positive_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(positive_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(positive_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(positive_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(positive_duration("30"), Ok(Duration::from_secs(30)));
        assert!(positive_duration("0s")
            .unwrap_err()
            .contains("more than zero"));
        assert!(positive_duration("banana")
            .unwrap_err()
            .contains("not a duration"));
        assert!(positive_duration("-1s").is_err());
        assert!(positive_duration("2 weeks").is_err());
    }

    #[test]
    fn headers() {
        let (n, v) = header("Content-Type: application/json").unwrap();
        assert_eq!(
            (n.as_str(), v.to_str().unwrap()),
            ("content-type", "application/json")
        );
        let (n, v) = header("X-Empty:").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-empty", ""));
        let (_, v) = header("X-Time:  12:30:00 ").unwrap();
        assert_eq!(
            v.to_str().unwrap(),
            "12:30:00",
            "only the first colon splits"
        );
        assert!(header("no colon")
            .unwrap_err()
            .contains("expected 'Name: value'"));
        assert!(header("bad name: x")
            .unwrap_err()
            .contains("not a valid header name"));
        assert!(header(": x").is_err());
        assert!(header("X-Bad: a\nb").is_err());
    }

    #[test]
    fn ids_methods_and_paths() {
        assert!("01a233fd0440cce2a42eb1278498".parse::<TaskId>().is_ok());
        assert!("../../x".parse::<TaskId>().is_err());
        assert!("".parse::<TaskId>().is_err());
        assert!("a b".parse::<TaskId>().is_err());
        assert_eq!(method("post"), Ok(Method::POST));
        assert!(method("PO ST").is_err());
        assert_eq!(request_path("/x?a=1").as_deref(), Ok("/x?a=1"));
        assert!(request_path("x").is_err());
        assert!(request_path("/a b").is_err());
    }

    #[test]
    fn submit_flags_parse_and_conflict() {
        let cli = Cli::try_parse_from([
            "rbctl",
            "tasks",
            "submit",
            "/echo",
            "-d",
            "hi",
            "-H",
            "X-A: 1",
            "-H",
            "X-B: 2",
            "--wait",
            "--timeout",
            "5s",
            "--json",
        ])
        .unwrap();
        let Command::Tasks(TasksCommand::Submit(s)) = cli.command else {
            panic!("not submit");
        };
        assert_eq!(s.headers.len(), 2);
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert!(cli.json && s.wait);
        assert!(Cli::try_parse_from(["rbctl", "tasks", "submit", "/x"]).is_ok());
        assert!(Cli::try_parse_from(["rbctl", "tasks", "submit", "/x", "-"]).is_ok());
        let bad = [
            vec!["rbctl", "tasks", "submit", "/x", "-", "--data", "y"],
            vec![
                "rbctl",
                "tasks",
                "submit",
                "/x",
                "--data",
                "y",
                "--data-file",
                "f",
            ],
            vec!["rbctl", "tasks", "submit", "/x", "--timeout", "5s"],
            vec!["rbctl", "tasks", "submit", "/x", "body"],
            vec!["rbctl", "tasks", "list", "--limit", "0"],
            vec!["rbctl", "tasks", "list", "--status", "sleeping"],
            vec!["rbctl", "scale", "many"],
            vec!["rbctl", "status", "--interval", "0s"],
        ];
        for args in bad {
            assert!(Cli::try_parse_from(&args).is_err(), "{args:?} parsed");
        }
    }

    #[test]
    fn urls_come_from_flags_or_defaults() {
        let cli = Cli::try_parse_from(["rbctl", "status", "--agent", "http://a:1"]).unwrap();
        assert_eq!(cli.agent, "http://a:1");
        // Defaults, unless the environment of the test run sets them.
        if std::env::var_os("RBCTL_BALANCER").is_none() {
            assert_eq!(cli.balancer, "http://localhost:2548");
        }
    }
}
