//! How a Neo4j graph becomes rows, as data.
//!
//! A [`Mapping`] is JSON (the default is `default_mapping.json`; a deployment replaces it
//! with the `NEO4J_MAPPING` setting). Each node rule names a label, the table its nodes
//! become (`sync_entities` with an entity `type`, or `sync_events`), the property that
//! is the natural key, and which properties fill which columns. The first rule whose
//! label the node carries wins. Every other property of the node, except the tenant
//! property, lands in `properties`. Relationships keep their type and properties and
//! find their ends by the ends' natural keys.

use crate::config::ConfigError;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

pub const DEFAULT_MAPPING: &str = include_str!("default_mapping.json");

/// Longest natural key accepted (a key is an identifier, not content).
const MAX_KEY_LEN: usize = 500;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    SyncEntities,
    SyncEvents,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::SyncEntities => "sync_entities",
            Table::SyncEvents => "sync_events",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeRule {
    pub label: String,
    pub table: Table,
    /// The entity type (`sync_entities.type`); entities only.
    #[serde(rename = "type", default)]
    pub entity_type: Option<String>,
    /// The property holding the natural key (`sync_entities.key`, `sync_events.google_event_id`).
    pub key: String,
    /// The property shown as `sync_entities.display_name`; entities only.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Column → property, events only (see [`EVENT_COLUMNS`]).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

/// The `sync_events` columns a rule may fill, and their kinds.
pub const EVENT_COLUMNS: &[(&str, Kind)] = &[
    ("title", Kind::Text),
    ("description", Kind::Text),
    ("start_time", Kind::Timestamp),
    ("end_time", Kind::Timestamp),
    ("all_day", Kind::Boolean),
    ("location", Kind::Text),
    ("source_id", Kind::Text),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Timestamp,
    Boolean,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The node property that holds the owner's user id.
    pub tenant_property: String,
    /// A property that grows when a node or relationship changes (epoch ms or an ISO
    /// timestamp): what incremental runs filter on. Items without it are always read.
    pub changed_property: String,
    pub nodes: Vec<NodeRule>,
}

/// What a node becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum MappedNode {
    /// A row for `table` (`ref` is the node's element id).
    Row { table: Table, row: Value },
    /// No rule matches its labels: not imported, counted as skipped.
    Unmapped,
}

/// One end of a relationship, by natural key.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub table: Table,
    pub entity_type: Option<String>,
    pub key: String,
}

impl Mapping {
    pub fn default_mapping() -> Mapping {
        Mapping::parse(DEFAULT_MAPPING).unwrap_or_else(|e| unreachable!("the default mapping is valid: {e}"))
    }

    /// Parse and check a mapping.
    pub fn parse(text: &str) -> Result<Mapping, String> {
        let m: Mapping = serde_json::from_str(text).map_err(|e| format!("not a valid mapping: {e}"))?;
        let name_ok = |s: &str| !s.trim().is_empty() && s.len() <= 200;
        if !name_ok(&m.tenant_property) || !name_ok(&m.changed_property) {
            return Err("tenant_property and changed_property must be property names".into());
        }
        if m.nodes.is_empty() || m.nodes.len() > 100 {
            return Err("nodes must have 1 to 100 rules".into());
        }
        for (i, r) in m.nodes.iter().enumerate() {
            let what = format!("rule {i} ({})", r.label);
            if !name_ok(&r.label) || !name_ok(&r.key) {
                return Err(format!("{what}: label and key must be names"));
            }
            match r.table {
                Table::SyncEntities => {
                    if !r.entity_type.as_deref().is_some_and(name_ok) {
                        return Err(format!("{what}: an entity rule needs a type"));
                    }
                    if !r.columns.is_empty() {
                        return Err(format!("{what}: columns are for events; entities keep extra properties"));
                    }
                }
                Table::SyncEvents => {
                    if r.entity_type.is_some() || r.display_name.is_some() {
                        return Err(format!("{what}: type and display_name are for entities"));
                    }
                    for (col, prop) in &r.columns {
                        if !EVENT_COLUMNS.iter().any(|(c, _)| c == col) || !name_ok(prop) {
                            return Err(format!("{what}: {col} is not a sync_events column a rule can fill"));
                        }
                    }
                }
            }
        }
        Ok(m)
    }

