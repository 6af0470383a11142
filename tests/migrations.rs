//! The migrations as a hosted Supabase project meets them: applied by `cargo xtask db
//! push` as `postgres`, which is not a superuser, to a new database where `vector` is
//! available but not created (sql/bootstrap/local_supabase.sql, run as supabase_admin,
//! sets it up as Supabase does).

use edgesync_integration::{db, eventually, stack, uuid};
use std::process::Command;
use xtask::stack::StackInfo;

/// A database of its own, dropped when the test ends however it ends.
struct FreshDatabase<'a> {
    info: &'a StackInfo,
    name: String,
}

impl<'a> FreshDatabase<'a> {
    fn create(info: &'a StackInfo) -> FreshDatabase<'a> {
        let name = format!("fresh_{}", &uuid().replace('-', "")[..12]);
        db(info).batch_execute(&format!("create database {name}")).unwrap();
        FreshDatabase { info, name }
    }

    /// Set it up as Supabase does (sql/bootstrap, as supabase_admin). One at a time:
    /// the bootstrap also alters the cluster's roles, which two sessions cannot at once.
    fn bootstrap(&self) {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let paths = xtask::tools::Paths::discover().unwrap();
        xtask::util::output(
            xtask::db::psql(&self.info.pg_bin, &self.url(&self.info.database_url))
                .arg("-v")
                .arg(format!("authpw={}", self.info.authenticator_password))
                .arg("-v")
                .arg(format!("pgpw={}", self.info.postgres_password))
                .arg("-f")
                .arg(paths.root.join("sql/bootstrap/local_supabase.sql")),
        )
        .expect("bootstrap the new database as supabase_admin");
    }

    /// `url` (the stack's, for database `postgres`) pointed at this database instead.
    fn url(&self, url: &str) -> String {
        let (server, _) = url.rsplit_once('/').expect("a database URL ends in /NAME");
        format!("{server}/{}", self.name)
    }
}

impl Drop for FreshDatabase<'_> {
    fn drop(&mut self) {
        let _ = db(self.info).batch_execute(&format!("drop database if exists {} with (force)", self.name));
    }
}

