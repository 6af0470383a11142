//! The stack's local embeddings server (`embedder/`, all-MiniLM-L6-v2 behind OpenAI's
//! `POST /v1/embeddings`), checked against reference embeddings that
//! sentence-transformers itself computed once from the same model files
//! (`embedder/tests/fixtures/reference.json`, made by `make_reference.py` beside it).

use edgesync_integration::*;
use serde_json::{json, Value};

const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
const NATIVE: usize = 384;
const TOLERANCE: f32 = 1e-4;

fn fixture() -> Value {
    serde_json::from_str(include_str!("../embedder/tests/fixtures/reference.json")).expect("the fixture is JSON")
}

fn embeddings_url(info: &StackInfo) -> String {
    assert!(!info.embeddings_url.is_empty(), "this stack has no embeddings server; restart it");
    format!("{}/embeddings", info.embeddings_url)
}

fn embed(info: &StackInfo, body: Value) -> Answer {
    call("POST", &embeddings_url(info), None, Some(&body))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("an array of numbers").iter().map(|x| x.as_f64().expect("a number") as f32).collect()
}

/// The vectors of a successful answer, checking the envelope on the way.
#[track_caller]
fn vectors(a: &Answer, n: usize) -> Vec<Vec<f32>> {
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["object"], "list");
    assert_eq!(a.body["model"], MODEL);
    let data = a.body["data"].as_array().expect("data");
    assert_eq!(data.len(), n);
    data.iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            floats(&d["embedding"])
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

/// The OpenAI error shape: `{"error":{"message","type","param","code"}}`.
#[track_caller]
fn assert_openai_error(a: &Answer, status: u16, code: &str, param: Option<&str>) {
    assert_eq!(a.status, status, "{}", a.text);
    assert!(a.content_type.as_deref().is_some_and(|c| c.starts_with("application/json")), "{:?}", a.content_type);
    let e = a.body["error"].as_object().unwrap_or_else(|| panic!("no error object: {}", a.text));
    assert_eq!(e["code"], code, "{}", a.text);
    assert_eq!(e["type"], "invalid_request_error", "{}", a.text);
    assert_eq!(e["param"], param.map(Value::from).unwrap_or(Value::Null), "{}", a.text);
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", a.text);
}

#[test]
fn health_reports_the_loaded_model() {
    let info = stack();
    let url = embeddings_url(&info).replace("/v1/embeddings", "/health");
    let a = call("GET", &url, None, None);
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body, json!({"ok": true, "model": MODEL, "dimensions": NATIVE}));
}

#[test]
fn vectors_match_sentence_transformers_and_are_zero_padded_to_1536() {
    let info = stack();
    let fixture = fixture();
    assert_eq!(fixture["model"], MODEL);
    let items = fixture["items"].as_array().unwrap();
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    let a = embed(&info, json!({"input": texts, "model": MODEL}));
    let got = vectors(&a, items.len());
    let tokens: u64 = items.iter().map(|i| i["tokens"].as_u64().unwrap()).sum();
    assert_eq!(a.body["usage"], json!({"prompt_tokens": tokens, "total_tokens": tokens}));
    let mut worst = 0f32;
    for (item, v) in items.iter().zip(&got) {
        assert_eq!(v.len(), 1536, "the default width is text-embedding-3-small's");
        let want = floats(&item["embedding"]);
        assert_eq!(want.len(), NATIVE);
        let diff = max_abs_diff(&v[..NATIVE], &want);
        assert!(diff < TOLERANCE, "{:?}: max abs difference {diff}", item["text"]);
        assert!(v[NATIVE..].iter().all(|x| *x == 0.0), "{:?}: padding is not zero", item["text"]);
        worst = worst.max(diff);
    }
    eprintln!("max abs difference from sentence-transformers over {} texts: {worst:e}", items.len());
}