    /// The mapping from the `NEO4J_MAPPING` setting, or the default.
    pub fn from_setting(value: Option<String>) -> Result<Mapping, ConfigError> {
        match value.filter(|v| !v.trim().is_empty()) {
            None => Ok(Mapping::default_mapping()),
            Some(text) => Mapping::parse(&text).map_err(|problem| ConfigError { setting: "NEO4J_MAPPING", problem }),
        }
    }

    fn rule(&self, labels: &[String]) -> Option<&NodeRule> {
        self.nodes.iter().find(|r| labels.contains(&r.label))
    }

    /// The row a node becomes, or why it cannot be imported.
    pub fn map_node(
        &self,
        element_id: &str,
        labels: &[String],
        props: &Map<String, Value>,
    ) -> Result<MappedNode, String> {
        let Some(rule) = self.rule(labels) else { return Ok(MappedNode::Unmapped) };
        let key = natural_key(rule, props)?;
        if crate::object_has_nul(props) {
            return Err(NUL_REASON.into());
        }
        let mut used: Vec<&str> = vec![self.tenant_property.as_str(), rule.key.as_str()];
        let row = match rule.table {
            Table::SyncEntities => {
                let display = match &rule.display_name {
                    Some(p) => {
                        used.push(p);
                        text(props.get(p)).map_err(|e| format!("{p}: {e}"))?
                    }
                    None => None,
                };
                json!({
                    "ref": element_id, "type": rule.entity_type, "key": key, "display_name": display,
                    "properties": rest(props, &used),
                })
            }
            Table::SyncEvents => {
                let mut row = Map::new();
                row.insert("ref".into(), json!(element_id));
                row.insert("google_event_id".into(), json!(key));
                row.insert("source".into(), json!("neo4j"));
                for (col, kind) in EVENT_COLUMNS {
                    let Some(prop) = rule.columns.get(*col) else { continue };
                    used.push(prop);
                    let v = props.get(prop);
                    let value = match kind {
                        Kind::Text => json!(text(v).map_err(|e| format!("{prop}: {e}"))?),
                        Kind::Timestamp => json!(timestamp(v).map_err(|e| format!("{prop}: {e}"))?),
                        Kind::Boolean => match v {
                            None | Some(Value::Null) => Value::Null,
                            Some(Value::Bool(b)) => json!(b),
                            Some(_) => return Err(format!("{prop}: must be true or false")),
                        },
                    };
                    row.insert((*col).into(), value);
                }
                row.insert("properties".into(), rest(props, &used));
                Value::Object(row)
            }
        };
        Ok(MappedNode::Row { table: rule.table, row })
    }

    /// A relationship end's natural key; `None` when its labels are not mapped.
    pub fn endpoint(&self, labels: &[String], props: &Map<String, Value>) -> Result<Option<Endpoint>, String> {
        let Some(rule) = self.rule(labels) else { return Ok(None) };
        Ok(Some(Endpoint { table: rule.table, entity_type: rule.entity_type.clone(), key: natural_key(rule, props)? }))
    }

    /// Properties of a relationship, without the tenant property.
    pub fn relationship_properties(&self, props: &Map<String, Value>) -> Value {
        rest(props, &[self.tenant_property.as_str()])
    }

    /// The item's change marker, if it has a usable one.
    pub fn changed<'a>(&self, props: &'a Map<String, Value>) -> Option<&'a Value> {
        props.get(&self.changed_property).filter(|v| v.is_number() || v.is_string())
    }
}

fn natural_key(rule: &NodeRule, props: &Map<String, Value>) -> Result<String, String> {
    let key = match props.get(&rule.key) {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    if key.is_empty() {
        return Err(format!("a {} node needs its key property {} (a string or number)", rule.label, rule.key));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("its {} is longer than {MAX_KEY_LEN} bytes", rule.key));
    }
    // A relationship carries its ends' keys into its row: one with NUL would make
    // Postgres refuse the whole page.
    if key.contains('\0') {
        return Err(NUL_REASON.into());
    }
    Ok(key)
}

