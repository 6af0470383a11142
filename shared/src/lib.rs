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
pub mod cursor;
pub mod data_api;
pub mod embed;
pub mod embed_jobs;
pub mod error;
pub mod health;
pub mod populate;
pub mod request_id;
pub mod sync;
pub mod upload;

pub use error::ApiError;

/// The database schema version this code expects; the migrations in `sql/migrations`
/// record theirs in `edgesync.schema_migrations`, and `/health` compares the two.
pub const EXPECTED_SCHEMA_VERSION: i64 = 6;

/// The version of the functions, reported by `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
