//! The shared-token check of the agent's protected endpoints (`Authorization: Bearer <token>`).

/// The authentication scheme, matched case-insensitively (RFC 7235 §2.1).
const SCHEME: &[u8] = b"Bearer";

/// Whether the `Authorization` header value `header` presents `token` as a Bearer credential.
///
/// The scheme is matched case-insensitively and separated from the credential by one or more
/// spaces. The credential is compared with `token` in constant time with respect to its
/// contents: every byte of `token` is compared, with no early exit; a credential of another
/// length is rejected after the same amount of work.
pub fn bearer_matches(header: Option<&[u8]>, token: &str) -> bool {
    let presented = header.and_then(bearer_credential);
    let token = token.as_bytes();
    match presented {
        Some(p) if p.len() == token.len() => constant_time_eq(p, token),
        _ => {
            // Same work as a real comparison, result thrown away.
            let _ = constant_time_eq(token, token);
            false
        }
    }
}

/// The credential after `Bearer` and at least one space, if the scheme is Bearer.
fn bearer_credential(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || rest.first() != Some(&b' ') {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    Some(&rest[start..])
}

/// Compares two slices of equal length, touching every byte whatever the differences.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0 && a.len() == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(header: &str, token: &str) -> bool {
        bearer_matches(Some(header.as_bytes()), token)
    }

    #[test]
    fn the_right_token_matches() {
        assert!(check("Bearer s3cret", "s3cret"));
    }

    #[test]
    fn a_wrong_token_of_the_same_length_does_not() {
        assert!(!check("Bearer s3creT", "s3cret"));
        assert!(!check("Bearer x3cret", "s3cret"));
    }

    #[test]
    fn a_token_of_another_length_does_not() {
        assert!(!check("Bearer s3cre", "s3cret"));
        assert!(!check("Bearer s3crets", "s3cret"));
        assert!(!check("Bearer ", "s3cret"));
    }

    #[test]
    fn a_missing_header_does_not() {
        assert!(!bearer_matches(None, "s3cret"));
        assert!(!check("", "s3cret"));
    }

    #[test]
    fn another_scheme_or_no_separator_does_not() {
        assert!(!check("Basic s3cret", "s3cret"));
        assert!(!check("Bearers3cret", "s3cret"));
        assert!(!check("Bearer", "s3cret"));
        assert!(!check("s3cret", "s3cret"));
        assert!(!check("Token s3cret", "s3cret"));
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert!(check("bearer s3cret", "s3cret"));
        assert!(check("BEARER s3cret", "s3cret"));
        assert!(!check("bearer S3CRET", "s3cret"), "the token itself is not");
    }

    #[test]
    fn several_spaces_may_separate_scheme_and_token() {
        assert!(check("Bearer   s3cret", "s3cret"));
    }

    #[test]
    fn non_utf8_bytes_never_match() {
        assert!(!bearer_matches(Some(b"Bearer s3cr\xff"), "s3cret"));
    }
}
