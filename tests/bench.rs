//! Throughput figures for the sync core, through the whole stack (wrangler dev ->
//! PostgREST -> Postgres). Not run by `cargo xtask test`: run against a running stack
//! with
//!
//! ```text
//! cargo xtask stack up
//! EDGESYNC_STACK_DIR=target/stack cargo test --release -p edgesync-integration --test bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! The numbers go into the issue notes; nothing here asserts a speed.

use edgesync_integration::*;
use serde_json::{json, Value};
use std::time::Instant;

/// A full initial `/sync` of 100,000 rows for one user, at several page sizes.
#[test]
#[ignore]
fn initial_sync_of_100k_rows() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let mut db = db(&info);
    let started = Instant::now();
    for chunk in 0..10 {
        db.execute(
            "insert into public.entries (user_id, title, body_markdown, tags, frontmatter)
             select $1::text::uuid, 'entry ' || g, repeat('lorem ipsum ', 20), '{work,notes}', jsonb_build_object('n', g)
               from generate_series($2::int * 10000 + 1, ($2::int + 1) * 10000) g",
            &[&uid, &chunk],
        )
        .unwrap();
    }
    println!("loaded 100,000 rows in {:.1} s", started.elapsed().as_secs_f64());
    for limit in [1000, 5000] {
        let mut replica = Replica::new(&info, &token, Some("entries"));
        let started = Instant::now();
        let pages = replica.drain(limit);
        let secs = started.elapsed().as_secs_f64();
        let rows = replica.table("entries").len();
        assert_eq!(rows, 100_000);
        println!(
            "initial /sync, limit {limit}: {rows} rows in {pages} pages, {secs:.2} s = {:.0} rows/s",
            rows as f64 / secs
        );
    }
}

/// `/upload` with batches of 500 mutations (PUT of new rows, then PATCH of them).
#[test]
#[ignore]
fn upload_batches_of_500() {
    let info = stack();
    let (_, token) = new_user(&info);
    let client = uuid();
    let ids: Vec<String> = (0..10_000).map(|_| uuid()).collect();
    let mut op_id = 0u64;
    for (label, op) in [("PUT", "PUT"), ("PATCH", "PATCH")] {
        let started = Instant::now();
        for chunk in ids.chunks(500) {
            let batch: Vec<Value> = chunk
                .iter()
                .map(|id| {
                    op_id += 1;
                    json!({"op_id": op_id, "op": op, "type": "entries", "id": id,
                           "data": {"title": format!("{label} {op_id}"), "tags": "[\"a\",\"b\"]", "body_markdown": "lorem ipsum ".repeat(20)}})
                })
                .collect();
            let answer = upload(&info, &token, &client, Value::Array(batch));
            assert_eq!(answer.status, 200, "{}", answer.text);
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "/upload {label}: {} mutations in batches of 500, {secs:.2} s = {:.0} mutations/s",
            ids.len(),
            ids.len() as f64 / secs
        );
    }
}
