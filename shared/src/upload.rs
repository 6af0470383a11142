//! `POST /upload`: validate the client's outbox batch, build the `edgesync_push` RPC
//! arguments, and shape its answer (README.md "Push").
//!
//! Shape errors are caught here, all of them at once, one per mutation, before any
//! database work. Errors that need the catalog (unknown table or column, a value the
//! column's type refuses, another user's row) come back from `edgesync_push`, which
//! rejects the whole batch the same way. Either way nothing of a bad batch is written.

use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fmt::Write;

use crate::auth::parse_uuid;
use crate::cursor::Cursor;
use crate::raw_json::{self, as_str, fields, non_null};
use crate::sync::valid_table_name;
use crate::ApiError;

/// The RPC behind `/upload`.
pub const PUSH_RPC: &str = "edgesync_push";
/// The most mutations in one batch.
pub const MAX_MUTATIONS: usize = 1000;
/// The largest request body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A validated batch, ready for the database.
///
/// The mutations are not kept as `Value` trees: each one's `data` is passed on as the
/// JSON text it arrived as (checked, never rebuilt), spliced into the RPC's arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadBatch {
    pub client_id: String,
    /// How many mutations the batch holds.
    pub len: usize,
    /// The `edgesync_push` arguments as JSON text: `{client_id, mutations}`, each
    /// mutation normalised to `{op_id, op, type, id, data, base_txid?, base_id?}`.
    args: String,
}

impl UploadBatch {
    /// Parse and check a request body for the signed-in `user_id`.
    pub fn parse(body: &[u8], user_id: &str) -> Result<UploadBatch, ApiError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(too_large_body(body.len()));
        }
        let invalid_json = |e: &dyn std::fmt::Display| {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
        };
        let text = std::str::from_utf8(body).map_err(|e| invalid_json(&e))?;
        // Reading the two fields validates the whole text (without building anything).
        // Nesting is then checked in one pass, since Postgres would refuse deep `jsonb`.
        let top = fields(text, ["client_id", "mutations"]);
        let scan = raw_json::scan(body);
        if scan.max_depth > raw_json::MAX_DEPTH {
            return Err(invalid_json(&format_args!("nested deeper than {} levels", raw_json::MAX_DEPTH)));
        }
        let [client_id, mutations] = top.map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                ApiError::bad_request("invalid_request", "the body must be a JSON object")
            }
            _ => invalid_json(&e),
        })?;
        let client_id = client_id
            .and_then(as_str)
            .and_then(|s| parse_uuid(&s))
            .ok_or_else(|| ApiError::bad_request("invalid_request", "`client_id` must be a UUID string"))?;
        let raw: Vec<&RawValue> = mutations
            .filter(|m| m.get().starts_with('['))
            .and_then(|m| serde_json::from_str(m.get()).ok())
            .ok_or_else(|| ApiError::bad_request("invalid_request", "`mutations` must be an array"))?;
        if raw.len() > MAX_MUTATIONS {
            return Err(ApiError::new(
                413,
                "too_many_mutations",
                format!("{} mutations in one batch; the limit is {MAX_MUTATIONS}: split the outbox", raw.len()),
            )
            .with_details(json!({ "max_mutations": MAX_MUTATIONS })));
        }

        let mut errors = Vec::new();
        let mut other_user = false;
        let mut seen = HashSet::with_capacity(raw.len());
        let mut args = String::with_capacity(body.len() + 64 * raw.len() + 64);
        let _ = write!(args, r#"{{"client_id":"{client_id}","mutations":["#);
        for (index, m) in raw.iter().enumerate() {
            let check = Check { index, user_id, may_have_nul: scan.has_nul };
            match check.mutation(m, &mut seen) {
                Ok(m) if errors.is_empty() => {
                    if index > 0 {
                        args.push(',');
                    }
                    m.write(&mut args);
                }
                Ok(_) => {}
                Err(problem) => {
                    other_user |= problem.code == "user_id_mismatch";
                    errors.push(problem.to_json());
                }
            }
        }
        args.push_str("]}");
        if !errors.is_empty() {
            let details = json!({ "errors": errors });
            return Err(if other_user {
                ApiError::forbidden("user_id_mismatch", "a mutation names another user; user_id comes from your token")
                    .with_details(details)
            } else {
                ApiError::bad_request(
                    "invalid_mutations",
                    format!("{} invalid mutation(s); nothing was applied", errors.len()),
                )
                .with_details(details)
            });
        }
        Ok(UploadBatch { client_id, len: raw.len(), args })
    }

    /// The `edgesync_push` arguments, as JSON text.
    pub fn rpc_args(&self) -> &str {
        &self.args
    }

    /// [`UploadBatch::rpc_args`], without a copy.
    pub fn into_rpc_args(self) -> String {
        self.args
    }

    /// The `/upload` response from the RPC's answer. `write_checkpoint` is one past
    /// the pushing transaction's sync position: a `/sync` whose `checkpoint` has reached it
    /// contains this batch's writes. The per-mutation results are passed on as they came.
    pub fn response(answer: &[u8]) -> Result<Vec<u8>, ApiError> {
        #[derive(serde::Deserialize)]
        struct Answer<'a> {
            #[serde(borrow)]
            results: &'a RawValue,
            last_op_id: u64,
            checkpoint: String,
        }
        let bad =
            |what: &str| ApiError::bad_gateway("upstream_bad_response", format!("the push answer has no valid {what}"));
        if !answer.trim_ascii_start().starts_with(b"{") {
            return Err(bad("results"));
        }
        let answer: Answer = serde_json::from_slice(answer).map_err(|_| bad("results, last_op_id or checkpoint"))?;
        if !answer.results.get().starts_with('[') {
            return Err(bad("results"));
        }
        let checkpoint: u64 = answer.checkpoint.parse().map_err(|_| bad("checkpoint"))?;
        let results = answer.results.get();
        let mut out = Vec::with_capacity(results.len() + 80);
        out.extend_from_slice(br#"{"results":"#);
        out.extend_from_slice(results.as_bytes());
        let _ = write!(
            Tail(&mut out),
            r#","last_op_id":{},"write_checkpoint":"{}"}}"#,
            answer.last_op_id,
            checkpoint.saturating_add(1)
        );
        Ok(out)
    }
}

