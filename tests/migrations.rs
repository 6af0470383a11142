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
    xtask::util::output(
        xtask::db::psql(&info.pg_bin, &fresh.url(&info.database_url))
            .arg("-v")
            .arg(format!("authpw={}", info.authenticator_password))
            .arg("-v")
            .arg(format!("pgpw={}", info.postgres_password))
            .arg("-f")
            .arg(paths.root.join("sql/bootstrap/local_supabase.sql")),
    )
    .expect("bootstrap the new database as supabase_admin");
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
    // Transaction ids are the cluster's: a write running in another database of the
    // stack holds the pull's watermark too, so wait until the row is below it.
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
