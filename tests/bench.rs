//! Throughput figures for the sync core and the embedding pipeline, through the whole
//! stack (wrangler dev -> PostgREST -> Postgres, and the local embeddings model). Not run by `cargo xtask test`: run against a running stack
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
    // Embedding 100,000 entries in the background would be measured too.
    let _quiet = RelayStopped::new(&info);
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
    db.execute("delete from edgesync.embedding_jobs where user_id = $1::text::uuid", &[&uid]).unwrap();
}

/// `/upload` with batches of 500 mutations (PUT of new rows, then PATCH of them).
#[test]
#[ignore]
fn upload_batches_of_500() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let _quiet = RelayStopped::new(&info);
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
    db(&info).execute("delete from edgesync.embedding_jobs where user_id = $1::text::uuid", &[&uid]).unwrap();
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The embedding pipeline end to end: entries uploaded through `/upload` (batches of
/// 50, as a client would), embedded by trigger → job → relay webhook → `embed_entry`
/// → the local model → write-back. Entries/s from the first upload to the last
/// embedding stored. `EDGESYNC_BENCH_ENTRIES` (default 2,000).
#[test]
#[ignore]
fn embedding_pipeline_throughput() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let mut db = db(&info);
    let n: usize = std::env::var("EDGESYNC_BENCH_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let client = uuid();
    let words = ["garden", "invoice", "running", "piano", "meeting", "recipe", "holiday", "doctor"];
    let started = Instant::now();
    for (b, chunk) in (0..n).collect::<Vec<_>>().chunks(50).enumerate() {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|i| {
                let w = words[i % words.len()];
                json!({"op_id": b * 50 + i % 50 + 1, "op": "PUT", "type": "entries", "id": uuid(),
                       "data": {"title": format!("{w} note {i}"),
                                "body_markdown": format!("Notes about the {w}, number {i}: what happened and what to do next."),
                                "tags": [w, "bench"]}})
            })
            .collect();
        let a = upload(&info, &token, &client, Value::Array(ops));
        assert_eq!(a.status, 200, "{}", a.text);
    }
    let uploaded = started.elapsed().as_secs_f64();
    let count = |db: &mut postgres::Client| -> i64 {
        db.query_one(
            "select count(*) from public.entries where user_id = $1::text::uuid and embedding_hash is not null",
            &[&uid],
        )
        .unwrap()
        .get(0)
    };
    eventually("every entry to be embedded", std::time::Duration::from_secs(1800), || count(&mut db) == n as i64);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "embedding pipeline: {n} entries uploaded in {uploaded:.1} s, all embedded after {secs:.1} s = {:.1} entries/s",
        n as f64 / secs
    );
}

