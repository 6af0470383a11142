//! `UploadBatch::parse` on any bytes and on JSON built from them: never panics; a
//! refusal is a 4xx `ApiError`; an accepted batch is within the limits, normalised
//! (upper-case ops, lowercase UUIDs, positive unique op_ids), never names another
//! user, and its `rpc_args()` carry exactly its mutations.

#![no_main]

use arbitrary::Unstructured;
use edgesync_fuzz::{has_nul, is_lower_uuid, object, pick, value, Dict};
use edgesync_shared::upload::{UploadBatch, MAX_MUTATIONS};
use edgesync_shared::ApiError;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::collections::HashSet;

const USER: &str = "8f14e45f-ceea-467f-a0e1-6a2b5d8a9c10";

const DICT: Dict = Dict {
    keys: &["client_id", "mutations", "op_id", "op", "type", "id", "data", "opData", "base_cursor", "user_id"],
    strings: &[
        USER,
        "8F14E45F-CEEA-467F-A0E1-6A2B5D8A9C10",
        "0a1b2c3d-0000-4000-8000-00000000abcd",
        "b6a4d1f0-1111-4222-8333-944455556666",
        "PUT",
        "PATCH",
        "DELETE",
        "put",
        "entries",
        "sync_events",
        "Entries",
        "nul\u{0}",
        "Mi4xMjM0NS4wYTFiMmMzZDAwMDA0MDAwODAwMDAwMDAwMDAwYWJjZC4wMDAwMDAwMC4xMjAwMS5kMGIwZGEyMQ",
        "MS4xMjM0NS4wYTFiMmMzZDAwMDA0MDAwODAwMDAwMDAwMDAwYWJjZC5kZWFkYmVlZi5hOTliZWQxNA",
        "",
    ],
};

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut u = Unstructured::new(data);
    if let Ok(body) = body(&mut u) {
        check(body.to_string().as_bytes());
    }
});

/// A body shaped like a batch: `{client_id, mutations: [{op_id, op, type, id, data, ...}]}`.
fn body(u: &mut Unstructured) -> arbitrary::Result<Value> {
    let mut top = object(u, &DICT, 2)?;
    if u.ratio(3u8, 4u8)? {
        top.insert("client_id".into(), json!(pick(u, DICT.strings)?));
    }
    let mut mutations = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let mut m = object(u, &DICT, 2)?;
        if u.ratio(3u8, 4u8)? {
            let op_id = if u.ratio(3u8, 4u8)? { json!(u.int_in_range(0..=5)?) } else { value(u, &DICT, 0)? };
            m.insert("op_id".into(), op_id);
            m.insert("op".into(), json!(pick(u, &["PUT", "PATCH", "DELETE", "patch", "GET"])?));
            m.insert("type".into(), json!(pick(u, DICT.strings)?));
            m.insert("id".into(), json!(pick(u, DICT.strings)?));
        }
        mutations.push(Value::Object(m));
    }
    top.insert("mutations".into(), Value::Array(mutations));
    Ok(Value::Object(top))
}

fn check(body: &[u8]) {
    match UploadBatch::parse(body, USER) {
        Ok(batch) => accepted(&batch),
        Err(e) => refused(&e),
    }
}

fn refused(e: &ApiError) {
    assert!((400..500).contains(&e.status), "a bad batch must be a 4xx, not {e:?}");
    assert!(!e.code.is_empty() && !e.message.is_empty(), "{e:?}");
    if let Some(errors) = e.details.as_ref().and_then(|d| d.get("errors")).and_then(Value::as_array) {
        assert!(!errors.is_empty() && errors.len() <= MAX_MUTATIONS, "{e:?}");
    }
}

fn accepted(batch: &UploadBatch) {
    assert!(is_lower_uuid(&batch.client_id), "{batch:?}");
    // The arguments go to PostgREST as JSON text, spliced together from checked parts
    // and the data as it came: they must read back, with exactly the batch's mutations.
    let args: Value = serde_json::from_str(batch.rpc_args())
        .unwrap_or_else(|e| panic!("rpc_args is not JSON ({e}): {}", batch.rpc_args()));
    assert_eq!(args["client_id"], json!(batch.client_id));
    let mutations = args["mutations"].as_array().expect("mutations is an array");
    assert!(mutations.len() == batch.len && batch.len <= MAX_MUTATIONS, "{batch:?}");
    let mut op_ids = HashSet::new();
    for m in mutations {
        let op_id = m["op_id"].as_u64().expect("op_id is a number");
        assert!(op_id >= 1 && op_id <= i64::MAX as u64, "{m}");
        assert!(op_ids.insert(op_id), "duplicate op_id {op_id} accepted");
        assert!(matches!(m["op"].as_str(), Some("PUT" | "PATCH" | "DELETE")), "{m}");
        assert!(edgesync_shared::sync::valid_table_name(m["type"].as_str().unwrap_or("")), "{m}");
        let id = m["id"].as_str().expect("id is a string");
        assert!(is_lower_uuid(id), "{m}");
        let data = m["data"].as_object().expect("data is an object");
        if let Some(user) = data.get("user_id") {
            assert_eq!(
                user.as_str().and_then(edgesync_shared::jwt::parse_uuid).as_deref(),
                Some(USER),
                "another user's row was accepted: {m}"
            );
        }
        assert!(!has_nul(&m["data"]), "data with NUL would fail the whole batch in Postgres: {m}");
        if let Some(named) = data.get("id") {
            assert_eq!(named.as_str().and_then(edgesync_shared::jwt::parse_uuid).as_deref(), Some(id), "{m}");
        }
        match (m.get("base_txid"), m.get("base_id")) {
            (None, None) => {}
            (Some(t), Some(i)) => {
                assert!(t.as_str().and_then(|t| t.parse::<i64>().ok()).is_some_and(|t| t >= 0), "{m}");
                assert!(i.as_str().is_some_and(is_lower_uuid), "{m}");
            }
            _ => panic!("base_txid and base_id come together: {m}"),
        }
    }
}
