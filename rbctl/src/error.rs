//! Errors and exit codes, mapped in one place ([`Error::exit_code`]).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (and `tasks wait`: the task succeeded) |
//! | 1 | the task ended `failed`, `dead` or `cancelled` (`tasks wait`, `tasks submit --wait`) |
//! | 2 | `tasks wait` / `tasks submit --wait`: still not finished at `--timeout` |
//! | 64 | usage error: unknown flag, missing argument, bad value (clap's own 2 is remapped) |
//! | 65 | the service answered with an error status (4xx/5xx), e.g. 401 without a token |
//! | 66 | the input file (`--data-file`, stdin) cannot be read |
//! | 69 | the service cannot be reached: refused, DNS, connect or request timeout |
//! | 74 | stdout cannot be written (other than a closed pipe, which ends quietly) |
//! | 76 | the service answered something unexpected (not the JSON the contract describes) |

use std::fmt;

pub const EXIT_OK: u8 = 0;
pub const EXIT_TASK_FAILED: u8 = 1;
pub const EXIT_TIMEOUT: u8 = 2;
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_REJECTED: u8 = 65;
pub const EXIT_NO_INPUT: u8 = 66;
pub const EXIT_UNREACHABLE: u8 = 69;
pub const EXIT_IO: u8 = 74;
pub const EXIT_PROTOCOL: u8 = 76;

/// Why a command could not do its job.
#[derive(Debug)]
pub enum Error {
    /// Bad command line (beyond what clap checks).
    Usage(String),
    /// Connection refused, DNS failure, connect or request timeout.
    Unreachable {
        service: &'static str,
        url: String,
        request: String,
        detail: String,
    },
    /// The service answered 4xx/5xx.
    Rejected {
        service: &'static str,
        request: String,
        status: u16,
        /// `error` code of the JSON body, if any.
        code: Option<String>,
        message: String,
    },
    /// The input file or stdin cannot be read.
    Input(String),
    /// The answer is not what the contract describes.
    Protocol(String),
    /// Writing stdout failed.
    Output(std::io::Error),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Unreachable { .. } => EXIT_UNREACHABLE,
            Error::Rejected { .. } => EXIT_REJECTED,
            Error::Input(_) => EXIT_NO_INPUT,
            Error::Protocol(_) => EXIT_PROTOCOL,
            Error::Output(_) => EXIT_IO,
        }
    }

    /// A closed stdout (`rbctl events | head`) is not worth a message.
    pub fn is_quiet(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// The message on one line, without the `rbctl: error: ` prefix.
    pub fn one_line(&self) -> String {
        one_line(&self.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Input(m) | Error::Protocol(m) => f.write_str(m),
            Error::Unreachable {
                service,
                url,
                request,
                detail,
            } => {
                let flag = if *service == "agent" {
                    "--agent or RBCTL_AGENT"
                } else {
                    "--balancer or RBCTL_BALANCER"
                };
                write!(
                    f,
                    "cannot reach the {service} at {url} ({request}): {detail} (is it running? set {flag})"
                )
            }
            Error::Rejected {
                service,
                request,
                status,
                code,
                message,
            } => {
                write!(f, "the {service} refused {request}: HTTP {status}")?;
                if let Some(code) = code {
                    write!(f, " {code}")?;
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Error::Output(e) => write!(f, "cannot write to stdout: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Output(e)
    }
}

/// Collapses whitespace runs (newlines included) to single spaces.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_kind() {
        let rejected = Error::Rejected {
            service: "agent",
            request: "POST /scale".into(),
            status: 401,
            code: Some("unauthorized".into()),
            message: "needs a token".into(),
        };
        let unreachable = Error::Unreachable {
            service: "balancer",
            url: "http://127.0.0.1:9".into(),
            request: "GET /_tasks".into(),
            detail: "connection refused".into(),
        };
        let cases = [
            (Error::Usage("x".into()), EXIT_USAGE),
            (rejected, EXIT_REJECTED),
            (unreachable, EXIT_UNREACHABLE),
            (Error::Input("x".into()), EXIT_NO_INPUT),
            (Error::Protocol("x".into()), EXIT_PROTOCOL),
            (Error::Output(std::io::Error::other("disk full")), EXIT_IO),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e}");
        }
        // None collides with the task outcomes of `tasks wait`.
        for code in [EXIT_USAGE, EXIT_REJECTED, EXIT_UNREACHABLE] {
            assert!(![EXIT_OK, EXIT_TASK_FAILED, EXIT_TIMEOUT].contains(&code));
        }
    }

    #[test]
    fn messages_are_one_line_and_name_the_url() {
        let e = Error::Unreachable {
            service: "agent",
            url: "http://localhost:2550".into(),
            request: "GET /health".into(),
            detail: "connection refused\n(os error 111)".into(),
        };
        let line = e.one_line();
        assert!(!line.contains('\n'));
        assert!(line.contains("http://localhost:2550"), "{line}");
        assert!(line.contains("--agent or RBCTL_AGENT"), "{line}");
        let e = Error::Rejected {
            service: "agent",
            request: "POST /scale".into(),
            status: 401,
            code: Some("unauthorized".into()),
            message: "POST /scale needs Authorization: Bearer <AGENT_TOKEN>".into(),
        };
        assert_eq!(
            e.one_line(),
            "the agent refused POST /scale: HTTP 401 unauthorized: POST /scale needs Authorization: Bearer <AGENT_TOKEN>"
        );
    }

    #[test]
    fn a_closed_pipe_is_quiet() {
        let e = Error::Output(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(e.is_quiet());
        assert!(!Error::Usage("x".into()).is_quiet());
    }
}
