//! The workloads: the bench's stack and users ([`Bench`]), and each measured workload
//! (`/sync` pages, incremental pulls, uploads, search, the embeddings pipeline, the fixed
//! cost of an invocation).

mod search;
mod sync;

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
            env: Env {
                info: info.clone(),
                ts_url: None,
                deployed: BTreeMap::new(),
                ts_deployed_url: None,
                floor_url: None,
            },
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
        bench.fresh_alone(false)?;
        Ok(bench)
    }

    /// Serve the Workers that run alone afresh (each a new `wrangler dev`: the
    /// TypeScript Worker, and edgesync's `/sync` and `/upload`), and warm them up. Done
    /// before each workload they take part in: under this load the wrangler proxy in
    /// front of a Worker served alone grows with every answer; it ran out of JavaScript
    /// heap within minutes in earlier runs, or reset connections (see the report's
    /// memory table). With `gateway`, the main `wrangler dev` (the gateway and the
    /// functions behind it) too: its runtime ran out of heap at the 1,000,000-row pages.
    pub(super) fn fresh_alone(&mut self, gateway: bool) -> Result<()> {
        if gateway {
            stack::restart_gateway(&self.paths, &mut self.info)?;
        }
        for w in ALONE {
            stack::restart_own(&mut self.info, w)?;
        }
        self.env.info = self.info.clone();
        self.runner.groups.retain(|g| !g.label.starts_with("edge."));
        self.runner.groups.extend(worker_groups("edge", &edge_devs(&self.info)));
        let mut warm = vec![Target::Edgesync];
        if gateway {
            warm.push(Target::EdgesyncGateway);
        }
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
            let config = bench_worker_config(&self.paths, &self.info, "ts-worker", "ts-baseline")?;
            let s = served(&config, "ts-baseline")?;
            self.env.ts_deployed_url = Some(s.url);
            Some((s.pid, s.port))
        } else {
            None
        };
        let config = bench_worker_config(&self.paths, &self.info, "floor-worker", "floor")?;
        let floor = served(&config, "floor")?;
        self.env.floor_url = Some(floor.url);
        self.runner
            .groups
            .retain(|g| !["edge_deployed.", "ts_deployed.", "floor_deployed."].iter().any(|p| g.label.starts_with(p)));
        self.runner.groups.extend(worker_groups("edge_deployed", &edge));
        self.runner.groups.extend(ts.iter().flat_map(|t| worker_groups("ts_deployed", &[*t])));
        self.runner.groups.extend(worker_groups("floor_deployed", &[(floor.pid, floor.port)]));
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

    /// Only what a request costs before any real work: the fixed-cost table, incremental
    /// pulls and uploads of one mutation (`cargo xtask bench --fixed-cost`).
    pub(super) fn fixed_cost_only(&mut self) -> Result<()> {
        self.idle_cpu()?;
        self.load_many_users()?;
        self.warm_up()?;
        self.fixed_costs()?;
        self.sync_incremental()?;
        for (batch, jobs) in self.plan.uploads.clone() {
            if batch == 1 {
                self.upload(batch, jobs)?;
            }
        }
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
