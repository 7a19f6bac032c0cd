//! protocol::units::{parse_duration, parse_bytes}.
//! Asserts: never panics on arbitrary text; surrounding whitespace does not matter;
//! parse(format(x)) == x for the forms we format ("Ns", "N", "Nm", "Nh", "Nms", sizes with
//! every unit, case-insensitively), with None exactly on overflow for sizes.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use protocol::units::{parse_bytes, parse_duration};
use rustybalancer_fuzz::u64_from;

fuzz_target!(|data: &[u8]| {
    // Arbitrary text.
    let text = String::from_utf8_lossy(data);
    let d = parse_duration(&text);
    let b = parse_bytes(&text);
    assert_eq!(parse_duration(&format!("  {text}\t")), d);
    assert_eq!(parse_bytes(&format!(" {text} ")), b);
    assert_eq!(
        parse_bytes(&text.to_ascii_uppercase()),
        b,
        "units are case-insensitive"
    );
    if let Some(d) = d {
        // Negative numbers are refused, so a parsed duration came from digits.
        assert!(!text.trim_start().starts_with('-'), "{text:?} -> {d:?}");
    }

    // Formatted values.
    let n = u64_from(data);
    // Whole seconds up to 2^53 are exact in f64.
    let secs = n & ((1 << 53) - 1);
    assert_eq!(
        parse_duration(&secs.to_string()),
        Some(Duration::from_secs(secs))
    );
    assert_eq!(
        parse_duration(&format!("{secs}s")),
        Some(Duration::from_secs(secs))
    );
    let mins = secs / 60;
    assert_eq!(
        parse_duration(&format!("{mins}m")),
        Some(Duration::from_secs(mins * 60))
    );
    let hours = secs / 3600;
    assert_eq!(
        parse_duration(&format!("{hours}h")),
        Some(Duration::from_secs(hours * 3600))
    );
    // Milliseconds: exact while ms/1000 keeps sub-nanosecond precision in f64 (< 2^32 ms,
    // about 49 days, covers every configured timeout).
    let ms = n & 0xffff_ffff;
    assert_eq!(
        parse_duration(&format!("{ms}ms")),
        Some(Duration::from_millis(ms)),
        "{ms}ms"
    );

    for (unit, mult) in [
        ("", 1u64),
        ("b", 1),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("k", 1 << 10),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
    ] {
        let s = format!("{n}{unit}");
        assert_eq!(parse_bytes(&s), n.checked_mul(mult), "{s}");
        assert_eq!(
            parse_bytes(&s.to_ascii_lowercase()),
            n.checked_mul(mult),
            "{s}"
        );
    }
});
