//! `Cursor::decode` on any string: never panics, refuses with 400 `invalid_cursor`,
//! and whatever it accepts survives `encode` → `decode` unchanged. Cursors built from
//! fuzzed fields round-trip too, and fuzzed payloads given a correct checksum reach
//! the field checks behind it.

#![no_main]

use arbitrary::Unstructured;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use edgesync_fuzz::is_lower_uuid;
use edgesync_shared::cursor::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // 1. The bytes as the cursor string.
    if let Ok(s) = std::str::from_utf8(data) {
        check_decode(s);
    }
    // 2. The bytes as a payload, checksummed as a real cursor is, so the field checks
    //    (version, txid, id, table set, origin) are reached.
    let payload = String::from_utf8_lossy(data);
    check_decode(&URL_SAFE_NO_PAD.encode(format!("{payload}.{:08x}", checksum(&payload))));
    // 3. A cursor from fuzzed fields.
    let mut u = Unstructured::new(data);
    if let Ok(c) = cursor(&mut u) {
        let valid = c.txid <= i64::MAX as u64 && c.origin <= i64::MAX as u64 && is_lower_uuid(&c.id);
        let in_range = c.txid <= i64::MAX as u64 && c.origin <= i64::MAX as u64;
        match Cursor::decode(&c.encode()) {
            // An id that is not a canonical UUID may still decode (as its canonical
            // form); out-of-range numbers never do.
            Ok(back) => {
                assert!(in_range, "a cursor with an out-of-range txid or origin decoded: {c:?}");
                if valid {
                    assert_eq!(back, c, "encode → decode changed the cursor");
                }
            }
            Err(e) => assert!(!valid, "a valid cursor {c:?} did not round-trip: {}", e.message),
        }
    }
});

fn check_decode(s: &str) {
    match Cursor::decode(s) {
        Ok(c) => {
            assert!(c.txid <= i64::MAX as u64 && c.origin <= i64::MAX as u64, "{c:?}");
            assert!(is_lower_uuid(&c.id), "decoded id is not a lowercase UUID: {c:?}");
            let again = c.encode();
            assert_eq!(Cursor::decode(&again).as_ref(), Ok(&c), "{s:?} → {c:?} → {again:?}");
            assert!(again.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{again:?}");
        }
        Err(e) => assert_eq!((e.status, e.code), (400, "invalid_cursor"), "{s:?}: {e:?}"),
    }
}

fn cursor(u: &mut Unstructured) -> arbitrary::Result<Cursor> {
    let small = u.ratio(3u8, 4u8)?;
    let txid = if small { u.int_in_range(0..=i64::MAX as u64)? } else { u.arbitrary()? };
    let id = if u.ratio(7u8, 8u8)? {
        let b: [u8; 16] = u.arbitrary()?;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    } else {
        u.arbitrary()?
    };
    let origin = if small { u.int_in_range(0..=i64::MAX as u64)? } else { u.arbitrary()? };
    Ok(Cursor { txid, id, tables: u.arbitrary()?, origin })
}

/// The cursor checksum, written out again here (FNV-1a 64 over a prefixed payload,
/// top bits): an independent copy, so a change to the real one shows up as seeds that
/// stop decoding.
fn checksum(payload: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("edgesync-cursor:{payload}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 16) as u32
}
