//! The local store: one SQLite database holding
//!
//! - the **server layer** (`_es_server`): rows exactly as `/sync` delivered them, up to
//!   the stored cursor;
//! - the **outbox** (`_es_outbox`): the app's mutations in PowerSync `CrudEntry` shape,
//!   pending until `/upload` acknowledges them, then kept (as *acknowledged*) until a
//!   pull has reached their write checkpoint;
//! - one **app table per synced table** (`entries`, `sync_entities`, …; columns `id`
//!   and `data` JSON): the server layer with every outbox entry of the row replayed on
//!   top, in op_id order. This is what the app reads, and it never shows a server
//!   version older than one of the device's own writes;
//! - logs of **rejected** mutations and of **conflicts** the server reported, for the
//!   app to show.
//!
//! Every change (a local write, an acknowledgement, a pulled page with its cursor) is
//! one SQLite transaction, so a crash at any point leaves a state the engine resumes
//! from. Nothing here touches the network.

use edgesync_shared::sync::valid_table_name;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::path::Path;

/// A failure of the local store (SQLite) or of the app's input to it.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreError {
    /// The app asked for something invalid (a bad table name, id or row).
    Invalid(String),
    /// SQLite failed.
    Sqlite(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Invalid(m) => write!(f, "invalid: {m}"),
            StoreError::Sqlite(m) => write!(f, "local database: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A mutation's kind, as in PowerSync's `UpdateType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace the whole row.
    Put,
    /// Change only the given columns of a live row.
    Patch,
    /// Delete the row (a tombstone on the server).
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "PUT",
            Op::Patch => "PATCH",
            Op::Delete => "DELETE",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "PUT" => Some(Op::Put),
            "PATCH" => Some(Op::Patch),
            "DELETE" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// A change the app makes.
#[derive(Clone, Debug, PartialEq)]
pub struct Mutation {
    pub table: String,
    pub op: Op,
    pub id: String,
    /// The columns (PUT: the whole row; PATCH: the changed columns; DELETE: none).
    pub data: Option<Map<String, Value>>,
}

/// An outbox entry, as sent to `/upload`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEntry {
    pub op_id: i64,
    pub table: String,
    pub op: Op,
    pub id: String,
    pub data: Option<Value>,
    /// The cursor the app's view was at when it made the change (for conflict
    /// detection on the server).
    pub base_cursor: Option<String>,
}

impl OutboxEntry {
    /// The entry in PowerSync `CrudEntry.toJSON()` shape plus `base_cursor`.
    pub fn to_crud_entry(&self) -> Value {
        let mut m = Map::new();
        m.insert("op_id".into(), self.op_id.into());
        m.insert("op".into(), self.op.as_str().into());
        m.insert("type".into(), self.table.clone().into());
        m.insert("id".into(), self.id.clone().into());
        if let Some(d) = &self.data {
            m.insert("data".into(), d.clone());
        }
        if let Some(c) = &self.base_cursor {
            m.insert("base_cursor".into(), c.clone().into());
        }
        Value::Object(m)
    }
}

/// How `/upload` answered for one mutation.
#[derive(Clone, Debug, PartialEq)]
pub struct Ack {
    pub op_id: i64,
    /// `applied`, `duplicate` or `conflict`.
    pub status: String,
    /// An applied write that overwrote someone else's change (last write wins).
    pub conflict: bool,
    pub reason: Option<String>,
    pub server_row: Option<Value>,
}

/// A mutation the server refused; it is out of the outbox and in the rejected log.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub op_id: i64,
    pub table: String,
    pub op: Op,
    pub id: String,
    pub data: Option<Value>,
    pub code: String,
    pub message: String,
}

/// One `/sync` page, decoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// (table, upserted rows, deleted ids)
    pub changes: Vec<(String, Vec<Value>, Vec<String>)>,
    pub cursor: String,
    pub has_more: bool,
    pub checkpoint: u64,
}

/// What applying a page did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    pub upserted: usize,
    pub deleted: usize,
    /// Acknowledged outbox entries the page's checkpoint covered (now settled).
    pub settled: usize,
    /// Rows dropped at the end of a rebuild because the server no longer has them.
    pub dropped: usize,
}

