//! The workloads: the bench's stack and users ([`Bench`]), and each measured workload
//! (`/sync` pages, incremental pulls, uploads, search, the embeddings pipeline, the fixed
//! cost of an invocation).

use super::*;

/// The bench in progress: the stack, the targets, the users and what was measured.
pub(super) struct Bench {
    pub(super) paths: Paths,
    pub(super) env: Env,
    /// Whether the TypeScript Worker is part of this run.
    pub(super) with_ts: bool,
    pub(super) info: StackInfo,
    pub(super) plan: Plan,
    pub(super) db: postgres::Client,
    pub(super) runner: Runner,
    pub(super) rows: Vec<Row>,
    pub(super) loads: Vec<LoadNote>,
    pub(super) notes: Vec<String>,
    pub(super) pipeline: Option<Pipeline>,
    pub(super) live: Option<live::LiveFigures>,
    pub(super) idle: BTreeMap<String, f64>,
    pub(super) load_avg_before: String,
    pub(super) big_user: (String, String),
    pub(super) big_rows: u64,
    /// Whose rows the warm-up uploads write (`sync_entities`: no embedding jobs).
    pub(super) warm_user: (String, String),
    pub(super) many: Vec<(String, String)>,
}

impl Bench {
    pub(super) fn new(paths: &Paths, mut info: StackInfo, plan: Plan) -> Result<Bench> {
        // Background embedding would be measured too (and the relay would race the loads).
        info.stop_relay()?;
        let db = postgres::Client::connect(&info.database_url, postgres::NoTls).sql("connect to Postgres")?;
        let mut groups = worker_groups("edge", &edge_devs(&info));
        groups.extend([
            cpu::Group::new("postgrest", info.pids.postgrest),
            cpu::Group::new("postgres", info.pids.postgres),
            cpu::Group::new("embedder", info.pids.embedder),
        ]);
        let runner = Runner { clients: plan.clients, groups, seed: 0x0005_eed0_fed9 };
        let big_user = user(&info)?;
        let warm_user = user(&info)?;
        let with_ts = ts_worker_present(paths);
        if !with_ts {
            step("bench/ts-worker/serve.sh is missing: measuring without the TypeScript baseline");
        }
        let mut bench = Bench {
            paths: paths.clone(),
            env: Env { info: info.clone(), ts_url: None, deployed: BTreeMap::new(), ts_deployed_url: None },
            with_ts,
            info,
            plan,
            db,
            runner,
            rows: Vec::new(),
            loads: Vec::new(),
            notes: Vec::new(),
            pipeline: None,
            live: None,
            idle: BTreeMap::new(),
            load_avg_before: load_avg(),
            big_user,
            big_rows: 0,
            warm_user,
            many: Vec::new(),
        };
        bench.fresh_alone()?;
        Ok(bench)
    }

