//! Prometheus text checks shared by the crates' tests: [`check`] reads a `/metrics` page
//! twice, with the `prometheus-parse` crate and with a strict reader of the text format
//! (version 0.0.4) written here, and holds every family to the naming conventions
//! (<https://prometheus.io/docs/practices/naming/>, and the rules of `promtool check metrics`):
//!
//! - every family has a `# HELP` (not empty) and a `# TYPE`, both before its samples, and its
//!   samples come together; no family is declared twice; no series appears twice;
//! - names are snake_case (no colons, no upper case) and start with the service's prefix;
//!   label names are snake_case and not reserved (`__…`);
//! - counters end in `_total`, nothing else does; counters are finite and not negative;
//! - base units only: no `_ms`, `_milliseconds`, `_kb`, `_minutes`, `_percent`… in a name,
//!   and no unit in a label name; no type name (`counter`, `gauge`…) in a name;
//! - `_info` families are gauges whose samples are all 1;
//! - `le` only on histogram buckets, `quantile` only in summaries, `_bucket` / `_sum` /
//!   `_count` only in histograms and summaries;
//! - histograms: per label set, `le` strictly increasing and ending at `+Inf`, cumulative
//!   counts that never decrease, the `+Inf` bucket equal to `_count`, a `_sum`;
//! - label values use only the escapes `\\`, `\"` and `\n`;
//! - what `prometheus-parse` reads agrees with the strict reader: every line is understood,
//!   the same samples with the same types and values, the same help texts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;

pub use prometheus_parse;
use prometheus_parse::{LineInfo, Scrape, Value};

/// The type of a family, from its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Type {
    fn parse(s: &str) -> Option<Type> {
        Some(match s {
            "counter" => Type::Counter,
            "gauge" => Type::Gauge,
            "histogram" => Type::Histogram,
            "summary" => Type::Summary,
            "untyped" => Type::Untyped,
            _ => return None,
        })
    }
}

/// One sample line: its name (with `_bucket`/`_sum`/`_count` for histograms), its labels in
/// the order written (values unescaped), its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.label(k) == Some(v))
    }
}

/// A metric family: its `# HELP` and `# TYPE` and the samples that follow them.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: String,
    pub kind: Option<Type>,
    /// As written (escaped).
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

/// A page that passed [`check`].
#[derive(Debug)]
pub struct Exposition {
    pub families: Vec<Family>,
    /// What `prometheus-parse` made of it.
    pub scrape: Scrape,
}

impl Exposition {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// Every sample named `name` (a histogram's are `…_bucket`, `…_sum`, `…_count`).
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(move |s| s.name == name)
    }

    /// The value of the one sample named `name` that has (at least) `labels`; `None` when
    /// there is none. Panics when several match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.samples(name).filter(|s| s.has(labels)).collect();
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} samples: {found:?}",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// The sum over the samples named `name` that have (at least) `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .filter(|s| s.has(labels))
            .map(|s| s.value)
            .sum()
    }
}

/// The metric names starting with `prefix` that `text` (a document, a dashboard) mentions;
/// words ending in `_` (a prefix, `balancer_backend_*`) are not names.
pub fn names_in(text: &str, prefix: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.starts_with(prefix) && !w.ends_with('_'))
        .map(str::to_string)
        .collect()
}

