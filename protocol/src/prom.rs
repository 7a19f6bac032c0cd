//! A small writer of the Prometheus text exposition format (version 0.0.4).

use std::borrow::Cow;
use std::fmt::{self, Write};

/// The type of a metric family, as written on its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Prometheus text being written: family headers, then their samples.
#[derive(Debug, Default, Clone)]
pub struct PromText(String);

impl PromText {
    pub fn new() -> PromText {
        PromText::default()
    }

    pub fn with_capacity(capacity: usize) -> PromText {
        PromText(String::with_capacity(capacity))
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(
            self.0,
            "# HELP {name} {}\n# TYPE {name} {kind}",
            escape_help(help)
        );
    }

    /// One sample line, `name{label="value",…} value`; label values are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{label}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", Value(value));
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A sample value: integers without a fraction, infinities as `+Inf`/`-Inf`.
struct Value(f64);

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape(v: &str) -> Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(v);
    }
    Cow::Owned(
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

/// Escapes a `# HELP` text: backslash and line feed.
fn escape_help(v: &str) -> Cow<'_, str> {
    if !v.contains(['\\', '\n']) {
        return Cow::Borrowed(v);
    }
    Cow::Owned(v.replace('\\', "\\\\").replace('\n', "\\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert!(matches!(escape("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn family_headers() {
        let mut p = PromText::new();
        p.family("x_total", Kind::Counter, "Things.");
        p.family("y", Kind::Histogram, "A \\ and\na line.");
        assert_eq!(
            p.into_string(),
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             # HELP y A \\\\ and\\na line.\n# TYPE y histogram\n"
        );
    }

    #[test]
    fn samples_with_and_without_labels() {
        let mut p = PromText::new();
        p.sample("x", &[], 3.0);
        p.sample("x", &[("backend", "a\"1"), ("class", "2xx")], 0.25);
        p.sample("x", &[("le", "+Inf")], 12.0);
        assert_eq!(
            p.into_string(),
            "x 3\nx{backend=\"a\\\"1\",class=\"2xx\"} 0.25\nx{le=\"+Inf\"} 12\n"
        );
    }

    #[test]
    fn values_print_like_integers_or_decimals() {
        let mut p = PromText::new();
        p.single("g", Kind::Gauge, "G.", 1_234_567.0);
        for v in [0.0, 1e-6, f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            p.sample("g", &[], v);
        }
        assert_eq!(
            p.into_string(),
            "# HELP g G.\n# TYPE g gauge\ng 1234567\ng 0\ng 0.000001\ng +Inf\ng -Inf\ng NaN\n"
        );
    }
}
