//! The stack's Postgres: its data directory and system user (it refuses to run as
//! root), starting it, `psql`, and applying `sql/` as Supabase would.

use super::*;

/// Where Postgres keeps its data. As root, outside the clone, in a directory the
/// unprivileged Postgres user can reach (a clone under /root is private).
pub(super) fn pgdata_dir(stack_dir: &Path) -> PathBuf {
    if util::is_root() {
        let key = &util::sha256_hex(stack_dir.to_string_lossy().as_bytes())[..16];
        PathBuf::from("/var/lib/edgesync").join(key).join("pgdata")
    } else {
        stack_dir.join("pgdata")
    }
}

pub(super) fn ensure_system_user() -> Result<Option<(String, RunAs)>> {
    if !util::is_root() {
        return Ok(None);
    }
    if procs::lookup_user(PG_SYSTEM_USER).is_none() {
        step(format!("creating system user {PG_SYSTEM_USER} (Postgres refuses to run as root)"));
        util::run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            PG_SYSTEM_USER,
        ]))?;
    }
    let ids = procs::lookup_user(PG_SYSTEM_USER).context(format!("user {PG_SYSTEM_USER} was not created"))?;
    Ok(Some((PG_SYSTEM_USER.to_owned(), ids)))
}

pub(super) fn chown(path: &Path, who: Option<RunAs>) -> Result<()> {
    if let Some(u) = who {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).context(format!("chown {}", path.display()))?;
    }
    Ok(())
}