impl Exposition {
    /// Checks that `doc` (its `name`, for messages) mentions every family of this page and
    /// only names this page has (a histogram's `_bucket`/`_sum`/`_count` included), among
    /// the names starting with `prefix`. `Err` lists what does not match.
    pub fn documented_in(&self, name: &str, doc: &str, prefix: &str) -> Result<(), String> {
        let mentioned = names_in(doc, prefix);
        let mut known: HashSet<String> = HashSet::new();
        for f in &self.families {
            known.insert(f.name.clone());
            if f.kind == Some(Type::Histogram) {
                for suffix in ["_bucket", "_sum", "_count"] {
                    known.insert(format!("{}{suffix}", f.name));
                }
            }
        }
        let mut problems: Vec<String> = mentioned
            .iter()
            .filter(|m| !known.contains(*m))
            .map(|m| format!("{name} mentions {m}, which /metrics does not have"))
            .collect();
        problems.extend(
            self.families
                .iter()
                .filter(|f| !mentioned.contains(&f.name))
                .map(|f| format!("{name} does not mention {}", f.name)),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// Checks a `/metrics` page (see the module documentation) whose families must all start
/// with `prefix`. `Err` lists every problem found, one a line.
pub fn check(text: &str, prefix: &str) -> Result<Exposition, String> {
    let mut problems = Vec::new();
    let families = read(text, &mut problems);
    for f in &families {
        conventions(f, prefix, &mut problems);
    }
    let scrape = cross_check(text, &families, &mut problems);
    match scrape {
        Some(scrape) if problems.is_empty() => Ok(Exposition { families, scrape }),
        _ => Err(problems.join("\n")),
    }
}

/// [`check`], panicking with the problems and the page.
pub fn assert_conventions(text: &str, prefix: &str) -> Exposition {
    check(text, prefix).unwrap_or_else(|problems| {
        panic!("/metrics breaks the Prometheus conventions:\n{problems}\n--- page ---\n{text}")
    })
}

// ---------------------------------------------------------------------------------------
// The strict reader
// ---------------------------------------------------------------------------------------

fn read(text: &str, problems: &mut Vec<String>) -> Vec<Family> {
    if !text.is_empty() && !text.ends_with('\n') {
        problems.push("the page does not end with a line feed".into());
    }
    let mut families: Vec<Family> = Vec::new();
    let mut declared: HashSet<String> = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let f = header(&mut families, &mut declared, name, &at, problems);
            if f.help.replace(help.to_string()).is_some() {
                problems.push(format!("{at}: a second HELP for {name}"));
            }
            if help.trim().is_empty() {
                problems.push(format!("{at}: empty HELP for {name}"));
            }
            check_help_escapes(help, &at, problems);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let Some(kind) = Type::parse(kind) else {
                problems.push(format!("{at}: unknown TYPE {kind:?} for {name}"));
                continue;
            };
            let f = header(&mut families, &mut declared, name, &at, problems);
            if !f.samples.is_empty() {
                problems.push(format!("{at}: TYPE of {name} after its samples"));
            }
            if f.kind.replace(kind).is_some() {
                problems.push(format!("{at}: a second TYPE for {name}"));
            }
        } else if line.starts_with('#') {
            // A comment.
        } else {
            match parse_sample(line) {
                Ok(sample) => add_sample(&mut families, sample, &at, problems),
                Err(e) => problems.push(format!("{at}: {e}: {line:?}")),
            }
        }
    }
    families
}

/// The family a HELP or TYPE line for `name` belongs to: the current one, or a new one.
fn header<'a>(
    families: &'a mut Vec<Family>,
    declared: &mut HashSet<String>,
    name: &str,
    at: &str,
    problems: &mut Vec<String>,
) -> &'a mut Family {
    let current = families.last().is_some_and(|f| f.name == name);
    if !current {
        if !declared.insert(name.to_string()) {
            problems.push(format!("{at}: family {name} declared twice"));
        }
        if !valid_name(name) {
            problems.push(format!("{at}: {name:?} is not a valid metric name"));
        }
        families.push(Family {
            name: name.to_string(),
            kind: None,
            help: None,
            samples: Vec::new(),
        });
    }
    let last = families.len() - 1;
    &mut families[last]
}

fn add_sample(families: &mut [Family], sample: Sample, at: &str, problems: &mut Vec<String>) {
    let Some(f) = families.last_mut() else {
        problems.push(format!("{at}: sample {} before any HELP/TYPE", sample.name));
        return;
    };
    let suffix = sample.name.strip_prefix(f.name.as_str());
    let belongs = match f.kind {
        Some(Type::Histogram) => matches!(suffix, Some("_bucket" | "_sum" | "_count")),
        Some(Type::Summary) => matches!(suffix, Some("" | "_sum" | "_count")),
        _ => suffix == Some(""),
    };
    if !belongs {
        problems.push(format!(
            "{at}: sample {} has no HELP/TYPE of its own (it follows family {})",
            sample.name, f.name
        ));
        return;
    }
    if f.kind.is_none() || f.help.is_none() {
        problems.push(format!(
            "{at}: sample {} before its family's HELP and TYPE",
            sample.name
        ));
    }
    f.samples.push(sample);
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn check_help_escapes(help: &str, at: &str, problems: &mut Vec<String>) {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
            problems.push(format!("{at}: HELP has an escape other than \\\\ or \\n"));
        }
    }
}