    /// Serve the Workers that run alone afresh (each a new `wrangler dev`: the
    /// TypeScript Worker, and edgesync's `/sync` and `/upload`), and warm them up. Done
    /// before each workload they take part in: under this load the wrangler proxy in
    /// front of a Worker served alone grows with every answer; it ran out of JavaScript
    /// heap within minutes in earlier runs, or reset connections (see the report's
    /// memory table).
    pub(super) fn fresh_alone(&mut self) -> Result<()> {
        for w in ALONE {
            stack::restart_own(&mut self.info, w)?;
        }
        self.env.info = self.info.clone();
        self.runner.groups.retain(|g| !g.label.starts_with("edge."));
        self.runner.groups.extend(worker_groups("edge", &edge_devs(&self.info)));
        let mut warm = vec![Target::Edgesync];
        if self.with_ts {
            let ts = start_ts_worker(&self.paths, &self.info)?.context("the TypeScript Worker did not start")?;
            let port = ts.url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
            self.runner.groups.retain(|g| !g.label.starts_with("ts."));
            self.runner.groups.extend(worker_groups("ts", &[(ts.pid, port)]));
            self.env.ts_url = Some(ts.url);
            warm.push(Target::Ts);
        }
        // The as-deployed targets are served once (a plain workerd has no proxy that
        // grows), and warmed with the rest.
        if self.env.deployed.is_empty() {
            self.serve_deployed()?;
        }
        warm.push(Target::EdgesyncDeployed);
        if self.env.ts_deployed_url.is_some() {
            warm.push(Target::TsDeployed);
        }
        // A new isolate compiles the Worker on its first requests, and V8 then tiers
        // the hot WebAssembly functions up in the background (CPU the runtime process
        // is charged for): warm both paths with full pages and real batches first, so a
        // workload measures a warm Worker, as the long-lived gateway's are.
        let (me, many) = (&self.env, &self.many);
        let c = &mut load::Client::new(0, 1);
        let token = if self.big_rows > 0 { &self.big_user.1 } else { &many.first().unwrap_or(&self.big_user).1 };
        let (_, warm_token) = &self.warm_user;
        let auth = format!("Bearer {warm_token}");
        for t in warm {
            for _ in 0..24 {
                me.pull(c, t, token, None, self.plan.page_limit)?;
            }
            let client_id = keys::random_uuid();
            for op in 0..8u64 {
                let mutations: Vec<String> = (0..50u64)
                    .map(|i| {
                        format!(
                            r#"{{"op_id":{},"op":"PUT","type":"sync_entities","id":"{}","data":{{"type":"warm-up","key":"{}","display_name":"warm-up {i}"}}}}"#,
                            op * 50 + i + 1,
                            keys::random_uuid(),
                            keys::random_uuid()
                        )
                    })
                    .collect();
                let body = format!(r#"{{"client_id":"{client_id}","mutations":[{}]}}"#, mutations.join(","));
                c.post(&me.url(t, "/upload"), &[("authorization", &auth)], &body)?;
            }
        }
        Ok(())
    }

    /// Serve [`ALONE`] (and the TypeScript Worker, when it is part of the run) as
    /// deployed, each in a workerd of its own (`xtask::deployed`), and measure their
    /// processes' CPU as the groups `edge_deployed.*` and `ts_deployed.*`.
    pub(super) fn serve_deployed(&mut self) -> Result<()> {
        stop_deployed(&self.info.stack_dir);
        let root = self.info.stack_dir.join(DEPLOYED_DIR);
        let mut pids = Vec::new();
        let mut edge = Vec::new();
        let mut served = |config: &Path, name: &str| -> Result<deployed::Served> {
            let s = deployed::serve(&self.info, config, procs::free_port()?, &root.join(name))?;
            pids.push(s.pid);
            fs_err::write(root.join(DEPLOYED_PIDS), pids.iter().map(|p| format!("{p}\n")).collect::<String>())?;
            Ok(s)
        };
        fs_err::create_dir_all(&root)?;
        for w in ALONE {
            let s = served(&self.info.stack_dir.join("wrangler").join(format!("{w}.toml")), w)?;
            edge.push((s.pid, s.port));
            self.env.deployed.insert((*w).to_owned(), s.url);
        }
        let ts = if self.with_ts {
            let config = ts_deployed_config(&self.paths, &self.info)?;
            let s = served(&config, "ts-baseline")?;
            self.env.ts_deployed_url = Some(s.url);
            Some((s.pid, s.port))
        } else {
            None
        };
        self.runner.groups.retain(|g| !g.label.starts_with("edge_deployed.") && !g.label.starts_with("ts_deployed."));
        self.runner.groups.extend(deployed_groups("edge_deployed", &edge));
        self.runner.groups.extend(ts.iter().flat_map(|t| deployed_groups("ts_deployed", &[*t])));
        Ok(())
    }

    /// The targets of the `/sync` and `/upload` workloads: as deployed first.
    pub(super) fn sync_targets(&self) -> Vec<Target> {
        let mut v = vec![Target::EdgesyncDeployed, Target::Edgesync, Target::EdgesyncGateway];
        if self.with_ts {
            v.extend([Target::TsDeployed, Target::Ts]);
        }
        v.push(Target::Direct);
        v
    }

    pub(super) fn all(&mut self) -> Result<()> {
        self.idle_cpu()?;
        self.load_many_users()?;
        self.warm_up()?;
        self.fixed_costs()?;
        for size in self.plan.sizes.clone() {
            self.grow_big_user(size)?;
            if size <= self.plan.full_sync_max_size {
                self.sync_full(size)?;
            }
            self.sync_pages(size)?;
        }
        self.sync_incremental()?;
        for (batch, jobs) in self.plan.uploads.clone() {
            self.upload(batch, jobs)?;
        }
        self.search()?;
        self.model_and_pipeline()?;
        self.live()?;
        Ok(())
    }

    /// Live updates: write-to-other-device latency, memory per idle socket, the
    /// long-poll's cost on PostgREST while idle.
    pub(super) fn live(&mut self) -> Result<()> {
        step("live updates: pokes on /live, idle sockets, waiting long-polls");
        self.live = Some(live::measure(&self.info, &live_plan(&self.plan))?);
        Ok(())
    }

    /// CPU the Worker processes use when nothing is asked of them.
    pub(super) fn idle_cpu(&mut self) -> Result<()> {
        let secs = 3.0;
        let before = cpu::snapshot();
        std::thread::sleep(Duration::from_secs_f64(secs));
        let after = cpu::snapshot();
        for g in &self.runner.groups {
            if g.label.starts_with("edge") || g.label.starts_with("ts") {
                self.idle.insert(g.label.clone(), (cpu::seconds(&after, g) - cpu::seconds(&before, g)) / secs);
            }
        }
        Ok(())
    }

    pub(super) fn note_load(&mut self, what: String, rows: u64, secs: f64) {
        step(format!("loaded {what}: {rows} rows in {secs:.1}s"));
        self.loads.push(LoadNote { what, rows, secs });
    }

    /// Drop the embedding jobs the inserts created, then vacuum and analyse.
    pub(super) fn settle_tables(&mut self) -> Result<()> {
        self.db.execute("delete from edgesync.embedding_jobs", &[]).sql("deleting embedding jobs")?;
        // One statement per call: several would run as one transaction, which VACUUM refuses.
        self.db.batch_execute("vacuum analyze public.entries").sql("vacuum")?;
        self.db.batch_execute("vacuum analyze edgesync.embedding_jobs").sql("vacuum")?;
        Ok(())
    }

    pub(super) fn watermark(&mut self) -> Result<u64> {
        let w: String = self.db.query_one("select edgesync.watermark()::text", &[]).sql("watermark")?.get(0);
        w.parse().context("watermark")
    }

    /// Many users with a few rows each.
    pub(super) fn load_many_users(&mut self) -> Result<()> {
        let started = Instant::now();
        self.many = (0..self.plan.many_users).map(|_| user(&self.info)).collect::<Result<_>>()?;
        let ids: Vec<String> = self.many.iter().map(|(id, _)| id.clone()).collect();
        let n = self.db.execute(
            "insert into public.entries (user_id, title, body_markdown, tags, frontmatter)
             select u::uuid, 'note ' || g, 'A short note: ' || repeat('words ', 10), '{home}', jsonb_build_object('n', g)
               from unnest($1::text[]) u cross join generate_series(1, $2::int) g",
            &[&ids, &(self.plan.rows_per_many_user as i32)],
        ).sql("loading many users")?;
        self.settle_tables()?;
        self.note_load(
            format!("{} users with {} rows each", self.plan.many_users, self.plan.rows_per_many_user),
            n,
            started.elapsed().as_secs_f64(),
        );
        Ok(())
    }

    /// A few requests to every target, so no measurement pays for the first compile.
    pub(super) fn warm_up(&mut self) -> Result<()> {
        let targets = self.sync_targets();
        let limit = self.plan.page_limit;
        let many = &self.many;
        let (me, runner) = (&self.env, &self.runner);
        runner.run(targets.len() * 8, |c, j| {
            let (_, token) = &many[j % many.len()];
            me.pull(c, targets[j % targets.len()], token, None, limit).map(|_| ())
        })?;
        Ok(())
    }

    /// The fixed cost of a request, from the cheapest answer up: a path no Worker
    /// serves (edgesync: the local gateway alone answers 404), `/sync` without a token
    /// (401 from the function, no upstream), and the pull of a user with no rows.
    pub(super) fn fixed_costs(&mut self) -> Result<()> {
        step("the fixed cost of a request");
        let targets: Vec<Target> = self.sync_targets().into_iter().filter(|t| *t != Target::Direct).collect();
        let (_, token) = user(&self.info)?;
        let auth = format!("Bearer {token}");
        let rounds = self.plan.rounds;
        let jobs = self.plan.incremental_jobs.div_ceil(rounds);
        for (param, path, status) in [(1u64, "/no_such_endpoint", 404u16), (2, "/sync", 401), (3, "/sync", 200)] {
            let (me, runner) = (&self.env, &self.runner);
            let ms = runner.interleaved(targets.len(), rounds, jobs, |ti, c, _| {
                let url = me.url(targets[ti], path);
                let headers: &[(&str, &str)] = if status == 200 { &[("authorization", &auth)] } else { &[] };
                c.get_expecting(&url, headers, status)?;
                Ok(())
            })?;
            for (t, m) in targets.iter().zip(ms) {
                self.rows.push(Row::new("fixed", param, *t, "requests", m));
            }
        }
        Ok(())
    }

    /// Grow the big user to `size` rows, in transactions of 10,000 (as a bulk import would).
    pub(super) fn grow_big_user(&mut self, size: u64) -> Result<()> {
        if size <= self.big_rows {
            return Ok(());
        }
        let started = Instant::now();
        let uid = self.big_user.0.clone();
        let chunk = 10_000u64;
        let mut from = self.big_rows + 1;
        while from <= size {
            let to = (from + chunk - 1).min(size);
            self.db.execute(
                "insert into public.entries (user_id, title, body_markdown, tags, frontmatter)
                 select $1::text::uuid, 'entry ' || g, repeat('lorem ipsum ', 20), '{work,notes}', jsonb_build_object('n', g)
                   from generate_series($2::bigint, $3::bigint) g",
                &[&uid, &(from as i64), &(to as i64)],
            ).sql("loading the big user")?;
            from = to + 1;
        }
        let added = size - self.big_rows;
        self.big_rows = size;
        self.settle_tables()?;
        self.note_load(
            format!("one user grown to {} rows", report::size(size)),
            added,
            started.elapsed().as_secs_f64(),
        );
        Ok(())
    }

    /// Every client pulls the big user's whole table from scratch; rows/s over all of them.
    pub(super) fn sync_full(&mut self, size: u64) -> Result<()> {
        step(format!("/sync: full initial pulls of {size} rows"));
        self.fresh_alone()?;
        let targets = self.sync_targets();
        let clients = self.plan.clients;
        let rounds =
            (self.plan.full_sync_rows / (size * clients as u64).max(1)).clamp(1, self.plan.rounds as u64) as usize;
        let per_round = clients;
        let limit = self.plan.page_limit;
        let token = self.big_user.1.clone();
        let (me, runner) = (&self.env, &self.runner);
        let ms = runner.interleaved(targets.len(), rounds, per_round, |ti, c, _| {
            let mut since: Option<Position> = None;
            let mut rows = 0;
            let mut pages = 0;
            loop {
                let (next, more, n) = me.pull(c, targets[ti], &token, since.as_ref(), limit)?;
                rows += n;
                pages += 1;
                since = Some(next);
                if !more {
                    break;
                }
                if pages > size / limit as u64 + 10 {
                    bail!("{}: a full pull of {size} rows does not end", targets[ti].title());
                }
            }
            if rows != size {
                bail!("{}: a full pull delivered {rows} rows, not {size}", targets[ti].title());
            }
            c.units += rows;
            Ok(())
        })?;
        for (t, m) in targets.iter().zip(ms) {
            self.rows.push(Row::new("sync_full", size, *t, "rows", m));
        }
        Ok(())
    }

    /// Random full pages of the big user (cursors spread over the whole table).
    pub(super) fn sync_pages(&mut self, size: u64) -> Result<()> {
        step(format!("/sync: random pages at {size} rows"));
        self.fresh_alone()?;
        let limit = self.plan.page_limit as i64;
        let origin = self.watermark()?;
        let span = (size as i64 - limit).max(1);
        let step_by = (span / 400).max(1);
        let positions: Vec<Position> = self
            .db
            .query(
                "select _txid::text, id::text from (
                   select _txid, id, row_number() over (order by _txid, id) rn
                     from public.entries where user_id = $1::text::uuid) s
                  where rn <= $2 and rn % $3 = 0",
                &[&self.big_user.0, &span, &step_by],
            )
            .sql("page positions")?
            .iter()
            .map(|r| Position { txid: r.get::<_, String>(0).parse().unwrap_or(0), id: r.get(1), origin })
            .collect();
        if positions.is_empty() {
            bail!("no page positions for the big user");
        }
        let targets = self.sync_targets();
        let token = self.big_user.1.clone();
        let (me, runner) = (&self.env, &self.runner);
        let rounds = self.plan.rounds;
        let ms = runner.interleaved(targets.len(), rounds, self.plan.page_jobs.div_ceil(rounds), |ti, c, _| {
            let p = &positions[c.below(positions.len())];
            let (_, _, n) = me.pull(c, targets[ti], &token, Some(p), limit as u32)?;
            if n != limit as u64 {
                bail!("{}: a page from the middle had {n} rows, not {limit}", targets[ti].title());
            }
            c.units += n;
            Ok(())
        })?;
        for (t, m) in targets.iter().zip(ms) {
            self.rows.push(Row::new("sync_page", size, *t, "rows", m));
        }
        Ok(())
    }

