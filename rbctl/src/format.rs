//! Output for people: aligned tables and short renderings of numbers, shares, ages and
//! times. Pure functions; JSON output does not come through here.

use serde_json::Value;

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A plain-text table: a header row, columns separated by two spaces, no trailing blanks.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (title, _))| {
                self.rows
                    .iter()
                    .map(|r| width(&r[i]))
                    .chain(std::iter::once(width(title)))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                let pad = " ".repeat(widths[i].saturating_sub(width(cell)));
                match self.columns[i].1 {
                    Align::Left => {
                        out.push_str(cell);
                        out.push_str(&pad);
                    }
                    Align::Right => {
                        out.push_str(&pad);
                        out.push_str(cell);
                    }
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = line(self.columns.iter().map(|(t, _)| *t).collect());
        for row in &self.rows {
            out.push('\n');
            out.push_str(&line(row.iter().map(String::as_str).collect()));
        }
        out
    }
}

/// A number with `decimals` places, `-` for null or absent.
pub fn number(v: &Value, decimals: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.decimals$}"),
        None => "-".to_owned(),
    }
}

/// A whole number, `-` for null or absent.
pub fn count(v: &Value) -> String {
    match (v.as_u64(), v.as_f64()) {
        (Some(n), _) => n.to_string(),
        (None, Some(x)) => format!("{x:.0}"),
        _ => "-".to_owned(),
    }
}

/// A share in 0..1 as a percentage (`42.5%`), `-` for null or absent.
pub fn share(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{:.1}%", x * 100.0),
        None => "-".to_owned(),
    }
}

/// A string field, `-` for null or absent.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// `yes`/`no`, `?` when absent.
pub fn yes_no(v: &Value) -> &'static str {
    match v.as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "?",
    }
}

/// `ok`/`DOWN`, `?` when absent.
pub fn ok_down(v: &Value) -> &'static str {
    match v.as_bool() {
        Some(true) => "ok",
        Some(false) => "DOWN",
        None => "?",
    }
}

/// An age in seconds: `45s`, `3m04s`, `2h05m`, `3d04h`.
pub fn age(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".to_owned();
    }
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m{:02}s", s / 60, s % 60),
        3_600..86_400 => format!("{}h{:02}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// A duration for progress lines: `0.4s`, `12.0s`, `3m04s`.
pub fn elapsed(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        age(secs)
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_trim_trailing_blanks() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("SCORE", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["app-1".into(), "91.2".into(), String::new()]);
        t.row(vec![
            "rustybalancer-app-10".into(),
            "5.0".into(),
            "SUNDOWN".into(),
        ]);
        t.row(vec!["short".into()]);
        assert_eq!(
            t.render(),
            "NAME                  SCORE  NOTE\n\
             app-1                  91.2\n\
             rustybalancer-app-10    5.0  SUNDOWN\n\
             short"
        );
        let empty = Table::new(&[("ID", Align::Left)]);
        assert!(empty.is_empty());
        assert_eq!(empty.render(), "ID");
    }

    #[test]
    fn non_ascii_cells_are_measured_in_characters() {
        let mut t = Table::new(&[("A", Align::Left), ("B", Align::Left)]);
        t.row(vec!["é…".into(), "x".into()]);
        assert_eq!(t.render(), "A   B\né…  x");
    }

    #[test]
    fn values_render_with_placeholders() {
        assert_eq!(number(&json!(91.234), 1), "91.2");
        assert_eq!(number(&json!(null), 1), "-");
        assert_eq!(number(&Value::Null, 0), "-");
        assert_eq!(count(&json!(3)), "3");
        assert_eq!(count(&json!(0.4)), "0");
        assert_eq!(share(&json!(0.425)), "42.5%");
        assert_eq!(share(&json!(null)), "-");
        assert_eq!(text(&json!("LU")), "LU");
        assert_eq!(text(&json!(null)), "-");
        assert_eq!(text(&json!(5)), "5");
        assert_eq!(yes_no(&json!(true)), "yes");
        assert_eq!(ok_down(&json!(false)), "DOWN");
        assert_eq!(ok_down(&Value::Null), "?");
    }

    #[test]
    fn ages_and_times() {
        assert_eq!(age(0.4), "0s");
        assert_eq!(age(59.9), "59s");
        assert_eq!(age(184.0), "3m04s");
        assert_eq!(age(7_500.0), "2h05m");
        assert_eq!(age(273_600.0), "3d04h");
        assert_eq!(age(-1.0), "-");
        assert_eq!(elapsed(2.345), "2.3s");
        assert_eq!(elapsed(125.0), "2m05s");
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_764_669_000_000), "2025-12-02 09:50:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(4_107_542_399_000), "2100-02-28 23:59:59");
    }
}
