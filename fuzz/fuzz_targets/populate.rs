//! `/populate`'s parsers on any bytes and on JSON built from them:
//! `PopulateRequest::parse`; `legacy::LegacyBatch::parse` (every record gets exactly
//! one verdict, in order; rows ≤ records; a row per pending record, free of NUL);
//! `mapping::timestamp` (an accepted string has the shape YYYY-MM-DD…, an accepted
//! number gives a string `timestamp` accepts again unchanged); `neo4j::parse_answer`
//! (rows have as many values as fields); and the default mapping's `map_node`,
//! `endpoint`, and `Page::of_nodes` / `Page::of_relationships` over parsed answers
//! (rows never carry NUL, which Postgres refuses for a whole page).

#![no_main]

use arbitrary::Unstructured;
use edgesync_fuzz::{has_nul, number, object, pick, string, value, Dict};
use edgesync_shared::populate::legacy::{record_ref, LegacyBatch, COLUMN_FIELDS, MAX_RECORDS};
use edgesync_shared::populate::mapping::{timestamp, MappedNode, Mapping, Table};
use edgesync_shared::populate::neo4j::{parse_answer, Rows, SourceFailure};
use edgesync_shared::populate::{Page, PopulateRequest};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

const USER: &str = "8f14e45f-ceea-467f-a0e1-6a2b5d8a9c10";

const REQUEST: Dict = Dict {
    keys: &["source", "records", "continuation", "mode", "max_pages", "user_id"],
    strings: &[
        "neo4j",
        "legacy",
        "full",
        "incremental",
        "auto",
        USER,
        "r1.0a1b2c3d-0000-4000-8000-00000000abcd",
        "r2.0a1b2c3d-0000-4000-8000-00000000abcd",
    ],
};

/// The legacy record's keys: the ones the parser maps to columns (its own list, so a
/// new column is fuzzed as soon as it exists), and two that go to `frontmatter`.
fn legacy() -> Dict<'static> {
    static KEYS: OnceLock<Vec<&'static str>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| [COLUMN_FIELDS, &["status", "metadata"]].concat());
    Dict { keys, strings: LEGACY_STRINGS }
}

const LEGACY_STRINGS: &[&str] = &[
    "task",
    "event",
    "note",
    "habit_def",
    "L-1",
    " L-1 ",
    "2024-02-29",
    "2023-02-29",
    "2024-05-01T09:30:00Z",
    "2024-05-01T09:30:00.123456+02:00",
    "2024-05-01 09:30:60.5-0730",
    "2024-05-01T24:00:00Z",
    "nul\u{0}",
    "",
];

const GRAPH: Dict = Dict {
    keys: &[
        "user_id",
        "updated_at",
        "google_event_id",
        "email",
        "name",
        "id",
        "title",
        "description",
        "start_time",
        "end_time",
        "all_day",
        "location",
    ],
    strings: &[
        "Event",
        "Person",
        "Contact",
        "Concept",
        "Place",
        "Organization",
        "Entity",
        "Thing",
        USER,
        "ada@example.test",
        "4:0a1b2c3d:17",
        "KNOWS",
        "2024-05-01T09:30:00Z",
        "nul\u{0}",
        "",
    ],
};

const LABELS: &[&str] = &["Event", "Person", "Contact", "Concept", "Place", "Organization", "Entity", "Thing", ""];

fn mapping() -> &'static Mapping {
    static MAPPING: OnceLock<Mapping> = OnceLock::new();
    MAPPING.get_or_init(Mapping::default_mapping)
}

fuzz_target!(|data: &[u8]| {
    // Raw bytes: as a request body, as a records array, as a timestamp, as an answer.
    check_request(data);
    if let Ok(records) = serde_json::from_slice::<Vec<Value>>(data) {
        check_legacy(&records);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        check_timestamp(&v);
    }
    let text = String::from_utf8_lossy(data);
    check_timestamp(&Value::String(text.to_string()));
    check_answer(202, None, &text);

    // Structured.
    let mut u = Unstructured::new(data);
    let _ = structured(&mut u);
});