/// A text column's value: strings as they are, numbers and booleans as text.
fn text(v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err("must be text, not a list or map".into()),
    }
}

fn rest(props: &Map<String, Value>, used: &[&str]) -> Value {
    Value::Object(
        props.iter().filter(|(k, _)| !used.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect(),
    )
}

/// Why an item with a NUL character is refused.
pub const NUL_REASON: &str = "a property contains a NUL character (\\u0000), which Postgres cannot store";

/// Does `a` come after `b` (both change markers: numbers or strings of one kind)?
pub fn later(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64().unwrap_or(0.0) > y.as_f64().unwrap_or(0.0),
        (Value::String(x), Value::String(y)) => x > y,
        _ => false,
    }
}

/// A timestamp for Postgres: an ISO 8601 / RFC 3339 date or date-time string (checked
/// field by field, so Postgres never sees one it would refuse), or a Unix time in
/// seconds, or milliseconds when that large (the convention of /upload).
pub fn timestamp(v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let x = n.as_f64().filter(|x| x.is_finite()).ok_or("is not a finite number")?;
            let ms = if x.abs() >= 1e11 { x } else { x * 1000.0 };
            // Postgres' range is wide; keep to years 0001..9999 so the text form is ISO.
            if !(-62_135_596_800_000.0..253_402_300_800_000.0).contains(&ms) {
                return Err("is outside the years 1 to 9999".into());
            }
            Ok(Some(format_unix_ms(ms.floor() as i64)))
        }
        Some(Value::String(s)) => {
            check_iso(s.trim())?;
            Ok(Some(s.trim().to_owned()))
        }
        Some(_) => Err("must be an ISO 8601 timestamp or a Unix time".into()),
    }
}

