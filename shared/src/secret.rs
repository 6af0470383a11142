//! Shared secrets: what the database presents to a Worker in a header
//! (`x-webhook-secret` for embeddings, `x-live-secret` for pokes), checked against a
//! Worker setting. One rule for both: each side is trimmed (a secret pasted or piped
//! with a newline still matches), a blank setting counts as unset, and the comparison
//! takes the same time wherever the first difference is.

/// The verdict on a presented secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretCheck {
    /// The setting is unset or blank: no secret can be valid.
    Unset,
    /// The presented secret is the configured one.
    Valid,
    /// It is missing or different.
    Invalid,
}

/// Check `given` (the request's header, if any) against `configured` (the setting).
pub fn check(configured: Option<&str>, given: Option<&str>) -> SecretCheck {
    let Some(secret) = configured.map(str::trim).filter(|s| !s.is_empty()) else {
        return SecretCheck::Unset;
    };
    if secrets_equal(given.unwrap_or_default().trim().as_bytes(), secret.as_bytes()) {
        SecretCheck::Valid
    } else {
        SecretCheck::Invalid
    }
}

/// Constant-time equality for secrets (length is not hidden).
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_equal_only_byte_for_byte_and_length_for_length() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd") && !secrets_equal(b"abc", b"ab"));
    }

    #[test]
    fn a_blank_setting_is_unset_and_both_sides_are_trimmed() {
        for unset in [None, Some(""), Some(" \n\t")] {
            assert_eq!(check(unset, Some("anything")), SecretCheck::Unset);
            assert_eq!(check(unset, None), SecretCheck::Unset);
        }
        assert_eq!(check(Some("s3cret\n"), Some(" s3cret")), SecretCheck::Valid);
        assert_eq!(check(Some("s3cret"), Some("s3cret")), SecretCheck::Valid);
        for wrong in [None, Some(""), Some("s3cre"), Some("s3cret2"), Some("S3CRET"), Some("s3 cret")] {
            assert_eq!(check(Some("s3cret"), wrong), SecretCheck::Invalid, "{wrong:?}");
        }
    }
}