    /// Many users each pulling from where they are, while a writer changes a few rows
    /// a second: most pulls bring nothing or a row or two.
    pub(super) fn sync_incremental(&mut self) -> Result<()> {
        step("/sync: incremental pulls of many users while a few rows change");
        self.fresh_alone()?;
        let targets = self.sync_targets();
        let head = self.watermark()?;
        let start = Position { txid: head, id: NIL_ID.into(), origin: head };
        let cursors: Vec<Vec<Mutex<Position>>> =
            targets.iter().map(|_| self.many.iter().map(|_| Mutex::new(start.clone())).collect()).collect();
        let ids: Vec<String> = self
            .db
            .query(
                "select id::text from public.entries where user_id = any($1::text[]::uuid[])",
                &[&self.many.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()],
            )
            .sql("the many users' rows")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let stop = AtomicBool::new(false);
        let writes = AtomicU64::new(0);
        let every = Duration::from_secs_f64(1.0 / self.plan.incremental_writes_per_sec.max(1) as f64);
        let database_url = self.info.database_url.clone();
        let limit = self.plan.page_limit;
        let rounds = self.plan.rounds;
        let jobs = self.plan.incremental_jobs.div_ceil(rounds);
        let (me, runner, many) = (&self.env, &self.runner, &self.many);
        let ms = std::thread::scope(|s| -> Result<Vec<Measure>> {
            let writer = s.spawn(|| -> Result<()> {
                let mut db = postgres::Client::connect(&database_url, postgres::NoTls).sql("connect")?;
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let id = &ids[(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as usize % ids.len()];
                    db.execute(
                        "update public.entries set frontmatter = jsonb_build_object('edit', $2::bigint) where id = $1::text::uuid",
                        &[id, &(i as i64)],
                    ).sql("changing a row")?;
                    writes.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(every);
                }
                Ok(())
            });
            let ms = runner.interleaved(targets.len(), rounds, jobs, |ti, c, _| {
                let u = c.below(many.len());
                let since = cursors[ti][u].lock().unwrap_or_else(|e| e.into_inner()).clone();
                let (next, more, n) = me.pull(c, targets[ti], &many[u].1, Some(&since), limit)?;
                if more {
                    bail!("{}: an incremental pull has more than a page", targets[ti].title());
                }
                *cursors[ti][u].lock().unwrap_or_else(|e| e.into_inner()) = next;
                c.units += n;
                Ok(())
            });
            stop.store(true, Ordering::SeqCst);
            writer.join().map_err(|_| Error("the writer thread panicked".into()))??;
            ms
        })?;
        self.notes.push(format!(
            "Incremental pulls: {} rows of the many users were changed during the measurement (about {}/s).",
            writes.load(Ordering::SeqCst),
            self.plan.incremental_writes_per_sec
        ));
        for (t, m) in targets.iter().zip(ms) {
            self.rows.push(Row::new("sync_incremental", self.plan.many_users as u64, *t, "rows", m));
        }
        Ok(())
    }