/// `write!` into a byte buffer.
struct Tail<'a>(&'a mut Vec<u8>);

impl Write for Tail<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// 413 for a body over [`MAX_BODY_BYTES`] (also used before reading it, from
/// `Content-Length`).
pub fn too_large_body(len: usize) -> ApiError {
    ApiError::new(
        413,
        "body_too_large",
        format!("the body is {len} bytes; the limit is {MAX_BODY_BYTES}: split the outbox"),
    )
    .with_details(json!({ "max_bytes": MAX_BODY_BYTES }))
}

struct Problem {
    index: usize,
    op_id: Value,
    code: &'static str,
    message: String,
}

impl Problem {
    fn to_json(&self) -> Value {
        json!({ "index": self.index, "op_id": self.op_id, "code": self.code, "message": self.message })
    }
}

/// A checked mutation: everything it says, normalised, with `data` as it came.
struct Mutation<'a> {
    op_id: u64,
    op: &'static str,
    table: std::borrow::Cow<'a, str>,
    id: String,
    data: &'a str,
    base: Option<Cursor>,
}

impl Mutation<'_> {
    /// As the RPC takes it. `type` is an identifier and `id` a UUID (checked), the
    /// data is valid JSON text: nothing needs escaping.
    fn write(&self, out: &mut String) {
        let _ = write!(
            out,
            r#"{{"op_id":{},"op":"{}","type":"{}","id":"{}","data":{}"#,
            self.op_id, self.op, self.table, self.id, self.data
        );
        if let Some(base) = &self.base {
            let _ = write!(out, r#","base_txid":"{}","base_id":"{}""#, base.txid, base.id);
        }
        out.push('}');
    }
}

/// Checking one mutation of a batch.
struct Check<'u> {
    index: usize,
    user_id: &'u str,
    /// Whether the body has a `\u0000` anywhere (if not, no part of it needs looking at).
    may_have_nul: bool,
}

