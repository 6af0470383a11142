//! `embed::embedding_text` and `embed::content_hash` on entries from any JSON (as the
//! webhook, the job claim and PostgREST deliver them) and on entries built field by
//! field from the bytes: never panic; the text is deterministic, at most the token
//! limit in bytes (so never more tokens), never starts or ends with whitespace, is the
//! uncut text's prefix, contains each non-empty list's line when uncut; the hash is 64
//! lowercase hex digits and depends on every input.

#![no_main]

use arbitrary::Unstructured;
use edgesync_fuzz::{object, Dict};
use edgesync_shared::embed::{content_hash, embedding_text, EntryContent, DEFAULT_MAX_TOKENS};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const DICT: Dict = Dict {
    keys: &["title", "body_markdown", "tags", "contexts", "people", "id", "user_id"],
    strings: &["", " ", "\n", "Walk", "# Heading\n\nbody", "home", "Ada Lovelace", "é", "\u{3000}"],
};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = serde_json::from_slice::<EntryContent>(data) {
        check(&e);
    }
    let mut u = Unstructured::new(data);
    if let Ok(e) = built(&mut u) {
        check(&e);
    }
    let mut u = Unstructured::new(data);
    if let Ok(obj) = object(&mut u, &DICT, 2) {
        if let Ok(e) = serde_json::from_value::<EntryContent>(Value::Object(obj)) {
            check(&e);
        }
    }
});

fn built(u: &mut Unstructured) -> arbitrary::Result<EntryContent> {
    let list = |u: &mut Unstructured| -> arbitrary::Result<Vec<String>> {
        let n = u.int_in_range(0..=4)?;
        (0..n).map(|_| u.arbitrary::<String>()).collect()
    };
    Ok(EntryContent {
        title: u.arbitrary()?,
        body_markdown: u.arbitrary()?,
        tags: list(u)?,
        contexts: list(u)?,
        people: list(u)?,
    })
}

fn check(e: &EntryContent) {
    let whole = embedding_text(e, usize::MAX);
    // A small limit cuts most inputs; the real one, long ones.
    for limit in [64, DEFAULT_MAX_TOKENS] {
        let text = embedding_text(e, limit);
        assert_eq!(text, embedding_text(&e.clone(), limit), "embedding_text is not deterministic");
        assert!(text.len() <= limit, "{} bytes over a limit of {limit}", text.len());
        assert_eq!(text.trim(), text, "the text starts or ends with whitespace");
        assert!(whole.starts_with(&text), "the cut text is not a prefix of the whole");
        if whole.len() <= limit {
            assert_eq!(text, whole, "a text within the limit was cut");
        }
    }
    let text = whole;
    assert_eq!(text.trim(), text, "the text starts or ends with whitespace");
    for (label, list) in [("Tags", &e.tags), ("Contexts", &e.contexts), ("People", &e.people)] {
        if !list.is_empty() {
            let line = format!("{label}: {}", list.join(", "));
            assert!(text.contains(line.trim()), "{line:?} is missing from {text:?}");
        }
    }

    let hash = content_hash("text-embedding-3-small", 1536, &text);
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{hash}");
    assert_eq!(hash, content_hash("text-embedding-3-small", 1536, &text), "content_hash is not deterministic");
    assert_ne!(hash, content_hash("text-embedding-3-small", 384, &text), "the hash ignores the dimensions");
    assert_ne!(hash, content_hash("all-MiniLM-L6-v2", 1536, &text), "the hash ignores the model");
    let mut other = text.clone();
    other.push('.');
    assert_ne!(hash, content_hash("text-embedding-3-small", 1536, &other), "the hash ignores the text");
}
