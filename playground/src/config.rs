//! Configuration read from the environment: the listening port, the concurrency
//! limit of `/cpu` and `/work`, and the hostname shown in responses.

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

/// Largest accepted `MAX_CONCURRENCY` (the most permits a tokio semaphore can hold).
pub const MAX_CONCURRENCY_LIMIT: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// Parses the value of the `MAX_CONCURRENCY` environment variable.
///
/// `None` (variable unset) yields `Ok(None)`: no limit. Otherwise the value must be
/// an integer from 1 to [`MAX_CONCURRENCY_LIMIT`]: the number of `/cpu` and `/work`
/// requests processed at once. Anything else (`0`, negative, non-integer, empty) is
/// an error whose message names the variable and the expected value.
pub fn parse_max_concurrency(raw: Option<&str>) -> Result<Option<usize>, String> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    match raw.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_CONCURRENCY_LIMIT).contains(&n) => Ok(Some(n)),
        Ok(n) if n > MAX_CONCURRENCY_LIMIT => Err(format!(
            "invalid MAX_CONCURRENCY environment variable {raw:?}: expected an integer of 1 \
             or more, at most {MAX_CONCURRENCY_LIMIT}"
        )),
        _ => Err(format!(
            "invalid MAX_CONCURRENCY environment variable {raw:?}: expected an integer of 1 \
             or more (requests of /cpu and /work processed at once), or leave it unset for \
             no limit"
        )),
    }
}

/// Reads `MAX_CONCURRENCY` from the process environment (see [`parse_max_concurrency`]).
pub fn max_concurrency_from_env() -> Result<Option<usize>, String> {
    match std::env::var("MAX_CONCURRENCY") {
        Ok(value) => parse_max_concurrency(Some(&value)),
        Err(std::env::VarError::NotPresent) => parse_max_concurrency(None),
        Err(std::env::VarError::NotUnicode(value)) => Err(format!(
            "invalid MAX_CONCURRENCY environment variable {value:?}: not valid UTF-8"
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
    fn max_concurrency_defaults_to_unlimited() {
        assert_eq!(parse_max_concurrency(None), Ok(None));
    }

    #[test]
    fn max_concurrency_accepts_positive_integers() {
        assert_eq!(parse_max_concurrency(Some("1")), Ok(Some(1)));
        assert_eq!(parse_max_concurrency(Some("8")), Ok(Some(8)));
        assert_eq!(parse_max_concurrency(Some(" 4 ")), Ok(Some(4)));
        let max = MAX_CONCURRENCY_LIMIT.to_string();
        assert_eq!(
            parse_max_concurrency(Some(&max)),
            Ok(Some(MAX_CONCURRENCY_LIMIT))
        );
    }

    #[test]
    fn max_concurrency_rejects_malformed_values() {
        let too_big = (MAX_CONCURRENCY_LIMIT + 1).to_string();
        for bad in [
            "",
            " ",
            "0",
            "-1",
            "-0",
            "abc",
            "2.5",
            "4x",
            "+",
            "99999999999999999999999",
            too_big.as_str(),
        ] {
            let err = parse_max_concurrency(Some(bad)).expect_err(bad);
            assert!(err.contains("MAX_CONCURRENCY"), "{err}");
            assert!(err.contains("expected an integer of 1 or more"), "{err}");
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
