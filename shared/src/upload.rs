//! `POST /upload`: validate the client's outbox batch, build the `edgesync_push` RPC
//! arguments, and shape its answer (SPEC §6, §6a).
//!
//! Shape errors are caught here, all of them at once, one per mutation, before any
//! database work. Errors that need the catalog (unknown table or column, a value the
//! column's type refuses, another user's row) come back from `edgesync_push`, which
//! rejects the whole batch the same way. Either way nothing of a bad batch is written.

use serde_json::{json, Map, Value};
use std::collections::HashSet;

use crate::auth::parse_uuid;
use crate::cursor::Cursor;
use crate::sync::valid_table_name;
use crate::ApiError;

/// The RPC behind `/upload`.
pub const PUSH_RPC: &str = "edgesync_push";
/// The most mutations in one batch.
pub const MAX_MUTATIONS: usize = 1000;
/// The largest request body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A validated batch, ready for the database.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadBatch {
    pub client_id: String,
    /// Normalised mutations: `{op_id, op, type, id, data, base_txid?, base_id?}`.
    pub mutations: Vec<Value>,
}

impl UploadBatch {
    /// Parse and check a request body for the signed-in `user_id`.
    pub fn parse(body: &[u8], user_id: &str) -> Result<UploadBatch, ApiError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(too_large_body(body.len()));
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")))?;
        let Value::Object(mut top) = value else {
            return Err(ApiError::bad_request("invalid_request", "the body must be a JSON object"));
        };
        let client_id = top
            .get("client_id")
            .and_then(Value::as_str)
            .and_then(parse_uuid)
            .ok_or_else(|| ApiError::bad_request("invalid_request", "`client_id` must be a UUID string"))?;
        let Some(Value::Array(raw)) = top.remove("mutations") else {
            return Err(ApiError::bad_request("invalid_request", "`mutations` must be an array"));
        };
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
        let mut seen = HashSet::new();
        let mut mutations = Vec::with_capacity(raw.len());
        for (index, m) in raw.into_iter().enumerate() {
            match check_mutation(index, m, user_id, &mut seen) {
                Ok(m) => mutations.push(m),
                Err(problem) => {
                    other_user |= problem.code == "user_id_mismatch";
                    errors.push(problem.to_json());
                }
            }
        }
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
        Ok(UploadBatch { client_id, mutations })
    }

    pub fn rpc_args(&self) -> Value {
        json!({ "client_id": self.client_id, "mutations": self.mutations })
    }

    /// The `/upload` response from the RPC's answer. `write_checkpoint` is one past
    /// the pushing transaction's id: a `/sync` whose `checkpoint` has reached it
    /// contains this batch's writes.
    pub fn response(&self, answer: Value) -> Result<Value, ApiError> {
        let bad =
            |what: &str| ApiError::bad_gateway("upstream_bad_response", format!("the push answer has no valid {what}"));
        let results = answer.get("results").filter(|r| r.is_array()).ok_or_else(|| bad("results"))?;
        let last_op_id = answer.get("last_op_id").filter(|v| v.is_u64()).ok_or_else(|| bad("last_op_id"))?;
        let checkpoint: u64 = answer
            .get("checkpoint")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("checkpoint"))?;
        Ok(json!({
            "results": results,
            "last_op_id": last_op_id,
            "write_checkpoint": (checkpoint + 1).to_string(),
        }))
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

fn check_mutation(index: usize, m: Value, user_id: &str, seen: &mut HashSet<u64>) -> Result<Value, Problem> {
    let op_id_value = m.get("op_id").cloned().unwrap_or(Value::Null);
    let fail = |code: &'static str, message: String| Problem { index, op_id: op_id_value.clone(), code, message };
    let Value::Object(mut m) = m else {
        return Err(fail("invalid_mutation", "a mutation must be a JSON object".into()));
    };
    let op_id = match m.get("op_id").and_then(Value::as_u64) {
        Some(n) if n >= 1 && n <= i64::MAX as u64 => n,
        _ => return Err(fail("invalid_op_id", "op_id must be a positive integer".into())),
    };
    if !seen.insert(op_id) {
        return Err(fail("duplicate_op_id", format!("op_id {op_id} appears twice in this batch")));
    }
    let op = match m.get("op").and_then(Value::as_str).map(str::to_ascii_uppercase) {
        Some(op) if matches!(op.as_str(), "PUT" | "PATCH" | "DELETE") => op,
        _ => return Err(fail("invalid_op", "op must be PUT, PATCH or DELETE".into())),
    };
    let table = match m.get("type").and_then(Value::as_str) {
        Some(t) if valid_table_name(t) => t.to_owned(),
        _ => return Err(fail("invalid_type", "type must name a synced table".into())),
    };
    let id = m
        .get("id")
        .and_then(Value::as_str)
        .and_then(parse_uuid)
        .ok_or_else(|| fail("invalid_id", "id must be a UUID string".into()))?;
    // PowerSync's CrudEntry calls it `data`; its wire form `opData`.
    let data = match m.remove("data").or_else(|| m.remove("opData")) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(d)) => d,
        Some(_) => return Err(fail("invalid_data", "data must be a JSON object".into())),
    };
    // Postgres text and jsonb cannot hold U+0000: the database would refuse the batch
    // with an error that is not about a mutation.
    if crate::object_has_nul(&data) {
        return Err(fail(
            "invalid_value",
            "data contains the NUL character (U+0000), which the database cannot store".into(),
        ));
    }
    if let Some(named) = data.get("user_id") {
        if named.as_str().and_then(parse_uuid).as_deref() != Some(user_id) {
            return Err(fail("user_id_mismatch", "data.user_id names another user; leave it out".into()));
        }
    }
    if let Some(named) = data.get("id") {
        if named.as_str().and_then(parse_uuid).as_deref() != Some(id.as_str()) {
            return Err(fail("id_mismatch", "data.id differs from the mutation's id".into()));
        }
    }
    let mut out = json!({ "op_id": op_id, "op": op, "type": table, "id": id, "data": data });
    match m.get("base_cursor") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            let base = Cursor::decode(s).map_err(|e| fail("invalid_base_cursor", e.message))?;
            out["base_txid"] = json!(base.txid.to_string());
            out["base_id"] = json!(base.id);
        }
        Some(_) => return Err(fail("invalid_base_cursor", "base_cursor must be a cursor string".into())),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::NIL_ID;

    const USER: &str = "11111111-1111-4111-8111-111111111111";
    const CLIENT: &str = "22222222-2222-4222-8222-222222222222";
    const ROW: &str = "33333333-3333-4333-8333-333333333333";

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
        assert_eq!(
            b.mutations[1],
            json!({"op_id": 2, "op": "PATCH", "type": "entries", "id": ROW, "data": {"title": "b"}})
        );
        assert_eq!(b.mutations[2]["data"], json!({}));
        assert_eq!(b.rpc_args()["mutations"].as_array().unwrap().len(), 3);
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
            (b.mutations[0]["base_txid"].as_str(), b.mutations[0]["base_id"].as_str()),
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
        let b = UploadBatch::parse(&batch(json!([])), USER).unwrap();
        let r = b
            .response(json!({"results": [{"op_id": 1, "status": "applied"}], "last_op_id": 1, "checkpoint": "900"}))
            .unwrap();
        assert_eq!(
            r,
            json!({"results": [{"op_id": 1, "status": "applied"}], "last_op_id": 1, "write_checkpoint": "901"})
        );
        assert_eq!(b.response(json!({"results": [], "last_op_id": 1})).unwrap_err().status, 502);
    }
}
