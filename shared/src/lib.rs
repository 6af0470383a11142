//! # edgesync-shared
//!
//! The pure core of edgesync. Everything a function decides lives here, as plain Rust
//! that is unit-tested natively: typed configuration, JWT verification, the JSON error
//! type, request ids, the PostgREST client layer, the health verdict, and the
//! `/sync` and `/upload` contracts (cursor, validation, response shapes).
//!
//! What this crate is not: it does not know about the Workers runtime. It never reads
//! the clock or the environment itself (callers pass `now` and a settings lookup), and
//! its only I/O is HTTP through `reqwest`/`postgrest`, which compile both natively and
//! to wasm32 (where they use `fetch`).

pub mod jwt;
/// JWT verification (see [`jwt`]); `auth` is the name the function crates use.
pub use jwt as auth;
pub mod config;
pub mod cors;
pub mod cursor;
pub mod data_api;
pub mod deadline;
pub mod embed;
pub mod embed_jobs;
pub mod error;
pub mod health;
pub mod live;
pub mod log;
pub mod populate;
pub mod powersync;
pub mod raw_json;
pub mod request_id;
pub mod secret;
pub mod sync;
pub mod upload;
pub mod upstream;

pub use error::ApiError;

/// Does a string or an object key anywhere in `v` contain U+0000? Postgres `text` and
/// `jsonb` cannot store it, so input carrying one is refused here, per item, instead of
/// failing a whole batch in the database.
pub fn has_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(m) => object_has_nul(m),
        _ => false,
    }
}

/// [`has_nul`] for an object's keys and values.
pub fn object_has_nul(m: &serde_json::Map<String, serde_json::Value>) -> bool {
    m.iter().any(|(k, v)| k.contains('\0') || has_nul(v))
}

/// The database schema version this code expects; the migrations in `sql/migrations`
/// record theirs in `edgesync.schema_migrations`, and `/health` compares the two.
pub const EXPECTED_SCHEMA_VERSION: i64 = 13;

/// The version of the functions, reported by `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod test_server;
