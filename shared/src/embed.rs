//! Embeddings: the text an entry is embedded from (seed 004 §5.2), the content hash
//! that makes re-embedding idempotent, the embeddings-API settings, the OpenAI wire
//! format (the request and response types of `async-openai`), the database-webhook
//! payload, and the retry policy. Pure; the Worker does the I/O.

use crate::config::ConfigError;
use crate::ApiError;
use async_openai::types::embeddings::{CreateEmbeddingRequest, CreateEmbeddingResponse, EmbeddingInput};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The input limit of OpenAI's embedding models (text-embedding-3-small/-large,
/// text-embedding-ada-002), in tokens, and the default for any other model.
pub const DEFAULT_MAX_TOKENS: usize = 8191;

/// The input limit, in tokens, of `model` when `EMBEDDINGS_MAX_TOKENS` does not say.
pub fn model_max_tokens(model: &str) -> usize {
    match model {
        "text-embedding-3-small" | "text-embedding-3-large" | "text-embedding-ada-002" => 8191,
        _ => DEFAULT_MAX_TOKENS,
    }
}
pub const DEFAULT_MODEL: &str = "text-embedding-3-small";
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// The width of `entries.embedding`.
pub const COLUMN_DIMENSIONS: u32 = 1536;
/// Entries per embeddings request.
pub const BATCH: usize = 16;
/// Longest wait honoured from a `Retry-After` inside one invocation.
pub const MAX_INLINE_WAIT_SECS: u64 = 5;

/// The content columns of an entry (what the webhook, the job claim and PostgREST give).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct EntryContent {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub body_markdown: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub contexts: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub people: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// Seed 004 §5.2: title, body, then `Tags: a, b`, `Contexts: …`, `People: …` for the
/// non-empty lists, joined by newlines, trimmed, and cut so it cannot pass the model's
/// limit of `max_tokens` tokens.
///
/// The cut is by bytes: OpenAI's models tokenize byte-level BPE, where every token
/// stands for at least one byte of UTF-8, so `max_tokens` bytes are never more than
/// `max_tokens` tokens, whatever the script (a cut by characters let 8,000 CJK
/// characters or emoji pass 8,191 tokens, and the API refused the whole batch). It
/// falls on a character boundary. English text keeps about the first 1,300 words.
pub fn embedding_text(e: &EntryContent, max_tokens: usize) -> String {
    let mut parts: Vec<String> = vec![e.title.clone().unwrap_or_default(), e.body_markdown.clone().unwrap_or_default()];
    for (label, list) in [("Tags", &e.tags), ("Contexts", &e.contexts), ("People", &e.people)] {
        if !list.is_empty() {
            parts.push(format!("{label}: {}", list.join(", ")));
        }
    }
    let text = parts.join("\n");
    let text = text.trim();
    if text.len() <= max_tokens {
        return text.to_owned();
    }
    let cut = (0..=max_tokens).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    text[..cut].trim_end().to_owned()
}

