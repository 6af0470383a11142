//! `/search` (at concurrency 8 and 1), the embeddings model alone and the whole
//! embeddings pipeline.

use super::*;

impl Bench {
    /// The local model's vectors for `texts`, as pgvector literals.
    pub(super) fn embed(&self, texts: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in texts.chunks(32) {
            let answer: serde_json::Value = ureq::post(&format!("{}/embeddings", self.info.embeddings_url))
                .timeout(Duration::from_secs(120))
                .send_json(serde_json::json!({"input": chunk, "model": stack::LOCAL_EMBEDDINGS_MODEL}))
                .map_err(|e| Error(format!("the embeddings server: {e}")))?
                .into_json()?;
            for d in answer["data"].as_array().context("no data from the embeddings server")? {
                out.push(d["embedding"].to_string());
            }
        }
        if out.len() != texts.len() {
            bail!("the embeddings server gave {} vectors for {} texts", out.len(), texts.len());
        }
        Ok(out)
    }

    /// `/search` at each size: entries carrying real model vectors of 200 texts (each
    /// with a little noise, so the index holds distinct points), written directly.
    pub(super) fn search(&mut self) -> Result<()> {
        let (uid, token) = user(&self.info)?;
        let texts: Vec<String> =
            (0..200).map(|i| format!("Note {i} about topic {} and item {}", i % 37, i * 7919 % 1000)).collect();
        let vectors = self.embed(&texts)?;
        self.db.batch_execute(
            "create temporary table bench_base (i int primary key, title text not null, v extensions.vector(1536) not null)",
        ).sql("bench_base")?;
        for (i, (t, v)) in texts.iter().zip(&vectors).enumerate() {
            self.db
                .execute("insert into bench_base values ($1, $2, $3::text::extensions.vector)", &[&(i as i32), t, v])
                .sql("bench_base")?;
        }
        let mut have = 0u64;
        for size in self.plan.search_sizes.clone() {
            let started = Instant::now();
            let from = have;
            // Inserting into the HNSW index row by row is slow (~500 rows/s here); for a
            // large load, drop the index and build the same one again afterwards.
            let rebuild = size - have >= 20_000;
            let index: Option<String> = if rebuild {
                let def = self
                    .db
                    .query_opt(
                        "select indexdef from pg_indexes where schemaname = 'public' and indexname = 'entries_embedding_idx'",
                        &[],
                    )
                    .sql("the HNSW index")?
                    .map(|r| r.get::<_, String>(0));
                if def.is_some() {
                    self.db.batch_execute("drop index public.entries_embedding_idx").sql("dropping the HNSW index")?;
                }
                def
            } else {
                None
            };
            let chunk = 5_000u64;
            while have < size {
                let to = (have + chunk).min(size);
                // Noise only in the model's 384 dimensions (the rest are its zero padding).
                self.db
                    .execute(
                        "insert into public.entries (user_id, title, embedding)
                     select $1::text::uuid, b.title,
                            b.v + array_cat(array(select ((random() - 0.5) * 0.02)::real
                                                    from generate_series(1, 384 + 0 * g)),
                                            array_fill(0::real, array[1152]))::extensions.vector
                       from generate_series($2::bigint, $3::bigint) g join bench_base b on b.i = g % 200",
                        &[&uid, &(have as i64 + 1), &(to as i64)],
                    )
                    .sql("loading entries with vectors")?;
                have = to;
            }
            if let Some(def) = index {
                self.db.batch_execute("set maintenance_work_mem = '2GB'").sql("maintenance_work_mem")?;
                self.db.batch_execute(&def).sql("building the HNSW index")?;
                self.db.batch_execute("reset maintenance_work_mem").sql("maintenance_work_mem")?;
            }
            self.settle_tables()?;
            self.note_load(
                format!(
                    "one user's entries with vectors, to {}{}",
                    report::size(size),
                    if rebuild { " (HNSW index rebuilt after the insert)" } else { "" }
                ),
                size - from,
                started.elapsed().as_secs_f64(),
            );
            self.search_at(size, &token, &texts, &vectors)?;
        }
        self.db.batch_execute("drop table bench_base").sql("bench_base")?;
        Ok(())
    }

