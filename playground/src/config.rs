//! Configuration read from the environment: the listening port and the hostname
//! shown in responses.

use std::path::Path;

/// Port used when `PORT` is not set.
pub const DEFAULT_PORT: u16 = 5000;

/// Parses the value of the `PORT` environment variable.
///
/// `None` (variable unset) yields [`DEFAULT_PORT`]. Anything that is not an
/// integer in `1..=65535` is an error whose message names the variable.
pub fn parse_port(raw: Option<&str>) -> Result<u16, String> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_PORT);
    };
    match raw.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "invalid PORT environment variable {raw:?}: expected an integer from 1 to 65535"
        )),
        Ok(port) => Ok(port),
    }
}

/// Reads `PORT` from the process environment (see [`parse_port`]).
pub fn port_from_env() -> Result<u16, String> {
    match std::env::var("PORT") {
        Ok(value) => parse_port(Some(&value)),
        Err(std::env::VarError::NotPresent) => parse_port(None),
        Err(std::env::VarError::NotUnicode(value)) => Err(format!(
            "invalid PORT environment variable {value:?}: not valid UTF-8"
        )),
    }
}

/// The container's hostname: `/etc/hostname`, else env `HOSTNAME`, else `"unknown"`.
pub fn detect_hostname() -> String {
    hostname_from(Path::new("/etc/hostname"), std::env::var("HOSTNAME").ok())
}

/// [`detect_hostname`] with its sources injected, for tests.
pub fn hostname_from(file: &Path, env: Option<String>) -> String {
    let from_file = std::fs::read_to_string(file)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    from_file
        .or_else(|| env.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_defaults_and_validates() {
        assert_eq!(parse_port(None), Ok(DEFAULT_PORT));
        assert_eq!(parse_port(Some("8080")), Ok(8080));
        assert_eq!(parse_port(Some(" 81 ")), Ok(81));
        for bad in ["", "0", "abc", "65536", "-1", "80x"] {
            let err = parse_port(Some(bad)).expect_err(bad);
            assert!(err.contains("PORT"), "{err}");
        }
    }

    #[test]
    fn hostname_falls_back() {
        let missing = Path::new("/nonexistent/playground-hostname");
        assert_eq!(hostname_from(missing, Some("env-host".into())), "env-host");
        assert_eq!(hostname_from(missing, Some("  ".into())), "unknown");
        assert_eq!(hostname_from(missing, None), "unknown");
    }
}
