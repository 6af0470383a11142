//! # edgesync-embedder
//!
//! A local stand-in for OpenAI's embeddings API: `POST /v1/embeddings` answered by a
//! real model, all-MiniLM-L6-v2 (384 dimensions, zero-padded to the requested width),
//! run natively with candle. The local stack starts it so the `embed_entry` Worker
//! talks to it exactly as it talks to OpenAI.
//!
//! - [`api`]: the wire format, validation, padding, pooling (pure).
//! - [`model`]: tokenizer + BERT + pooling, as sentence-transformers does it.
//! - [`server`]: the routes, served by axum on hyper 1 + tokio.
//! - [`http`]: what hyper does not do: a connection cap, a body limit, a lingering close.
//! - [`faults`]: planned failures (429, 5xx) for tests of callers, behind `--allow-faults`.

pub mod api;
pub mod faults;
pub mod http;
pub mod model;
pub mod server;