    /// `/search` at `size` entries, twice: with every client at once (8 searches in
    /// flight, so the model's queue is part of the figure) and one at a time (the cost of
    /// a search alone).
    pub(super) fn search_at(&mut self, size: u64, token: &str, texts: &[String], vectors: &[String]) -> Result<()> {
        step(format!("/search at {size} entries"));
        let targets = [Target::Edgesync, Target::DirectModel, Target::Direct];
        let auth = format!("Bearer {token}");
        let rpc = format!("{}/rpc/search_entries", self.info.postgrest_url);
        let rounds = self.plan.rounds;
        let serial = Runner { clients: 1, groups: self.runner.groups.clone(), seed: self.runner.seed + 1 };
        for (workload, runner, jobs) in [
            ("search", &self.runner, self.plan.search_jobs),
            ("search_serial", &serial, self.plan.search_jobs.div_ceil(4)),
        ] {
            let me = &self.env;
            let ms = runner.interleaved(targets.len(), rounds, jobs.div_ceil(rounds), |ti, c, _| {
                me.search_once(c, targets[ti], &auth, &rpc, texts, vectors)
            })?;
            for (t, m) in targets.iter().zip(ms) {
                self.rows.push(Row::new(workload, size, *t, "results", m));
            }
        }
        Ok(())
    }

    /// The model alone (batches of 16, as the Worker sends them), then the whole
    /// pipeline: entries uploaded through `/upload`, embedded by trigger → job →
    /// webhook relay → `/embed_entry` → the model → write-back.
    pub(super) fn model_and_pipeline(&mut self) -> Result<()> {
        step("the embeddings model alone");
        let words = ["garden", "invoice", "running", "piano", "meeting", "recipe", "holiday", "doctor"];
        let text = |i: usize| {
            let w = words[i % words.len()];
            format!("{w} note {i}\n\nNotes about the {w}, number {i}: what happened and what to do next.")
        };
        let url = format!("{}/embeddings", self.info.embeddings_url);
        let batch = 16;
        let one = Runner { clients: 1, groups: self.runner.groups.clone(), seed: 1 };
        let m = one.run(self.plan.model_entries.div_ceil(batch), |c, j| {
            let input: Vec<String> = (0..batch).map(|k| text(j * batch + k)).collect();
            let answer = c.post(
                &url,
                &[],
                &serde_json::json!({"input": input, "model": stack::LOCAL_EMBEDDINGS_MODEL}).to_string(),
            )?;
            if scan::count(&answer, b"\"index\"") != batch as u64 {
                bail!("the embeddings server did not answer {batch} vectors");
            }
            c.units += batch as u64;
            Ok(())
        })?;
        self.rows.push(Row::new("model", batch as u64, Target::Model, "entries", m));

        step(format!("the embedding pipeline: {} entries", self.plan.pipeline_entries));
        let (uid, token) = user(&self.info)?;
        self.info.start_relay()?;
        let n = self.plan.pipeline_entries;
        let client_id = keys::random_uuid();
        let before = cpu::snapshot();
        let started = Instant::now();
        let uploader = Runner { clients: 1, groups: Vec::new(), seed: 2 };
        let upload_url = format!("{}/upload", self.info.functions_url);
        let auth = format!("Bearer {token}");
        let uploaded = uploader.run(n.div_ceil(50), |c, b| {
            let ops: Vec<serde_json::Value> = (b * 50..((b + 1) * 50).min(n))
                .map(|i| {
                    serde_json::json!({"op_id": i + 1, "op": "PUT", "type": "entries", "id": keys::random_uuid(),
                                       "data": {"title": text(i), "tags": [words[i % words.len()], "bench"]}})
                })
                .collect();
            c.post(
                &upload_url,
                &[("authorization", &auth)],
                &serde_json::json!({"client_id": client_id, "mutations": ops}).to_string(),
            )?;
            Ok(())
        });
        let upload_secs = started.elapsed().as_secs_f64();
        let phases = uploaded.and_then(|_| self.embedded_by_pipeline(&uid, n, started));
        let after = cpu::snapshot();
        self.info.stop_relay()?;
        let phases = phases?;
        let cpu = self
            .runner
            .groups
            .iter()
            .map(|g| (g.label.clone(), cpu::seconds(&after, g) - cpu::seconds(&before, g)))
            .collect();
        self.pipeline = Some(Pipeline {
            entries: n,
            upload_secs,
            total_secs: phases.webhook_secs + phases.drain_secs,
            by_webhooks: phases.by_webhooks,
            webhook_secs: phases.webhook_secs,
            failed_attempts: phases.failed_attempts,
            last_error: phases.last_error,
            drain_calls: phases.drain_calls,
            drain_secs: phases.drain_secs,
            cpu,
        });
        Ok(())
    }

