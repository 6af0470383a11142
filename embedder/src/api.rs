//! The OpenAI embeddings wire format, and the pure arithmetic around the model:
//! request parsing and validation, OpenAI-shaped errors, zero-padding, the response
//! body, mean pooling and L2 normalisation. Nothing here needs the model files.

use serde::Serialize;
use serde_json::Value;

/// The id this server answers with, and the ids it accepts for it.
pub const SERVED_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
pub const MODEL_ALIASES: &[&str] = &[SERVED_MODEL, "all-MiniLM-L6-v2"];
/// The model's own width.
pub const NATIVE_DIMENSIONS: usize = 384;
/// The default width of answers: OpenAI's `text-embedding-3-small`, and the width of
/// `entries.embedding`. A 384-d unit vector zero-padded keeps every cosine similarity.
pub const DEFAULT_DIMENSIONS: usize = 1536;
/// The widest answer we pad to (`text-embedding-3-large` is 3072).
pub const MAX_DIMENSIONS: usize = 4096;
/// OpenAI's limit of inputs per request.
pub const MAX_INPUTS: usize = 2048;
/// The largest request body read.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// An error in OpenAI's shape: `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: &'static str,
}

impl ApiError {
    /// A client error (`type: invalid_request_error`).
    pub fn invalid(status: u16, code: &'static str, param: Option<&'static str>, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind: "invalid_request_error", param, code }
    }

    pub fn server(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind: "server_error", param: None, code }
    }

    pub fn body(&self) -> String {
        serde_json::json!({
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        })
        .to_string()
    }
}

/// How the vectors are written: JSON numbers, or base64 of little-endian f32 (what
/// OpenAI's Python client asks for by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Encoding {
    Float,
    Base64,
}

/// A valid embeddings request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingRequest {
    pub inputs: Vec<String>,
    pub dimensions: usize,
    pub encoding: Encoding,
}

fn bad(code: &'static str, param: Option<&'static str>, message: impl Into<String>) -> ApiError {
    ApiError::invalid(400, code, param, message)
}

/// Is `model` a name of the served model?
pub fn is_served_model(model: &str) -> bool {
    MODEL_ALIASES.contains(&model)
}

pub fn model_not_found(model: &str) -> ApiError {
    ApiError::invalid(
        404,
        "model_not_found",
        Some("model"),
        format!("The model `{model}` does not exist; this server serves `{SERVED_MODEL}`."),
    )
}

/// Parse and validate `POST /v1/embeddings`: `{"input": string | [string], "model":
/// string, "dimensions"?: int, "encoding_format"?: "float" | "base64"}`. Other fields
/// (`user`) are ignored, as OpenAI does.
pub fn parse_request(body: &[u8], default_dimensions: usize) -> Result<EmbeddingRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad("invalid_json", None, format!("We could not parse the JSON body of your request: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(bad("invalid_json", None, "The request body must be a JSON object."));
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) => m.as_str(),
        None | Some(Value::Null) => {
            return Err(bad("missing_required_parameter", Some("model"), "You must provide a model parameter."))
        }
        Some(_) => return Err(bad("invalid_type", Some("model"), "`model` must be a string.")),
    };
    let inputs = match obj.get("input") {
        None | Some(Value::Null) => {
            return Err(bad("missing_required_parameter", Some("input"), "You must provide an input parameter."))
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > MAX_INPUTS {
                return Err(bad(
                    "too_many_inputs",
                    Some("input"),
                    format!("`input` has {} items; at most {MAX_INPUTS} are allowed per request.", items.len()),
                ));
            }
            let mut v = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => v.push(s.clone()),
                    _ => {
                        return Err(bad(
                            "invalid_input",
                            Some("input"),
                            format!("`input[{i}]` must be a string (token arrays are not supported)."),
                        ))
                    }
                }
            }
            v
        }
        Some(_) => return Err(bad("invalid_input", Some("input"), "`input` must be a string or an array of strings.")),
    };
    if inputs.is_empty() {
        return Err(bad("invalid_input", Some("input"), "`input` must not be empty."));
    }
    if let Some(i) = inputs.iter().position(|s| s.is_empty()) {
        return Err(bad("invalid_input", Some("input"), format!("`input[{i}]` is an empty string.")));
    }
    let dimensions = match obj.get("dimensions") {
        None | Some(Value::Null) => default_dimensions,
        Some(v) => v
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .filter(|d| (NATIVE_DIMENSIONS..=MAX_DIMENSIONS).contains(d))
            .ok_or_else(|| {
                bad(
                    "invalid_dimensions",
                    Some("dimensions"),
                    format!(
                        "`dimensions` must be an integer from {NATIVE_DIMENSIONS} (the model's width) to {MAX_DIMENSIONS}; got {v}."
                    ),
                )
            })?,
    };
    let encoding = match obj.get("encoding_format") {
        None | Some(Value::Null) => Encoding::Float,
        Some(Value::String(s)) if s == "float" => Encoding::Float,
        Some(Value::String(s)) if s == "base64" => Encoding::Base64,
        Some(v) => {
            return Err(bad(
                "invalid_encoding_format",
                Some("encoding_format"),
                format!("`encoding_format` must be \"float\" or \"base64\"; got {v}."),
            ))
        }
    };
    // Validated last, so a malformed request is a 400 whatever its model.
    if !is_served_model(model) {
        return Err(model_not_found(model));
    }
    Ok(EmbeddingRequest { inputs, dimensions, encoding })
}