    /// `/upload` of new entries in batches of `batch` (PUT), each client its own
    /// device (client_id) of its own user.
    pub(super) fn upload(&mut self, batch: usize, jobs: usize) -> Result<()> {
        step(format!("/upload: batches of {batch}"));
        self.fresh_alone()?;
        let targets = self.sync_targets();
        let users: Vec<(String, String)> = (0..self.plan.clients).map(|_| user(&self.info)).collect::<Result<_>>()?;
        // Per target and client: (client_id, last op_id).
        let devices: Vec<Vec<Mutex<(String, u64)>>> = targets
            .iter()
            .map(|_| (0..self.plan.clients).map(|_| Mutex::new((keys::random_uuid(), 0))).collect())
            .collect();
        let body_text = "lorem ipsum ".repeat(20);
        let rounds = self.plan.rounds;
        let (me, runner) = (&self.env, &self.runner);
        let ms = runner.interleaved(targets.len(), rounds, jobs.div_ceil(rounds), |ti, c, _| {
            let t = targets[ti];
            let mut device = devices[ti][c.index].lock().unwrap_or_else(|e| e.into_inner());
            let mut mutations = Vec::with_capacity(batch);
            for _ in 0..batch {
                device.1 += 1;
                mutations.push(format!(
                    r#"{{"op_id":{},"op":"PUT","type":"entries","id":"{}","data":{{"title":"upload {}","body_markdown":"{body_text}","tags":["work","bench"]}}}}"#,
                    device.1,
                    keys::random_uuid(),
                    device.1
                ));
            }
            let body = format!(r#"{{"client_id":"{}","mutations":[{}]}}"#, device.0, mutations.join(","));
            let auth = format!("Bearer {}", users[c.index].1);
            let answer = match t {
                Target::Direct => c.post(
                    &format!("{}/rpc/edgesync_push", me.info.postgrest_url),
                    &[("authorization", &auth), ("apikey", &me.info.anon_key)],
                    &body,
                )?,
                _ => c.post(&me.url(t, "/upload"), &[("authorization", &auth)], &body)?,
            };
            let mut applied = scan::count(&answer, b"\"applied\"");
            if c.last_resent {
                // The first attempt may have been applied: then this one is a duplicate.
                applied += scan::count(&answer, b"\"duplicate\"");
            }
            if applied != batch as u64 {
                bail!("{}: {applied} of {batch} mutations applied: {}", t.title(), load::prefix(&String::from_utf8_lossy(&answer), 300));
            }
            c.units += batch as u64;
            Ok(())
        })?;
        for (t, m) in targets.iter().zip(ms) {
            self.rows.push(Row::new("upload", batch as u64, *t, "mutations", m));
        }
        self.settle_tables()?;
        Ok(())
    }

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

    pub(super) fn search_at(&mut self, size: u64, token: &str, texts: &[String], vectors: &[String]) -> Result<()> {
        step(format!("/search at {size} entries"));
        let targets = [Target::Edgesync, Target::DirectModel, Target::Direct];
        let auth = format!("Bearer {token}");
        let rpc = format!("{}/rpc/search_entries", self.info.postgrest_url);
        let rounds = self.plan.rounds;
        let (me, runner) = (&self.env, &self.runner);
        let ms = runner.interleaved(targets.len(), rounds, self.plan.search_jobs.div_ceil(rounds), |ti, c, _| {
            let i = c.below(texts.len());
            let headers = [("authorization", auth.as_str()), ("apikey", me.info.anon_key.as_str())];
            let answer = match targets[ti] {
                Target::Edgesync => c.post(
                    &format!("{}/search", me.info.functions_url),
                    &[("authorization", &auth)],
                    &serde_json::json!({"query": texts[i], "match_threshold": SEARCH_THRESHOLD}).to_string(),
                )?,
                Target::DirectModel => {
                    let e = c.post(
                        &format!("{}/embeddings", me.info.embeddings_url),
                        &[],
                        &serde_json::json!({"input": [texts[i]], "model": stack::LOCAL_EMBEDDINGS_MODEL}).to_string(),
                    )?;
                    let v = vector_in(&e).context("no embedding in the embeddings server's answer")?;
                    let answer = c.post(
                        &rpc,
                        &headers,
                        &format!(r#"{{"query_embedding":"{v}","match_threshold":{SEARCH_THRESHOLD}}}"#),
                    )?;
                    c.merge_last(2);
                    answer
                }
                _ => c.post(
                    &rpc,
                    &headers,
                    &format!(r#"{{"query_embedding":"{}","match_threshold":{SEARCH_THRESHOLD}}}"#, vectors[i]),
                )?,
            };
            let found = scan::count(&answer, b"\"similarity\"");
            if found == 0 {
                bail!("{}: a search for a text in the table found nothing", targets[ti].title());
            }
            c.units += found;
            Ok(())
        })?;
        for (t, m) in targets.iter().zip(ms) {
            self.rows.push(Row::new("search", size, *t, "results", m));
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

/// The `"embedding":[...]` array of an embeddings answer, as text (a pgvector literal).
pub(super) fn vector_in(answer: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(answer).ok()?;
    // The key, not `"object": "embedding"`: the one followed by a colon and an array.
    let mut from = 0;
    while let Some(at) = text[from..].find("\"embedding\"") {
        let after = from + at + "\"embedding\"".len();
        let rest = text[after..].trim_start();
        if let Some(value) = rest.strip_prefix(':').map(str::trim_start).filter(|v| v.starts_with('[')) {
            let open = text.len() - value.len();
            let close = open + value.find(']')?;
            return Some(&text[open..=close]);
        }
        from = after;
    }
    None
}
