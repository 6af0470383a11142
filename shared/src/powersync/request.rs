//! The request side of `POST /sync/stream`: the body (design §1.2), the buckets it
//! names, where each of them resumes, the checkpoint floor, and the `Token` scheme of
//! the `Authorization` header (§1.1).

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet};

use super::op_id::{floor_from_after, parse_op_id};
use crate::sync::valid_table_name;
use crate::ApiError;

/// The largest request body. A client sends one entry per bucket it holds (one per
/// synced table), so real bodies are a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// The most buckets one request may list.
pub const MAX_BUCKETS: usize = 1000;
/// The longest bucket name accepted. edgesync's are at most 100 bytes
/// (`<63-byte table>:<36-byte uuid>`); names another server handed out may be longer,
/// and are accepted (then ignored) up to this size.
pub const MAX_BUCKET_NAME_BYTES: usize = 1024;
/// The longest `client_id` accepted (the SDK sends a UUID).
pub const MAX_CLIENT_ID_BYTES: usize = 256;

/// One entry of the request's `buckets`: a bucket the client holds, and the last op id
/// it received of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRequest {
    pub name: String,
    pub after: u64,
}

/// A parsed `POST /sync/stream` body, the core's `StreamingSyncRequest`.
///
/// `parameters`, `streams` and `app_metadata` mean nothing to edgesync (no sync rules,
/// no sync streams; design R15): they are accepted and ignored, as is any field this
/// version does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamingSyncRequest {
    pub buckets: Vec<BucketRequest>,
    /// Absent means `true`. edgesync always sends checksums.
    pub include_checksum: bool,
    /// Absent means `false`. edgesync always sends a PUT's data as a JSON string.
    pub raw_data: bool,
    /// Absent means `false`. edgesync never sends BSON.
    pub binary_data: bool,
    /// The PowerSync client id, for the log only.
    pub client_id: Option<String>,
    /// Whether `parameters` carried anything besides `{}` or `null`: worth a log line,
    /// since the app may expect them to filter its data, and they do not.
    pub has_parameters: bool,
}

/// 413 for a body over [`MAX_REQUEST_BYTES`] (also used before reading it, from
/// `Content-Length`).
pub fn too_large_request(len: usize) -> ApiError {
    ApiError::new(
        413,
        "body_too_large",
        format!("the body is {len} bytes; a sync stream request is at most {MAX_REQUEST_BYTES}"),
    )
    .with_details(json!({ "max_bytes": MAX_REQUEST_BYTES }))
}

impl StreamingSyncRequest {
    /// Parse and check a request body.
    pub fn parse(body: &[u8]) -> Result<StreamingSyncRequest, ApiError> {
        #[derive(Deserialize)]
        struct Wire<'a> {
            #[serde(default)]
            buckets: Option<Vec<WireBucket<'a>>>,
            #[serde(default)]
            include_checksum: Option<bool>,
            #[serde(default)]
            raw_data: Option<bool>,
            #[serde(default)]
            binary_data: Option<bool>,
            #[serde(default)]
            client_id: Option<String>,
            #[serde(default, borrow)]
            parameters: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct WireBucket<'a> {
            name: String,
            #[serde(borrow)]
            after: &'a RawValue,
        }