/// Reads `name{label="value",…} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let (label, r) = rest.split_once("=\"").ok_or("a label without =\"value\"")?;
            if !valid_name(label) || label.contains(':') {
                return Err(format!("bad label name {label:?}"));
            }
            let (value, r) = label_value(r)?;
            labels.push((label.to_string(), value));
            rest = r.strip_prefix(',').unwrap_or(r);
            if !r.starts_with([',', '}']) {
                return Err("labels not separated by ','".into());
            }
        }
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .trim_start();
    let mut fields = rest.split(' ');
    let value = fields.next().unwrap_or_default();
    let value = parse_value(value).ok_or_else(|| format!("bad value {value:?}"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A label value up to its closing quote, unescaped; and what follows the quote.
fn label_value(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, 'n')) => out.push('\n'),
                other => return Err(format!("bad escape \\{:?} in a label value", other)),
            },
            '\n' => return Err("a raw line feed in a label value".into()),
            c => out.push(c),
        }
    }
    Err("an unterminated label value".into())
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v if v.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+' || c == '.') => {
            v.parse().ok().filter(|x: &f64| x.is_finite())
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Naming conventions
// ---------------------------------------------------------------------------------------

/// Name tokens that are a unit other than the base one, or an abbreviated unit.
const NOT_BASE_UNITS: [&str; 33] = [
    "ms",
    "us",
    "ns",
    "s",
    "sec",
    "secs",
    "m",
    "min",
    "mins",
    "h",
    "d",
    "b",
    "kb",
    "mb",
    "gb",
    "tb",
    "milliseconds",
    "microseconds",
    "nanoseconds",
    "millis",
    "micros",
    "nanos",
    "minutes",
    "hours",
    "days",
    "kilobytes",
    "megabytes",
    "gigabytes",
    "kibibytes",
    "mebibytes",
    "gibibytes",
    "percent",
    "percentage",
];

/// Tokens that make a label name carry a unit.
const UNITS: [&str; 4] = ["seconds", "bytes", "ratio", "celsius"];

const TYPE_NAMES: [&str; 4] = ["counter", "gauge", "histogram", "summary"];

fn snake_case(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.contains("__")
        && !name.ends_with('_')
}

fn conventions(f: &Family, prefix: &str, problems: &mut Vec<String>) {
    let name = f.name.as_str();
    let mut bad = |why: String| problems.push(format!("{name}: {why}"));
    let Some(kind) = f.kind else {
        bad("no TYPE".into());
        return;
    };
    if f.help.is_none() {
        bad("no HELP".into());
    }
    if kind == Type::Untyped {
        bad("untyped: give the family a type".into());
    }
    if !snake_case(name) {
        bad("not snake_case (lower-case letters, digits, single underscores)".into());
    }
    if !name.starts_with(prefix) {
        bad(format!("does not start with {prefix:?}"));
    }
    let tokens: Vec<&str> = name.split('_').collect();
    if kind == Type::Counter && !name.ends_with("_total") {
        bad("a counter whose name does not end in _total".into());
    }
    if kind != Type::Counter && name.ends_with("_total") {
        bad(format!(
            "a {kind:?} whose name ends in _total (counters only)"
        ));
    }
    for t in &tokens {
        if NOT_BASE_UNITS.contains(t) {
            bad(format!(
                "unit {t:?}: use base units (seconds, bytes) spelled out"
            ));
        }
        if TYPE_NAMES.contains(t) {
            bad(format!("the type name {t:?} in the metric name"));
        }
    }
    if name.ends_with("_info") && kind != Type::Gauge {
        bad("an _info metric that is not a gauge".into());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if name.ends_with(suffix) && !matches!(kind, Type::Histogram | Type::Summary) {
            bad(format!("{suffix} is reserved for histograms and summaries"));
        }
    }
    let mut series: HashSet<(String, BTreeMap<String, String>)> = HashSet::new();
    for s in &f.samples {
        let mut key = BTreeMap::new();
        for (label, value) in &s.labels {
            if !snake_case(label) {
                bad(format!("label {label:?} is not snake_case"));
            }
            if label
                .split('_')
                .any(|t| UNITS.contains(&t) || NOT_BASE_UNITS.contains(&t))
            {
                bad(format!("label {label:?} carries a unit"));
            }
            if label == "le" && !(kind == Type::Histogram && s.name.ends_with("_bucket")) {
                bad("an `le` label outside histogram buckets".into());
            }
            if label == "quantile" && kind != Type::Summary {
                bad("a `quantile` label outside a summary".into());
            }
            if key.insert(label.clone(), value.clone()).is_some() {
                bad(format!("label {label:?} twice in one sample"));
            }
        }
        if !series.insert((s.name.clone(), key)) {
            bad(format!("series {}{:?} appears twice", s.name, s.labels));
        }
        if kind == Type::Counter && !(s.value.is_finite() && s.value >= 0.0) {
            bad(format!("counter value {} (must be finite, ≥ 0)", s.value));
        }
        if name.ends_with("_info") && s.value != 1.0 {
            bad(format!("an _info sample of value {} (must be 1)", s.value));
        }
    }
    if kind == Type::Histogram {
        histogram(f, problems);
    }
}