#[test]
fn dimensions_384_gives_the_unpadded_vector_alone_or_in_a_batch() {
    let info = stack();
    let fixture = fixture();
    for item in fixture["items"].as_array().unwrap() {
        // A single string, not a list; the short model name.
        let a = embed(&info, json!({"input": item["text"], "model": "all-MiniLM-L6-v2", "dimensions": 384}));
        let v = &vectors(&a, 1)[0];
        assert_eq!(v.len(), NATIVE);
        assert!(max_abs_diff(v, &floats(&item["embedding"])) < TOLERANCE, "{:?}", item["text"]);
        assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5, "not a unit vector");
        assert_eq!(a.body["usage"]["prompt_tokens"], item["tokens"]);
    }
    // Base64, as OpenAI's Python client asks by default: the same floats, little-endian.
    let item = &fixture["items"][0];
    let a = embed(&info, json!({"input": [item["text"]], "model": MODEL, "encoding_format": "base64"}));
    assert_eq!(a.status, 200, "{}", a.text);
    use base64::Engine;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(a.body["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let v: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(v.len(), 1536);
    assert!(max_abs_diff(&v[..NATIVE], &floats(&item["embedding"])) < TOLERANCE);
}

#[test]
fn a_paraphrase_finds_the_right_text_first() {
    let info = stack();
    let texts = [
        "Leg day at the gym: squats, deadlifts and lunges, then twenty minutes on the rowing machine.",
        "Slow-cooked a tomato sauce with garlic and basil and served it over fresh pasta for dinner.",
        "Reviewed the quarterly budget: rent went up, so I moved more of my salary into savings.",
        "Took the night train from Vienna to Venice and watched the Alps go by at sunrise.",
    ];
    let queries = [("weight training workout", 0), ("cooking an Italian meal", 1), ("money and personal finances", 2)];
    let docs = vectors(&embed(&info, json!({"input": texts, "model": MODEL})), texts.len());
    for (query, expected) in queries {
        let q = &vectors(&embed(&info, json!({"input": query, "model": MODEL})), 1)[0];
        let scores: Vec<f32> = docs.iter().map(|d| cosine(q, d)).collect();
        let best = (0..texts.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
        assert_eq!(best, expected, "{query:?} ranked {:?} first; scores {scores:?}", texts[best]);
    }
}

#[test]
fn errors_have_openais_shape_and_status() {
    let info = stack();
    let url = embeddings_url(&info);
    let a = embed(&info, json!({"input": "hello", "model": "text-embedding-3-small"}));
    assert_openai_error(&a, 404, "model_not_found", Some("model"));
    let json_headers = [("content-type", "application/json".to_owned())];
    assert_openai_error(&call_raw("POST", &url, &json_headers, "{\"input\": "), 400, "invalid_json", None);
    assert_openai_error(&embed(&info, json!({"model": MODEL})), 400, "missing_required_parameter", Some("input"));
    assert_openai_error(&embed(&info, json!({"input": "x"})), 400, "missing_required_parameter", Some("model"));
    for input in [json!([]), json!(""), json!(["ok", ""]), json!(["ok", 7]), json!([[101, 2023, 102]]), json!({})] {
        assert_openai_error(
            &embed(&info, json!({"input": input, "model": MODEL})),
            400,
            "invalid_input",
            Some("input"),
        );
    }
    let many = vec!["x"; 2049];
    assert_openai_error(&embed(&info, json!({"input": many, "model": MODEL})), 400, "too_many_inputs", Some("input"));
    for dims in [json!(383), json!(0), json!("1536"), json!(100000)] {
        let a = embed(&info, json!({"input": "x", "model": MODEL, "dimensions": dims}));
        assert_openai_error(&a, 400, "invalid_dimensions", Some("dimensions"));
    }
    let a = embed(&info, json!({"input": "x", "model": MODEL, "encoding_format": "int8"}));
    assert_openai_error(&a, 400, "invalid_encoding_format", Some("encoding_format"));
    // A body over the limit (8 MiB) is refused, and the answer still arrives.
    let huge = json!({"input": "a ".repeat(5 * 1024 * 1024), "model": MODEL}).to_string();
    assert_openai_error(&call_raw("POST", &url, &json_headers, &huge), 400, "request_too_large", None);
    // Unknown paths and wrong methods.
    let base = url.trim_end_matches("/v1/embeddings");
    assert_openai_error(
        &call("POST", &format!("{base}/v1/embedding"), None, Some(&json!({}))),
        404,
        "unknown_url",
        None,
    );
    assert_openai_error(&call("GET", &format!("{base}/"), None, None), 404, "unknown_url", None);
    let a = call("GET", &url, None, None);
    assert_openai_error(&a, 405, "method_not_allowed", None);
    assert_eq!(a.allow.as_deref(), Some("POST"));
    // The server still answers normally afterwards.
    assert_eq!(embed(&info, json!({"input": "still here", "model": MODEL})).status, 200);
}