/// One structured check per input, chosen by its first byte, so each gets all the bytes.
fn structured(u: &mut Unstructured) -> arbitrary::Result<()> {
    match u.int_in_range(0..=4)? {
        0 => {
            let records = legacy_records(u)?;
            check_legacy(&records);
        }
        1 => {
            let mut body = object(u, &REQUEST, 1)?;
            body.insert("source".into(), json!(pick(u, &["neo4j", "legacy", "csv"])?));
            if u.ratio(1u8, 2u8)? {
                body.insert("records".into(), Value::Array(legacy_records(u)?));
            }
            check_request(Value::Object(body).to_string().as_bytes());
        }
        2 => {
            let stamp = match u.int_in_range(0..=3)? {
                0 => number(u)?,
                1 => json!(u.arbitrary::<f64>()?),
                2 => json!(string(u, &legacy())?),
                _ => value(u, &legacy(), 1)?,
            };
            check_timestamp(&stamp);
        }
        3 => {
            let (id, node_labels, props) = (string(u, &GRAPH)?, labels(u)?, object(u, &GRAPH, 1)?);
            check_node(&id, &node_labels, &props);
        }
        _ => {
            let (status, retry_after, answer) = neo4j_answer(u)?;
            check_answer(status, retry_after.as_deref(), &answer);
        }
    }
    Ok(())
}

fn legacy_records(u: &mut Unstructured) -> arbitrary::Result<Vec<Value>> {
    (0..u.int_in_range(0..=6)?).map(|_| legacy_record(u)).collect()
}

/// An answer as Neo4j sends it, for nodes or relationships.
fn neo4j_answer(u: &mut Unstructured) -> arbitrary::Result<(u16, Option<String>, String)> {
    let nodes = u.arbitrary::<bool>()?;
    let fields: &[&str] = if nodes {
        &["id", "labels", "properties"]
    } else {
        &["id", "type", "properties", "from_labels", "from_properties", "to_labels", "to_properties"]
    };
    let mut values = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let mut row = Vec::new();
        for f in fields {
            row.push(match *f {
                "id" | "type" => json!(string(u, &GRAPH)?),
                "labels" | "from_labels" | "to_labels" => json!(labels(u)?),
                _ => Value::Object(object(u, &GRAPH, 1)?),
            });
        }
        values.push(Value::Array(row));
    }
    let mut answer = json!({ "data": { "fields": fields, "values": values } });
    if u.ratio(1u8, 8u8)? {
        answer["errors"] = json!([{ "code": string(u, &GRAPH)?, "message": string(u, &GRAPH)? }]);
    }
    let status = if u.ratio(3u8, 4u8)? { 202 } else { u.arbitrary::<u16>()? };
    Ok((status, u.arbitrary()?, answer.to_string()))
}

fn labels(u: &mut Unstructured) -> arbitrary::Result<Vec<String>> {
    (0..u.int_in_range(0..=3)?).map(|_| Ok(pick(u, LABELS)?.to_owned())).collect()
}

fn legacy_record(u: &mut Unstructured) -> arbitrary::Result<Value> {
    let mut r = object(u, &legacy(), 2)?;
    if u.ratio(3u8, 4u8)? {
        r.insert("legacyType".into(), json!(pick(u, &["task", "event", "note", "habit_def", "todo"])?));
        let id = if u.ratio(1u8, 2u8)? { json!(u.int_in_range(0..=3)?) } else { value(u, &legacy(), 0)? };
        r.insert("legacyId".into(), id);
    }
    Ok(Value::Object(r))
}

