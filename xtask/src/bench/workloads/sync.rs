//! The `/sync` and `/upload` workloads and the fixed cost of a request, against every
//! target (as deployed, in wrangler dev, via the gateway, the TypeScript Worker, direct).

use super::*;

impl Bench {
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
    /// serves (edgesync as deployed: the sync Worker answers 404; otherwise the local
    /// gateway alone answers it), `/sync` without a token
    /// (401 from the function, no upstream), and the pull of a user with no rows.
    pub(super) fn fixed_costs(&mut self) -> Result<()> {
        step("the fixed cost of a request");
        let mut targets: Vec<Target> = self.sync_targets().into_iter().filter(|t| *t != Target::Direct).collect();
        targets.push(Target::FloorDeployed);
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
        self.fresh_alone(true)?;
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
        self.fresh_alone(true)?;
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
        self.fresh_alone(false)?;
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
        self.fresh_alone(false)?;
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
}
