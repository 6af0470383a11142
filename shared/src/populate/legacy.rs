//! Legacy records from an older local store (seed 004 §2.4) → `entries`.
//!
//! A record is a JSON object with `legacyId` (string or integer) and `legacyType`
//! (`task|event|note|habit_def`), plus fields. Known fields fill columns: `title`;
//! `body`, `bodyMarkdown` or `rawText` → `body_markdown`; `tags`, `people`, `contexts`
//! (lists of strings); `facets` (added to `[legacyType]`); `startAt`, `endAt`,
//! `createdAt` (ISO 8601 or Unix time). Everything else — `status`, `kind`, `metadata`,
//! `sourceApp`, … — is kept in `frontmatter`, with `legacyId` and `legacyType`, which
//! are the record's key per user. Each record gets its own verdict.

use super::mapping::timestamp;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub const LEGACY_TYPES: &[&str] = &["task", "event", "note", "habit_def"];
/// Records per call.
pub const MAX_RECORDS: usize = 1000;
const MAX_ID_LEN: usize = 200;
const MAX_LIST: usize = 200;
const BODY_FIELDS: &[&str] = &["body", "bodyMarkdown", "rawText"];
/// The record fields that fill columns (or are the key); all others go to `frontmatter`.
pub const COLUMN_FIELDS: &[&str] = &[
    "legacyId",
    "legacyType",
    "title",
    "body",
    "bodyMarkdown",
    "rawText",
    "tags",
    "people",
    "contexts",
    "facets",
    "startAt",
    "endAt",
    "createdAt",
];

/// The verdict on one record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordReport {
    pub index: usize,
    #[serde(rename = "legacyType", skip_serializing_if = "Option::is_none")]
    pub legacy_type: Option<String>,
    #[serde(rename = "legacyId", skip_serializing_if = "Option::is_none")]
    pub legacy_id: Option<String>,
    /// `inserted`, `updated`, `unchanged`, `skipped` (the user deleted that entry),
    /// `duplicate` (an earlier record in the batch has the same key) or `rejected`.
    pub status: String,
    /// The entry's id, once the database has answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A checked batch: rows for the database and a verdict slot per record.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyBatch {
    /// Entry rows; each `ref` is its record's index, zero-padded (so it sorts).
    pub rows: Vec<Value>,
    /// One per record, in order; statuses of `rows` are filled from the database's answer.
    pub reports: Vec<RecordReport>,
}

/// The `ref` of record `index`.
pub fn record_ref(index: usize) -> String {
    format!("{index:06}")
}

impl LegacyBatch {
    pub fn parse(records: &[Value]) -> LegacyBatch {
        let mut rows = Vec::new();
        let mut reports = Vec::with_capacity(records.len());
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            let (legacy_type, legacy_id) = key_of(record);
            let mut report = RecordReport {
                index,
                legacy_type: legacy_type.clone(),
                legacy_id: legacy_id.clone(),
                status: "rejected".into(),
                id: None,
                duplicate_of: None,
                reason: None,
            };
            match entry_row(index, record) {
                Err(reason) => report.reason = Some(reason),
                Ok(row) => {
                    let key = (legacy_type.unwrap_or_default(), legacy_id.unwrap_or_default());
                    if let Some(first) = seen.get(&key) {
                        report.status = "duplicate".into();
                        report.duplicate_of = Some(*first);
                        report.reason = Some(format!("record {first} has the same legacyType and legacyId"));
                    } else {
                        seen.insert(key, index);
                        report.status = "pending".into();
                        rows.push(row);
                    }
                }
            }
            reports.push(report);
        }
        LegacyBatch { rows, reports }
    }

    /// Fill in the database's verdicts (`[{ref, id, status}]`).
    pub fn settle(&mut self, results: &[Value]) {
        for r in results {
            let Some(index) = r.get("ref").and_then(Value::as_str).and_then(|s| s.parse::<usize>().ok()) else {
                continue;
            };
            if let Some(report) = self.reports.get_mut(index) {
                report.status = r.get("status").and_then(Value::as_str).unwrap_or("unchanged").to_owned();
                report.id = r.get("id").and_then(Value::as_str).map(str::to_owned);
                if report.status == "skipped" {
                    report.reason = Some("the user deleted this entry; it is not brought back".into());
                }
            }
        }
    }

    /// Records refused before the database (malformed or duplicate).
    pub fn refused(&self) -> (u64, u64) {
        let count = |s: &str| self.reports.iter().filter(|r| r.status == s).count() as u64;
        (count("rejected"), count("duplicate"))
    }
}