fn db_push(info: &StackInfo, url: &str) -> String {
    let paths = xtask::tools::Paths::discover().unwrap();
    let out = Command::new(&info.xtask_bin)
        .args(["db", "push", "--db-url", url])
        .current_dir(&paths.root)
        .output()
        .expect("run xtask db push");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "db push failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

#[test]
fn every_migration_applies_as_a_non_superuser_and_a_second_push_applies_nothing() {
    let info = stack();
    let paths = xtask::tools::Paths::discover().unwrap();
    let fresh = FreshDatabase::create(&info);
    fresh.bootstrap();
    let url = fresh.url(&info.postgres_url);

    // The premise: the role is not a superuser, and vector is available, not created.
    let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let row = pg
        .query_one(
            "select (select rolsuper from pg_roles where rolname = current_user),
                    exists (select from pg_extension where extname = 'vector'),
                    exists (select from pg_available_extensions where name = 'vector')",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1), row.get::<_, bool>(2)), (false, false, true));
    drop(pg);

    let first = db_push(&info, &url);
    let migrations = xtask::db::migrations(&paths).unwrap();
    for m in &migrations {
        assert!(first.contains(&format!("applying {}", m.file_name())), "{} not applied:\n{first}", m.file_name());
    }
    let expected = xtask::stack::expected_schema_version(&paths).unwrap();
    assert!(first.contains(&format!("{} migrations applied; schema version {expected}", migrations.len())), "{first}");

    // What it made works for a user: a write, a pull and a vector search (whose SET
    // clause names pgvector's parameter) as `authenticated`.
    let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let user = uuid();
    let as_user = format!(
        "set local role authenticated;
         select set_config('request.jwt.claims', '{{\"sub\": \"{user}\", \"role\": \"authenticated\"}}', true);"
    );
    let mut tx = pg.transaction().unwrap();
    tx.batch_execute(&as_user).unwrap();
    tx.batch_execute("insert into public.entries (title) values ('made on a fresh database')").unwrap();
    tx.commit().unwrap();
    // The pull's watermark passes the row once its writer's position lock is gone,
    // which is after the commit is visible: wait until the row is below it.
    eventually("the pull to return the entry", std::time::Duration::from_secs(30), || {
        let mut tx = pg.transaction().unwrap();
        tx.batch_execute(&as_user).unwrap();
        let page: String = tx.query_one("select public.edgesync_pull()::text", &[]).unwrap().get(0);
        page.contains("made on a fresh database")
    });
    let mut tx = pg.transaction().unwrap();
    tx.batch_execute(&as_user).unwrap();
    let found: i64 = tx
        .query_one(
            "select count(*) from public.search_entries(array_fill(0.1, array[1536])::real[]::extensions.vector, -1, 5)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(found, 0, "an entry with no embedding yet is not a search result");
    tx.rollback().unwrap();
    let owner: String =
        pg.query_one("select extowner::regrole::text from pg_extension where extname = 'vector'", &[]).unwrap().get(0);
    assert_eq!(owner, "postgres", "the migration, as postgres, created vector");
    drop(pg);

    // Idempotent: nothing is pending the second time.
    let second = db_push(&info, &url);
    assert!(!second.contains("applying "), "{second}");
    assert!(second.contains(&format!("nothing to apply; schema version {expected} (current)")), "{second}");
}

/// Stand-ins, in the test's own database, for what a hosted project has and the local
/// Postgres cannot load: Supabase Vault's documented functions and views (the secret
/// kept as plain text here: a stand-in, not encryption), pg_net's `net.http_post`
/// (recording each request instead of sending it) and pg_cron's `cron.schedule`.
const HOSTED_STAND_INS: &str = r#"
create schema vault;
create table vault.secrets (
  id uuid primary key default gen_random_uuid(), name text unique, description text not null default '',
  secret text not null, created_at timestamptz not null default now(), updated_at timestamptz not null default now());
create view vault.decrypted_secrets as select *, secret as decrypted_secret from vault.secrets;
create function vault.create_secret(new_secret text, new_name text default null, new_description text default '',
                                    new_key_id uuid default null) returns uuid language sql as
  $$ insert into vault.secrets (secret, name, description) values (new_secret, new_name, new_description) returning id $$;
create function vault.update_secret(secret_id uuid, new_secret text default null, new_name text default null,
                                    new_description text default null, new_key_id uuid default null) returns void
  language sql as $$ update vault.secrets set secret = coalesce(new_secret, secret), name = coalesce(new_name, name),
                       description = coalesce(new_description, description), updated_at = now() where id = secret_id $$;
create schema net;
create table net.requests (id bigserial primary key, url text, body jsonb, headers jsonb);
create function net.http_post(url text, body jsonb default '{}', params jsonb default '{}',
                              headers jsonb default '{"Content-Type": "application/json"}',
                              timeout_milliseconds integer default 5000) returns bigint language sql as
  $$ insert into net.requests (url, body, headers) values (url, body, headers) returning id $$;
create schema cron;
create table cron.job (jobid bigserial primary key, jobname text unique, schedule text, command text);
create function cron.schedule(job_name text, schedule text, command text) returns bigint language sql as
  $$ insert into cron.job (jobname, schedule, command) values (job_name, schedule, command)
     on conflict (jobname) do update set schedule = excluded.schedule, command = excluded.command returning jobid $$;
grant usage on schema vault, net, cron to postgres;
grant all on all tables in schema vault, net, cron to postgres;
grant all on all sequences in schema net, cron to postgres;
grant execute on all functions in schema vault, net, cron to postgres;
"#;

#[test]
fn the_webhook_secret_lives_in_vault_and_pg_cron_gets_the_jobs() {
    let info = stack();
    let fresh = FreshDatabase::create(&info);
    fresh.bootstrap();
    postgres::Client::connect(&fresh.url(&info.database_url), postgres::NoTls)
        .unwrap()
        .batch_execute(HOSTED_STAND_INS)
        .unwrap();
    let url = fresh.url(&info.postgres_url);
    db_push(&info, &url);
    let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let jobs = |pg: &mut postgres::Client| -> Vec<(String, String, String)> {
        pg.query("select jobname, schedule, command from cron.job order by jobname", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    assert_eq!(
        jobs(&mut pg),
        [
            ("edgesync-ps-compact".into(), "5-59/10 * * * *".into(), "select edgesync.ps_compact()".into()),
            ("edgesync-ps-defrag".into(), "*/10 * * * *".into(), "select edgesync.ps_defrag()".into()),
            (
                "edgesync-purge-tombstones".into(),
                "17 3 * * *".into(),
                "select edgesync.purge_tombstones('30 days')".into()
            ),
        ]
    );

    let hook = "https://edge.example.test/embed_entry";
    let configure = |pg: &mut postgres::Client, secret: &str| -> String {
        pg.query_one("select edgesync.configure_embed_webhook($1, $2)", &[&hook, &secret]).unwrap().get(0)
    };
    let said = configure(&mut pg, "first-secret-0123456789");
    assert!(said.contains("Vault") && said.contains("edgesync-embed-drain"), "{said}");
    // An entry's job calls the webhook with the secret read from Vault.
    let write = |pg: &mut postgres::Client, title: &str| {
        let user = uuid();
        let mut tx = pg.transaction().unwrap();
        tx.batch_execute(&format!(
            "set local role authenticated;
             select set_config('request.jwt.claims', '{{\"sub\": \"{user}\", \"role\": \"authenticated\"}}', true);
             insert into public.entries (title) values ('{title}');"
        ))
        .unwrap();
        tx.commit().unwrap();
    };
    let last_request = |pg: &mut postgres::Client| -> (String, String) {
        let r =
            pg.query_one("select url, headers ->> 'x-webhook-secret' from net.requests order by id desc limit 1", &[]);
        let r = r.unwrap();
        (r.get(0), r.get(1))
    };
    write(&mut pg, "one");
    assert_eq!(last_request(&mut pg), (hook.to_owned(), "first-secret-0123456789".to_owned()));
    // Rotated: one secret in Vault, the next call sends the new one, no function changed.
    configure(&mut pg, "second-secret-0123456789");
    write(&mut pg, "two");
    assert_eq!(last_request(&mut pg).1, "second-secret-0123456789");
    let stored: Vec<String> = pg
        .query("select secret from vault.secrets where name = 'edgesync_embed_webhook_secret'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, ["second-secret-0123456789"]);
    // No secret in any function body, nor in a cron command: pg_proc and cron.job are
    // readable by every role.
    let in_bodies: i64 =
        pg.query_one("select count(*) from pg_proc where prosrc like '%-secret-0123456789%'", &[]).unwrap().get(0);
    assert_eq!(in_bodies, 0);
    let jobs = jobs(&mut pg);
    assert_eq!(jobs.len(), 4, "{jobs:?}");
    let (name, schedule, command) = &jobs[0];
    assert_eq!((name.as_str(), schedule.as_str()), ("edgesync-embed-drain", "* * * * *"));
    assert!(
        command.contains("https://edge.example.test/embed_entry/drain") && !command.contains("0123456789"),
        "{command}"
    );
    // A bad call stores nothing.
    let refused = pg.query_one("select edgesync.configure_embed_webhook($1, $2)", &[&"ftp://x", &"short"]);
    assert!(refused.is_err());
}

/// On Supabase the live trigger's notice also goes through pg_net, once configured,
/// with the secret read from Vault at call time.
#[test]
fn live_pokes_go_through_pg_net_with_the_secret_from_vault() {
    let info = stack();
    let fresh = FreshDatabase::create(&info);
    fresh.bootstrap();
    postgres::Client::connect(&fresh.url(&info.database_url), postgres::NoTls)
        .unwrap()
        .batch_execute(HOSTED_STAND_INS)
        .unwrap();
    let url = fresh.url(&info.postgres_url);
    db_push(&info, &url);
    let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let pokes = |pg: &mut postgres::Client| -> Vec<(String, serde_json::Value, String)> {
        pg.query(
            "select url, body::text, headers ->> 'x-live-secret' from net.requests where url like '%/live/poke'
              order by id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), serde_json::from_str(r.get::<_, &str>(1)).unwrap(), r.get(2)))
        .collect()
    };
    let write = |pg: &mut postgres::Client, user: &str| {
        let mut tx = pg.transaction().unwrap();
        tx.batch_execute(&format!(
            "set local role authenticated;
             select set_config('request.jwt.claims', '{{\"sub\": \"{user}\", \"role\": \"authenticated\"}}', true);
             insert into public.entries (title) values ('a'), ('b');"
        ))
        .unwrap();
        let txid: String = tx.query_one("select edgesync.sync_position()::text", &[]).unwrap().get(0);
        tx.commit().unwrap();
        txid.parse::<u64>().unwrap()
    };
    // Not configured: NOTIFY only.
    write(&mut pg, &uuid());
    assert!(pokes(&mut pg).is_empty());
    let target = "https://edge.example.test/live/poke";
    let said: String = pg
        .query_one("select edgesync.configure_live_pokes($1, $2)", &[&target, &"live-secret-0123456789"])
        .unwrap()
        .get(0);
    assert!(said.contains(target) && said.contains("Vault"), "{said}");
    let user = uuid();
    let txid = write(&mut pg, &user);
    let sent = pokes(&mut pg);
    assert_eq!(sent.len(), 1, "one request for the two-row statement: {sent:?}");
    assert_eq!(sent[0].0, target);
    assert_eq!(sent[0].1, serde_json::json!({"checkpoint": (txid + 1).to_string(), "users": [user]}));
    assert_eq!(sent[0].2, "live-secret-0123456789");
    let in_bodies: i64 =
        pg.query_one("select count(*) from pg_proc where prosrc like '%live-secret-0123456789%'", &[]).unwrap().get(0);
    assert_eq!(in_bodies, 0, "the secret is only in Vault");
    // Bad calls are refused; `null` stops the pg_net pokes.
    assert!(pg
        .query_one("select edgesync.configure_live_pokes($1, $2)", &[&"https://x/elsewhere", &"live-secret-0123456789"])
        .is_err());
    assert!(pg.query_one("select edgesync.configure_live_pokes($1, $2)", &[&target, &"short"]).is_err());
    pg.query_one("select edgesync.configure_live_pokes(null, null)", &[]).unwrap();
    write(&mut pg, &uuid());
    assert_eq!(pokes(&mut pg).len(), 1);
}

/// `sql/current/` holds the definition every function has after all migrations, one
/// file per function (`<schema>.<name>.sql`, overloads together), as Postgres prints it
/// (`pg_get_functiondef`): a function restated by a later migration is still found in
/// one place. Read from a new database that only the migrations touched; it fails when
/// the committed copy differs. `EDGESYNC_UPDATE_SQL_CURRENT=1` rewrites the directory.
#[test]
fn sql_current_holds_the_definition_of_every_function_after_the_migrations() {
    let info = stack();
    let paths = xtask::tools::Paths::discover().unwrap();
    let fresh = FreshDatabase::create(&info);
    fresh.bootstrap();
    db_push(&info, &fresh.url(&info.postgres_url));
    let mut pg = postgres::Client::connect(&fresh.url(&info.database_url), postgres::NoTls).unwrap();
    let rows = pg
        .query(
            "select n.nspname || '.' || p.proname || '.sql', pg_get_functiondef(p.oid)
               from pg_proc p join pg_namespace n on n.oid = p.pronamespace
              where n.nspname in ('public', 'edgesync') and p.prokind in ('f', 'p')
                and not exists (select from pg_depend d where d.classid = 'pg_proc'::regclass
                                   and d.objid = p.oid and d.deptype = 'e')
              order by 1, pg_get_function_identity_arguments(p.oid)",
            &[],
        )
        .unwrap();
    let mut want = std::collections::BTreeMap::<String, String>::new();
    for row in &rows {
        let def = want.entry(row.get(0)).or_insert_with(|| {
            "-- Generated from the database after every migration (tests/migrations.rs); do not edit.\n".to_owned()
        });
        def.push('\n');
        def.push_str(row.get::<_, &str>(1).trim_end());
        def.push_str(";\n");
    }
    assert!(want.len() > 20, "too few functions to be edgesync's: {:?}", want.keys());
    let dir = paths.root.join("sql/current");
    if std::env::var_os("EDGESYNC_UPDATE_SQL_CURRENT").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, def) in &want {
            std::fs::write(dir.join(file), def).unwrap();
        }
    }
    let have: std::collections::BTreeMap<String, String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).unwrap()))
                .collect()
        })
        .unwrap_or_default();
    let stale: Vec<&String> = want.keys().filter(|f| have.get(*f) != want.get(*f)).collect();
    let extra: Vec<&String> = have.keys().filter(|f| !want.contains_key(*f)).collect();
    assert!(
        stale.is_empty() && extra.is_empty(),
        "sql/current/ differs from the migrations: stale or missing {stale:?}, extra {extra:?}; \
         rerun this test with EDGESYNC_UPDATE_SQL_CURRENT=1 and commit the result"
    );
}