/// The hash stored in `entries.embedding_hash`: SHA-256 over model, dimensions and
/// text. Equal hashes mean the stored embedding is already the one this would make.
pub fn content_hash(model: &str, dimensions: u32, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    h.update([0]);
    h.update(dimensions.to_string().as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where embeddings come from.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsConfig {
    /// OpenAI-compatible base URL, e.g. `https://api.openai.com/v1` (no trailing slash).
    pub base_url: String,
    pub model: String,
    pub dimensions: u32,
    pub api_key: Option<String>,
    /// How long one embeddings request may take (`EMBEDDINGS_TIMEOUT_MS`, default 30 s).
    pub timeout_ms: u64,
    /// The model's input limit in tokens (`EMBEDDINGS_MAX_TOKENS`, default
    /// [`model_max_tokens`]); see [`embedding_text`].
    pub max_tokens: usize,
}

impl EmbeddingsConfig {
    /// `EMBEDDINGS_BASE_URL`, `EMBEDDINGS_MODEL`, `EMBEDDINGS_DIMENSIONS`, `OPENAI_API_KEY`.
    /// Talking to OpenAI itself needs a key; a local OpenAI-compatible server may not.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<EmbeddingsConfig, ConfigError> {
        let get = |name: &str| crate::config::non_blank(&get, name);
        let base_url = get("EMBEDDINGS_BASE_URL").unwrap_or_else(|| DEFAULT_BASE_URL.into());
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            return Err(ConfigError { setting: "EMBEDDINGS_BASE_URL", problem: "must be an http(s) URL".into() });
        }
        let dimensions = match get("EMBEDDINGS_DIMENSIONS") {
            None => COLUMN_DIMENSIONS,
            Some(v) => v.parse::<u32>().ok().filter(|d| *d == COLUMN_DIMENSIONS).ok_or(ConfigError {
                setting: "EMBEDDINGS_DIMENSIONS",
                problem: format!("must be {COLUMN_DIMENSIONS}, the width of entries.embedding"),
            })?,
        };
        let api_key = get("OPENAI_API_KEY");
        if api_key.is_none() && base_url.starts_with("https://api.openai.com") {
            return Err(ConfigError {
                setting: "OPENAI_API_KEY",
                problem: "is not set, and EMBEDDINGS_BASE_URL is OpenAI's".into(),
            });
        }
        let model = get("EMBEDDINGS_MODEL").unwrap_or_else(|| DEFAULT_MODEL.into());
        let max_tokens = match get("EMBEDDINGS_MAX_TOKENS") {
            None => model_max_tokens(&model),
            Some(v) => v.parse::<usize>().ok().filter(|n| (16..=1_000_000).contains(n)).ok_or(ConfigError {
                setting: "EMBEDDINGS_MAX_TOKENS",
                problem: "must be a whole number of tokens from 16 to 1000000".into(),
            })?,
        };
        Ok(EmbeddingsConfig {
            timeout_ms: crate::config::timeout_ms(get, "EMBEDDINGS_TIMEOUT_MS", 30_000)?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            model,
            dimensions,
            api_key,
            max_tokens,
        })
    }

    pub fn url(&self) -> String {
        format!("{}/embeddings", self.base_url)
    }

    /// The request body for `texts`.
    pub fn request(&self, texts: Vec<String>) -> CreateEmbeddingRequest {
        CreateEmbeddingRequest {
            model: self.model.clone(),
            input: EmbeddingInput::StringArray(texts),
            dimensions: Some(self.dimensions),
            ..Default::default()
        }
    }

    /// The vectors of an answer, in input order; each must have the configured width.
    pub fn vectors(&self, body: &str, expected: usize) -> Result<Vec<Vec<f32>>, ApiError> {
        let bad = |why: String| ApiError::bad_gateway("embeddings_bad_response", why);
        let answer: CreateEmbeddingResponse =
            serde_json::from_str(body).map_err(|e| bad(format!("the embeddings answer is not valid: {e}")))?;
        let mut data = answer.data;
        data.sort_by_key(|d| d.index);
        if data.len() != expected || data.iter().enumerate().any(|(i, d)| d.index as usize != i) {
            return Err(bad(format!("asked for {expected} embeddings, got {}", data.len())));
        }
        let mut out = Vec::with_capacity(expected);
        for d in data {
            if d.embedding.len() != self.dimensions as usize || d.embedding.iter().any(|x| !x.is_finite()) {
                return Err(bad(format!(
                    "an embedding has {} values (or non-finite ones); the column takes {}",
                    d.embedding.len(),
                    self.dimensions
                )));
            }
            out.push(d.embedding);
        }
        Ok(out)
    }
}

/// pgvector's text form: `[0.1,0.2,…]`.
pub fn vector_literal(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 10 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

/// What a database webhook asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookAction {
    /// Embed this entry (INSERT or UPDATE of `public.entries`).
    Embed { entry_id: String },
    /// Nothing to embed (a DELETE, or another table): acknowledged and ignored.
    Ignore { reason: String },
}

