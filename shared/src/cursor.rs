//! The `/sync` cursor: an opaque, versioned, checksummed position in the change log.
//!
//! A position is `(txid, id)`: every row version with `(_txid, id)` at or below it has
//! been delivered. It also records which table set it was issued for, because a cursor
//! from a pull of tables `a,b` must not be used to pull `a,b,c` (the rows of `c` below
//! the position would never arrive).
//!
//! It also carries the scan's **origin**: the watermark of the first page of the pull
//! that started without a cursor. A purge of tombstones only forces a rebuild
//! (`410 resync_required`) on cursors whose scan began before the purge; a rebuild that
//! started after it pages through old positions freely.
//!
//! The checksum catches corruption and casual editing. It is not a signature and
//! needs none: a cursor only moves its owner's own position, and Row Level Security,
//! not the cursor, decides what a user may read.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::ApiError;

/// The nil UUID: "before every id" at a given txid.
pub const NIL_ID: &str = "00000000-0000-0000-0000-000000000000";
const VERSION: &str = "2";
/// Cursors are short; refuse absurd input before decoding it.
const MAX_CURSOR_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Every version with `_txid` below this has been delivered.
    pub txid: u64,
    /// ... and at `txid`, every id up to this one (lowercase UUID).
    pub id: String,
    /// Fingerprint of the table set ([`tables_fingerprint`]).
    pub tables: u32,
    /// Where the scan began (0: unknown, as in version-1 cursors; treated as "before
    /// every purge").
    pub origin: u64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let payload =
            format!("{VERSION}.{}.{}.{:08x}.{}", self.txid, self.id.replace('-', ""), self.tables, self.origin);
        let check = checksum(&payload);
        URL_SAFE_NO_PAD.encode(format!("{payload}.{check:08x}"))
    }

    pub fn decode(s: &str) -> Result<Cursor, ApiError> {
        let bad = |why: &str| {
            ApiError::bad_request(
                "invalid_cursor",
                format!("the cursor is not valid ({why}); pull again without `since`"),
            )
        };
        if s.len() > MAX_CURSOR_LEN {
            return Err(bad("too long"));
        }
        let raw = URL_SAFE_NO_PAD.decode(s.as_bytes()).map_err(|_| bad("not base64url"))?;
        let text = String::from_utf8(raw).map_err(|_| bad("not text"))?;
        let (payload, check) = text.rsplit_once('.').ok_or_else(|| bad("no checksum"))?;
        if u32::from_str_radix(check, 16).ok() != Some(checksum(payload)) || check.len() != 8 {
            return Err(bad("checksum mismatch"));
        }
        let parts: Vec<&str> = payload.split('.').collect();
        // Version 1 had no origin.
        let origin = match (parts[0], parts.len()) {
            ("1", 4) => 0,
            ("2", 5) => {
                parts[4].parse::<u64>().ok().filter(|o| *o <= i64::MAX as u64).ok_or_else(|| bad("bad origin"))?
            }
            _ => return Err(bad("unknown version")),
        };
        let txid: u64 = parts[1].parse().map_err(|_| bad("bad position"))?;
        if txid > i64::MAX as u64 {
            return Err(bad("bad position"));
        }
        let hex = parts[2];
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("bad id"));
        }
        let id = format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
            .to_ascii_lowercase();
        let tables = u32::from_str_radix(parts[3], 16).map_err(|_| bad("bad table set"))?;
        Ok(Cursor { txid, id, tables, origin })
    }
}

/// Which tables a cursor covers: 0 for "every synced table", otherwise a hash of the
/// sorted names.
pub fn tables_fingerprint(tables: Option<&[String]>) -> u32 {
    match tables {
        None => 0,
        Some(names) => {
            let joined = names.join(",");
            // Never 0, so an explicit set can't collide with "all".
            (fnv1a64(joined.as_bytes()) as u32) | 1
        }
    }
}

fn checksum(payload: &str) -> u32 {
    (fnv1a64(format!("edgesync-cursor:{payload}").as_bytes()) >> 16) as u32
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Cursor {
        Cursor { txid: 12345, id: "0a1b2c3d-0000-4000-8000-00000000abcd".into(), tables: 0xdead_beef, origin: 12001 }
    }

    #[test]
    fn round_trips() {
        let c = sample();
        let s = c.encode();
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "url-safe: {s}");
        assert_eq!(Cursor::decode(&s).unwrap(), c);
        let nil = Cursor { txid: 0, id: NIL_ID.into(), tables: 0, origin: 0 };
        assert_eq!(Cursor::decode(&nil.encode()).unwrap(), nil);
    }

    #[test]
    fn version_1_cursors_still_decode_with_an_unknown_origin() {
        let payload = "1.12345.0a1b2c3d00004000800000000000abcd.deadbeef";
        let v1 = URL_SAFE_NO_PAD.encode(format!("{payload}.{:08x}", checksum(payload)));
        assert_eq!(Cursor::decode(&v1).unwrap(), Cursor { origin: 0, ..sample() });
    }

    #[test]
    fn any_edit_is_caught() {
        let s = sample().encode();
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(&s).unwrap()).unwrap();
        // Move the position forward without fixing the checksum.
        let edited = URL_SAFE_NO_PAD.encode(raw.replacen("12345", "99999", 1));
        assert_eq!(Cursor::decode(&edited).unwrap_err().code, "invalid_cursor");
        for junk in ["", "x", "!!!!", &"A".repeat(500), &URL_SAFE_NO_PAD.encode("1.2.3.4.5")] {
            let e = Cursor::decode(junk).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_cursor"), "{junk:?}");
        }
    }

    #[test]
    fn a_checksummed_cursor_with_a_bad_field_is_still_refused() {
        for payload in [
            "3.1.00000000000000000000000000000000.00000000.1",
            "2.1.00000000000000000000000000000000.00000000",
            "2.1.00000000000000000000000000000000.00000000.x",
            "1.1.00000000000000000000000000000000.00000000.1",
            "1.x.00000000000000000000000000000000.00000000",
            "1.1.zz000000000000000000000000000000.00000000",
            "1.99999999999999999999.00000000000000000000000000000000.0",
        ] {
            let forged = URL_SAFE_NO_PAD.encode(format!("{payload}.{:08x}", checksum(payload)));
            assert_eq!(Cursor::decode(&forged).unwrap_err().code, "invalid_cursor", "{payload}");
        }
    }

    #[test]
    fn table_sets_are_told_apart() {
        let ab = vec!["a".to_string(), "b".to_string()];
        let abc = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(tables_fingerprint(None), 0);
        assert_ne!(tables_fingerprint(Some(&ab)), 0);
        assert_ne!(tables_fingerprint(Some(&ab)), tables_fingerprint(Some(&abc)));
        assert_eq!(tables_fingerprint(Some(&ab)), tables_fingerprint(Some(&ab.clone())));
    }
}
