//! Request ids: one per request, in every error body and every log line.

/// Longest incoming id we accept; anything longer is replaced.
const MAX_LEN: usize = 64;

/// Use the caller's id (for example the gateway's `x-request-id`, or `cf-ray`) when
/// it is a short plain token, so one id follows a request across Workers; otherwise
/// make a new one. A hostile header can therefore never inject text into logs.
pub fn accept_or_generate(incoming: Option<&str>) -> String {
    match incoming {
        Some(id) if is_plain(id) => id.to_owned(),
        _ => generate(),
    }
}

fn is_plain(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// 16 random bytes, hex encoded.
pub fn generate() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No entropy source is not a reason to fail a request; ids only need to be
        // distinct enough to find log lines.
        return "no-entropy".to_owned();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_incoming_id_is_kept() {
        assert_eq!(accept_or_generate(Some("8a1f-XY_z")), "8a1f-XY_z");
    }

    #[test]
    fn hostile_or_oversized_incoming_id_is_replaced() {
        for bad in ["", "a b", "line\nbreak", "x\"y", &"a".repeat(65)] {
            let id = accept_or_generate(Some(bad));
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32, "{bad:?} -> {id}");
        }
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(generate(), generate());
    }
}