/// Parse a Supabase database-webhook payload `{type, table, schema, record, old_record}`.
pub fn parse_webhook(body: &[u8]) -> Result<WebhookAction, ApiError> {
    let invalid = |m: &str| ApiError::bad_request("invalid_webhook", m.to_owned());
    let v: Value = serde_json::from_slice(body).map_err(|_| invalid("the body is not JSON"))?;
    let kind = v.get("type").and_then(Value::as_str).ok_or_else(|| invalid("`type` is missing"))?;
    let table = v.get("table").and_then(Value::as_str).ok_or_else(|| invalid("`table` is missing"))?;
    let schema = v.get("schema").and_then(Value::as_str).unwrap_or("public");
    if !matches!(kind, "INSERT" | "UPDATE" | "DELETE") {
        return Err(invalid("`type` must be INSERT, UPDATE or DELETE"));
    }
    if (schema, table) != ("public", "entries") {
        return Ok(WebhookAction::Ignore { reason: format!("{schema}.{table} is not embedded") });
    }
    if kind == "DELETE" {
        return Ok(WebhookAction::Ignore { reason: "deleted entries are not embedded".into() });
    }
    let id = v
        .get("record")
        .and_then(|r| r.get("id"))
        .and_then(Value::as_str)
        .and_then(crate::auth::parse_uuid)
        .ok_or_else(|| invalid("`record.id` must be the entry's UUID"))?;
    Ok(WebhookAction::Embed { entry_id: id })
}

/// Longest `/search` query, in characters.
pub const MAX_QUERY_CHARS: usize = 2000;
pub const SEARCH_RPC: &str = "search_entries";

/// `POST /search {"query", "match_threshold"?, "match_count"?}`.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub query: String,
    pub match_threshold: f64,
    pub match_count: u32,
}

impl SearchRequest {
    pub fn parse(body: &[u8]) -> Result<SearchRequest, ApiError> {
        let invalid = |m: String| ApiError::bad_request("invalid_search", m);
        let v: Value = serde_json::from_slice(body).map_err(|_| invalid("the body is not JSON".into()))?;
        let obj = v.as_object().ok_or_else(|| invalid("the body must be a JSON object".into()))?;
        if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "query" | "match_threshold" | "match_count")) {
            return Err(invalid(format!(
                "unknown field `{}`; /search takes query, match_threshold, match_count",
                k.chars().take(40).collect::<String>()
            )));
        }
        let query = obj.get("query").and_then(Value::as_str).map(str::trim).unwrap_or_default();
        if query.is_empty() {
            return Err(invalid("`query` must be a non-empty string".into()));
        }
        if query.chars().count() > MAX_QUERY_CHARS {
            return Err(invalid(format!("`query` is longer than {MAX_QUERY_CHARS} characters")));
        }
        let match_threshold = match obj.get("match_threshold") {
            None | Some(Value::Null) => 0.7,
            Some(t) => t
                .as_f64()
                .filter(|t| (-1.0..=1.0).contains(t))
                .ok_or_else(|| invalid("`match_threshold` must be a number from -1 to 1 (cosine similarity)".into()))?,
        };
        let match_count = match obj.get("match_count") {
            None | Some(Value::Null) => 10,
            Some(c) => c
                .as_u64()
                .filter(|c| (1..=100).contains(c))
                .ok_or_else(|| invalid("`match_count` must be an integer from 1 to 100".into()))?
                as u32,
        };
        Ok(SearchRequest { query: query.to_owned(), match_threshold, match_count })
    }

    /// Arguments of `search_entries`, given the query's embedding.
    pub fn rpc_args(&self, embedding: &[f32]) -> Value {
        serde_json::json!({
            "query_embedding": vector_literal(embedding),
            "match_threshold": self.match_threshold,
            "match_count": self.match_count,
        })
    }
}