/// Counts for `status()`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Counts {
    /// Entries not yet acknowledged by the server.
    pub outbox: u64,
    /// Acknowledged entries a pull has not yet caught up with.
    pub awaiting_checkpoint: u64,
    pub rejected: u64,
    pub conflicts: u64,
}

/// Replay one outbox entry on top of a row (`None`: no live row). Pure; this is the
/// whole local conflict model: PUT replaces, PATCH merges into a live row (and does
/// nothing to a missing one, as the server would), DELETE removes.
pub fn overlay(base: Option<Value>, op: Op, id: &str, data: Option<&Value>, user_id: Option<&str>) -> Option<Value> {
    match op {
        Op::Delete => None,
        Op::Put => {
            let mut row = data.and_then(Value::as_object).cloned().unwrap_or_default();
            row.insert("id".into(), id.into());
            if let Some(u) = user_id {
                row.entry("user_id").or_insert_with(|| u.into());
            }
            Some(Value::Object(row))
        }
        Op::Patch => {
            let mut row = base?;
            if let (Some(r), Some(d)) = (row.as_object_mut(), data.and_then(Value::as_object)) {
                for (k, v) in d {
                    if k != "id" {
                        r.insert(k.clone(), v.clone());
                    }
                }
            }
            Some(row)
        }
    }
}

/// Is `id` a UUID in its canonical text form (what the server's `uuid` columns take)?
pub fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A table name the store can mirror: a plain lower-case identifier that is not one
/// of the store's own (`_es_…`) or SQLite's.
pub fn valid_local_table(name: &str) -> bool {
    valid_table_name(name) && !name.starts_with("_es_") && !name.starts_with("sqlite_")
}

/// A fresh random UUID (v4).
pub fn random_uuid() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the OS random source failed");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

const SCHEMA: &str = "
create table if not exists _es_meta (key text primary key, value text not null);
create table if not exists _es_tables (name text primary key);
create table if not exists _es_server (
  tbl text not null, id text not null, data text not null, gen integer not null,
  primary key (tbl, id)) without rowid;
create table if not exists _es_outbox (
  op_id integer primary key, tbl text not null, op text not null, id text not null,
  data text, base_cursor text, queued_at integer not null,
  attempts integer not null default 0, last_error text,
  -- null while pending; the write checkpoint once /upload acknowledged it
  acked_checkpoint integer);
create index if not exists _es_outbox_row on _es_outbox (tbl, id, op_id);
create index if not exists _es_outbox_acked on _es_outbox (acked_checkpoint) where acked_checkpoint is not null;
create table if not exists _es_rejected (
  op_id integer primary key, tbl text not null, op text not null, id text not null, data text,
  code text not null, message text not null, at integer not null);
create table if not exists _es_conflicts (
  seq integer primary key autoincrement, op_id integer not null, tbl text not null, id text not null,
  status text not null, reason text, server_row text, at integer not null);
";

/// How many conflict reports are kept (oldest dropped first).
pub const CONFLICT_LOG_LIMIT: i64 = 1000;

pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        Store::init(Connection::open(path)?)
    }

    pub fn open_in_memory() -> Result<Store> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        let store = Store { conn };
        if store.meta("client_id")?.is_none() {
            store.set_meta("client_id", &random_uuid())?;
        }
        Ok(store)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("select value from _es_meta where key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        set_meta(&self.conn, key, value)
    }

    pub fn delete_meta(&self, key: &str) -> Result<()> {
        self.conn.execute("delete from _es_meta where key = ?1", [key])?;
        Ok(())
    }

    /// A numeric meta value (timestamps, counters).
    pub fn meta_i64(&self, key: &str) -> Result<Option<i64>> {
        Ok(self.meta(key)?.and_then(|v| v.parse().ok()))
    }

    /// This install's id (the idempotency scope of op_ids on the server).
    pub fn client_id(&self) -> Result<String> {
        self.meta("client_id")?.ok_or_else(|| StoreError::Sqlite("client_id is missing".into()))
    }

    pub fn cursor(&self) -> Result<Option<String>> {
        self.meta("cursor")
    }

    /// The checkpoint of the last applied page (0 before the first).
    pub fn checkpoint(&self) -> Result<u64> {
        Ok(self.meta_i64("checkpoint")?.unwrap_or(0) as u64)
    }

    /// The user the local data belongs to (from the token's `sub`).
    pub fn user_id(&self) -> Result<Option<String>> {
        self.meta("user_id")
    }

    /// Write locally and append to the outbox, in one transaction. Returns the op_id.
    pub fn queue(&mut self, m: &Mutation) -> Result<i64> {
        if !valid_local_table(&m.table) {
            return Err(StoreError::Invalid(format!("{:?} is not a table name", m.table)));
        }
        if !valid_id(&m.id) {
            return Err(StoreError::Invalid(format!("{:?} is not a UUID", m.id)));
        }
        if let Some(d) = &m.data {
            if let Some(other) = d.get("id").filter(|v| v.as_str() != Some(m.id.as_str())) {
                return Err(StoreError::Invalid(format!("data.id {other} differs from the mutation's id")));
            }
        }
        let data = match m.op {
            Op::Delete => None,
            _ => Some(Value::Object(m.data.clone().unwrap_or_default())),
        };
        let user = self.user_id()?;
        let tx = self.conn.transaction()?;
        let op_id: i64 = get_meta(&tx, "next_op_id")?.and_then(|v| v.parse().ok()).unwrap_or(1);
        let base_cursor = get_meta(&tx, "cursor")?;
        tx.execute(
            "insert into _es_outbox (op_id, tbl, op, id, data, base_cursor, queued_at) values (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![op_id, m.table, m.op.as_str(), m.id, data.map(|d| d.to_string()), base_cursor, now_ms()],
        )?;
        set_meta(&tx, "next_op_id", &(op_id + 1).to_string())?;
        ensure_table(&tx, &m.table)?;
        recompute(&tx, &m.table, &m.id, user.as_deref())?;
        tx.commit()?;
        Ok(op_id)
    }

    /// The oldest `limit` entries the server has not acknowledged, in op_id order.
    pub fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "select op_id, tbl, op, id, data, base_cursor from _es_outbox
              where acked_checkpoint is null order by op_id limit ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (op_id, table, op, id, data, base_cursor) = row?;
            out.push(OutboxEntry {
                op_id,
                table,
                op: Op::parse(&op).ok_or_else(|| StoreError::Sqlite(format!("outbox op {op:?}")))?,
                id,
                data: data
                    .map(|d| serde_json::from_str(&d))
                    .transpose()
                    .map_err(|e| StoreError::Sqlite(e.to_string()))?,
                base_cursor,
            });
        }
        Ok(out)
    }

    /// Note a failed attempt on entries that stay in the outbox.
    pub fn note_attempt(&mut self, op_ids: &[i64], error: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        for op_id in op_ids {
            tx.execute(
                "update _es_outbox set attempts = attempts + 1, last_error = ?2 where op_id = ?1",
                params![op_id, error],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Record `/upload`'s answer, in one transaction: applied and duplicate entries
    /// become acknowledged (kept until a pull reaches `write_checkpoint`); `conflict`
    /// entries (the server kept its row) leave the outbox; every conflict is logged.
    pub fn record_acks(&mut self, acks: &[Ack], write_checkpoint: u64) -> Result<()> {
        let user = self.user_id()?;
        let tx = self.conn.transaction()?;
        let now = now_ms();
        for a in acks {
            let Some((tbl, id)) = tx
                .query_row("select tbl, id from _es_outbox where op_id = ?1", [a.op_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()?
            else {
                continue;
            };
            if a.conflict || a.status == "conflict" {
                tx.execute(
                    "insert into _es_conflicts (op_id, tbl, id, status, reason, server_row, at) values (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![a.op_id, tbl, id, a.status, a.reason, a.server_row.as_ref().map(Value::to_string), now],
                )?;
            }
            if a.status == "conflict" {
                tx.execute("delete from _es_outbox where op_id = ?1", [a.op_id])?;
                recompute(&tx, &tbl, &id, user.as_deref())?;
            } else {
                tx.execute(
                    "update _es_outbox set acked_checkpoint = ?2, last_error = null where op_id = ?1",
                    params![a.op_id, write_checkpoint as i64],
                )?;
            }
        }
        tx.execute(
            "delete from _es_conflicts where seq <= (select max(seq) from _es_conflicts) - ?1",
            [CONFLICT_LOG_LIMIT],
        )?;
        set_meta(&tx, "last_push_at", &now.to_string())?;
        tx.commit()?;
        Ok(())
    }

    /// Move refused entries out of the outbox into the rejected log (one transaction)
    /// and show the rows without them again.
    pub fn reject(&mut self, rejected: &[(i64, String, String)]) -> Result<Vec<Rejection>> {
        let user = self.user_id()?;
        let tx = self.conn.transaction()?;
        let mut out = Vec::new();
        for (op_id, code, message) in rejected {
            let Some((tbl, op, id, data)) = tx
                .query_row("select tbl, op, id, data from _es_outbox where op_id = ?1", [op_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                })
                .optional()?
            else {
                continue;
            };
            tx.execute(
                "insert or replace into _es_rejected (op_id, tbl, op, id, data, code, message, at)
                 values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![op_id, tbl, op, id, data, code, message, now_ms()],
            )?;
            tx.execute("delete from _es_outbox where op_id = ?1", [op_id])?;
            recompute(&tx, &tbl, &id, user.as_deref())?;
            out.push(Rejection {
                op_id: *op_id,
                table: tbl,
                op: Op::parse(&op).unwrap_or(Op::Put),
                id,
                data: data.and_then(|d| serde_json::from_str(&d).ok()),
                code: code.clone(),
                message: message.clone(),
            });
        }
        tx.commit()?;
        Ok(out)
    }

    /// Forget the cursor and rebuild the server layer from a full pull; rows the full
    /// pull does not deliver again are dropped when it ends. The outbox is untouched.
    pub fn begin_resync(&mut self) -> Result<()> {
        let tx = self.conn.transaction()?;
        let gen = get_meta(&tx, "gen")?.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        set_meta(&tx, "gen", &(gen + 1).to_string())?;
        set_meta(&tx, "resyncing", "1")?;
        tx.execute("delete from _es_meta where key in ('cursor', 'checkpoint')", [])?;
        tx.commit()?;
        Ok(())
    }

    pub fn resyncing(&self) -> Result<bool> {
        Ok(self.meta("resyncing")?.is_some())
    }

    /// Apply one `/sync` page and its cursor in one transaction: the server layer
    /// takes the rows; acknowledged outbox entries whose write checkpoint the page
    /// reached are settled (their effect is now in the server layer, or superseded);
    /// the app tables are recomputed for every row touched.
    pub fn apply_page(&mut self, page: &Page) -> Result<Applied> {
        let user = self.user_id()?;
        let tx = self.conn.transaction()?;
        let gen = get_meta(&tx, "gen")?.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let mut touched = BTreeSet::new();
        let mut applied = Applied::default();
        for (tbl, upserted, deleted) in &page.changes {
            if !valid_local_table(tbl) {
                return Err(StoreError::Invalid(format!("the server sent table {tbl:?}")));
            }
            ensure_table(&tx, tbl)?;
            {
                let mut up = tx.prepare_cached(
                    "insert into _es_server (tbl, id, data, gen) values (?1, ?2, ?3, ?4)
                     on conflict (tbl, id) do update set data = excluded.data, gen = excluded.gen",
                )?;
                for row in upserted {
                    let id = row
                        .get("id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| StoreError::Invalid(format!("a row of {tbl} has no id")))?;
                    up.execute(params![tbl, id, row.to_string(), gen])?;
                    touched.insert((tbl.clone(), id.to_owned()));
                    applied.upserted += 1;
                }
                let mut del = tx.prepare_cached("delete from _es_server where tbl = ?1 and id = ?2")?;
                for id in deleted {
                    del.execute(params![tbl, id])?;
                    touched.insert((tbl.clone(), id.clone()));
                    applied.deleted += 1;
                }
            }
        }
        set_meta(&tx, "cursor", &page.cursor)?;
        set_meta(&tx, "checkpoint", &page.checkpoint.to_string())?;
        {
            let mut settled = tx.prepare_cached("select tbl, id from _es_outbox where acked_checkpoint <= ?1")?;
            for row in settled.query_map([page.checkpoint as i64], |r| Ok((r.get(0)?, r.get(1)?)))? {
                touched.insert(row?);
                applied.settled += 1;
            }
        }
        tx.execute("delete from _es_outbox where acked_checkpoint <= ?1", [page.checkpoint as i64])?;
        if !page.has_more && get_meta(&tx, "resyncing")?.is_some() {
            {
                let mut stale = tx.prepare_cached("select tbl, id from _es_server where gen < ?1")?;
                for row in stale.query_map([gen], |r| Ok((r.get(0)?, r.get(1)?)))? {
                    touched.insert(row?);
                    applied.dropped += 1;
                }
            }
            tx.execute("delete from _es_server where gen < ?1", [gen])?;
            tx.execute("delete from _es_meta where key = 'resyncing'", [])?;
        }
        for (tbl, id) in &touched {
            recompute(&tx, tbl, id, user.as_deref())?;
        }
        set_meta(&tx, "last_pull_at", &now_ms().to_string())?;
        tx.commit()?;
        Ok(applied)
    }

    /// The row the app sees.
    pub fn get(&self, table: &str, id: &str) -> Result<Option<Value>> {
        if !self.has_table(table)? {
            return Ok(None);
        }
        let data: Option<String> = self
            .conn
            .query_row(&format!("select data from \"{table}\" where id = ?1"), [id], |r| r.get(0))
            .optional()?;
        data.map(|d| serde_json::from_str(&d).map_err(|e| StoreError::Sqlite(e.to_string()))).transpose()
    }

    /// Every row of `table` the app sees, by id.
    pub fn list(&self, table: &str) -> Result<Vec<Value>> {
        if !self.has_table(table)? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(&format!("select data from \"{table}\" order by id"))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for d in rows {
            out.push(serde_json::from_str(&d?).map_err(|e| StoreError::Sqlite(e.to_string()))?);
        }
        Ok(out)
    }

    /// The tables the store mirrors so far.
    pub fn tables(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("select name from _es_tables order by name")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn has_table(&self, table: &str) -> Result<bool> {
        if !valid_local_table(table) {
            return Err(StoreError::Invalid(format!("{table:?} is not a table name")));
        }
        Ok(self.conn.query_row("select exists (select 1 from _es_tables where name = ?1)", [table], |r| r.get(0))?)
    }

    pub fn counts(&self) -> Result<Counts> {
        Ok(self.conn.query_row(
            "select (select count(*) from _es_outbox where acked_checkpoint is null),
                    (select count(*) from _es_outbox where acked_checkpoint is not null),
                    (select count(*) from _es_rejected),
                    (select count(*) from _es_conflicts)",
            [],
            |r| {
                Ok(Counts {
                    outbox: r.get::<_, i64>(0)? as u64,
                    awaiting_checkpoint: r.get::<_, i64>(1)? as u64,
                    rejected: r.get::<_, i64>(2)? as u64,
                    conflicts: r.get::<_, i64>(3)? as u64,
                })
            },
        )?)
    }

    /// The rejected log, oldest first.
    pub fn rejections(&self) -> Result<Vec<Rejection>> {
        let mut stmt =
            self.conn.prepare("select op_id, tbl, op, id, data, code, message from _es_rejected order by op_id")?;
        let rows = stmt.query_map([], |r| {
            Ok(Rejection {
                op_id: r.get(0)?,
                table: r.get(1)?,
                op: Op::parse(&r.get::<_, String>(2)?).unwrap_or(Op::Put),
                id: r.get(3)?,
                data: r.get::<_, Option<String>>(4)?.and_then(|d| serde_json::from_str(&d).ok()),
                code: r.get(5)?,
                message: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// The conflict log, oldest first.
    pub fn conflicts(&self) -> Result<Vec<Ack>> {
        let mut stmt = self.conn.prepare("select op_id, status, reason, server_row from _es_conflicts order by seq")?;
        let rows = stmt.query_map([], |r| {
            Ok(Ack {
                op_id: r.get(0)?,
                conflict: true,
                status: r.get(1)?,
                reason: r.get(2)?,
                server_row: r.get::<_, Option<String>>(3)?.and_then(|d| serde_json::from_str(&d).ok()),
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// The server layer's row (tests and diagnostics).
    pub fn server_row(&self, table: &str, id: &str) -> Result<Option<Value>> {
        let data: Option<String> = self
            .conn
            .query_row("select data from _es_server where tbl = ?1 and id = ?2", [table, id], |r| r.get(0))
            .optional()?;
        Ok(data.and_then(|d| serde_json::from_str(&d).ok()))
    }
}

fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn.query_row("select value from _es_meta where key = ?1", [key], |r| r.get(0)).optional()?)
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "insert into _es_meta (key, value) values (?1, ?2) on conflict (key) do update set value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

/// Create the app table for a synced table (the name is checked by the caller).
fn ensure_table(tx: &Transaction, table: &str) -> Result<()> {
    if tx.execute("insert or ignore into _es_tables (name) values (?1)", [table])? == 1 {
        tx.execute_batch(&format!("create table if not exists \"{table}\" (id text primary key, data text not null)"))?;
    }
    Ok(())
}

/// Recompute the app's row: the server layer's version with the row's outbox entries
/// (pending and acknowledged-but-unsettled) replayed on top in op_id order.
fn recompute(tx: &Transaction, table: &str, id: &str, user_id: Option<&str>) -> Result<()> {
    let mut row: Option<Value> = tx
        .query_row("select data from _es_server where tbl = ?1 and id = ?2", [table, id], |r| r.get::<_, String>(0))
        .optional()?
        .and_then(|d| serde_json::from_str(&d).ok());
    {
        let mut stmt =
            tx.prepare_cached("select op, data from _es_outbox where tbl = ?1 and id = ?2 order by op_id")?;
        let ops = stmt.query_map([table, id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)))?;
        for op in ops {
            let (op, data) = op?;
            let data: Option<Value> = data.and_then(|d| serde_json::from_str(&d).ok());
            let op = Op::parse(&op).ok_or_else(|| StoreError::Sqlite(format!("outbox op {op:?}")))?;
            row = overlay(row, op, id, data.as_ref(), user_id);
        }
    }
    match row {
        Some(r) => tx.execute(
            &format!(
                "insert into \"{table}\" (id, data) values (?1, ?2) on conflict (id) do update set data = excluded.data"
            ),
            params![id, r.to_string()],
        )?,
        None => tx.execute(&format!("delete from \"{table}\" where id = ?1"), [id])?,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "00000000-0000-4000-8000-00000000000a";
    const B: &str = "00000000-0000-4000-8000-00000000000b";
    const USER: &str = "00000000-0000-4000-8000-0000000000ff";

    fn store() -> Store {
        let s = Store::open_in_memory().unwrap();
        s.set_meta("user_id", USER).unwrap();
        s
    }

    fn m(op: Op, id: &str, data: Value) -> Mutation {
        Mutation { table: "entries".into(), op, id: id.into(), data: data.as_object().cloned() }
    }

    fn page(rows: Vec<Value>, deleted: Vec<&str>, checkpoint: u64, has_more: bool) -> Page {
        Page {
            changes: vec![("entries".into(), rows, deleted.into_iter().map(str::to_owned).collect())],
            cursor: format!("c{checkpoint}"),
            has_more,
            checkpoint,
        }
    }

    fn ack(op_id: i64, status: &str) -> Ack {
        Ack { op_id, status: status.into(), conflict: false, reason: None, server_row: None }
    }

    #[test]
    fn overlay_put_replaces_patch_merges_delete_removes() {
        let base = Some(json!({"id": A, "title": "t", "body": "b"}));
        assert_eq!(
            overlay(base.clone(), Op::Put, A, Some(&json!({"title": "n"})), Some(USER)),
            Some(json!({"id": A, "title": "n", "user_id": USER}))
        );
        assert_eq!(
            overlay(base.clone(), Op::Patch, A, Some(&json!({"title": "n", "id": B})), None),
            Some(json!({"id": A, "title": "n", "body": "b"}))
        );
        assert_eq!(overlay(None, Op::Patch, A, Some(&json!({"title": "n"})), None), None);
        assert_eq!(overlay(base, Op::Delete, A, None, None), None);
    }

    #[test]
    fn a_local_write_is_visible_at_once_and_queued_with_increasing_op_ids() {
        let mut s = store();
        assert_eq!(s.queue(&m(Op::Put, A, json!({"title": "one"}))).unwrap(), 1);
        assert_eq!(s.queue(&m(Op::Patch, A, json!({"body": "x"}))).unwrap(), 2);
        assert_eq!(s.queue(&m(Op::Put, B, json!({}))).unwrap(), 3);
        assert_eq!(s.queue(&m(Op::Delete, B, json!(null))).unwrap(), 4);
        assert_eq!(s.get("entries", A).unwrap(), Some(json!({"id": A, "title": "one", "body": "x", "user_id": USER})));
        assert_eq!(s.get("entries", B).unwrap(), None);
        let pending = s.pending(10).unwrap();
        assert_eq!(pending.iter().map(|e| e.op_id).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(
            pending[1].to_crud_entry(),
            json!({"op_id": 2, "op": "PATCH", "type": "entries", "id": A, "data": {"body": "x"}})
        );
        assert_eq!(pending[3].to_crud_entry(), json!({"op_id": 4, "op": "DELETE", "type": "entries", "id": B}));
        assert_eq!(s.counts().unwrap().outbox, 4);
    }

    #[test]
    fn bad_local_input_is_refused_and_writes_nothing() {
        let mut s = store();
        for bad in [
            Mutation { table: "Entries; drop".into(), op: Op::Put, id: A.into(), data: None },
            Mutation { table: "_es_outbox".into(), op: Op::Put, id: A.into(), data: None },
            Mutation { table: "entries".into(), op: Op::Put, id: "not-a-uuid".into(), data: None },
            m(Op::Put, A, json!({"id": B})),
        ] {
            assert!(matches!(s.queue(&bad), Err(StoreError::Invalid(_))), "{bad:?}");
        }
        assert_eq!(s.counts().unwrap(), Counts::default());
        assert!(s.tables().unwrap().is_empty());
    }

    #[test]
    fn an_acknowledged_write_stays_visible_until_a_pull_reaches_its_checkpoint() {
        let mut s = store();
        s.apply_page(&page(vec![json!({"id": A, "title": "server v1"})], vec![], 10, false)).unwrap();
        s.queue(&m(Op::Patch, A, json!({"title": "mine"}))).unwrap();
        s.record_acks(&[ack(1, "applied")], 20).unwrap();
        assert_eq!(s.counts().unwrap().outbox, 0);
        assert_eq!(s.counts().unwrap().awaiting_checkpoint, 1);
        // A page below the write checkpoint brings an older version: the app still sees its write.
        let applied = s.apply_page(&page(vec![json!({"id": A, "title": "server v2"})], vec![], 15, false)).unwrap();
        assert_eq!(applied.settled, 0);
        assert_eq!(s.get("entries", A).unwrap().unwrap()["title"], "mine");
        assert_eq!(s.server_row("entries", A).unwrap().unwrap()["title"], "server v2");
        // The page that reaches it settles the entry; the server's row is now the truth.
        let applied = s.apply_page(&page(vec![json!({"id": A, "title": "mine"})], vec![], 20, false)).unwrap();
        assert_eq!(applied.settled, 1);
        assert_eq!(s.counts().unwrap(), Counts::default());
        assert_eq!(s.get("entries", A).unwrap(), Some(json!({"id": A, "title": "mine"})));
        assert_eq!(s.cursor().unwrap().as_deref(), Some("c20"));
    }

    #[test]
    fn pending_writes_survive_pages_that_touch_their_rows() {
        let mut s = store();
        s.queue(&m(Op::Put, A, json!({"title": "local"}))).unwrap();
        s.apply_page(&page(vec![json!({"id": A, "title": "server"})], vec![], 5, false)).unwrap();
        assert_eq!(s.get("entries", A).unwrap().unwrap()["title"], "local");
        s.queue(&m(Op::Delete, B, json!(null))).unwrap();
        s.apply_page(&page(vec![json!({"id": B, "title": "server"})], vec![], 6, false)).unwrap();
        assert_eq!(s.get("entries", B).unwrap(), None);
        assert_eq!(s.counts().unwrap().outbox, 2);
    }

    #[test]
    fn server_kept_conflicts_and_rejections_leave_the_outbox_visibly() {
        let mut s = store();
        s.apply_page(&page(vec![json!({"id": A, "title": "server"})], vec![], 5, false)).unwrap();
        s.queue(&m(Op::Patch, A, json!({"title": "mine"}))).unwrap();
        s.queue(&m(Op::Put, B, json!({"title": "bad"}))).unwrap();
        let kept = Ack {
            op_id: 1,
            status: "conflict".into(),
            conflict: false,
            reason: None,
            server_row: Some(json!({"id": A, "title": "server"})),
        };
        s.record_acks(&[kept], 9).unwrap();
        assert_eq!(s.get("entries", A).unwrap().unwrap()["title"], "server");
        let r = s.reject(&[(2, "invalid_value".into(), "no".into())]).unwrap();
        assert_eq!(r[0].table, "entries");
        assert_eq!(s.get("entries", B).unwrap(), None);
        assert_eq!(s.counts().unwrap(), Counts { outbox: 0, awaiting_checkpoint: 0, rejected: 1, conflicts: 1 });
        assert_eq!(s.rejections().unwrap()[0].code, "invalid_value");
        assert_eq!(s.conflicts().unwrap()[0].server_row, Some(json!({"id": A, "title": "server"})));
    }

    #[test]
    fn a_resync_drops_what_the_server_no_longer_has_and_keeps_the_outbox() {
        let mut s = store();
        s.apply_page(&page(vec![json!({"id": A, "title": "a"}), json!({"id": B, "title": "b"})], vec![], 5, false))
            .unwrap();
        let c = "00000000-0000-4000-8000-00000000000c";
        s.queue(&m(Op::Put, c, json!({"title": "pending"}))).unwrap();
        s.begin_resync().unwrap();
        assert_eq!(s.cursor().unwrap(), None);
        // The rebuild is two pages; B's tombstone was purged, so B never comes again.
        s.apply_page(&page(vec![json!({"id": A, "title": "a2"})], vec![], 7, true)).unwrap();
        assert!(s.get("entries", B).unwrap().is_some(), "rows stay until the rebuild completes");
        let applied = s.apply_page(&page(vec![], vec![], 8, false)).unwrap();
        assert_eq!(applied.dropped, 1);
        assert!(!s.resyncing().unwrap());
        assert_eq!(s.get("entries", B).unwrap(), None);
        assert_eq!(s.get("entries", A).unwrap().unwrap()["title"], "a2");
        assert_eq!(s.get("entries", c).unwrap().unwrap()["title"], "pending");
        assert_eq!(s.pending(10).unwrap().len(), 1);
    }

    #[test]
    fn the_store_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("edgesync-client-{}", random_uuid()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("device.db");
        let id = {
            let mut s = Store::open(&path).unwrap();
            s.queue(&m(Op::Put, A, json!({"title": "kept"}))).unwrap();
            s.client_id().unwrap()
        };
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.client_id().unwrap(), id);
        assert_eq!(s.get("entries", A).unwrap().unwrap()["title"], "kept");
        assert_eq!(s.queue(&m(Op::Delete, A, json!(null))).unwrap(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_page_with_a_bad_table_or_row_changes_nothing() {
        let mut s = store();
        let mut p = page(vec![json!({"id": A})], vec![], 5, false);
        p.changes.push(("_es_meta".into(), vec![], vec![]));
        assert!(s.apply_page(&p).is_err());
        assert!(s.apply_page(&page(vec![json!({"title": "no id"})], vec![], 5, false)).is_err());
        assert_eq!(s.cursor().unwrap(), None);
        assert_eq!(s.get("entries", A).unwrap(), None);
    }
}