/// `v` followed by zeros up to `dimensions` (never shorter than `v`).
pub fn pad(mut v: Vec<f32>, dimensions: usize) -> Vec<f32> {
    if v.len() < dimensions {
        v.resize(dimensions, 0.0);
    }
    v
}

/// Sentence-transformers' mean pooling: the average of the token vectors whose
/// attention-mask entry is 1. `hidden` is `mask.len()` rows of `width` values.
pub fn mean_pool(hidden: &[f32], mask: &[u32], width: usize) -> Vec<f32> {
    assert_eq!(hidden.len(), mask.len() * width, "hidden states and mask disagree");
    let mut sum = vec![0f32; width];
    let mut count = 0f32;
    for (row, &m) in hidden.chunks_exact(width).zip(mask) {
        if m != 0 {
            count += 1.0;
            for (s, x) in sum.iter_mut().zip(row) {
                *s += x;
            }
        }
    }
    // sentence-transformers clamps the token count at 1e-9.
    let count = count.max(1e-9);
    sum.iter_mut().for_each(|s| *s /= count);
    sum
}

/// Divide by the Euclidean norm (at least 1e-12, like `torch.nn.functional.normalize`).
pub fn l2_normalize(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// Standard base64 (with padding) of the little-endian bytes of `v`.
pub fn base64_f32(v: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n =
            (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Datum {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize)]
struct EmbeddingResponse {
    object: &'static str,
    data: Vec<Datum>,
    model: &'static str,
    usage: Usage,
}

/// The answer body: each vector padded to the requested width, in input order.
pub fn response_body(req: &EmbeddingRequest, vectors: Vec<Vec<f32>>, prompt_tokens: usize) -> String {
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let v = pad(v, req.dimensions);
            let embedding = match req.encoding {
                Encoding::Float => Vector::Float(v),
                Encoding::Base64 => Vector::Base64(base64_f32(&v)),
            };
            Datum { object: "embedding", index, embedding }
        })
        .collect();
    let body = EmbeddingResponse {
        object: "list",
        data,
        model: SERVED_MODEL,
        usage: Usage { prompt_tokens, total_tokens: prompt_tokens },
    };
    serde_json::to_string(&body).expect("an embeddings response always serialises")
}

/// `GET /v1/models/{id}` and the one entry of `GET /v1/models`.
pub fn model_object() -> Value {
    serde_json::json!({"id": SERVED_MODEL, "object": "model", "created": 0, "owned_by": "sentence-transformers"})
}