        if body.len() > MAX_REQUEST_BYTES {
            return Err(too_large_request(body.len()));
        }
        let wire: Wire = serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::bad_request(
                "invalid_request",
                format!("the body is not a sync stream request ({{\"buckets\": [{{\"name\", \"after\"}}], …}}): {e}"),
            ),
            _ => ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")),
        })?;
        if !super::is_json_object(body) {
            return Err(ApiError::bad_request("invalid_request", "the body must be a JSON object"));
        }
        let wire_buckets = wire.buckets.unwrap_or_default();
        if wire_buckets.len() > MAX_BUCKETS {
            return Err(ApiError::bad_request(
                "too_many_buckets",
                format!("{} buckets in one request; the limit is {MAX_BUCKETS}", wire_buckets.len()),
            )
            .with_details(json!({ "max_buckets": MAX_BUCKETS })));
        }
        let mut seen = BTreeSet::new();
        let mut buckets = Vec::with_capacity(wire_buckets.len());
        for (i, b) in wire_buckets.into_iter().enumerate() {
            if b.name.len() > MAX_BUCKET_NAME_BYTES {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("`buckets[{i}].name` is longer than {MAX_BUCKET_NAME_BYTES} bytes"),
                ));
            }
            let after = b.after.get().strip_prefix('"').and_then(|t| t.strip_suffix('"')).and_then(parse_op_id);
            let after = after.ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_request",
                    format!("`buckets[{i}].after` must be an op id as a decimal string, like \"0\""),
                )
            })?;
            if !seen.insert(b.name.clone()) {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("`buckets[{i}]` names a bucket listed before; each bucket is listed once"),
                ));
            }
            buckets.push(BucketRequest { name: b.name, after });
        }
        if wire.client_id.as_ref().is_some_and(|c| c.len() > MAX_CLIENT_ID_BYTES) {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("`client_id` is longer than {MAX_CLIENT_ID_BYTES} bytes"),
            ));
        }
        let has_parameters = wire.parameters.is_some_and(|p| {
            let text = p.get();
            !(text == "null" || text.strip_prefix('{').and_then(|t| t.strip_suffix('}')).is_some_and(is_blank))
        });
        Ok(StreamingSyncRequest {
            buckets,
            include_checksum: wire.include_checksum.unwrap_or(true),
            raw_data: wire.raw_data.unwrap_or(false),
            binary_data: wire.binary_data.unwrap_or(false),
            client_id: wire.client_id,
            has_parameters,
        })
    }

    /// Where the stream of `user_id` resumes each bucket, and its checkpoint floor.
    ///
    /// Buckets named `<table>:<user_id>` resume from their `after`. Any other name
    /// (another user's bucket, a table that is not synced, a name another server handed
    /// out) is ignored: the first checkpoint does not list it, so the client deletes it.
    ///
    /// `synced` is the set of synced tables when the caller knows it; then
    /// [`Resume::after`] holds exactly those tables, with 0 for the ones the request does
    /// not name. With `None` the first checkpoint decides: every well-formed bucket of
    /// this user is kept, and [`super::StreamLoop`] looks up only the checkpoint's tables.
    ///
    /// The floor is the largest [`floor_from_after`] over the buckets kept: each such
    /// `after` is at most a `last_op_id` this server handed out, so its watermark is
    /// valid (design §2.4). Ignored buckets do not count: their `after` may come from
    /// anywhere.
    pub fn resume(&self, user_id: &str, synced: Option<&[&str]>) -> Resume {
        let mut after: BTreeMap<String, u64> = match synced {
            Some(tables) => tables.iter().map(|t| (t.to_string(), 0)).collect(),
            None => BTreeMap::new(),
        };
        let (mut floor, mut ignored) = (0, 0);
        for b in &self.buckets {
            let table = match b.name.split_once(':') {
                Some((table, user)) if user == user_id && valid_table_name(table) => table,
                _ => {
                    ignored += 1;
                    continue;
                }
            };
            let slot = match synced {
                Some(_) => after.get_mut(table),
                None => Some(after.entry(table.to_owned()).or_insert(0)),
            };
            match slot {
                Some(slot) => {
                    *slot = b.after;
                    floor = floor.max(floor_from_after(b.after));
                }
                None => ignored += 1,
            }
        }
        Resume { after, floor, ignored }
    }
}

fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// Where a stream starts: per table, the op id the client holds up to, and the floor
/// of its first checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resume {
    /// Per table, the `after` of the client's bucket, 0 when it holds none.
    pub after: BTreeMap<String, u64>,
    /// The smallest watermark the stream's first checkpoint may have (0: none).
    pub floor: u64,
    /// How many of the request's buckets were ignored (for the log).
    pub ignored: usize,
}

impl Resume {
    /// The op id the client holds `table` up to; 0 for a bucket it does not have.
    pub fn after(&self, table: &str) -> u64 {
        self.after.get(table).copied().unwrap_or(0)
    }
}

/// The name of the bucket of `user`'s rows of `table` (design §2.1).
pub fn bucket_name(table: &str, user: &str) -> String {
    format!("{table}:{user}")
}

