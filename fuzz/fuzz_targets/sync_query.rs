//! `PullRequest::from_query` on any query string: never panics; a refusal is a 400; an
//! accepted request is within the limits (sorted, unique, valid table names; a
//! limit from 1 to MAX_LIMIT; a cursor issued for exactly that table set). Then
//! `rpc_args()`, and `response()` on the rest of the input as the RPC's answer: an
//! answer it accepts becomes valid JSON whose cursor the next `/sync` accepts.
//!
//! Input: `<query>\n<answer>`; the structured half builds queries from known keys.

#![no_main]

use arbitrary::Unstructured;
use edgesync_fuzz::{pick, string, Dict};
use edgesync_shared::cursor::{tables_fingerprint, Cursor};
use edgesync_shared::sync::{valid_table_name, PullRequest, MAX_LIMIT, MAX_TABLES};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const DICT: Dict = Dict {
    keys: &["since", "tables", "limit"],
    strings: &[
        "entries",
        "entries,sync_events",
        "sync_events,entries,entries",
        " entries , ",
        "Entries",
        "a%2Cb",
        "1",
        "5000",
        "5001",
        "0",
        "-1",
        "%41",
        "%zz",
        "%",
        "+",
        "Mi4xMjM0NS4wYTFiMmMzZDAwMDA0MDAwODAwMDAwMDAwMDAwYWJjZC4wMDAwMDAwMC4xMjAwMS5kMGIwZGEyMQ",
        "Mi43NzcuMGExYjJjM2QwMDAwNDAwMDgwMDAwMDAwMDAwMGFiY2QuMDg0NWEyNTMuNzAwLmUyZDhkMmM1",
        "Mi43NzguMGExYjJjM2QwMDAwNDAwMDgwMDAwMDAwMDAwMGFiY2QuN2RjZmNhYzMuNzAwLjQ0OWU2YmMy",
        "MS4xMjM0NS4wYTFiMmMzZDAwMDA0MDAwODAwMDAwMDAwMDAwYWJjZC5kZWFkYmVlZi5hOTliZWQxNA",
    ],
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (query, answer) = text.split_once('\n').unwrap_or((&text, ""));
    check(query, answer);
    let mut u = Unstructured::new(data);
    if let (Ok(q), Ok(answer)) = (structured_query(&mut u), structured_answer(&mut u)) {
        check(&q, &answer);
    }
});

fn structured_query(u: &mut Unstructured) -> arbitrary::Result<String> {
    let mut parts = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let key = if u.ratio(7u8, 8u8)? { pick(u, DICT.keys)?.to_owned() } else { string(u, &DICT)? };
        let value = string(u, &DICT)?;
        parts.push(if u.ratio(1u8, 10u8)? { key } else { format!("{key}={value}") });
    }
    Ok(parts.join("&"))
}

/// An `edgesync_pull` answer: `{changes, has_more, next_txid, next_id, origin}`, with
/// positions anywhere in the u64 range (the database's are xid8 values as text).
fn structured_answer(u: &mut Unstructured) -> arbitrary::Result<String> {
    let position = |u: &mut Unstructured| -> arbitrary::Result<Value> {
        Ok(match u.int_in_range(0..=3)? {
            0 => Value::from(u.int_in_range(0..=100_000u64)?.to_string()),
            1 => Value::from(u.arbitrary::<u64>()?.to_string()),
            2 => Value::from(u.arbitrary::<i64>()?),
            _ => Value::from(string(u, &DICT)?),
        })
    };
    let id = if u.ratio(3u8, 4u8)? { "0a1b2c3d-0000-4000-8000-00000000abcd".to_owned() } else { u.arbitrary()? };
    let changes = if u.ratio(3u8, 4u8)? { r#"{"entries":[{"id":1}]}"#.to_owned() } else { u.arbitrary()? };
    let mut fields = vec![
        format!(r#""changes":{changes}"#),
        format!(r#""has_more":{}"#, u.arbitrary::<bool>()?),
        format!(r#""next_txid":{}"#, position(u)?),
        format!(r#""next_id":{}"#, Value::from(id)),
        format!(r#""origin":{}"#, position(u)?),
    ];
    if u.ratio(1u8, 8u8)? {
        fields.remove(u.choose_index(fields.len())?);
    }
    Ok(format!("{{{}}}", fields.join(",")))
}

fn check(query: &str, answer: &str) {
    let req = match PullRequest::from_query(query) {
        Ok(req) => req,
        Err(e) => {
            assert_eq!(e.status, 400, "{query:?}: {e:?}");
            return;
        }
    };
    assert!((1..=MAX_LIMIT).contains(&req.limit), "{req:?}");
    if let Some(tables) = &req.tables {
        assert!(!tables.is_empty() && tables.len() <= MAX_TABLES, "{req:?}");
        assert!(tables.windows(2).all(|w| w[0] < w[1]), "tables not sorted and unique: {req:?}");
        assert!(tables.iter().all(|t| valid_table_name(t)), "{req:?}");
    }
    if let Some(c) = &req.since {
        assert_eq!(c.tables, tables_fingerprint(req.tables.as_deref()), "a cursor for another table set: {req:?}");
    }
    let args = req.rpc_args();
    assert_eq!(args["lim"], Value::from(req.limit));
    assert!(args["since_txid"].as_str().is_some_and(|t| t.parse::<u64>().is_ok()), "{args}");

    if let Ok(body) = req.response(answer.as_bytes()) {
        let body = String::from_utf8(body).expect("a response is UTF-8");
        let page: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("response is not JSON ({e}): {body}"));
        assert!(page["changes"].is_object() && page["has_more"].is_boolean(), "{body}");
        let cursor = page["cursor"].as_str().expect("a cursor string");
        // The cursor a page hands out is the `since` of the next pull of the same tables.
        let next =
            Cursor::decode(cursor).unwrap_or_else(|e| panic!("the page's cursor is refused ({}): {body}", e.message));
        assert_eq!(next.tables, tables_fingerprint(req.tables.as_deref()));
        assert_eq!(page["checkpoint"].as_str(), Some(next.txid.to_string().as_str()), "{body}");
        let mut again = format!("since={cursor}&limit={}", req.limit);
        if let Some(t) = &req.tables {
            again.push_str(&format!("&tables={}", t.join(",")));
        }
        let follow = PullRequest::from_query(&again).unwrap_or_else(|e| panic!("{again:?} refused: {}", e.message));
        assert_eq!(follow.since.as_ref(), Some(&next));
    }
}
