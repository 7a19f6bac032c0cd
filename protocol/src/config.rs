//! Reading configuration from environment variables, shared by both services: every
//! variable is parsed before failing, so one run names every bad value, one line each.
//!
//! A service reads through [`Reader`] (over a lookup function, so tests pass a map), then
//! calls [`Reader::finish`] with its cross-field errors.

use std::fmt;
use std::time::Duration;

use crate::units::{parse_bytes, parse_duration};

/// One bad variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

/// Every bad variable found in one pass; displays one line per variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The names of the bad variables, in the order found.
    pub fn variables(&self) -> Vec<&'static str> {
        self.0.iter().map(|e| e.variable).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects parse errors while reading variables.
pub struct Reader<'a, F: Fn(&str) -> Option<String>> {
    lookup: &'a F,
    /// Errors found so far, in the order found.
    pub errors: Vec<ConfigError>,
}

impl<'a, F: Fn(&str) -> Option<String>> Reader<'a, F> {
    /// Reads through `lookup` (the process environment, or a map in tests).
    pub fn new(lookup: &'a F) -> Self {
        Reader {
            lookup,
            errors: Vec::new(),
        }
    }

    /// `Ok(value)` when no error was recorded (cross-field errors added first), else every error.
    pub fn finish<T>(mut self, value: T, cross_field: Vec<ConfigError>) -> Result<T, ConfigErrors> {
        // A variable already reported as malformed holds a stand-in default: its cross-field
        // complaints would be noise.
        for e in cross_field {
            if !self.errors.iter().any(|old| old.variable == e.variable) {
                self.errors.push(e);
            }
        }
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    /// The value exactly as set (secrets may start or end with spaces).
    pub fn untrimmed(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    /// The trimmed value, empty included (for variables where "set but empty" means something).
    pub fn verbatim(&self, name: &str) -> Option<String> {
        (self.lookup)(name).map(|v| v.trim().to_string())
    }

    /// The trimmed value; `None` when unset or empty.
    pub fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    pub fn fail(&mut self, variable: &'static str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            variable,
            message: message.into(),
        });
    }

    /// Parses with `parse`; `None` when unset, or when malformed (recording the error).
    pub fn opt<T>(
        &mut self,
        name: &'static str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let v = self.raw(name)?;
        let parsed = parse(&v);
        if parsed.is_none() {
            self.fail(name, format!("expected {expected}, got {v:?}"));
        }
        parsed
    }

    /// Parses with `parse`, or falls back to `default` when unset or malformed.
    pub fn get<T>(
        &mut self,
        name: &'static str,
        default: T,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> T {
        self.opt(name, expected, parse).unwrap_or(default)
    }

    /// A value that must be set; `None` (with an error) when unset or malformed.
    pub fn required<T>(
        &mut self,
        name: &'static str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        if self.raw(name).is_none() {
            self.fail(name, format!("required: expected {expected}"));
            return None;
        }
        self.opt(name, expected, parse)
    }

    pub fn port(&mut self, name: &'static str, default: u16) -> u16 {
        self.get(name, default, "a TCP port 0-65535", |v| v.parse().ok())
    }

    pub fn duration(&mut self, name: &'static str, default: Duration) -> Duration {
        self.get(
            name,
            default,
            "a duration such as 30, 30s, 500ms or 2m",
            parse_duration,
        )
    }

    /// A duration that must be greater than zero.
    pub fn positive_duration(&mut self, name: &'static str, default: Duration) -> Duration {
        self.get(
            name,
            default,
            "a duration greater than zero such as 30, 30s, 500ms or 2m",
            |v| parse_duration(v).filter(|d| !d.is_zero()),
        )
    }

    /// A whole number of at least `min`.
    pub fn count<T>(&mut self, name: &'static str, default: T, min: T) -> T
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        self.get(name, default, &format!("a whole number >= {min}"), |v| {
            v.parse::<T>().ok().filter(|n| *n >= min)
        })
    }

    /// A byte size such as `1048576`, `512KiB` or `10MiB`.
    pub fn bytes(&mut self, name: &'static str, default: u64) -> u64 {
        self.get(
            name,
            default,
            "a size such as 1048576, 512KiB or 10MiB",
            parse_bytes,
        )
    }

    /// A finite number in `min..=max`.
    pub fn number(&mut self, name: &'static str, default: f64, min: f64, max: f64) -> f64 {
        self.get(
            name,
            default,
            &format!("a number from {min} to {max}"),
            |v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && (min..=max).contains(x))
            },
        )
    }
}

/// Cross-field rules: collects the ones that do not hold, for [`Reader::finish`].
#[derive(Debug, Default)]
pub struct Rules(Vec<ConfigError>);

impl Rules {
    /// Records `message` against `variable` unless `ok`.
    pub fn check(&mut self, ok: bool, variable: &'static str, message: &str) {
        if !ok {
            self.0.push(ConfigError {
                variable,
                message: message.to_string(),
            });
        }
    }

    pub fn into_errors(self) -> Vec<ConfigError> {
        self.0
    }
}
