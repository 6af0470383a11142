//! # xtask
//!
//! edgesync's automation, as a Rust program (`cargo xtask <task>`): installing the
//! pinned toolchain, building the Workers, running the local stack, `dev` and `test`.
//! It is also a library, so the integration tests can drive the stack they run
//! against (find it, mint tokens, stop and restart PostgREST).

pub mod browser;
pub mod build;
pub mod db;
pub mod deployed;
pub mod jsclient;
pub mod keys;
pub mod procs;
pub mod relay;
pub mod stack;
pub mod tools;
pub mod util;

pub use util::{Error, Result};

pub use ureq;