impl Check<'_> {
    fn mutation<'a>(&self, m: &'a RawValue, seen: &mut HashSet<u64>) -> Result<Mutation<'a>, Problem> {
        const NAMES: [&str; 7] = ["op_id", "op", "type", "id", "data", "opData", "base_cursor"];
        let [op_id, op, table, id, data, op_data, base_cursor] = fields(m.get(), NAMES).unwrap_or_default();
        // The op_id as it was sent, to name the mutation in an error.
        let op_id_value = op_id.and_then(|v| serde_json::from_str(v.get()).ok()).unwrap_or(Value::Null);
        let fail = |code: &'static str, message: String| Problem {
            index: self.index,
            op_id: op_id_value.clone(),
            code,
            message,
        };
        if !m.get().starts_with('{') {
            return Err(fail("invalid_mutation", "a mutation must be a JSON object".into()));
        }
        let op_id = match op_id.and_then(|v| serde_json::from_str::<u64>(v.get()).ok()) {
            Some(n) if n >= 1 && n <= i64::MAX as u64 => n,
            _ => return Err(fail("invalid_op_id", "op_id must be a positive integer".into())),
        };
        if !seen.insert(op_id) {
            return Err(fail("duplicate_op_id", format!("op_id {op_id} appears twice in this batch")));
        }
        let op = match op.and_then(as_str) {
            Some(op) if op.eq_ignore_ascii_case("PUT") => "PUT",
            Some(op) if op.eq_ignore_ascii_case("PATCH") => "PATCH",
            Some(op) if op.eq_ignore_ascii_case("DELETE") => "DELETE",
            _ => return Err(fail("invalid_op", "op must be PUT, PATCH or DELETE".into())),
        };
        let table = match table.and_then(as_str) {
            Some(t) if valid_table_name(&t) => t,
            _ => return Err(fail("invalid_type", "type must name a synced table".into())),
        };
        let id = id
            .and_then(as_str)
            .and_then(|s| parse_uuid(&s))
            .ok_or_else(|| fail("invalid_id", "id must be a UUID string".into()))?;
        // PowerSync's CrudEntry calls it `data`; its wire form `opData`.
        let data = match non_null(data).or(non_null(op_data)) {
            None => "{}",
            Some(d) if d.get().starts_with('{') => d.get(),
            Some(_) => return Err(fail("invalid_data", "data must be a JSON object".into())),
        };
        // Postgres text and jsonb cannot hold U+0000: the database would refuse the batch
        // with an error that is not about a mutation.
        if self.may_have_nul && raw_json::scan(data.as_bytes()).has_nul {
            return Err(fail(
                "invalid_value",
                "data contains the NUL character (U+0000), which the database cannot store".into(),
            ));
        }
        let [named_user, named_id] = fields(data, ["user_id", "id"]).unwrap_or_default();
        let names = |named: Option<&RawValue>, expected: &str| {
            named.is_none_or(|v| as_str(v).and_then(|s| parse_uuid(&s)).as_deref() == Some(expected))
        };
        if !names(named_user, self.user_id) {
            return Err(fail("user_id_mismatch", "data.user_id names another user; leave it out".into()));
        }
        if !names(named_id, &id) {
            return Err(fail("id_mismatch", "data.id differs from the mutation's id".into()));
        }
        let base = match non_null(base_cursor) {
            None => None,
            Some(c) => match as_str(c) {
                Some(s) => Some(Cursor::decode(&s).map_err(|e| fail("invalid_base_cursor", e.message))?),
                None => return Err(fail("invalid_base_cursor", "base_cursor must be a cursor string".into())),
            },
        };
        Ok(Mutation { op_id, op, table, id, data, base })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::NIL_ID;

    const USER: &str = "11111111-1111-4111-8111-111111111111";
    const CLIENT: &str = "22222222-2222-4222-8222-222222222222";
    const ROW: &str = "33333333-3333-4333-8333-333333333333";

    fn args(b: &UploadBatch) -> Value {
        serde_json::from_str(b.rpc_args()).expect("the RPC arguments are JSON")
    }

    fn batch(mutations: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({ "client_id": CLIENT, "mutations": mutations })).unwrap()
    }

    #[test]
    fn a_powersync_crud_batch_is_accepted_and_normalised() {
        let body = batch(json!([
            {"op_id": 1, "op": "PUT", "type": "entries", "id": ROW, "tx_id": 7, "data": {"title": "a", "user_id": USER}},
            {"op_id": 2, "op": "patch", "type": "entries", "id": ROW.to_uppercase(), "opData": {"title": "b"}},
            {"op_id": 3, "op": "DELETE", "type": "entries", "id": ROW}
        ]));
        let b = UploadBatch::parse(&body, USER).unwrap();
        assert_eq!(b.client_id, CLIENT);
        let args = args(&b);
        assert_eq!(args["client_id"], CLIENT);
        assert_eq!(
            args["mutations"][0],
            json!({"op_id": 1, "op": "PUT", "type": "entries", "id": ROW, "data": {"title": "a", "user_id": USER}})
        );
        assert_eq!(
            args["mutations"][1],
            json!({"op_id": 2, "op": "PATCH", "type": "entries", "id": ROW, "data": {"title": "b"}})
        );
        assert_eq!(args["mutations"][2]["data"], json!({}));
        assert_eq!((b.len, args["mutations"].as_array().unwrap().len()), (3, 3));
    }

    #[test]
    fn base_cursor_becomes_a_position() {
        let c = Cursor { txid: 77, id: NIL_ID.into(), tables: 0, origin: 0 }.encode();
        let b = UploadBatch::parse(
            &batch(json!([{"op_id": 1, "op": "PUT", "type": "t", "id": ROW, "base_cursor": c}])),
            USER,
        )
        .unwrap();
        assert_eq!(
            (args(&b)["mutations"][0]["base_txid"].as_str(), args(&b)["mutations"][0]["base_id"].as_str()),
            (Some("77"), Some(NIL_ID))
        );
        let e = UploadBatch::parse(
            &batch(json!([{"op_id": 1, "op": "PUT", "type": "t", "id": ROW, "base_cursor": "junk"}])),
            USER,
        )
        .unwrap_err();
        assert_eq!(e.details.unwrap()["errors"][0]["code"], "invalid_base_cursor");
    }

    #[test]
    fn every_bad_mutation_is_reported_at_once() {
        let body = batch(json!([
            {"op_id": 0, "op": "PUT", "type": "t", "id": ROW},
            {"op_id": 2, "op": "UPSERT", "type": "t", "id": ROW},
            {"op_id": 3, "op": "PUT", "type": "Bad-Name", "id": ROW},
            {"op_id": 4, "op": "PUT", "type": "t", "id": "not-a-uuid"},
            {"op_id": 5, "op": "PUT", "type": "t", "id": ROW, "data": [1]},
            {"op_id": 5, "op": "PUT", "type": "t", "id": ROW},
            {"op_id": "6", "op": "PUT", "type": "t", "id": ROW},
            {"op_id": 7, "op": "PUT", "type": "t", "id": ROW, "data": {"id": "44444444-4444-4444-8444-444444444444"}},
            "nope",
            {"op_id": 9, "op": "PUT", "type": "t", "id": ROW}
        ]));
        let e = UploadBatch::parse(&body, USER).unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_mutations"));
        let codes: Vec<&str> = e.details.as_ref().unwrap()["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["code"].as_str().unwrap())
            .collect();
        assert_eq!(
            codes,
            [
                "invalid_op_id",
                "invalid_op",
                "invalid_type",
                "invalid_id",
                "invalid_data",
                "duplicate_op_id",
                "invalid_op_id",
                "id_mismatch",
                "invalid_mutation"
            ]
        );
        assert_eq!(e.details.unwrap()["errors"][8]["index"], 8);
    }

    #[test]
    fn nul_characters_in_data_are_refused_here_not_by_the_database() {
        // As it arrives on the wire: JSON escapes.
        let mutations: Value = serde_json::from_str(&format!(
            r#"[{{"op_id": 1, "op": "PUT", "type": "t", "id": "{ROW}", "data": {{"title\u0000": "v"}}}},
                {{"op_id": 2, "op": "PUT", "type": "t", "id": "{ROW}", "data": {{"title": "a\u0000b"}}}},
                {{"op_id": 3, "op": "PATCH", "type": "t", "id": "{ROW}", "data": {{"tags": ["ok", {{"k\u0000": 1}}]}}}},
                {{"op_id": 4, "op": "PUT", "type": "t", "id": "{ROW}", "data": {{"title": "fine", "n": [1, {{"k": "\u0001"}}]}}}}]"#
        ))
        .unwrap();
        let body = batch(mutations);
        let e = UploadBatch::parse(&body, USER).unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_mutations"));
        let errors = e.details.unwrap()["errors"].clone();
        let found: Vec<(u64, &str)> = errors
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x["op_id"].as_u64().unwrap(), x["code"].as_str().unwrap()))
            .collect();
        assert_eq!(found, [(1, "invalid_value"), (2, "invalid_value"), (3, "invalid_value")]);
    }

    #[test]
    fn naming_another_user_is_forbidden() {
        let body = batch(
            json!([{"op_id": 1, "op": "PUT", "type": "t", "id": ROW, "data": {"user_id": "99999999-9999-4999-8999-999999999999"}}]),
        );
        let e = UploadBatch::parse(&body, USER).unwrap_err();
        assert_eq!((e.status, e.code), (403, "user_id_mismatch"));
        let body = batch(json!([{"op_id": 1, "op": "PUT", "type": "t", "id": ROW, "data": {"user_id": 5}}]));
        assert_eq!(UploadBatch::parse(&body, USER).unwrap_err().status, 403);
    }

    #[test]
    fn envelope_errors() {
        for (body, code) in [
            (&b"{"[..], "invalid_json"),
            (b"[]", "invalid_request"),
            (br#"{"client_id": "x", "mutations": []}"#, "invalid_request"),
            (br#"{"client_id": "22222222-2222-4222-8222-222222222222"}"#, "invalid_request"),
            (br#"{"client_id": "22222222-2222-4222-8222-222222222222", "mutations": {}}"#, "invalid_request"),
        ] {
            let e = UploadBatch::parse(body, USER).unwrap_err();
            assert_eq!((e.status, e.code), (400, code), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn limits_answer_413() {
        let many: Vec<Value> = (1..=MAX_MUTATIONS as u64 + 1)
            .map(|i| json!({"op_id": i, "op": "DELETE", "type": "t", "id": ROW}))
            .collect();
        let e = UploadBatch::parse(&batch(Value::Array(many)), USER).unwrap_err();
        assert_eq!((e.status, e.code), (413, "too_many_mutations"));
        let e = UploadBatch::parse(&vec![b' '; MAX_BODY_BYTES + 1], USER).unwrap_err();
        assert_eq!((e.status, e.code), (413, "body_too_large"));
    }

    #[test]
    fn response_shape() {
        let answer = |v: Value| v.to_string().into_bytes();
        let r = UploadBatch::response(&answer(
            json!({"results": [{"op_id": 1, "status": "applied"}], "last_op_id": 1, "checkpoint": "900"}),
        ))
        .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&r).unwrap(),
            json!({"results": [{"op_id": 1, "status": "applied"}], "last_op_id": 1, "write_checkpoint": "901"})
        );
        for bad in [
            json!({"results": [], "last_op_id": 1}),
            json!({"results": {}, "last_op_id": 1, "checkpoint": "1"}),
            json!({"results": [], "last_op_id": -1, "checkpoint": "1"}),
            json!({"results": [], "last_op_id": 1, "checkpoint": "x"}),
            json!([]),
        ] {
            assert_eq!(UploadBatch::response(&answer(bad.clone())).unwrap_err().status, 502, "{bad}");
        }
        assert_eq!(UploadBatch::response(b"not json").unwrap_err().status, 502);
    }
}
