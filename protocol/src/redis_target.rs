//! Where Redis is: `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD`, `REDIS_DB`, read the same way
//! by both services and turned into a `redis://` URL.

use std::fmt;

use crate::config::Reader;

pub const REDIS_HOST: &str = "REDIS_HOST";
pub const REDIS_PORT: &str = "REDIS_PORT";
pub const REDIS_PASSWORD: &str = "REDIS_PASSWORD";
pub const REDIS_DB: &str = "REDIS_DB";

/// A Redis server and database.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
    pub db: u32,
}

impl fmt::Debug for RedisTarget {
    // The password stays out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .finish()
    }
}

impl RedisTarget {
    /// Reads the four variables. `None` when `REDIS_HOST` is set to the empty string (Redis
    /// deliberately not configured); unset means the default host `redis`.
    pub fn read<F: Fn(&str) -> Option<String>>(r: &mut Reader<'_, F>) -> Option<RedisTarget> {
        let disabled = r.verbatim(REDIS_HOST).is_some_and(|v| v.is_empty());
        let host = r.get(
            REDIS_HOST,
            "redis".to_string(),
            "a host name or IP address",
            parse_host,
        );
        let port = r.get(REDIS_PORT, 6379, "a TCP port 1-65535", |v| {
            v.parse().ok().filter(|p| *p != 0)
        });
        // Not trimmed: a password may start or end with a space.
        let password = r.untrimmed(REDIS_PASSWORD).filter(|p| !p.is_empty());
        let db = r.get(REDIS_DB, 0, "a database number >= 0", |v| v.parse().ok());
        (!disabled).then_some(RedisTarget {
            host,
            port,
            password,
            db,
        })
    }

    /// `redis://[:password@]host:port/db`, the password percent-encoded, IPv6 in brackets.
    pub fn url(&self) -> String {
        let auth = self
            .password
            .as_deref()
            .map(|p| format!(":{}@", percent_encode(p)))
            .unwrap_or_default();
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("redis://{auth}{host}:{}/{}", self.port, self.db)
    }

    /// `host:port/db`, for logs (no password).
    pub fn display(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.db)
    }
}

fn parse_host(v: &str) -> Option<String> {
    (!v.chars()
        .any(|c| c.is_whitespace() || matches!(c, '/' | '@' | '?' | '#')))
    .then(|| v.to_string())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> (Option<RedisTarget>, Vec<&'static str>) {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = |k: &str| map.get(k).cloned();
        let mut r = Reader::new(&lookup);
        let t = RedisTarget::read(&mut r);
        (t, r.errors.iter().map(|e| e.variable).collect())
    }

    #[test]
    fn defaults_and_url() {
        let (t, errs) = read(&[]);
        assert!(errs.is_empty());
        assert_eq!(t.unwrap().url(), "redis://redis:6379/0");
        let (t, _) = read(&[
            (REDIS_HOST, "10.0.0.5"),
            (REDIS_PASSWORD, "p@ss w/rd"),
            (REDIS_DB, "2"),
        ]);
        assert_eq!(t.unwrap().url(), "redis://:p%40ss%20w%2Frd@10.0.0.5:6379/2");
        let (t, _) = read(&[(REDIS_HOST, "::1"), (REDIS_PORT, "7000")]);
        assert_eq!(t.unwrap().url(), "redis://[::1]:7000/0");
    }

    #[test]
    fn empty_host_disables_and_bad_values_are_named() {
        assert_eq!(read(&[(REDIS_HOST, "")]).0, None);
        let (_, errs) = read(&[
            (REDIS_HOST, "user@host"),
            (REDIS_PORT, "0"),
            (REDIS_DB, "x"),
        ]);
        assert_eq!(errs, [REDIS_HOST, REDIS_PORT, REDIS_DB]);
    }

    #[test]
    fn debug_hides_the_password() {
        let (t, _) = read(&[(REDIS_PASSWORD, "hunter2")]);
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