fn key_of(record: &Value) -> (Option<String>, Option<String>) {
    let t = record.get("legacyType").and_then(Value::as_str).map(str::to_owned);
    let id = match record.get("legacyId") {
        Some(Value::String(s)) => Some(s.trim().to_owned()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    };
    (t, id)
}

fn entry_row(index: usize, record: &Value) -> Result<Value, String> {
    let Value::Object(fields) = record else { return Err("a record must be a JSON object".into()) };
    if crate::has_nul(record) {
        return Err("a field contains a NUL character (\\u0000), which Postgres cannot store".into());
    }
    let legacy_type = match fields.get("legacyType") {
        Some(Value::String(t)) if LEGACY_TYPES.contains(&t.as_str()) => t.clone(),
        Some(_) => return Err(format!("legacyType must be one of {}", LEGACY_TYPES.join(", "))),
        None => return Err("legacyType is missing".into()),
    };
    let legacy_id = match key_of(record).1 {
        Some(id) if !id.is_empty() && id.len() <= MAX_ID_LEN => id,
        Some(id) if !id.is_empty() => return Err(format!("legacyId is longer than {MAX_ID_LEN} bytes")),
        _ => return Err("legacyId must be a non-empty string or an integer".into()),
    };
    let text = |name: &str| -> Result<Option<String>, String> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{name} must be a string")),
        }
    };
    let list = |name: &str| -> Result<Vec<String>, String> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) if items.len() <= MAX_LIST => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| format!("{name} must be a list of strings")))
                .collect(),
            Some(_) => Err(format!("{name} must be a list of at most {MAX_LIST} strings")),
        }
    };
    let time = |name: &str| timestamp(fields.get(name)).map_err(|e| format!("{name}: {e}"));
    let mut body = None;
    for name in BODY_FIELDS {
        if let Some(b) = text(name)? {
            body.get_or_insert(b);
        }
    }
    let mut facets = vec![legacy_type.clone()];
    for f in list("facets")? {
        if !facets.contains(&f) {
            facets.push(f);
        }
    }
    let mut frontmatter: Map<String, Value> = fields
        .iter()
        .filter(|(k, _)| !COLUMN_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    frontmatter.insert("legacyId".into(), json!(legacy_id));
    frontmatter.insert("legacyType".into(), json!(legacy_type));
    Ok(json!({
        "ref": record_ref(index),
        "title": text("title")?,
        "body_markdown": body,
        "facets": facets,
        "tags": list("tags")?,
        "people": list("people")?,
        "contexts": list("contexts")?,
        "frontmatter": frontmatter,
        "start_at": time("startAt")?,
        "end_at": time("endAt")?,
        "created_at": time("createdAt")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_entries_with_facets_and_frontmatter() {
        let b = LegacyBatch::parse(&[json!({
            "legacyId": 17, "legacyType": "task", "title": "Call mum", "rawText": "about Sunday",
            "tags": ["family"], "facets": ["event", "task"], "startAt": 1700000000000u64, "status": "open",
            "sourceApp": "desktop", "metadata": {"priority": 2}
        })]);
        assert_eq!(b.reports[0].status, "pending");
        let row = &b.rows[0];
        assert_eq!(row["ref"], "000000");
        assert_eq!(row["title"], "Call mum");
        assert_eq!(row["body_markdown"], "about Sunday");
        assert_eq!(row["facets"], json!(["task", "event"]));
        assert_eq!(row["tags"], json!(["family"]));
        assert_eq!(row["start_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(row["end_at"], Value::Null);
        assert_eq!(
            row["frontmatter"],
            json!({"legacyId": "17", "legacyType": "task", "status": "open", "sourceApp": "desktop", "metadata": {"priority": 2}})
        );
    }

    #[test]
    fn every_bad_record_gets_its_own_reason_and_duplicates_point_at_the_first() {
        let records = vec![
            json!({"legacyId": "a", "legacyType": "note"}),
            json!("not an object"),
            json!({"legacyId": "b"}),
            json!({"legacyId": "b", "legacyType": "journal"}),
            json!({"legacyId": "", "legacyType": "note"}),
            json!({"legacyId": 1.5, "legacyType": "note"}),
            json!({"legacyId": "c", "legacyType": "note", "tags": "x"}),
            json!({"legacyId": "d", "legacyType": "event", "startAt": "2026-02-30"}),
            json!({"legacyId": "a", "legacyType": "note", "title": "again"}),
            json!({"legacyId": "a", "legacyType": "task"}),
            json!({"legacyId": "e", "legacyType": "note", "title": 5}),
            json!({"legacyId": "x".repeat(201), "legacyType": "note"}),
            json!({"legacyId": "f", "legacyType": "note", "title": "a\u{0}b"}),
        ];
        let b = LegacyBatch::parse(&records);
        let verdicts: Vec<(&str, Option<&str>)> =
            b.reports.iter().map(|r| (r.status.as_str(), r.reason.as_deref())).collect();
        let want = [
            ("pending", None),
            ("rejected", Some("a record must be a JSON object")),
            ("rejected", Some("legacyType is missing")),
            ("rejected", Some("legacyType must be one of task, event, note, habit_def")),
            ("rejected", Some("legacyId must be a non-empty string or an integer")),
            ("rejected", Some("legacyId must be a non-empty string or an integer")),
            ("rejected", Some("tags must be a list of at most 200 strings")),
            ("rejected", Some("startAt: \"2026-02-30\" is not a date in the calendar")),
            ("duplicate", Some("record 0 has the same legacyType and legacyId")),
            ("pending", None),
            ("rejected", Some("title must be a string")),
            ("rejected", Some("legacyId is longer than 200 bytes")),
            ("rejected", Some("a field contains a NUL character (\\u0000), which Postgres cannot store")),
        ];
        assert_eq!(verdicts, want);
        assert_eq!(b.reports[8].duplicate_of, Some(0));
        assert_eq!(b.rows.len(), 2);
        assert_eq!(b.refused(), (10, 1));
    }

    #[test]
    fn database_verdicts_are_settled_by_index() {
        let mut b = LegacyBatch::parse(&[
            json!({"legacyId": "a", "legacyType": "note"}),
            json!(1),
            json!({"legacyId": "b", "legacyType": "note"}),
        ]);
        b.settle(&[
            json!({"ref": "000000", "id": "11111111-1111-1111-1111-111111111111", "status": "inserted"}),
            json!({"ref": "000002", "id": "22222222-2222-2222-2222-222222222222", "status": "skipped"}),
            json!({"ref": "garbage"}),
        ]);
        assert_eq!(b.reports[0].status, "inserted");
        assert_eq!(b.reports[0].id.as_deref(), Some("11111111-1111-1111-1111-111111111111"));
        assert_eq!(b.reports[1].status, "rejected");
        assert_eq!(b.reports[2].status, "skipped");
        assert!(b.reports[2].reason.as_deref().unwrap().contains("deleted"));
        let json = serde_json::to_value(&b.reports[0]).unwrap();
        assert_eq!(
            json,
            json!({"index": 0, "legacyType": "note", "legacyId": "a", "status": "inserted", "id": "11111111-1111-1111-1111-111111111111"})
        );
    }
}