/// May this call to `embed_entry` in by its `x-webhook-secret` header (`given`)?
/// `configured` is `EMBED_WEBHOOK_SECRET`; with it unset or blank no secret is valid
/// (the caller may still use a service-role token instead of the header).
pub fn authorize_webhook_secret(configured: Option<&str>, given: Option<&str>) -> Result<(), ApiError> {
    match crate::secret::check(configured, given) {
        crate::secret::SecretCheck::Valid => Ok(()),
        _ => Err(ApiError::unauthorized("invalid_webhook_secret", "the webhook secret is not valid")),
    }
}

/// Largest webhook body `embed_entry` accepts (the payload carries one row).
pub const MAX_WEBHOOK_BYTES: usize = 256 * 1024;
/// Largest `POST /search` body.
pub const MAX_SEARCH_BYTES: usize = 16 * 1024;

/// 413 for a webhook body over [`MAX_WEBHOOK_BYTES`] (also before reading it).
pub fn too_large_webhook(len: usize) -> ApiError {
    ApiError::new(
        413,
        "body_too_large",
        format!("the body is {len} bytes; a webhook payload is at most {MAX_WEBHOOK_BYTES}"),
    )
}

/// 413 for a search body over [`MAX_SEARCH_BYTES`] (also before reading it).
pub fn too_large_search(len: usize) -> ApiError {
    ApiError::new(413, "body_too_large", format!("the body is {len} bytes; a search is at most 16 KiB"))
}

