//! Live updates' parsers on any bytes and on JSON built from them: `parse_poke` (the
//! body of `POST /live/poke`), `summarize` (a pull answer read by the long-poll) and
//! `socket_credentials` (a WebSocket's token). Never panic; a refused poke is a 400
//! `invalid_poke` or a 413; an accepted one is canonical and survives its own wire
//! form and coalescing.

#![no_main]

use arbitrary::Unstructured;
use edgesync_fuzz::{is_lower_uuid, object, pick, value, Dict};
use edgesync_shared::live::{coalesce, parse_poke, socket_credentials, summarize, MAX_POKE_USERS};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const DICT: Dict = Dict {
    keys: &["checkpoint", "users", "changes", "has_more", "next_txid", "upserted", "deleted"],
    strings: &[
        "1",
        "0",
        "9223372036854775807",
        "9223372036854775808",
        "0a1b2c3d-0000-4000-8000-00000000abcd",
        "0A1B2C3D-0000-4000-8000-00000000ABCD",
        "edgesync, bearer.a.b.c",
        "bearer.",
        "",
    ],
};

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut u = Unstructured::new(data);
    if let Ok(v) = structured(&mut u) {
        check(v.to_string().as_bytes());
    }
});

fn structured(u: &mut Unstructured) -> arbitrary::Result<Value> {
    let mut top = object(u, &DICT, 2)?;
    if u.ratio(1u8, 2u8)? {
        top.insert("checkpoint".into(), json!(pick(u, &["1", "42", "0", "-1", "9223372036854775808", "x"])?));
        let n = u.int_in_range(0..=4)?;
        let users: Vec<Value> = (0..n).map(|_| value(u, &DICT, 0)).collect::<arbitrary::Result<_>>()?;
        top.insert("users".into(), Value::Array(users));
    }
    Ok(Value::Object(top))
}

fn check(body: &[u8]) {
    match parse_poke(body) {
        Ok(p) => {
            assert!(p.checkpoint > 0 && p.checkpoint <= i64::MAX as u64, "{p:?}");
            assert!(p.users.len() <= MAX_POKE_USERS);
            assert!(p.users.iter().all(|u| is_lower_uuid(u)), "{p:?}");
            assert!(p.users.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates: {p:?}");
            assert_eq!(parse_poke(p.body().as_bytes()).unwrap(), p);
            let merged = coalesce([p.clone()]);
            if p.users.is_empty() {
                assert!(merged.is_empty());
            } else {
                assert_eq!(merged, vec![p]);
            }
        }
        Err(e) => assert!(matches!((e.status, e.code), (400, "invalid_poke") | (413, "payload_too_large")), "{e:?}"),
    }
    let _ = summarize(body);
    let text = String::from_utf8_lossy(body);
    let (token, _) = socket_credentials(None, Some(&text));
    if let Some(t) = token {
        assert!(t.starts_with("Bearer ") && t.len() > "Bearer ".len(), "{t:?}");
    }
}