pub(super) fn start_postgres(info: &mut StackInfo, run_as: Option<RunAs>, fresh: bool) -> Result<()> {
    let pgdata = info.pgdata.clone();
    let parent = pgdata.parent().context("pgdata has no parent")?.to_path_buf();
    if fresh && pgdata.exists() {
        fs_err::remove_dir_all(&pgdata).context(format!("could not remove {}", pgdata.display()))?;
    }
    fs_err::create_dir_all(&parent)?;
    chown(&parent, run_as)?;
    if !pgdata.join("PG_VERSION").is_file() {
        step(format!("initdb {}", pgdata.display()));
        let pwfile = parent.join(".pwfile");
        fs_err::write(&pwfile, &info.admin_password)?;
        chown(&pwfile, run_as)?;
        let mut cmd = Command::new(info.pg_bin.join("initdb"));
        cmd.arg("-D")
            .arg(&pgdata)
            .args([
                // As on Supabase: the superuser is supabase_admin; `postgres` is made by
                // the bootstrap, without superuser.
                "-U",
                "supabase_admin",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        if let Some(u) = run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(u.uid).gid(u.gid);
        }
        let result = output(&mut cmd);
        let _ = fs_err::remove_file(&pwfile);
        result.context("initdb failed")?;
    }
    let log = info.logs_dir.join("postgres.log");
    let extensions = privileged_extensions_path(&info.pg_bin, &parent.join("privileged-extensions"))?;
    let mut cmd = Command::new(info.pg_bin.join("postgres"));
    cmd.arg("-D").arg(&pgdata).args([
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        &format!("port={}", info.ports.postgres),
        "-c",
        "unix_socket_directories=",
        // A throwaway development cluster: surviving a crash of the machine is not the
        // point, speed is. A crash of Postgres alone must still keep every commit it
        // acknowledged (the convergence test crashes it), so commits stay synchronous:
        // with fsync off that is one write(2) to the WAL per commit, not a flush.
        "-c",
        "fsync=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=200",
        // A forgotten open transaction holds back every user's sync watermark.
        "-c",
        "idle_in_transaction_session_timeout=60s",
        "-c",
        &extensions,
    ]);
    info.pids.postgres = procs::spawn(cmd, &log, run_as)?;
    let pid = info.pids.postgres;
    let isready = info.pg_bin.join("pg_isready");
    let port = info.ports.postgres.to_string();
    wait_for("Postgres to accept connections", Duration::from_secs(60), || {
        if !procs::alive(pid) {
            bail!("Postgres exited:\n{}", tail(&log, 20));
        }
        let ok = Command::new(&isready)
            .args(["-q", "-h", "127.0.0.1", "-p", &port])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        Ok(ok.then_some(()))
    })
}

/// psql as the superuser (`supabase_admin`) over TCP.
pub fn psql(info: &StackInfo) -> Command {
    crate::db::psql(&info.pg_bin, &info.database_url)
}

/// Supabase lets its non-superuser `postgres` create `vector` (and its other
/// "privileged extensions") through the supautils extension. Emulated here the
/// simplest honest way: Postgres 18 reads extension control files from
/// `extension_control_path`, and the server is started with `root` first on it.
/// `root/extension/` links to every file of the installation's own extension directory
/// except `vector.control`, a copy marked `trusted = true`. A trusted extension may be
/// created by any role with CREATE on the database, and its objects are made as the
/// bootstrap superuser, which is what supautils does for `postgres`. Nothing else
/// changes: the same server, libraries and extensions. Returns the setting's value.
pub(super) fn privileged_extensions_path(pg_bin: &Path, root: &Path) -> Result<String> {
    let sharedir = PathBuf::from(output(Command::new(pg_bin.join("pg_config")).arg("--sharedir"))?.trim());
    let (system, ours) = (sharedir.join("extension"), root.join("extension"));
    if root.exists() {
        fs_err::remove_dir_all(root).context(format!("could not remove {}", root.display()))?;
    }
    fs_err::create_dir_all(&ours)?;
    let mut trusted = false;
    for entry in fs_err::read_dir(&system).context(format!("could not read {}", system.display()))? {
        let path = entry?.path();
        let target = ours.join(path.file_name().context("no file name")?);
        if path.file_name().is_some_and(|n| n == "vector.control") {
            let control = fs_err::read_to_string(&path)?;
            fs_err::write(&target, format!("{}\ntrusted = true\n", control.trim_end()))?;
            trusted = true;
        } else {
            std::os::unix::fs::symlink(&path, &target).context(format!("could not link {}", target.display()))?;
        }
    }
    if !trusted {
        bail!("pgvector is not installed in {} (run `cargo xtask setup`)", system.display());
    }
    Ok(format!("extension_control_path={}:$system", root.display()))
}

/// `EXPECTED_SCHEMA_VERSION` as written in the shared crate's source; xtask does not
/// depend on that crate, and the tests must not drift from it.
pub fn expected_schema_version(paths: &Paths) -> Result<i64> {
    let src = fs_err::read_to_string(paths.root.join("shared/src/lib.rs"))?;
    src.lines()
        .find_map(|l| l.strip_prefix("pub const EXPECTED_SCHEMA_VERSION: i64 = "))
        .and_then(|v| v.trim().trim_end_matches(';').parse().ok())
        .context("shared/src/lib.rs has no EXPECTED_SCHEMA_VERSION")
}

/// Local bootstrap (what Supabase provides) once, as the superuser `supabase_admin`;
/// then each migration not yet applied, as `postgres`, which is not a superuser, the
/// way `supabase db push` or `cargo xtask db push` applies them to a hosted project.
pub(super) fn apply_sql(paths: &Paths, info: &StackInfo, fresh: bool) -> Result<()> {
    let has_roles = output(psql(info).args(["-tAc", "select count(*) from pg_roles where rolname = 'authenticator'"]))?;
    if fresh || has_roles.trim() == "0" {
        step("applying sql/bootstrap/local_supabase.sql as supabase_admin");
        output(
            psql(info)
                .arg("-v")
                .arg(format!("authpw={}", info.authenticator_password))
                .arg("-v")
                .arg(format!("pgpw={}", info.postgres_password))
                .arg("-f")
                .arg(paths.root.join("sql/bootstrap/local_supabase.sql")),
        )?;
    }
    crate::db::apply_pending(paths, &info.pg_bin, &info.postgres_url, &mut |m| {
        step(format!("applying sql/migrations/{} as postgres", m.file_name()))
    })?;
    Ok(())
}

pub fn schema_version(info: &StackInfo) -> Result<i64> {
    crate::db::schema_version(&info.pg_bin, &info.database_url)
}