/// May a caller without the webhook secret, verified as `principal`, use `embed_entry`?
/// Only the service role: users search, they do not run the embedding jobs.
pub fn require_service_role(principal: &crate::auth::Principal) -> Result<(), ApiError> {
    match principal {
        crate::auth::Principal::ServiceRole => Ok(()),
        crate::auth::Principal::User { .. } => Err(ApiError::forbidden(
            "forbidden_role",
            "embed_entry is called by the database (webhook secret) or with the service role, not by users",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(v: Value) -> EntryContent {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_text_follows_the_seed() {
        let e = entry(json!({"title": "Gym", "body_markdown": "Leg day", "tags": ["fitness", "health"],
                             "contexts": [], "people": ["Ana"]}));
        assert_eq!(embedding_text(&e, DEFAULT_MAX_TOKENS), "Gym\nLeg day\nTags: fitness, health\nPeople: Ana");
    }

    #[test]
    fn empty_and_missing_fields_leave_no_labels_and_no_blank_edges() {
        assert_eq!(embedding_text(&entry(json!({})), DEFAULT_MAX_TOKENS), "");
        assert_eq!(
            embedding_text(
                &entry(json!({"title": null, "body_markdown": "  body  ", "tags": null})),
                DEFAULT_MAX_TOKENS
            ),
            "body"
        );
        assert_eq!(embedding_text(&entry(json!({"title": "T"})), DEFAULT_MAX_TOKENS), "T");
        assert_eq!(embedding_text(&entry(json!({"contexts": ["work"]})), DEFAULT_MAX_TOKENS), "Contexts: work");
    }

    #[test]
    fn long_text_is_cut_so_it_cannot_pass_the_token_limit() {
        // Two bytes a character: cut at the last boundary within the limit.
        let body = "é".repeat(DEFAULT_MAX_TOKENS);
        let text = embedding_text(&entry(json!({"title": "x", "body_markdown": body})), DEFAULT_MAX_TOKENS);
        assert!(text.len() <= DEFAULT_MAX_TOKENS && text.len() >= DEFAULT_MAX_TOKENS - 1, "{}", text.len());
        assert!(text.starts_with("x\né"));
        // Emoji: four bytes, and at least one token, each; 8,000 of them passed the limit before.
        let emoji = "🦀".repeat(8_000);
        let t = embedding_text(&entry(json!({"body_markdown": emoji})), DEFAULT_MAX_TOKENS);
        assert_eq!(t.chars().count(), DEFAULT_MAX_TOKENS / 4);
        assert!(t.chars().all(|c| c == '🦀'));
        let fits = "a".repeat(DEFAULT_MAX_TOKENS);
        assert_eq!(embedding_text(&entry(json!({"title": fits.clone()})), DEFAULT_MAX_TOKENS), fits);
        assert_eq!(embedding_text(&entry(json!({"title": "abc def"})), 5), "abc d");
    }

    #[test]
    fn the_hash_covers_model_dimensions_and_text() {
        let h = content_hash("m", 1536, "text");
        assert_eq!(h.len(), 64);
        assert_eq!(h, content_hash("m", 1536, "text"));
        assert_ne!(h, content_hash("m2", 1536, "text"));
        assert_ne!(h, content_hash("m", 384, "text"));
        assert_ne!(h, content_hash("m", 1536, "text "));
        // The separators keep fields from running into each other.
        assert_ne!(content_hash("m1", 536, "t"), content_hash("m", 1536, "t"));
    }

    fn cfg() -> EmbeddingsConfig {
        EmbeddingsConfig {
            base_url: "http://x/v1".into(),
            model: "m".into(),
            dimensions: 3,
            api_key: None,
            timeout_ms: 1000,
            max_tokens: DEFAULT_MAX_TOKENS,
        }
    }

    #[test]
    fn requests_and_answers_use_the_openai_wire_format() {
        let body = serde_json::to_value(cfg().request(vec!["a".into(), "b".into()])).unwrap();
        assert_eq!(body, json!({"model": "m", "input": ["a", "b"], "dimensions": 3}));
        let answer = json!({"object": "list", "model": "m", "usage": {"prompt_tokens": 2, "total_tokens": 2},
            "data": [{"object": "embedding", "index": 1, "embedding": [0.0, 1.0, 0.0]},
                     {"object": "embedding", "index": 0, "embedding": [1.0, 0.0, 0.0]}]});
        let v = cfg().vectors(&answer.to_string(), 2).unwrap();
        assert_eq!(v, vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]]);
        for (bad, n) in [
            (json!({"data": []}), 1),
            (answer.clone(), 3),
            (
                json!({"object": "list", "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1},
                    "data": [{"object": "embedding", "index": 0, "embedding": [1.0]}]}),
                1,
            ),
        ] {
            assert_eq!(cfg().vectors(&bad.to_string(), n).unwrap_err().status, 502, "{bad}");
        }
    }

    #[test]
    fn settings_have_defaults_and_refuse_nonsense() {
        let map = |pairs: &[(&str, &str)]| {
            let m: std::collections::HashMap<String, String> =
                pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            move |k: &str| m.get(k).cloned()
        };
        let c = EmbeddingsConfig::from_lookup(map(&[("OPENAI_API_KEY", "sk-x")])).unwrap();
        assert_eq!((c.base_url.as_str(), c.model.as_str(), c.dimensions), (DEFAULT_BASE_URL, DEFAULT_MODEL, 1536));
        assert_eq!(EmbeddingsConfig::from_lookup(map(&[])).unwrap_err().setting, "OPENAI_API_KEY");
        let local = EmbeddingsConfig::from_lookup(map(&[("EMBEDDINGS_BASE_URL", "http://127.0.0.1:1/v1/")])).unwrap();
        assert_eq!(local.url(), "http://127.0.0.1:1/v1/embeddings");
        assert_eq!(c.max_tokens, 8191);
        let small = EmbeddingsConfig::from_lookup(map(&[("OPENAI_API_KEY", "k"), ("EMBEDDINGS_MAX_TOKENS", "512")]));
        assert_eq!(small.unwrap().max_tokens, 512);
        for (k, v) in [
            ("EMBEDDINGS_BASE_URL", "ftp://x"),
            ("EMBEDDINGS_DIMENSIONS", "384"),
            ("EMBEDDINGS_MAX_TOKENS", "0"),
            ("EMBEDDINGS_MAX_TOKENS", "many"),
        ] {
            assert_eq!(EmbeddingsConfig::from_lookup(map(&[(k, v), ("OPENAI_API_KEY", "k")])).unwrap_err().setting, k);
        }
    }

    #[test]
    fn webhooks_are_parsed_strictly() {
        let id = "0a1b2c3d-0000-4000-8000-00000000abcd";
        let p = |v: Value| parse_webhook(v.to_string().as_bytes());
        assert_eq!(
            p(json!({"type": "INSERT", "table": "entries", "schema": "public", "record": {"id": id}, "old_record": null}))
                .unwrap(),
            WebhookAction::Embed { entry_id: id.into() }
        );
        assert!(matches!(
            p(json!({"type": "DELETE", "table": "entries", "schema": "public", "old_record": {"id": id}})).unwrap(),
            WebhookAction::Ignore { .. }
        ));
        assert!(matches!(
            p(json!({"type": "UPDATE", "table": "sync_events", "record": {"id": id}})).unwrap(),
            WebhookAction::Ignore { .. }
        ));
        for bad in [
            json!({"type": "TRUNCATE", "table": "entries"}),
            json!({"table": "entries"}),
            json!({"type": "INSERT", "table": "entries", "record": {"id": "1; drop"}}),
            json!({"type": "INSERT", "table": "entries"}),
            json!([1]),
        ] {
            assert_eq!(p(bad.clone()).unwrap_err().code, "invalid_webhook", "{bad}");
        }
        assert_eq!(parse_webhook(b"{not json").unwrap_err().status, 400);
    }

    #[test]
    fn search_requests_have_defaults_and_bounds() {
        let p = |v: Value| SearchRequest::parse(v.to_string().as_bytes());
        assert_eq!(
            p(json!({"query": "  gym  "})).unwrap(),
            SearchRequest { query: "gym".into(), match_threshold: 0.7, match_count: 10 }
        );
        let r = p(json!({"query": "q", "match_threshold": 0.2, "match_count": 3})).unwrap();
        assert_eq!((r.match_threshold, r.match_count), (0.2, 3));
        assert_eq!(r.rpc_args(&[0.5]), json!({"query_embedding": "[0.5]", "match_threshold": 0.2, "match_count": 3}));
        for bad in [
            json!({}),
            json!({"query": ""}),
            json!({"query": 5}),
            json!({"query": "x".repeat(MAX_QUERY_CHARS + 1)}),
            json!({"query": "q", "match_threshold": 2}),
            json!({"query": "q", "match_threshold": "high"}),
            json!({"query": "q", "match_count": 0}),
            json!({"query": "q", "match_count": 1000}),
            json!({"query": "q", "user_id": "someone else"}),
            json!(["q"]),
        ] {
            assert_eq!(p(bad.clone()).unwrap_err().code, "invalid_search", "{bad}");
        }
    }

    #[test]
    fn a_vector_is_written_as_pgvector_text() {
        assert_eq!(vector_literal(&[1.0, -0.5, 0.25]), "[1,-0.5,0.25]");
    }

    #[test]
    fn only_the_service_role_runs_jobs_and_oversized_bodies_say_their_limit() {
        use crate::auth::Principal;
        assert_eq!(require_service_role(&Principal::ServiceRole), Ok(()));
        let e = require_service_role(&Principal::User { user_id: "u".into() }).unwrap_err();
        assert_eq!((e.status, e.code), (403, "forbidden_role"));
        for (e, limit) in [(too_large_webhook(300_000), "262144"), (too_large_search(20_000), "16 KiB")] {
            assert_eq!((e.status, e.code), (413, "body_too_large"));
            assert!(e.message.contains(limit), "{}", e.message);
        }
        assert_eq!(MAX_SEARCH_BYTES, 16 * 1024);
    }

    #[test]
    fn a_webhook_secret_is_valid_only_when_configured_and_equal_after_trimming() {
        assert_eq!(authorize_webhook_secret(Some("hook\n"), Some("hook")), Ok(()));
        for (configured, given) in [(None, Some("hook")), (Some("  "), Some("")), (Some("hook"), Some("hooks"))] {
            let e = authorize_webhook_secret(configured, given).unwrap_err();
            assert_eq!((e.status, e.code), (401, "invalid_webhook_secret"), "{configured:?} {given:?}");
        }
    }
}