/// The token of a PowerSync route's `Authorization` header. The SDKs send
/// `Token <jwt>` (§1.1); `Bearer <jwt>` is accepted too, like on every other route.
/// The scheme is case-insensitive. Verify the token with [`crate::jwt`].
pub fn powersync_token(header: Option<&str>) -> Result<&str, ApiError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or_else(|| {
        ApiError::unauthorized("missing_token", "an Authorization: Token <jwt> (or Bearer <jwt>) header is required")
    })?;
    let bad_scheme =
        || ApiError::unauthorized("invalid_token", "the Authorization header must be `Token <jwt>` or `Bearer <jwt>`");
    let (scheme, token) = header.split_once(' ').ok_or_else(bad_scheme)?;
    if !(scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer")) {
        return Err(bad_scheme());
    }
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(bad_scheme());
    }
    if token.len() > crate::jwt::MAX_TOKEN_LEN {
        return Err(ApiError::unauthorized(
            "invalid_token",
            format!("the token is longer than {} bytes", crate::jwt::MAX_TOKEN_LEN),
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "6f1c0000-0000-4000-8000-000000000001";
    const V: &str = "7a2d0000-0000-4000-8000-000000000002";

    fn parse(body: &str) -> Result<StreamingSyncRequest, ApiError> {
        StreamingSyncRequest::parse(body.as_bytes())
    }

    #[test]
    fn the_sdks_request_body_parses_and_its_extras_are_ignored() {
        let body = format!(
            r#"{{"buckets":[{{"name":"entries:{U}","after":"281474976710656"}},{{"name":"notes:{U}","after":"0"}}],
              "include_checksum":true,"raw_data":true,"binary_data":true,"client_id":"c-1",
              "parameters":{{}},"streams":{{"include_defaults":true,"subscriptions":[]}},
              "app_metadata":{{"app":"x"}},"something_new":[1,{{"a":null}}]}}"#
        );
        let r = parse(&body).unwrap();
        assert_eq!(
            r.buckets,
            vec![
                BucketRequest { name: format!("entries:{U}"), after: 281_474_976_710_656 },
                BucketRequest { name: format!("notes:{U}"), after: 0 },
            ]
        );
        assert!(r.include_checksum && r.raw_data && r.binary_data);
        assert_eq!(r.client_id.as_deref(), Some("c-1"));
        assert!(!r.has_parameters);
    }

    #[test]
    fn a_minimal_body_means_no_buckets_with_the_protocol_defaults() {
        let r = parse("{}").unwrap();
        assert!(r.buckets.is_empty());
        assert!(r.include_checksum && !r.raw_data && !r.binary_data);
        assert_eq!(r.client_id, None);
        assert!(parse(r#"{"buckets":null}"#).unwrap().buckets.is_empty());
    }

    #[test]
    fn parameters_that_say_something_are_flagged_for_the_log() {
        assert!(parse(r#"{"parameters":{"team":"a"}}"#).unwrap().has_parameters);
        assert!(!parse(r#"{"parameters":{ }}"#).unwrap().has_parameters);
        assert!(!parse(r#"{"parameters":null}"#).unwrap().has_parameters);
    }

    #[test]
    fn a_body_that_is_not_json_is_invalid_json() {
        for bad in ["", "{", "not json", r#"{"buckets":[}"#, "{}{}"] {
            let e = parse(bad).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_json"), "{bad:?}");
        }
        let e = StreamingSyncRequest::parse(b"{\"client_id\":\"\xff\"}").unwrap_err();
        assert_eq!(e.code, "invalid_json");
    }

    #[test]
    fn json_of_the_wrong_shape_is_an_invalid_request() {
        for bad in [
            "[]",
            r#"[[{"name":"a","after":"0"}]]"#,
            "7",
            r#"{"buckets":{}}"#,
            r#"{"buckets":[{"after":"1"}]}"#,
            r#"{"buckets":[{"name":7,"after":"1"}]}"#,
            r#"{"buckets":[{"name":"a:b"}]}"#,
            r#"{"include_checksum":"yes"}"#,
            r#"{"client_id":5}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_request"), "{bad}");
        }
    }

    #[test]
    fn after_must_be_an_op_id_as_a_decimal_string() {
        for after in
            [r#"1"#, r#""-1""#, r#""1.5""#, r#""""#, r#"" 1""#, r#""9223372036854775808""#, "null", r#""\u0031""#]
        {
            let e = parse(&format!(
                r#"{{"buckets":[{{"name":"entries:{U}","after":"0"}},{{"name":"x","after":{after}}}]}}"#
            ))
            .unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_request"), "{after}");
            assert!(e.message.contains("buckets[1].after"), "{}", e.message);
        }
        let max = parse(r#"{"buckets":[{"name":"x","after":"9223372036854775807"}]}"#).unwrap();
        assert_eq!(max.buckets[0].after, i64::MAX as u64);
    }

    #[test]
    fn too_many_buckets_are_refused() {
        let bucket = |i: usize| format!(r#"{{"name":"t{i}:{U}","after":"0"}}"#);
        let body = |n: usize| format!(r#"{{"buckets":[{}]}}"#, (0..n).map(bucket).collect::<Vec<_>>().join(","));
        assert_eq!(parse(&body(MAX_BUCKETS)).unwrap().buckets.len(), MAX_BUCKETS);
        let e = parse(&body(MAX_BUCKETS + 1)).unwrap_err();
        assert_eq!((e.status, e.code), (400, "too_many_buckets"));
    }

    #[test]
    fn long_bucket_names_duplicates_and_long_client_ids_are_refused() {
        let name = "n".repeat(MAX_BUCKET_NAME_BYTES);
        assert!(parse(&format!(r#"{{"buckets":[{{"name":"{name}","after":"0"}}]}}"#)).is_ok());
        let e = parse(&format!(r#"{{"buckets":[{{"name":"{name}x","after":"0"}}]}}"#)).unwrap_err();
        assert_eq!(e.code, "invalid_request");
        assert!(e.message.contains("buckets[0].name"), "{}", e.message);
        let twice = format!(r#"{{"buckets":[{{"name":"a:{U}","after":"1"}},{{"name":"a:{U}","after":"2"}}]}}"#);
        assert!(parse(&twice).unwrap_err().message.contains("buckets[1]"));
        let id = "c".repeat(MAX_CLIENT_ID_BYTES + 1);
        assert_eq!(parse(&format!(r#"{{"client_id":"{id}"}}"#)).unwrap_err().code, "invalid_request");
    }

    #[test]
    fn a_body_over_a_mebibyte_is_refused_before_parsing() {
        let e = StreamingSyncRequest::parse(&vec![b' '; MAX_REQUEST_BYTES + 1]).unwrap_err();
        assert_eq!((e.status, e.code), (413, "body_too_large"));
        assert_eq!(too_large_request(5).details, Some(json!({"max_bytes": MAX_REQUEST_BYTES})));
    }

    #[test]
    fn deeply_nested_ignored_fields_are_skipped_without_recursing() {
        for field in ["app_metadata", "parameters"] {
            let deep = format!(r#"{{"{field}":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
            assert!(parse(&deep).unwrap().buckets.is_empty(), "{field}");
        }
        let unclosed = format!(r#"{{"streams":{}}}"#, "[".repeat(100_000));
        assert_eq!(parse(&unclosed).unwrap_err().code, "invalid_json");
    }

    #[test]
    fn resuming_keeps_this_users_buckets_and_ignores_the_rest() {
        let body = format!(
            r#"{{"buckets":[{{"name":"entries:{U}","after":"{a}"}},{{"name":"entries:{V}","after":"{big}"}},
                {{"name":"gone:{U}","after":"{big}"}},{{"name":"by_user[\"x\"]","after":"{big}"}},
                {{"name":"Bad-Table:{U}","after":"{big}"}}]}}"#,
            a = (100u64 << 24) - 1,
            big = 900u64 << 24,
        );
        let r = parse(&body).unwrap();
        let resume = r.resume(U, Some(&["entries", "notes"]));
        assert_eq!(resume.after, BTreeMap::from([("entries".into(), (100 << 24) - 1), ("notes".into(), 0)]));
        assert_eq!(resume.after("notes"), 0);
        assert_eq!(resume.floor, 100, "ignored buckets do not raise the floor");
        assert_eq!(resume.ignored, 4);
    }

    #[test]
    fn without_the_table_set_every_wellformed_bucket_of_the_user_is_kept() {
        let body = format!(
            r#"{{"buckets":[{{"name":"entries:{U}","after":"{a}"}},{{"name":"gone:{U}","after":"{b}"}},
                {{"name":"entries:{V}","after":"{c}"}}]}}"#,
            a = (100u64 << 24) - 1,
            b = (120u64 << 24) | 7,
            c = 900u64 << 24,
        );
        let resume = parse(&body).unwrap().resume(U, None);
        assert_eq!(
            resume.after,
            BTreeMap::from([("entries".into(), (100 << 24) - 1), ("gone".into(), (120 << 24) | 7)])
        );
        assert_eq!(resume.floor, 121, "a position inside block 120 needs a checkpoint at 121 or later");
        assert_eq!(resume.ignored, 1);
        assert_eq!(resume.after("absent"), 0);
    }

    #[test]
    fn a_fresh_client_has_no_floor() {
        let resume = parse("{\"buckets\":[]}").unwrap().resume(U, Some(&["entries"]));
        assert_eq!((resume.floor, resume.after("entries")), (0, 0));
    }

    #[test]
    fn bucket_names_are_table_colon_user() {
        assert_eq!(bucket_name("entries", U), format!("entries:{U}"));
    }

    #[test]
    fn the_token_comes_with_the_token_or_bearer_scheme() {
        assert_eq!(powersync_token(Some("Token a.b.c")), Ok("a.b.c"));
        assert_eq!(powersync_token(Some("token a.b.c")), Ok("a.b.c"));
        assert_eq!(powersync_token(Some("Bearer a.b.c")), Ok("a.b.c"));
        assert_eq!(powersync_token(Some("BEARER  a.b.c ")), Ok("a.b.c"));
        for missing in [None, Some(""), Some("   ")] {
            let e = powersync_token(missing).unwrap_err();
            assert_eq!((e.status, e.code), (401, "missing_token"), "{missing:?}");
        }
        for bad in ["a.b.c", "Basic dXNlcg==", "Token", "Token ", "Tokens a.b.c", "Token a.b c"] {
            let e = powersync_token(Some(bad)).unwrap_err();
            assert_eq!((e.status, e.code), (401, "invalid_token"), "{bad}");
        }
        let long = format!("Token {}", "a".repeat(crate::jwt::MAX_TOKEN_LEN + 1));
        assert_eq!(powersync_token(Some(&long)).unwrap_err().code, "invalid_token");
    }
}
