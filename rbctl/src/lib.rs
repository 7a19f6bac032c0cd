//! `rbctl`: the command-line client of RustyBalancer's deployment-agent and balancer.
//!
//! # Layout
//! - [`cli`]: the command line (clap) and the parsers of its values.
//! - [`error`]: every failure and its exit code, in one table.
//! - [`http`]: one pooled hyper client, the services' base URLs, timeouts.
//! - [`format`]: tables and short renderings for people (pure).
//! - [`agent`]: `status`, `scale`, `events`, `sundown` (agent HTTP API).
//! - [`tasks`]: `tasks …` (the balancer's task API).
//!
//! [`run`] executes a parsed command and returns the exit code; `main` maps usage errors.

pub mod agent;
pub mod cli;
pub mod error;
pub mod format;
pub mod http;
pub mod tasks;

use std::io::Write;

use serde_json::Value;

use crate::cli::{Cli, Command};
use crate::error::Error;
use crate::http::{Endpoint, Http};

/// What every command gets: the client, both services, the output mode.
pub struct Ctx {
    pub http: Http,
    pub agent: Endpoint,
    pub balancer: Endpoint,
    /// `--json`: the services' JSON on stdout.
    pub json: bool,
}

/// Runs one command; `Ok` carries the exit code (0, or a task outcome 1/2).
pub async fn run(cli: Cli) -> Result<u8, Error> {
    let ctx = Ctx {
        http: Http::new(),
        agent: Endpoint::parse("agent", &cli.agent, cli.token.clone())?,
        balancer: Endpoint::parse("balancer", &cli.balancer, None)?,
        json: cli.json,
    };
    match cli.command {
        Command::Status(args) => agent::status(&ctx, &args).await,
        Command::Scale { desired } => agent::scale(&ctx, desired).await,
        Command::Events(args) => agent::events(&ctx, &args).await,
        Command::Sundown { name } => agent::sundown(&ctx, &name).await,
        Command::Tasks(cmd) => tasks::run(&ctx, cmd).await,
    }
}

/// Writes `text` and a newline to stdout.
pub fn out(text: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.write_all(b"\n")?;
    stdout.flush()?;
    Ok(())
}

/// Writes bytes to stdout as they are.
pub fn out_raw(bytes: &[u8]) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()?;
    Ok(())
}

/// JSON on stdout: pretty for one document, compact for a stream of them (one per line).
pub fn out_json(value: &Value, compact: bool) -> Result<(), Error> {
    let text = if compact {
        value.to_string()
    } else {
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    };
    out(&text)
}

/// A note on stderr (never stdout, so `--json` output stays parseable).
pub fn note(text: &str) {
    let mut stderr = std::io::stderr().lock();
    // Nothing sensible to do when stderr is gone.
    let _ = writeln!(stderr, "rbctl: {text}");
}
