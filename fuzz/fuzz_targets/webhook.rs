//! `embed::parse_webhook` and `SearchRequest::parse` on any bytes and on JSON built
//! from them: never panic; refusals are 400s; an `Embed` names a canonical entry id
//! of `public.entries`; an accepted search is within its limits.

#![no_main]

use arbitrary::Unstructured;
use edgesync_fuzz::{is_lower_uuid, object, pick, value, Dict};
use edgesync_shared::embed::{parse_webhook, SearchRequest, WebhookAction, MAX_QUERY_CHARS};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const DICT: Dict = Dict {
    keys: &["type", "table", "schema", "record", "old_record", "id", "query", "match_threshold", "match_count"],
    strings: &[
        "INSERT",
        "UPDATE",
        "DELETE",
        "insert",
        "entries",
        "public",
        "edgesync",
        "0a1b2c3d-0000-4000-8000-00000000abcd",
        "0A1B2C3D-0000-4000-8000-00000000ABCD",
        "walks by the river",
        "  ",
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
        // A webhook's shape.
        top.insert("type".into(), json!(pick(u, &["INSERT", "UPDATE", "DELETE", "TRUNCATE"])?));
        top.insert("table".into(), json!(pick(u, &["entries", "people", ""])?));
        let mut record = object(u, &DICT, 1)?;
        record.insert("id".into(), value(u, &DICT, 0)?);
        top.insert("record".into(), Value::Object(record));
    } else if u.ratio(1u8, 2u8)? {
        // A search's shape.
        top.retain(|k, _| matches!(k.as_str(), "query" | "match_threshold" | "match_count"));
        top.insert("query".into(), value(u, &DICT, 0)?);
    }
    Ok(Value::Object(top))
}

fn check(body: &[u8]) {
    match parse_webhook(body) {
        Ok(WebhookAction::Embed { entry_id }) => {
            assert!(is_lower_uuid(&entry_id), "{entry_id:?}");
            let v: Value = serde_json::from_slice(body).expect("an accepted webhook is JSON");
            assert!(matches!(v["type"].as_str(), Some("INSERT" | "UPDATE")), "{v}");
            assert_eq!(v["table"], "entries");
            assert_eq!(v["schema"].as_str().unwrap_or("public"), "public", "{v}");
        }
        Ok(WebhookAction::Ignore { reason }) => assert!(!reason.is_empty()),
        Err(e) => assert_eq!((e.status, e.code), (400, "invalid_webhook"), "{e:?}"),
    }
    match SearchRequest::parse(body) {
        Ok(s) => {
            assert!(!s.query.is_empty() && s.query.trim() == s.query, "{s:?}");
            assert!(s.query.chars().count() <= MAX_QUERY_CHARS);
            assert!((-1.0..=1.0).contains(&s.match_threshold), "{s:?}");
            assert!((1..=100).contains(&s.match_count), "{s:?}");
            let args = s.rpc_args(&[0.25, -1.0, 0.0]);
            assert_eq!(args["query_embedding"], "[0.25,-1,0]");
            assert_eq!(args["match_count"], json!(s.match_count));
        }
        Err(e) => assert_eq!((e.status, e.code), (400, "invalid_search"), "{e:?}"),
    }
}