fn check_request(body: &[u8]) {
    match PopulateRequest::parse(body) {
        Ok(PopulateRequest::Neo4j { run, max_pages, user_id, .. }) => {
            assert!(run.as_deref().is_none_or(edgesync_fuzz::is_lower_uuid), "{run:?}");
            assert!(max_pages.is_none_or(|n| (1..=1000).contains(&n)), "{max_pages:?}");
            assert!(user_id.as_deref().is_none_or(edgesync_fuzz::is_lower_uuid), "{user_id:?}");
        }
        Ok(PopulateRequest::Legacy { records, user_id }) => {
            assert!(records.len() <= MAX_RECORDS);
            assert!(user_id.as_deref().is_none_or(edgesync_fuzz::is_lower_uuid), "{user_id:?}");
            check_legacy(&records);
        }
        Err(e) => assert!(matches!(e.status, 400 | 413), "{e:?}"),
    }
}

fn check_legacy(records: &[Value]) {
    let mut batch = LegacyBatch::parse(records);
    assert_eq!(batch.reports.len(), records.len(), "one verdict per record");
    assert!(batch.rows.len() <= records.len());
    let pending: Vec<usize> = batch.reports.iter().filter(|r| r.status == "pending").map(|r| r.index).collect();
    assert_eq!(pending.len(), batch.rows.len(), "a row per pending record");
    for (i, r) in batch.reports.iter().enumerate() {
        assert_eq!(r.index, i);
        match r.status.as_str() {
            "pending" => {}
            "rejected" => assert!(r.reason.as_deref().is_some_and(|s| !s.is_empty()), "{r:?}"),
            "duplicate" => {
                let first = r.duplicate_of.expect("a duplicate names its first");
                assert!(first < i && batch.reports[first].status == "pending", "{r:?}");
                assert_eq!(
                    (&batch.reports[first].legacy_type, &batch.reports[first].legacy_id),
                    (&r.legacy_type, &r.legacy_id)
                );
            }
            other => panic!("status {other:?} before the database answered"),
        }
    }
    for (row, index) in batch.rows.iter().zip(&pending) {
        assert_eq!(row["ref"], json!(record_ref(*index)));
        assert!(!has_nul(row), "a row with NUL would fail the whole batch in Postgres: {row}");
        for col in ["start_at", "end_at", "created_at"] {
            match &row[col] {
                Value::Null => {}
                Value::String(s) => assert!(timestamp(Some(&json!(s))).is_ok(), "{col} {s:?}"),
                other => panic!("{col} is {other}"),
            }
        }
        let t = batch.reports[*index].legacy_type.as_deref().expect("a pending record has a type");
        assert_eq!(row["facets"][0], t, "{row}");
        assert_eq!(row["frontmatter"]["legacyType"], t, "{row}");
    }
    let (rejected, duplicate) = batch.refused();
    assert_eq!(rejected + duplicate + pending.len() as u64, records.len() as u64);

    // The database's answer fills the pending verdicts.
    let results: Vec<Value> =
        pending.iter().map(|i| json!({ "ref": record_ref(*i), "id": USER, "status": "inserted" })).collect();
    batch.settle(&results);
    assert!(batch.reports.iter().all(|r| r.status != "pending"), "settle left a record pending");
    assert_eq!(batch.refused(), (rejected, duplicate));
}

fn shaped_like_a_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
}

fn check_timestamp(v: &Value) {
    assert_eq!(timestamp(None), Ok(None));
    match timestamp(Some(v)) {
        Ok(None) => assert!(v.is_null(), "{v}"),
        Ok(Some(s)) => {
            assert!(shaped_like_a_date(&s), "{v} → {s:?}");
            assert_ne!(&s[..4], "0000", "year 0 from {v}");
            match v {
                Value::String(orig) => assert_eq!(s, orig.trim()),
                Value::Number(_) => {
                    assert_eq!(timestamp(Some(&json!(s))), Ok(Some(s.clone())), "{v} → {s:?} is not accepted back")
                }
                other => panic!("accepted {other}"),
            }
        }
        Err(e) => assert!(!e.is_empty()),
    }
}

