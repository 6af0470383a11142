//! `GET /sync`: parse the query, build the `edgesync_pull` RPC arguments, and shape
//! its answer into the wire format (README.md "Pull").
//!
//! The database does the hard part (one statement, one snapshot, the sync-position
//! watermark, `(txid, id)` order; see `sql/migrations/0002_sync_core.sql` and
//! `0012_sync_positions.sql`). This module owns the
//! contract: parameter validation, the cursor, and the response.

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::cursor::{tables_fingerprint, Cursor, NIL_ID};
use crate::ApiError;

/// The RPC behind `/sync`.
pub const PULL_RPC: &str = "edgesync_pull";
/// Rows per page when the client does not say.
pub const DEFAULT_LIMIT: u32 = 1000;
/// The most rows a client may ask for in one page.
pub const MAX_LIMIT: u32 = 5000;
/// A page stops adding rows once their JSON passes about this many bytes, so one
/// response stays far below a Worker's memory (at least one row is always sent).
pub const MAX_PAGE_BYTES: u32 = 4 * 1024 * 1024;
/// At most this many tables in one pull.
pub const MAX_TABLES: usize = 64;

/// A validated `/sync` request.
#[derive(Debug, Clone, PartialEq)]
pub struct PullRequest {
    /// Sorted, without duplicates; `None` means every synced table.
    pub tables: Option<Vec<String>>,
    pub since: Option<Cursor>,
    pub limit: u32,
    /// Long-poll: hold an empty page up to this many seconds for a change (0: answer
    /// at once; see `crate::live::LongPoll`).
    pub wait: u32,
}

/// Is `name` usable as a table name on the wire (the same rule the SQL registry uses)?
pub fn valid_table_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

impl PullRequest {
    /// From the raw query string (without `?`).
    pub fn from_query(query: &str) -> Result<PullRequest, ApiError> {
        let mut since = None;
        let mut tables = None;
        let mut limit = None;
        let mut wait = None;
        for (key, value) in parse_query(query)? {
            let slot = match key.as_str() {
                "since" => &mut since,
                "tables" => &mut tables,
                "limit" => &mut limit,
                "wait" => &mut wait,
                other => {
                    return Err(ApiError::bad_request(
                        "invalid_parameter",
                        format!(
                            "unknown query parameter `{}`; /sync takes since, tables, limit and wait",
                            truncate(other)
                        ),
                    ))
                }
            };
            if slot.replace(value).is_some() {
                return Err(ApiError::bad_request("invalid_parameter", format!("`{key}` is given more than once")));
            }
        }

        let tables = match tables.filter(|t| !t.is_empty()) {
            None => None,
            Some(list) => {
                let mut names: Vec<String> = Vec::new();
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    if !valid_table_name(name) {
                        return Err(ApiError::bad_request(
                            "invalid_parameter",
                            format!("`{}` is not a table name (lowercase letters, digits and _)", truncate(name)),
                        ));
                    }
                    names.push(name.to_owned());
                }
                names.sort();
                names.dedup();
                if names.is_empty() {
                    return Err(ApiError::bad_request("invalid_parameter", "`tables` names no table"));
                }
                if names.len() > MAX_TABLES {
                    return Err(ApiError::bad_request(
                        "invalid_parameter",
                        format!("at most {MAX_TABLES} tables per pull"),
                    ));
                }
                Some(names)
            }
        };

        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_parameter",
                        format!("`limit` must be an integer from 1 to {MAX_LIMIT}"),
                    ))
                }
            },
        };

        let since = match since.filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => {
                let cursor = Cursor::decode(&s)?;
                if cursor.tables != tables_fingerprint(tables.as_deref()) {
                    return Err(ApiError::bad_request(
                        "cursor_mismatch",
                        "this cursor was issued for a different set of tables; pull the new set without `since`",
                    ));
                }
                Some(cursor)
            }
        };
        let wait = match wait {
            None => 0,
            Some(v) => crate::live::parse_wait(&v)?,
        };
        Ok(PullRequest { tables, since, limit, wait })
    }

    /// Arguments of the `edgesync_pull` RPC.
    pub fn rpc_args(&self) -> Value {
        let (txid, id, origin) = match &self.since {
            Some(c) => (c.txid, c.id.as_str(), c.origin),
            None => (0, NIL_ID, 0),
        };
        json!({
            "since_txid": txid.to_string(),
            "since_id": id,
            "since_origin": origin.to_string(),
            "tables": self.tables,
            "lim": self.limit,
            "max_bytes": MAX_PAGE_BYTES,
        })
    }

    /// Turn the RPC's answer (raw JSON text) into the `/sync` response body.
    ///
    /// The rows are passed through as the database rendered them, without building a
    /// JSON tree in the Worker: a page can be megabytes.
    ///
    /// Besides the contract's fields it adds `checkpoint`: every version (sync
    /// position) below it has been delivered once this page is applied. An
    /// `/upload`'s `write_checkpoint` is reached when `checkpoint >= write_checkpoint`
    /// (compared as integers).
    pub fn response(&self, answer: &[u8]) -> Result<Vec<u8>, ApiError> {
        #[derive(serde::Deserialize)]
        struct Page<'a> {
            #[serde(borrow)]
            changes: &'a RawValue,
            has_more: bool,
            next_txid: String,
            next_id: String,
            origin: String,
        }
        let bad =
            |what: &str| ApiError::bad_gateway("upstream_bad_response", format!("the pull answer has no valid {what}"));
        let page: Page = serde_json::from_slice(answer).map_err(|_| bad("page"))?;
        let changes = page.changes.get();
        if !changes.starts_with('{') {
            return Err(bad("changes"));
        }
        // A position the cursor cannot carry (above i64::MAX, as `Cursor::decode` checks)
        // would hand out a cursor the next pull refuses.
        let position = |text: &str| text.parse::<u64>().ok().filter(|p| *p <= i64::MAX as u64);
        let txid = position(&page.next_txid).ok_or_else(|| bad("next_txid"))?;
        let id = crate::auth::parse_uuid(&page.next_id).ok_or_else(|| bad("next_id"))?;
        let origin = position(&page.origin).ok_or_else(|| bad("origin"))?;
        let cursor = Cursor { txid, id, tables: tables_fingerprint(self.tables.as_deref()), origin };
        // The rows are copied once, as they came; only strings we made (base64url,
        // digits) are spliced around them, so no escaping is needed.
        let tail = format!(r#","cursor":"{}","has_more":{},"checkpoint":"{}"}}"#, cursor.encode(), page.has_more, txid);
        let mut out = Vec::with_capacity(changes.len() + tail.len() + 12);
        out.extend_from_slice(br#"{"changes":"#);
        out.extend_from_slice(changes.as_bytes());
        out.extend_from_slice(tail.as_bytes());
        Ok(out)
    }
}

