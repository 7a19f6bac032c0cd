//! Pieces shared by the fuzz targets in `fuzz_targets/`.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// A header map from `name: value` lines; lines that do not make a valid field are skipped.
pub fn header_map<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        h.append(n, v);
    }
    h
}

/// The first 8 bytes of `data` as a little-endian number (zero-padded).
pub fn u64_from(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}