/// Buckets per label set (`le` removed), in the order written.
type Buckets = Vec<(f64, f64)>;

fn histogram(f: &Family, problems: &mut Vec<String>) {
    let name = &f.name;
    let without = |s: &Sample, drop: &str| -> Vec<(String, String)> {
        let mut l: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| k != drop)
            .cloned()
            .collect();
        l.sort();
        l
    };
    let mut buckets: Vec<(Vec<(String, String)>, Buckets)> = Vec::new();
    let mut sums: HashMap<Vec<(String, String)>, f64> = HashMap::new();
    let mut counts: HashMap<Vec<(String, String)>, f64> = HashMap::new();
    for s in &f.samples {
        let key = without(s, "le");
        match &s.name[name.len()..] {
            "_bucket" => {
                let Some(le) = s.label("le").and_then(parse_value) else {
                    problems.push(format!("{name}: a bucket without a numeric `le`"));
                    continue;
                };
                match buckets.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, b)) => b.push((le, s.value)),
                    None => buckets.push((key, vec![(le, s.value)])),
                }
            }
            "_sum" => {
                sums.insert(key, s.value);
            }
            _ => {
                counts.insert(key, s.value);
            }
        }
    }
    if buckets.is_empty() {
        problems.push(format!("{name}: a histogram without buckets"));
    }
    for (key, b) in &buckets {
        let at = format!("{name}{key:?}");
        for w in b.windows(2) {
            if w[1].0 <= w[0].0 {
                problems.push(format!("{at}: le {} after le {}", w[1].0, w[0].0));
            }
            if w[1].1 < w[0].1 {
                problems.push(format!(
                    "{at}: bucket le={} holds {} < {} of le={} (not cumulative)",
                    w[1].0, w[1].1, w[0].1, w[0].0
                ));
            }
        }
        let inf = b.last().filter(|(le, _)| *le == f64::INFINITY).map(|x| x.1);
        match (inf, counts.get(key)) {
            (None, _) => problems.push(format!("{at}: the last bucket is not le=\"+Inf\"")),
            (Some(_), None) => problems.push(format!("{at}: no _count")),
            (Some(i), Some(c)) if i != *c => {
                problems.push(format!("{at}: +Inf bucket {i} != _count {c}"))
            }
            _ => {}
        }
        match sums.get(key) {
            None => problems.push(format!("{at}: no _sum")),
            Some(s) if !s.is_finite() => problems.push(format!("{at}: _sum {s}")),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// prometheus-parse
// ---------------------------------------------------------------------------------------

/// Parses with `prometheus-parse` and compares with the strict reading.
fn cross_check(text: &str, families: &[Family], problems: &mut Vec<String>) -> Option<Scrape> {
    for (n, line) in text.lines().enumerate() {
        let understood = match LineInfo::parse(line) {
            LineInfo::Empty => line.trim().is_empty(),
            LineInfo::Doc { .. } => line.starts_with("# HELP "),
            LineInfo::Type { .. } => line.starts_with("# TYPE "),
            LineInfo::Sample { .. } => !line.starts_with('#'),
            LineInfo::Ignored => line.starts_with('#') && !line.starts_with("# HELP "),
        };
        if !understood {
            problems.push(format!(
                "line {}: prometheus-parse misreads {line:?}",
                n + 1
            ));
        }
    }
    let scrape = match Scrape::parse(text.lines().map(|l| Ok(l.to_string()))) {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("prometheus-parse: {e}"));
            return None;
        }
    };
    // What prometheus-parse should have made of the strict reading: one sample per
    // counter/gauge line, one per histogram label set (its buckets), and `_sum`/`_count`
    // as untyped samples (it types only the buckets).
    let mut want: Vec<String> = Vec::new();
    for f in families {
        let mut sets = HashSet::new();
        for s in &f.samples {
            let key = |kind: &str| format!("{kind} {} {}", s.name, s.value);
            match f.kind {
                Some(Type::Counter) => want.push(key("counter")),
                Some(Type::Gauge) => want.push(key("gauge")),
                Some(Type::Histogram) if s.name.ends_with("_bucket") => {
                    let mut l: Vec<_> = s.labels.iter().filter(|(k, _)| k != "le").collect();
                    l.sort();
                    if sets.insert(format!("{l:?}")) {
                        want.push(format!("histogram {}", f.name));
                    }
                }
                _ => want.push(key("untyped")),
            }
        }
        if let Some(help) = &f.help {
            if scrape.docs.get(&f.name) != Some(help) {
                problems.push(format!(
                    "{}: prometheus-parse read the HELP as {:?}",
                    f.name,
                    scrape.docs.get(&f.name)
                ));
            }
        }
    }
    let mut got: Vec<String> = scrape
        .samples
        .iter()
        .map(|s| match &s.value {
            Value::Counter(v) => format!("counter {} {v}", s.metric),
            Value::Gauge(v) => format!("gauge {} {v}", s.metric),
            Value::Untyped(v) => format!("untyped {} {v}", s.metric),
            Value::Histogram(_) => format!("histogram {}", s.metric),
            Value::Summary(_) => format!("summary {}", s.metric),
        })
        .collect();
    want.sort();
    got.sort();
    if want != got {
        let mut diff = String::new();
        for w in want.iter().filter(|w| !got.contains(w)) {
            let _ = write!(diff, "\n  missing from prometheus-parse: {w}");
        }
        for g in got.iter().filter(|g| !want.contains(g)) {
            let _ = write!(diff, "\n  only in prometheus-parse: {g}");
        }
        problems.push(format!(
            "prometheus-parse read {} samples, the strict reader {}:{diff}",
            got.len(),
            want.len()
        ));
    }
    Some(scrape)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# HELP app_requests_total Requests, by backend.
# TYPE app_requests_total counter
app_requests_total{backend=\"a \\\"q\\\" \\\\ b,c=d\",class=\"2xx\"} 3
app_requests_total{backend=\"b\",class=\"2xx\"} 0
# HELP app_in_flight Requests in flight.
# TYPE app_in_flight gauge
app_in_flight 2.5
# HELP app_build_info Build.
# TYPE app_build_info gauge
app_build_info{version=\"1.2.3\"} 1
# HELP app_latency_seconds Latency.
# TYPE app_latency_seconds histogram
app_latency_seconds_bucket{le=\"0.1\"} 1
app_latency_seconds_bucket{le=\"1\"} 3
app_latency_seconds_bucket{le=\"+Inf\"} 4
app_latency_seconds_sum 7.25
app_latency_seconds_count 4
# HELP app_empty A family without samples yet.
# TYPE app_empty gauge
";

    fn problems(text: &str) -> String {
        check(text, "app_").expect_err("must be refused")
    }

    #[test]
    fn a_good_page_passes_and_is_read_back() {
        let e = assert_conventions(GOOD, "app_");
        assert_eq!(
            e.value("app_requests_total", &[("backend", "a \"q\" \\ b,c=d")]),
            Some(3.0)
        );
        assert_eq!(e.sum("app_requests_total", &[("class", "2xx")]), 3.0);
        assert_eq!(e.value("app_latency_seconds_count", &[]), Some(4.0));
        assert_eq!(e.value("app_in_flight", &[]), Some(2.5));
        assert_eq!(e.family("app_empty").map(|f| f.samples.len()), Some(0));
        assert_eq!(e.scrape.samples.len(), 7, "{:?}", e.scrape.samples);
    }

    #[test]
    fn documentation_is_compared_with_the_page() {
        let e = assert_conventions(GOOD, "app_");
        let doc = "`app_requests_total{backend}`, app_in_flight, app_build_info, app_empty, \
                   app_latency_seconds (p99 from app_latency_seconds_bucket); app_* globs skip";
        assert_eq!(e.documented_in("doc", doc, "app_"), Ok(()));
        let stale = format!("{doc} app_gone_total");
        let err = e.documented_in("doc", &stale, "app_").unwrap_err();
        assert!(err.contains("mentions app_gone_total"), "{err}");
        let missing = doc.replace("app_empty", "");
        let err = e.documented_in("doc", &missing, "app_").unwrap_err();
        assert!(err.contains("does not mention app_empty"), "{err}");
    }

    #[test]
    fn each_broken_rule_is_named() {
        let cases: &[(&str, &str)] = &[
            (
                "# HELP app_up_total Up.\n# TYPE app_up_total gauge\napp_up_total 1\n",
                "ends in _total",
            ),
            (
                "# HELP app_hits Hits.\n# TYPE app_hits counter\napp_hits 1\n",
                "does not end in _total",
            ),
            (
                "# HELP app_latency_ms L.\n# TYPE app_latency_ms gauge\napp_latency_ms 1\n",
                "unit \"ms\"",
            ),
            (
                "# HELP app_age_milliseconds A.\n# TYPE app_age_milliseconds gauge\napp_age_milliseconds 1\n",
                "unit \"milliseconds\"",
            ),
            (
                "# HELP app_body_kb B.\n# TYPE app_body_kb gauge\napp_body_kb 1\n",
                "unit \"kb\"",
            ),
            ("# TYPE app_x gauge\napp_x 1\n", "no HELP"),
            ("# HELP app_x X.\napp_x 1\n", "no TYPE"),
            ("app_x 1\n", "before any HELP/TYPE"),
            (
                "# HELP app_x X.\n# TYPE app_x gauge\napp_x 1\napp_y 2\n",
                "sample app_y has no HELP/TYPE of its own",
            ),
            (
                "# HELP app_x X.\n# TYPE app_x gauge\napp_x{a=\"1\"} 1\napp_x{a=\"1\"} 2\n",
                "appears twice",
            ),
            (
                "# HELP app_x X.\n# TYPE app_x gauge\napp_x{a=\"\\t\"} 1\n",
                "bad escape",
            ),
            (
                "# HELP appX X.\n# TYPE appX gauge\nappX 1\n",
                "not snake_case",
            ),
            (
                "# HELP other_x X.\n# TYPE other_x gauge\nother_x 1\n",
                "does not start with",
            ),
            (
                "# HELP app_x X.\n# TYPE app_x gauge\napp_x{timeout_seconds=\"1\"} 1\n",
                "carries a unit",
            ),
            (
                "# HELP app_build_info B.\n# TYPE app_build_info gauge\napp_build_info 2\n",
                "must be 1",
            ),
            (
                "# HELP app_x_total X.\n# TYPE app_x_total counter\napp_x_total -1\n",
                "must be finite",
            ),
            (
                "# HELP app_d_seconds D.\n# TYPE app_d_seconds histogram\n\
                 app_d_seconds_bucket{le=\"1\"} 3\napp_d_seconds_bucket{le=\"+Inf\"} 2\n\
                 app_d_seconds_sum 1\napp_d_seconds_count 2\n",
                "not cumulative",
            ),
            (
                "# HELP app_d_seconds D.\n# TYPE app_d_seconds histogram\n\
                 app_d_seconds_bucket{le=\"1\"} 1\napp_d_seconds_bucket{le=\"+Inf\"} 2\n\
                 app_d_seconds_sum 1\napp_d_seconds_count 3\n",
                "+Inf bucket 2 != _count 3",
            ),
            (
                "# HELP app_d_seconds D.\n# TYPE app_d_seconds histogram\n\
                 app_d_seconds_bucket{le=\"1\"} 1\napp_d_seconds_sum 1\napp_d_seconds_count 1\n",
                "not le=\"+Inf\"",
            ),
            (
                "# HELP app_x X.\n# TYPE app_x gauge\napp_x{le=\"1\"} 1\n",
                "`le` label outside",
            ),
            (
                "# HELP app_x X.\n# TYPE app_x gauge\napp_x 1\n\
                 # HELP app_y Y.\n# TYPE app_y gauge\n# HELP app_x X.\n# TYPE app_x gauge\n",
                "declared twice",
            ),
            (
                "# HELP app_x X.\n# TYPE app_x untyped\napp_x 1\n",
                "untyped",
            ),
            (
                "# HELP app_x X.\n# TYPE app_x gauge\napp_x one\n",
                "bad value",
            ),
        ];
        for (text, want) in cases {
            let got = problems(text);
            assert!(got.contains(want), "{text:?}: want {want:?}, got:\n{got}");
        }
    }
}