fn check_node(id: &str, labels: &[String], props: &Map<String, Value>) {
    let m = mapping();
    let mapped = m.map_node(id, labels, props);
    let end = m.endpoint(labels, props);
    match &mapped {
        Ok(MappedNode::Unmapped) => {
            assert!(!m.nodes.iter().any(|r| labels.contains(&r.label)), "{labels:?}");
            assert_eq!(end, Ok(None));
        }
        Ok(MappedNode::Row { table, row }) => {
            assert_eq!(row["ref"], id);
            assert!(id.contains('\0') || !has_nul(row), "a row with NUL: {row}");
            let rest = row["properties"].as_object().expect("properties is an object");
            assert!(!rest.contains_key(&m.tenant_property), "the tenant property was copied: {row}");
            let key = match table {
                Table::SyncEntities => &row["key"],
                Table::SyncEvents => &row["google_event_id"],
            };
            let key = key.as_str().expect("a string key");
            assert!(!key.is_empty() && key.len() <= 500 && key == key.trim(), "{row}");
            let end = end.expect("a mapped node is an endpoint").expect("and a known one");
            assert_eq!((end.table, end.key.as_str()), (*table, key));
            if *table == Table::SyncEvents {
                for col in ["start_time", "end_time"] {
                    assert!(row[col].is_null() || timestamp(Some(&row[col])).is_ok(), "{row}");
                }
            }
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
    let rel = m.relationship_properties(props);
    assert!(!rel.as_object().is_some_and(|o| o.contains_key(&m.tenant_property)));
    if let Some(c) = m.changed(props) {
        assert!(c.is_number() || c.is_string());
    }
}

fn check_answer(status: u16, retry_after: Option<&str>, body: &str) {
    match parse_answer(status, retry_after, body) {
        Ok(rows) => {
            assert!((200..300).contains(&status));
            assert!(rows.values.iter().all(|r| r.len() == rows.fields.len()), "{rows:?}");
            assert_eq!(rows.records().count(), rows.values.len());
            check_pages(&rows);
        }
        Err(SourceFailure::RateLimited { message, .. }) => {
            assert!(matches!(status, 429 | 503), "{status}");
            assert!(!message.is_empty());
        }
        Err(SourceFailure::Gone { message }) => assert!(status == 410 && !message.is_empty()),
        Err(SourceFailure::Unauthorized { status: s, message }) => assert!(s == status && !message.is_empty()),
        Err(SourceFailure::Failed { status: s, message }) => assert!(s == Some(status) && !message.is_empty()),
        // Only the exchange's deadline makes one; an answer, however bad, never does.
        Err(f @ SourceFailure::TimedOut { .. }) => panic!("an answer was read as a timeout: {f:?}"),
    }
}

/// A parsed answer through the mapping, as the run loop does it.
fn check_pages(rows: &Rows) {
    let m = mapping();
    let no_nul_in =
        |rec: &Map<String, Value>, f: &str| rec.get(f).and_then(Value::as_str).is_none_or(|s| !s.contains('\0'));
    let clean = rows.records().all(|r| no_nul_in(&r, "id") && no_nul_in(&r, "type"));
    for page in [Page::of_nodes(m, rows.records()), Page::of_relationships(m, rows.records())] {
        assert_eq!(page.items, rows.values.len());
        let placed = page.entities.len() + page.events.len() + page.relationships.len();
        assert_eq!(
            placed + page.rejected.len() + page.skipped as usize,
            page.items,
            "one outcome per record: {page:?}"
        );
        if clean {
            for row in page.entities.iter().chain(&page.events).chain(&page.relationships) {
                assert!(!has_nul(row), "a row with NUL would fail the whole page in Postgres: {row}");
            }
        }
        if let Some(w) = &page.watermark {
            assert!(w.is_number() || w.is_string());
        }
    }
}