/// Search latency at 10,000 entries for one user with the HNSW index: `POST /search`
/// (embeds the query with the local model, then `search_entries` as the user) and
/// `search_entries` through PostgREST directly, p50/p99 of 200 requests each.
#[test]
#[ignore]
fn search_latency_at_10k_entries() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let mut db = db(&info);
    let _quiet = RelayStopped::new(&info);
    let n = 10_000;
    let started = Instant::now();
    // Real model vectors for 200 distinct texts, spread over 10,000 entries with a
    // little noise each (so the index has 10,000 distinct points).
    let texts: Vec<String> =
        (0..200).map(|i| format!("Note {i} about topic {} and item {}", i % 37, i * 7919 % 1000)).collect();
    let vectors: Vec<Vec<f32>> = texts.chunks(50).flat_map(|chunk| embed_locally(&info, chunk)).collect();
    let mut seed = 0x5eed_u64;
    let mut noise = move || {
        seed = seed.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        ((z ^ (z >> 31)) as f64 / u64::MAX as f64 - 0.5) * 0.02
    };
    let mut tx = db.transaction().unwrap();
    for i in 0..n {
        let v: Vec<String> = vectors[i % vectors.len()]
            .iter()
            .enumerate()
            .map(|(d, x)| if d < 384 { format!("{:.6}", *x as f64 + noise()) } else { "0".into() })
            .collect();
        tx.execute(
            "insert into public.entries (user_id, title, embedding) values ($1::text::uuid, $2, $3::text::extensions.vector)",
            &[&uid, &texts[i % texts.len()], &format!("[{}]", v.join(","))],
        )
        .unwrap();
    }
    tx.execute("delete from edgesync.embedding_jobs where user_id = $1::text::uuid", &[&uid]).unwrap();
    tx.commit().unwrap();
    db.batch_execute("analyze public.entries").unwrap();
    println!("loaded {n} entries with vectors in {:.1} s", started.elapsed().as_secs_f64());

    let plan: Vec<String> = {
        let mut t = db.transaction().unwrap();
        t.batch_execute(&format!(
            "set local role authenticated; select set_config('request.jwt.claims', '{{\"sub\":\"{uid}\",\"role\":\"authenticated\"}}', true); set local hnsw.iterative_scan = relaxed_order"
        ))
        .unwrap();
        let q = format!("[{}]", vectors[0].iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","));
        t.query(
            "explain select e.id from public.entries e where e.user_id = auth.uid() and e.deleted_at is null and e.embedding is not null
              order by e.embedding operator(extensions.<=>) $1::text::extensions.vector limit 10",
            &[&q],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
    };
    println!("plan:\n  {}", plan.join("\n  "));

    let time = |label: &str, mut f: Box<dyn FnMut(usize) -> usize + '_>| {
        let mut ms = Vec::new();
        let mut found = 0;
        for i in 0..200 {
            let t = Instant::now();
            found += f(i);
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{label}: p50 {:.1} ms, p99 {:.1} ms, mean results {:.1}",
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            found as f64 / 200.0
        );
    };
    let search_url = format!("{}/search", info.functions_url);
    time(
        "POST /search (query embedded by the model, then search_entries)",
        Box::new(|i| {
            let a = call(
                "POST",
                &search_url,
                Some(&token),
                Some(&json!({"query": texts[i % texts.len()], "match_threshold": 0.3})),
            );
            assert_eq!(a.status, 200, "{}", a.text);
            a.body["results"].as_array().unwrap().len()
        }),
    );
    let rpc_url = format!("{}/rpc/search_entries", info.postgrest_url);
    let literals: Vec<String> = vectors
        .iter()
        .map(|v| format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")))
        .collect();
    time(
        "search_entries through PostgREST (vector given)",
        Box::new(|i| {
            let a = call(
                "POST",
                &rpc_url,
                Some(&token),
                Some(&json!({"query_embedding": literals[i % literals.len()], "match_threshold": 0.3})),
            );
            assert_eq!(a.status, 200, "{}", a.text);
            a.body.as_array().unwrap().len()
        }),
    );
}

/// `/populate` from Neo4j (the Query API stand-in) of 10,000 nodes and 20,000
/// relationships for one user, with the Worker's default budget (pages of 1,000, 45
/// subrequests per call), following continuations; then the same run again (all
/// unchanged).
#[test]
#[ignore]
fn populate_10k_nodes_and_20k_relationships() {
    use edgesync_integration::neo4j_standin::Graph;
    let info = stack();
    let (uid, token) = new_user(&info);
    neo4j(&info).put_graph(&uid, Graph::generate(&uid, 10_000, 20_000, 42));
    for run in ["first", "second"] {
        let started = Instant::now();
        let mut calls = 0;
        let mut body = json!({"source": "neo4j"});
        let last = loop {
            calls += 1;
            let a = call("POST", &format!("{}/populate", info.functions_url), Some(&token), Some(&body));
            assert_eq!(a.status, 200, "{}", a.text);
            match a.body["continuation"].as_str() {
                Some(c) => body = json!({"source": "neo4j", "continuation": c}),
                None => break a,
            }
        };
        let secs = started.elapsed().as_secs_f64();
        let c = &last.body["run_counts"];
        let rows = ["inserted", "updated", "unchanged"].iter().map(|k| c[*k].as_u64().unwrap()).sum::<u64>();
        println!(
            "populate ({run} run): {} source items, {rows} rows written or checked ({c}), {calls} calls, {secs:.2} s = {:.0} rows/s",
            30_000,
            rows as f64 / secs
        );
    }
}