fn check_iso(s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not an ISO 8601 date or date-time");
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<u32, String> {
        let part = b.get(from..from + len).ok_or_else(bad)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(part.iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0')))
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || year == 0 {
        return Err(bad());
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(format!("{s:?} is not a date in the calendar"));
    }
    if b.len() == 10 {
        return Ok(());
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let (hour, minute) = (num(11, 2)?, num(14, 2)?);
    if b.get(13) != Some(&b':') || hour > 23 || minute > 59 {
        return Err(bad());
    }
    let mut i = 16;
    if b.get(i) == Some(&b':') {
        if num(17, 2)? > 60 {
            return Err(bad());
        }
        i = 19;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start || i - start > 9 {
                return Err(bad());
            }
        }
    }
    match &b[i..] {
        [] | [b'Z'] | [b'z'] => Ok(()),
        [b'+' | b'-', ..] => {
            // Postgres refuses offsets beyond 15:59 ("time zone displacement out of range").
            const MAX_HOURS: u32 = 15;
            let off = &s[i + 1..];
            let ok = match off.len() {
                2 => num(i + 1, 2)? <= MAX_HOURS,
                4 => num(i + 1, 2)? <= MAX_HOURS && num(i + 3, 2)? <= 59,
                5 => off.as_bytes()[2] == b':' && num(i + 1, 2)? <= MAX_HOURS && num(i + 4, 2)? <= 59,
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a Unix time in milliseconds (proleptic Gregorian).
fn format_unix_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn labels(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_default_mapping_is_valid_and_data() {
        let m = Mapping::default_mapping();
        assert_eq!(m.tenant_property, "user_id");
        assert!(m.nodes.iter().any(|r| r.label == "Event" && r.table == Table::SyncEvents));
        assert_eq!(Mapping::from_setting(None).unwrap(), m);
        let custom = r#"{"tenant_property":"owner","changed_property":"ts",
            "nodes":[{"label":"Topic","table":"sync_entities","type":"topic","key":"slug"}]}"#;
        let c = Mapping::from_setting(Some(custom.into())).unwrap();
        assert_eq!(c.nodes[0].entity_type.as_deref(), Some("topic"));
    }

    #[test]
    fn bad_mappings_name_the_problem() {
        let cases = [
            ("{", "not a valid mapping"),
            (r#"{"tenant_property":"u","changed_property":"c","nodes":[]}"#, "1 to 100"),
            (
                r#"{"tenant_property":"u","changed_property":"c","nodes":[{"label":"A","table":"sync_entities","key":"k"}]}"#,
                "needs a type",
            ),
            (
                r#"{"tenant_property":"u","changed_property":"c","nodes":[{"label":"A","table":"sync_events","key":"k","columns":{"user_id":"x"}}]}"#,
                "user_id is not",
            ),
            (
                r#"{"tenant_property":"u","changed_property":"c","nodes":[{"label":"A","table":"users","key":"k"}]}"#,
                "not a valid mapping",
            ),
            (r#"{"tenant_property":"u","changed_property":"c","nodes":[],"extra":1}"#, "unknown field"),
        ];
        for (text, want) in cases {
            let err = Mapping::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        let err = Mapping::from_setting(Some("[]".into())).unwrap_err();
        assert_eq!(err.setting, "NEO4J_MAPPING");
    }

    #[test]
    fn an_entity_node_keeps_unknown_properties_but_not_the_tenant() {
        let m = Mapping::default_mapping();
        let p = props(json!({"user_id": "u1", "email": "a@x.io", "name": "Ann", "score": 0.5, "aliases": ["a"]}));
        let got = m.map_node("4:x:1", &labels(&["Person"]), &p).unwrap();
        assert_eq!(
            got,
            MappedNode::Row {
                table: Table::SyncEntities,
                row: json!({"ref": "4:x:1", "type": "person", "key": "a@x.io", "display_name": "Ann",
                            "properties": {"score": 0.5, "aliases": ["a"]}}),
            }
        );
        // The first rule that matches wins: Person before Contact.
        let MappedNode::Row { row, .. } = m.map_node("4:x:2", &labels(&["Contact", "Person"]), &p).unwrap() else {
            panic!()
        };
        assert_eq!(row["type"], "person");
        assert_eq!(m.map_node("4:x:3", &labels(&["Draft"]), &p).unwrap(), MappedNode::Unmapped);
    }

    #[test]
    fn an_event_node_fills_typed_columns() {
        let m = Mapping::default_mapping();
        let p = props(
            json!({"user_id": "u", "google_event_id": "g1", "title": "Standup", "start_time": "2026-03-04T10:00:00Z",
            "end_time": 1772622000000u64, "all_day": false, "id": 7, "room": "B"}),
        );
        let MappedNode::Row { table, row } = m.map_node("4:x:9", &labels(&["Event"]), &p).unwrap() else { panic!() };
        assert_eq!(table, Table::SyncEvents);
        assert_eq!(row["google_event_id"], "g1");
        assert_eq!(row["start_time"], "2026-03-04T10:00:00Z");
        assert_eq!(row["end_time"], "2026-03-04T11:00:00.000Z");
        assert_eq!(row["source_id"], "7");
        assert_eq!(row["source"], "neo4j");
        assert_eq!(row["description"], Value::Null);
        assert_eq!(row["properties"], json!({"room": "B"}));
    }

    #[test]
    fn nodes_that_cannot_be_rows_are_refused_with_a_reason() {
        let m = Mapping::default_mapping();
        let cases = [
            (json!({"name": "no email"}), "Person", "needs its key property email"),
            (json!({"email": "", "name": "x"}), "Person", "needs its key property email"),
            (json!({"email": "a", "name": {"first": "A"}}), "Person", "name: must be text"),
            (
                json!({"google_event_id": "g", "start_time": "2026-02-30T10:00:00Z"}),
                "Event",
                "not a date in the calendar",
            ),
            (json!({"google_event_id": "g", "start_time": "tomorrow"}), "Event", "not an ISO 8601"),
            (json!({"google_event_id": "g", "all_day": "yes"}), "Event", "true or false"),
            (json!({"email": "x".repeat(501)}), "Person", "longer than"),
            (json!({"email": "a", "notes": ["ok", "nul\u{0}"]}), "Person", "NUL character"),
            (json!({"email": "a", "meta": {"k\u{0}": 1}}), "Person", "NUL character"),
        ];
        for (p, label, want) in cases {
            let err = m.map_node("4:x:1", &labels(&[label]), &props(p.clone())).unwrap_err();
            assert!(err.contains(want), "{p}: {err}");
        }
    }

    #[test]
    fn endpoints_are_natural_keys() {
        let m = Mapping::default_mapping();
        let e = m.endpoint(&labels(&["Event"]), &props(json!({"google_event_id": "g7"}))).unwrap().unwrap();
        assert_eq!((e.table, e.entity_type, e.key.as_str()), (Table::SyncEvents, None, "g7"));
        let e = m.endpoint(&labels(&["Concept"]), &props(json!({"name": 42}))).unwrap().unwrap();
        assert_eq!((e.entity_type.as_deref(), e.key.as_str()), (Some("concept"), "42"));
        assert_eq!(m.endpoint(&labels(&["Draft"]), &props(json!({}))).unwrap(), None);
        assert!(m.endpoint(&labels(&["Person"]), &props(json!({}))).is_err());
    }

    /// Found by the `populate` fuzz target (fuzz/regressions/populate/): a relationship
    /// whose end's natural key held NUL became a row with that key, and Postgres would
    /// refuse the whole page (the end node itself is refused for its NUL).
    #[test]
    fn an_endpoint_key_with_nul_is_refused() {
        let m = Mapping::default_mapping();
        let err = m.endpoint(&labels(&["Concept"]), &props(json!({"name": "n\u{0}"}))).unwrap_err();
        assert!(err.contains("NUL character"), "{err}");
        assert!(m.endpoint(&labels(&["Person"]), &props(json!({"email": "\u{0}a"}))).is_err());
        let page = super::super::Page::of_relationships(
            &m,
            [props(json!({
                "id": "5:a:1", "type": "RELATED", "properties": {},
                "from_labels": ["Concept"], "from_properties": {"name": "n\u{0}"},
                "to_labels": ["Concept"], "to_properties": {"name": "m"},
            }))]
            .into_iter(),
        );
        assert_eq!((page.relationships.len(), page.rejected.len()), (0, 1));
        assert!(page.rejected[0].reason.contains("NUL character"), "{:?}", page.rejected);
    }

    #[test]
    fn timestamps_are_unix_seconds_or_milliseconds_or_iso_8601_that_postgres_accepts() {
        let ok = |v: Value| timestamp(Some(&v)).unwrap().unwrap();
        assert_eq!(ok(json!(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(ok(json!(1_700_000_000)), "2023-11-14T22:13:20.000Z");
        assert_eq!(ok(json!(1_700_000_000_123u64)), "2023-11-14T22:13:20.123Z");
        assert_eq!(ok(json!(-86_400)), "1969-12-31T00:00:00.000Z");
        assert_eq!(ok(json!(951_782_400)), "2000-02-29T00:00:00.000Z");
        for s in [
            "2024-02-29",
            "2026-03-04T10:00Z",
            "2026-03-04 10:00:00.123456+05:30",
            "2026-03-04T10:00:00-0800",
            "2026-03-04T10:00:00+01",
            "2026-03-04T10:00:00-15:59",
        ] {
            assert_eq!(ok(json!(s)), s);
        }
        for bad in [
            "2023-02-29",
            "2026-13-01",
            "2026-00-10",
            "26-01-01",
            "2026-01-01T24:00",
            "2026-01-01T10:00:00+1",
            "2026-01-01T10:00:00.Z",
            "2026-01-01X",
            "0000-01-01",
            // Offsets Postgres refuses (found by schemathesis through /populate).
            "2533-03-13T16:15:52+18:30",
            "2026-01-01T10:00:00-16",
            "2026-01-01T10:00:00+2300",
        ] {
            assert!(timestamp(Some(&json!(bad))).is_err(), "{bad}");
        }
        assert!(timestamp(Some(&json!(1e300))).is_err());
        assert!(timestamp(Some(&json!([1]))).is_err());
        assert_eq!(timestamp(None).unwrap(), None);
    }

    #[test]
    fn change_markers_compare_within_their_kind() {
        assert!(later(&json!(2), &json!(1)));
        assert!(!later(&json!(1), &json!(1)));
        assert!(later(&json!("2026-01-02"), &json!("2026-01-01")));
        assert!(!later(&json!("9"), &json!(1)));
    }
}