/// Split a query string into decoded pairs. `+` is a space; bad percent escapes or
/// non-UTF-8 are a 400.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    if query.len() > 8 * 1024 {
        return Err(ApiError::bad_request("invalid_parameter", "the query string is too long"));
    }
    let mut out = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("invalid_parameter", "the query string has a bad percent-escape");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_query_pulls_every_table_from_the_start_with_the_default_limit() {
        let r = PullRequest::from_query("").unwrap();
        assert_eq!(r, PullRequest { tables: None, since: None, limit: DEFAULT_LIMIT, wait: 0 });
        let args = r.rpc_args();
        assert_eq!(args["since_txid"], "0");
        assert_eq!(args["since_id"], NIL_ID);
        assert!(args["tables"].is_null());
    }

    #[test]
    fn tables_are_sorted_deduplicated_and_checked() {
        let r = PullRequest::from_query("tables=entries,%20sync_events,entries&limit=10").unwrap();
        assert_eq!(r.tables.as_deref(), Some(&["entries".to_string(), "sync_events".to_string()][..]));
        assert_eq!(r.limit, 10);
        for bad in ["tables=Entries", "tables=a;drop", "tables=%2C", "tables=x%zz"] {
            let e = PullRequest::from_query(bad).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
        let e = PullRequest::from_query(&format!("tables={}", many.join(","))).unwrap_err();
        assert!(e.message.contains("at most"), "{e:?}");
    }

    #[test]
    fn wait_is_parsed_and_bounded() {
        assert_eq!(PullRequest::from_query("wait=25&limit=3").unwrap().wait, 25);
        assert_eq!(PullRequest::from_query("").unwrap().wait, 0);
        for bad in ["wait=56", "wait=-1", "wait=1&wait=2"] {
            assert_eq!(PullRequest::from_query(bad).unwrap_err().code, "invalid_parameter", "{bad}");
        }
    }

    #[test]
    fn limit_is_bounded() {
        for bad in ["limit=0", "limit=-1", "limit=5001", "limit=ten", "limit=1.5", "limit="] {
            assert_eq!(PullRequest::from_query(bad).unwrap_err().code, "invalid_parameter", "{bad}");
        }
        assert_eq!(PullRequest::from_query("limit=5000").unwrap().limit, 5000);
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        assert!(PullRequest::from_query("sinse=abc").unwrap_err().message.contains("sinse"));
        assert!(PullRequest::from_query("limit=1&limit=2").unwrap_err().message.contains("more than once"));
    }

    #[test]
    fn the_cursor_must_match_the_table_set() {
        let tables = vec!["entries".to_string()];
        let c = Cursor { txid: 5, id: NIL_ID.into(), tables: tables_fingerprint(Some(&tables)), origin: 3 };
        let ok = PullRequest::from_query(&format!("tables=entries&since={}", c.encode())).unwrap();
        assert_eq!(ok.since.as_ref().unwrap().txid, 5);
        assert_eq!(ok.rpc_args()["since_txid"], "5");
        let e = PullRequest::from_query(&format!("since={}", c.encode())).unwrap_err();
        assert_eq!(e.code, "cursor_mismatch");
        let e = PullRequest::from_query(&format!("tables=entries,sync_events&since={}", c.encode())).unwrap_err();
        assert_eq!(e.code, "cursor_mismatch");
        assert_eq!(PullRequest::from_query("since=garbage").unwrap_err().code, "invalid_cursor");
    }

    #[test]
    fn response_carries_an_encoded_cursor_and_checkpoint() {
        let r = PullRequest::from_query("tables=entries").unwrap();
        let answer = json!({
            "changes": {"entries": {"upserted": [{"id": "x"}], "deleted": []}},
            "has_more": true, "next_txid": "42", "next_id": "0A1B2C3D-0000-4000-8000-00000000ABCD", "watermark": "50",
            "origin": "40"
        });
        let body: Value = serde_json::from_slice(&r.response(answer.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(body["has_more"], true);
        assert_eq!(body["checkpoint"], "42");
        assert_eq!(body["changes"]["entries"]["upserted"][0]["id"], "x");
        let c = Cursor::decode(body["cursor"].as_str().unwrap()).unwrap();
        assert_eq!((c.txid, c.id.as_str(), c.origin), (42, "0a1b2c3d-0000-4000-8000-00000000abcd", 40));
        // And that cursor is accepted by the next request for the same tables.
        let next =
            PullRequest::from_query(&format!("tables=entries&since={}", body["cursor"].as_str().unwrap())).unwrap();
        assert_eq!(next.since, Some(c));
    }

    #[test]
    fn malformed_answers_are_upstream_errors() {
        let r = PullRequest::from_query("").unwrap();
        for answer in [
            json!(null),
            json!({"changes": []}),
            json!({"changes": {}, "has_more": true, "next_txid": "x", "next_id": NIL_ID, "origin": "1"}),
            json!({"changes": {}, "has_more": false, "next_txid": "1", "next_id": "nope", "origin": "1"}),
            json!({"changes": {}, "has_more": false, "next_txid": "1", "next_id": NIL_ID}),
            json!({"changes": {}, "has_more": false, "next_txid": "1", "next_id": NIL_ID, "origin": "-1"}),
        ] {
            assert_eq!(r.response(answer.to_string().as_bytes()).unwrap_err().status, 502);
        }
        assert_eq!(r.response(b"not json").unwrap_err().status, 502);
        let ok = r.response(json!({"changes": {"a": {"upserted": [], "deleted": []}}, "has_more": false, "next_txid": "1", "next_id": NIL_ID, "origin": "1"}).to_string().as_bytes());
        let ok: Value = serde_json::from_slice(&ok.unwrap()).unwrap();
        assert_eq!(ok["changes"]["a"]["deleted"], json!([]));
    }

    /// Found by the `sync_query` fuzz target (fuzz/regressions/sync_query/): an answer
    /// whose `origin` (or `next_txid`) is above i64::MAX was turned into a cursor that
    /// `Cursor::decode` refuses, so the client's next pull failed with `invalid_cursor`.
    #[test]
    fn positions_the_cursor_cannot_carry_are_upstream_errors() {
        let r = PullRequest::from_query("tables=entries").unwrap();
        let page = |txid: &str, origin: &str| {
            json!({"changes": {}, "has_more": true, "next_txid": txid, "next_id": NIL_ID, "origin": origin}).to_string()
        };
        for (txid, origin, field) in
            [("3028193781282852157", "16855260271263054336", "origin"), ("9223372036854775808", "1", "next_txid")]
        {
            let e = r.response(page(txid, origin).as_bytes()).unwrap_err();
            assert_eq!((e.status, e.code), (502, "upstream_bad_response"), "{txid} {origin}");
            assert!(e.message.contains(field), "{e:?}");
        }
        let max = i64::MAX.to_string();
        let body: Value = serde_json::from_slice(&r.response(page(&max, &max).as_bytes()).unwrap()).unwrap();
        let c = Cursor::decode(body["cursor"].as_str().unwrap()).unwrap();
        assert_eq!((c.txid, c.origin), (i64::MAX as u64, i64::MAX as u64));
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query("a=b+c&d=%41&e").unwrap(),
            vec![("a".into(), "b c".into()), ("d".into(), "A".into()), ("e".into(), "".into())]
        );
        assert!(parse_query("a=%4").is_err());
        assert!(parse_query("a=%ff").is_err());
    }
}