    /// Wait while the webhooks embed what they can; when they stop making progress
    /// (for [`WEBHOOK_QUIET`]), drain the rest the way the Cron Trigger does
    /// (`POST /embed_entry/drain`, back to back: a Cron Trigger that fires at once).
    pub(super) fn embedded_by_pipeline(&mut self, uid: &str, n: usize, started: Instant) -> Result<Phases> {
        let count = |db: &mut postgres::Client| -> Result<usize> {
            let k: i64 = db
                .query_one(
                    "select count(*) from public.entries where user_id = $1::text::uuid and embedding_hash is not null",
                    &[&uid],
                )
                .sql("counting embedded entries")?
                .get(0);
            Ok(k as usize)
        };
        let timeout = Duration::from_secs(if n > 100 { 900 } else { 180 });
        let (mut last, mut last_change) = (0, started);
        loop {
            let k = count(&mut self.db)?;
            if k != last {
                (last, last_change) = (k, Instant::now());
            }
            if k >= n || last_change.elapsed() > WEBHOOK_QUIET {
                break;
            }
            if started.elapsed() > timeout {
                bail!("the webhooks embedded {k} of {n} entries in {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let webhook_secs = (last_change - started).as_secs_f64();
        let by_webhooks = last;
        let (failed_attempts, last_error): (i64, Option<String>) = {
            let r = self
                .db
                .query_one(
                    "select count(*), max(last_error) from edgesync.embedding_jobs
                      where user_id = $1::text::uuid and attempts > 0",
                    &[&uid],
                )
                .sql("failed embedding jobs")?;
            (r.get(0), r.get(1))
        };
        let drain_started = Instant::now();
        let mut drain_calls = 0;
        let url = format!("{}/embed_entry/drain", self.info.functions_url);
        let auth = format!("Bearer {}", self.info.service_role_key);
        while last < n {
            if drain_started.elapsed() > timeout {
                bail!("draining embedded {last} of {n} entries in {timeout:?}");
            }
            let answer: serde_json::Value = ureq::post(&url)
                .set("authorization", &auth)
                .timeout(Duration::from_secs(120))
                .send_string("")
                .map_err(|e| Error(format!("POST /embed_entry/drain: {e}")))?
                .into_json()?;
            drain_calls += 1;
            last = count(&mut self.db)?;
            if answer["claimed"].as_u64() == Some(0) && last < n {
                // Jobs backing off after a failure: wait for them to be due.
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let drain_secs = if drain_calls > 0 { drain_started.elapsed().as_secs_f64() } else { 0.0 };
        Ok(Phases {
            by_webhooks,
            webhook_secs,
            failed_attempts: failed_attempts as u64,
            last_error,
            drain_calls,
            drain_secs,
        })
    }
}