/// Does the `Authorization` header carry `Bearer <key>`? Compared in constant time.
pub fn authorized(header: Option<&str>, key: &str) -> bool {
    let Some(given) = header.and_then(|h| h.trim().strip_prefix("Bearer ")).map(str::trim) else { return false };
    given.len() == key.len() && given.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<EmbeddingRequest, ApiError> {
        parse_request(v.to_string().as_bytes(), DEFAULT_DIMENSIONS)
    }

    #[test]
    fn a_string_or_a_list_of_strings_with_either_model_name() {
        let r = parse(json!({"input": "hello", "model": SERVED_MODEL})).unwrap();
        assert_eq!(r, EmbeddingRequest { inputs: vec!["hello".into()], dimensions: 1536, encoding: Encoding::Float });
        let r = parse(json!({"input": ["a", "b"], "model": "all-MiniLM-L6-v2", "dimensions": 384,
                             "encoding_format": "base64", "user": "u1"}))
        .unwrap();
        assert_eq!(
            r,
            EmbeddingRequest { inputs: vec!["a".into(), "b".into()], dimensions: 384, encoding: Encoding::Base64 }
        );
        let r = parse(json!({"input": "x", "model": SERVED_MODEL, "dimensions": null, "encoding_format": "float"}))
            .unwrap();
        assert_eq!((r.dimensions, r.encoding), (1536, Encoding::Float));
        assert_eq!(parse_request(br#"{"input":"x","model":"all-MiniLM-L6-v2"}"#, 768).unwrap().dimensions, 768);
    }

    #[test]
    fn malformed_requests_are_400_in_openais_shape() {
        let cases = [
            (json!("just a string"), "invalid_json", None),
            (json!({"model": SERVED_MODEL}), "missing_required_parameter", Some("input")),
            (json!({"input": "x"}), "missing_required_parameter", Some("model")),
            (json!({"input": "x", "model": 3}), "invalid_type", Some("model")),
            (json!({"input": [], "model": SERVED_MODEL}), "invalid_input", Some("input")),
            (json!({"input": "", "model": SERVED_MODEL}), "invalid_input", Some("input")),
            (json!({"input": ["a", ""], "model": SERVED_MODEL}), "invalid_input", Some("input")),
            (json!({"input": ["a", 1], "model": SERVED_MODEL}), "invalid_input", Some("input")),
            (json!({"input": [[101, 102]], "model": SERVED_MODEL}), "invalid_input", Some("input")),
            (json!({"input": {"a": 1}, "model": SERVED_MODEL}), "invalid_input", Some("input")),
            (json!({"input": "x", "model": SERVED_MODEL, "dimensions": 383}), "invalid_dimensions", Some("dimensions")),
            (
                json!({"input": "x", "model": SERVED_MODEL, "dimensions": 4097}),
                "invalid_dimensions",
                Some("dimensions"),
            ),
            (json!({"input": "x", "model": SERVED_MODEL, "dimensions": -1}), "invalid_dimensions", Some("dimensions")),
            (
                json!({"input": "x", "model": SERVED_MODEL, "dimensions": 512.5}),
                "invalid_dimensions",
                Some("dimensions"),
            ),
            (
                json!({"input": "x", "model": SERVED_MODEL, "dimensions": "512"}),
                "invalid_dimensions",
                Some("dimensions"),
            ),
            (
                json!({"input": "x", "model": SERVED_MODEL, "encoding_format": "int8"}),
                "invalid_encoding_format",
                Some("encoding_format"),
            ),
            // A malformed request is a 400 even for an unknown model.
            (json!({"input": [], "model": "text-embedding-3-small"}), "invalid_input", Some("input")),
        ];
        for (body, code, param) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!((e.status, e.code, e.param, e.kind), (400, code, param, "invalid_request_error"), "{body}");
            let shown: Value = serde_json::from_str(&e.body()).unwrap();
            assert_eq!(shown["error"]["code"], code);
            assert_eq!(shown["error"]["type"], "invalid_request_error");
            assert_eq!(shown["error"]["param"], param.map(Value::from).unwrap_or(Value::Null));
            assert!(!shown["error"]["message"].as_str().unwrap().is_empty());
        }
        let e = parse_request(b"{not json", 1536).unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_json"));
        let e = parse_request(&[0xff, 0xfe], 1536).unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_json"));
    }

    #[test]
    fn too_many_inputs_is_400_and_the_limit_itself_is_fine() {
        let ok = json!({"input": vec!["a"; MAX_INPUTS], "model": SERVED_MODEL});
        assert_eq!(parse(ok).unwrap().inputs.len(), MAX_INPUTS);
        let e = parse(json!({"input": vec!["a"; MAX_INPUTS + 1], "model": SERVED_MODEL})).unwrap_err();
        assert_eq!((e.status, e.code), (400, "too_many_inputs"));
    }

    #[test]
    fn an_unknown_model_is_404_model_not_found() {
        let e = parse(json!({"input": "x", "model": "text-embedding-3-small"})).unwrap_err();
        assert_eq!(
            (e.status, e.code, e.param, e.kind),
            (404, "model_not_found", Some("model"), "invalid_request_error")
        );
        assert!(e.message.contains("text-embedding-3-small"));
    }

    #[test]
    fn padding_appends_zeros_and_never_truncates() {
        assert_eq!(pad(vec![1.0, 2.0], 4), vec![1.0, 2.0, 0.0, 0.0]);
        assert_eq!(pad(vec![1.0, 2.0], 2), vec![1.0, 2.0]);
        assert_eq!(pad(vec![1.0, 2.0], 1), vec![1.0, 2.0]);
    }

    #[test]
    fn mean_pool_ignores_masked_tokens() {
        // Three tokens of width 2; the last one is padding.
        let hidden = [1.0, 2.0, 3.0, 6.0, 100.0, -100.0];
        assert_eq!(mean_pool(&hidden, &[1, 1, 0], 2), vec![2.0, 4.0]);
        assert_eq!(mean_pool(&hidden, &[1, 0, 0], 2), vec![1.0, 2.0]);
        // No token at all: zeros, not NaN.
        assert_eq!(mean_pool(&hidden, &[0, 0, 0], 2), vec![0.0, 0.0]);
    }

    #[test]
    fn normalisation_gives_unit_vectors_and_keeps_zero_at_zero() {
        assert_eq!(l2_normalize(vec![3.0, 4.0]), vec![0.6, 0.8]);
        assert_eq!(l2_normalize(vec![0.0, 0.0]), vec![0.0, 0.0]);
        let v = l2_normalize((1..=384).map(|i| (i as f32).sin()).collect());
        assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn padding_keeps_cosine_similarity() {
        let a = l2_normalize((0..384).map(|i| (i as f32 * 0.37).cos()).collect());
        let b = l2_normalize((0..384).map(|i| (i as f32 * 0.11).sin()).collect());
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        let before = dot(&a, &b);
        let (pa, pb) = (pad(a, 1536), pad(b, 1536));
        assert_eq!(dot(&pa, &pb), before);
    }

    #[test]
    fn base64_matches_known_encodings() {
        // 1.0f32 = 00 00 80 3f; -2.0 = 00 00 00 c0.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, -2.0]), "AACAPwAAAMA=");
        assert_eq!(base64_f32(&[]), "");
        // 3 floats = 12 bytes: no padding.
        assert_eq!(base64_f32(&[0.0, 0.0, 0.0]).len(), 16);
    }

    #[test]
    fn response_has_openais_shape_and_pads_each_vector() {
        let req = EmbeddingRequest { inputs: vec!["a".into(), "b".into()], dimensions: 5, encoding: Encoding::Float };
        let body: Value = serde_json::from_str(&response_body(&req, vec![vec![0.6, 0.8], vec![1.0, 0.0]], 7)).unwrap();
        assert_eq!(
            body,
            json!({
                "object": "list",
                "data": [
                    {"object": "embedding", "index": 0, "embedding": [0.6, 0.8, 0.0, 0.0, 0.0]},
                    {"object": "embedding", "index": 1, "embedding": [1.0, 0.0, 0.0, 0.0, 0.0]},
                ],
                "model": SERVED_MODEL,
                "usage": {"prompt_tokens": 7, "total_tokens": 7},
            })
        );
        let req = EmbeddingRequest { encoding: Encoding::Base64, dimensions: 2, ..req };
        let body: Value = serde_json::from_str(&response_body(&req, vec![vec![1.0], vec![-2.0]], 2)).unwrap();
        assert_eq!(body["data"][0]["embedding"], "AACAPwAAAAA=");
        assert_eq!(body["data"][1]["embedding"], "AAAAwAAAAAA=");
    }

    #[test]
    fn floats_survive_the_json_round_trip_exactly() {
        let v: Vec<f32> = l2_normalize((0..384).map(|i| (i as f32 * 0.731).sin() * 1e-3).collect());
        let req = EmbeddingRequest { inputs: vec!["a".into()], dimensions: 384, encoding: Encoding::Float };
        let body: Value = serde_json::from_str(&response_body(&req, vec![v.clone()], 1)).unwrap();
        let back: Vec<f32> =
            body["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(back, v);
    }

    #[test]
    fn bearer_keys_must_match_exactly() {
        assert!(authorized(Some("Bearer sk-local"), "sk-local"));
        assert!(authorized(Some("  Bearer sk-local "), "sk-local"));
        for h in [None, Some(""), Some("Bearer"), Some("Bearer sk-loca"), Some("Bearer sk-local2"), Some("sk-local")] {
            assert!(!authorized(h, "sk-local"), "{h:?}");
        }
    }
}
