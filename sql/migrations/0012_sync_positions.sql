-- 0012: sync positions. An unrelated long transaction no longer holds back every
-- user's pull; only transactions that write synced rows hold the watermark, and only
-- until they end.
--
-- Until now a row version was the id of the transaction that wrote it, and a pull
-- returned versions below the snapshot's xmin. Any transaction that had taken an id
-- (a pg_cron job, a backfill, a migration, a forgotten psql session) held xmin, and
-- with it every user's pull, for as long as it stayed open. Skipping transactions
-- that had not written a synced row is not safe: one that took its id in an unrelated
-- write and writes a synced row minutes later would give that row a version below a
-- watermark already handed out, and the row would be missed.
--
-- Now a row version is a *sync position*, taken by the writing transaction at its
-- first synced write (edgesync.sync_position(), called by the row trigger):
--
--   1. read f = the next position the sequence will hand out;
--   2. take a transaction-scoped shared advisory lock keyed f (it shows in pg_locks
--      at once, long before the transaction commits, and goes away only after the
--      commit is visible to new snapshots);
--   3. p = nextval(sequence), so p >= f. Every row the transaction writes gets p.
--
-- A pull (edgesync.watermark(), then the page in a later statement, so a later
-- snapshot) reads first X = the next position to be handed out, then L = the
-- smallest key of such a lock still held, and returns versions below W = min(X, L):
--
--   * a writer whose lock was held when the pull looked has f >= L >= W, and p >= f;
--   * a writer that locked after the pull looked took p after it, so p >= X >= W;
--   * a writer that had ended before the pull looked is visible to the page's later
--     snapshot.
--
-- So every version below W is in the page's snapshot: no row is missed, and the lag
-- is bounded by the synced writers' own durations.
--
-- W is not monotonic from one pull to the next: a writer may lock a floor it read
-- before other writers moved the sequence on, so a later pull's W can be below an
-- earlier one's. Each W is safe on its own (the proof above is per pull), and a
-- cursor never moves back (a page's next position is greatest(since, W)). A scan's
-- origin taken from such a lower W only makes a purge look later to it: at worst one
-- more rebuild, never a missed delete. Positions come from a sequence,
-- which any isolation level reads fresh; they start above every transaction id
-- issued so far, so versions, cursors, write checkpoints and purge horizons from
-- before this migration compare correctly with the new ones.
--
-- The pull itself must run READ COMMITTED (PostgREST's and Supabase's default): its
-- page needs a snapshot taken after W was read. It refuses other isolation levels.
--
-- This migration waits for writers already in flight on synced tables (it locks
-- them in SHARE mode), so no row is ever versioned the old way after it commits.

set local client_min_messages = warning;

do $$
declare
  t record;
begin
  for t in select s.relid from edgesync.synced_tables s order by s.name loop
    execute format('lock table %s in share mode', t.relid);
  end loop;
end $$;

create sequence if not exists edgesync.sync_positions as bigint cache 1 no cycle;
grant usage, select on sequence edgesync.sync_positions to public;

-- Start above every transaction id issued so far: every stored version, cursor,
-- write checkpoint and purge horizon is an id of a transaction that has ended (the
-- locks above waited for those in flight), so all are below this snapshot's xmax.
do $$
declare
  v_start bigint := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
begin
  if (select not s.is_called or s.last_value < v_start from edgesync.sync_positions s) then
    perform setval('edgesync.sync_positions', v_start, false);
  end if;
end $$;

-- The next position the sequence will hand out (sequences are read outside any
-- snapshot, so this is current whatever the isolation level).
create or replace function edgesync.next_position()
returns bigint
language sql
volatile
set search_path = ''
as $$
  select case when s.is_called then s.last_value + 1 else s.last_value end from edgesync.sync_positions s
$$;
grant execute on function edgesync.next_position() to public;

-- The advisory lock keys of sync positions carry bit 62, so other advisory locks
-- (which applications take with small keys) are not mistaken for them. A mistaken
-- one would only hold the watermark lower, never lose a row. sync_position() takes
-- them; held_positions() reads them back.

-- This transaction's sync position: taken once, at its first call; the same for
-- every later call in the transaction. Called by the row-version trigger; also by
-- /upload's and /populate's answers (their write checkpoint) and by purges.
create or replace function edgesync.sync_position()
returns xid8
language plpgsql
volatile
set search_path = ''
as $$
declare
  v_held text := current_setting('edgesync.position', true);
  v_floor bigint;
  v_pos bigint;
begin
  if v_held <> '' then
    return v_held::xid8;
  end if;
  v_floor := edgesync.next_position();
  perform pg_catalog.pg_advisory_xact_lock_shared(v_floor | 4611686018427387904);
  v_pos := nextval('edgesync.sync_positions');
  perform set_config('edgesync.position', v_pos::text, true);
  return v_pos::text::xid8;
end
$$;
grant execute on function edgesync.sync_position() to public;

-- The sync positions still being written: each lock's floor, and the backend holding
-- it (null for a prepared transaction).
create or replace function edgesync.held_positions()
returns table (pid integer, floor_position xid8)
language sql
volatile
set search_path = ''
as $$
  select l.pid, (((l.classid::bigint & 1073741823) << 32) | l.objid::bigint)::text::xid8
    from pg_catalog.pg_locks l
   where l.locktype = 'advisory' and l.objsubid = 1 and l.classid::bigint >= 1073741824
     and l.database = (select d.oid from pg_catalog.pg_database d where d.datname = pg_catalog.current_database())
$$;
grant execute on function edgesync.held_positions() to public;

-- The pull watermark: every version below it has committed, and is visible to any
-- snapshot taken after this call returns. The order of the two reads matters (see
-- the top of this file): the next position first, then the locks.
create or replace function edgesync.watermark()
returns xid8
language plpgsql
volatile
set search_path = ''
as $$
declare
  v_next bigint;
  v_held xid8;
begin
  v_next := edgesync.next_position();
  select min(h.floor_position) into v_held from edgesync.held_positions() h;
  return least(v_next::text::xid8, coalesce(v_held, v_next::text::xid8));
end
$$;
grant execute on function edgesync.watermark() to public;

-- Row versioning, as in 0002, with the transaction's sync position as the version.
create or replace function edgesync.tg_row_version()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  ignored text[] := coalesce(tg_argv::text[], '{}') || '{_txid,_writer,updated_at,created_at}'::text[];
begin
  if tg_op = 'UPDATE' then
    new.created_at := old.created_at;
    if (to_jsonb(new) - ignored) = (to_jsonb(old) - ignored) then
      new._txid := old._txid;
      new._writer := old._writer;
      new.updated_at := old.updated_at;
      return new;
    end if;
  elsif new.created_at is null then
    new.created_at := now();
  end if;
  new._txid := edgesync.sync_position();
  new._writer := nullif(current_setting('edgesync.client_id', true), '')::uuid;
  new.updated_at := now();
  return new;
end
$$;

-- Existing rows of a table made syncable get a position too (the column's default,
-- evaluated once per transaction).
do $$
declare
  t record;
begin
  for t in select s.relid from edgesync.synced_tables s order by s.name loop
    execute format('alter table %s alter column _txid set default edgesync.sync_position()', t.relid);
  end loop;
end $$;

create or replace function edgesync.enable_sync(
  target          regclass,
  server_only     text[] default '{}',
  conflict_policy text default 'last_write_wins',
  wire_name       text default null
)
returns void
language plpgsql
set search_path = ''
as $$
begin
  -- Before enable_sync_tables adds `_txid` the old way (an id, not a position).
  if exists (select from pg_catalog.pg_class c where c.oid = target and c.relkind in ('r', 'p')) then
    execute format('alter table %s add column if not exists _txid xid8 not null default edgesync.sync_position()',
                   target);
  end if;
  perform edgesync.enable_sync_tables(target, server_only, conflict_policy, wire_name);
  execute format('alter table %s alter column _txid set default edgesync.sync_position()', target);
  perform edgesync.enable_live(target);
end
$$;
revoke all on function edgesync.enable_sync(regclass, text[], text, text) from public;

-- The page, as in 0003, read below edgesync.watermark() instead of the snapshot's xmin.
create or replace function edgesync.pull_page(
  since_txid xid8 default '0',
  since_id   uuid default '00000000-0000-0000-0000-000000000000',
  tables     text[] default null,
  lim        integer default 1000,
  max_bytes  integer default 4194304,
  since_origin xid8 default '0'
)
returns json
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
  uid      uuid := auth.uid();
  v_w      xid8;
  v_tables text[];
  unknown  text[];
  v_horizon xid8;
  v_purged  xid8;
  v_origin  xid8;
  branches text;
  l        integer := least(greatest(coalesce(lim, 1000), 1), 10000);
  b        integer := greatest(coalesce(max_bytes, 4194304), 1024);
  result   json;
begin
  if uid is null then
    raise sqlstate 'PT401' using message = 'a user token is required', hint = 'user_required';
  end if;
  if current_setting('transaction_isolation') <> 'read committed' then
    raise sqlstate '0A000' using message = 'edgesync_pull must run in a READ COMMITTED transaction',
      hint = 'its page needs a snapshot taken after the watermark is read';
  end if;
  -- This statement, then the page's own (a later snapshot).
  v_w := edgesync.watermark();
  v_origin := case when since_txid > '0'::xid8 then since_origin else v_w end;
  if tables is null then
    select array_agg(s.name order by s.name) into v_tables from edgesync.synced_tables s;
  else
    select array_agg(t order by t) into unknown
    from unnest(tables) t where not exists (select from edgesync.synced_tables s where s.name = t);
    if unknown is not null then
      raise sqlstate 'PT400'
        using message = format('unknown table: %s', array_to_string(unknown, ', ')),
              hint = 'unknown_table',
              detail = json_build_object('unknown', unknown,
                         'available', (select json_agg(s.name order by s.name) from edgesync.synced_tables s))::text;
    end if;
    select array_agg(distinct t order by t) into v_tables from unnest(tables) t;
  end if;
  if v_tables is null then
    return json_build_object('changes', '{}'::json, 'has_more', false,
      'next_txid', greatest(since_txid, v_w)::text,
      'next_id', '00000000-0000-0000-0000-000000000000',
      'origin', v_origin::text);
  end if;

  if since_txid > '0'::xid8 then
    select h.horizon, h.purged_xid into v_horizon, v_purged from edgesync.purge_horizons h where h.user_id = uid;
    -- Only a scan that began before the purge can hold a row whose tombstone is gone.
    if v_horizon is not null and since_txid <= v_horizon and since_origin <= v_purged then
      raise sqlstate 'PT410'
        using message = 'the cursor is older than the tombstone retention window; pull again without a cursor',
              hint = 'resync_required';
    end if;
  end if;

  -- One branch per table, each already in (_txid, id) order and limited; rows are
  -- rendered as json (text) from the client-visible columns only.
  select string_agg(format(
    '(select %L::text as tbl, t._txid, t.id, t.deleted_at is not null as del,
             case when t.deleted_at is null then (select row_to_json(x) from (select %s) x) end as r
        from %s t
       where t.user_id = $1 and (t._txid, t.id) > ($2, $3) and t._txid < (select w from w)
       order by t._txid, t.id limit $4)',
    s.name,
    (select string_agg('t.' || quote_ident(a.attname), ', ' order by a.attnum)
       from pg_catalog.pg_attribute a
      where a.attrelid = s.relid and a.attnum > 0 and not a.attisdropped
        and a.attname <> all (s.server_only || '{_txid,_writer}'::text[])),
    s.relid), ' union all ' order by s.name)
  into branches
  from edgesync.synced_tables s where s.name = any (v_tables);

  execute format($q$
    with w as materialized (select $8::xid8 as w),
    cand as materialized (
      select * from (%s) u order by _txid, id limit $4
    ),
    sized as materialized (
      select c.*, row_number() over (order by c._txid, c.id) as rn,
             sum(coalesce(octet_length(c.r::text), 0) + 48) over (order by c._txid, c.id) as cum
      from cand c
    ),
    page as materialized (select * from sized where rn = 1 or cum <= $5),
    stats as (select (select count(*) from cand) as n_cand, (select count(*) from page) as n_page),
    last as (select _txid, id from page order by _txid desc, id desc limit 1),
    grouped as (
      select tbl,
             coalesce(json_agg(r order by _txid, id) filter (where not del), '[]'::json) as ups,
             coalesce(json_agg(id order by _txid, id) filter (where del), '[]'::json) as dels
      from page group by tbl
    ),
    more as (select (n_page < n_cand or n_cand >= $4) as m from stats)
    select json_build_object(
      'changes', (select json_object_agg(t, json_build_object('upserted', coalesce(g.ups, '[]'::json),
                                                                'deleted', coalesce(g.dels, '[]'::json)))
                  from unnest($6::text[]) t left join grouped g on g.tbl = t),
      'has_more', (select m from more),
      'next_txid', case when (select m from more) then (select _txid from last)
                        else greatest($2, (select w from w)) end::text,
      'next_id', case when (select m from more) then (select id from last)
                      else '00000000-0000-0000-0000-000000000000'::uuid end,
      'watermark', (select w from w)::text,
      'origin', $7::text)
  $q$, branches)
  into result
  using uid, since_txid, since_id, l, b, v_tables, v_origin, v_w;
  return result;
end
$$;
-- The public wrapper (0009) calls it; it must not share its caller's snapshot.
alter function public.edgesync_pull(xid8, uuid, text[], integer, integer, xid8) volatile;

-- /upload's and /populate's checkpoint: the sync position of what they wrote (taken
-- now if they wrote nothing), no longer the transaction id.
create or replace function public.edgesync_push(client_id uuid, mutations jsonb)
returns json
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
  most integer := (edgesync.limits() ->> 'push_max_mutations')::integer;
begin
  if jsonb_typeof(mutations) = 'array' and jsonb_array_length(mutations) > most then
    raise sqlstate 'PT413' using
      message = format('%s mutations in one batch; the limit is %s: split the outbox', jsonb_array_length(mutations), most),
      hint = 'too_many_mutations';
  end if;
  return (edgesync.push_batch(client_id, mutations)::jsonb
          || jsonb_build_object('checkpoint', edgesync.sync_position()::text))::json;
end
$$;

create or replace function public.edgesync_populate_finish(
  p_source text, p_lease uuid, p_outcome text, p_error text default null, p_retry_after_secs integer default null,
  p_user uuid default null
)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
  perform set_config('edgesync.populate_writer', 'on', true);
  -- Taken after every apply of the call committed, so it is above all they wrote.
  return edgesync.populate_finish_as_caller(p_source, p_lease, p_outcome, p_error, p_retry_after_secs, p_user)
         || jsonb_build_object('checkpoint', edgesync.sync_position()::text);
end
$$;

-- A purge records its own sync position: a scan whose origin is above it began
-- after the purge committed.
create or replace function edgesync.purge_tombstones(retention interval default '30 days')
returns table (table_name text, purged bigint)
language plpgsql
set search_path = ''
as $$
declare
  t record;
  n bigint;
begin
  perform set_config('edgesync.purging', 'on', true);
  for t in select s.name, s.relid from edgesync.synced_tables s order by s.name loop
    execute format($f$
      with gone as (
        delete from %s where deleted_at is not null and deleted_at < now() - $1 returning user_id, _txid
      ), per_user as (
        insert into edgesync.purge_horizons as h (user_id, horizon, purged_xid)
        select user_id, max(_txid), edgesync.sync_position() from gone group by user_id
        on conflict (user_id) do update
          set horizon = greatest(h.horizon, excluded.horizon), purged_xid = excluded.purged_xid,
              purged_at = now()
      )
      select count(*) from gone
    $f$, t.relid) using retention into n;
    table_name := t.name;
    purged := n;
    return next;
  end loop;
  perform set_config('edgesync.purging', 'off', true);
end
$$;
revoke all on function edgesync.purge_tombstones(interval) from public;

-- A poke's checkpoint is one past the statement's sync position.
create or replace function edgesync.tg_live_poke()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_users text[];
  v_checkpoint text;
  v_payload text;
  v_url text;
  i integer;
begin
  if tg_op = 'INSERT' then
    select array_agg(distinct n.user_id::text order by n.user_id::text) into v_users from new_rows n;
  else
    -- A row moved to another user wakes both.
    select array_agg(distinct v.who order by v.who) into v_users
      from (select n.user_id::text as now_of, o.user_id::text as was_of
              from new_rows n join old_rows o on o.id = n.id
             where n._txid is distinct from o._txid) c,
           lateral (values (c.now_of), (c.was_of)) v(who);
  end if;
  if v_users is null then
    return null;
  end if;
  v_checkpoint := (edgesync.sync_position()::text::numeric + 1)::text;
  select t.url into v_url from edgesync.live_target t;
  i := 1;
  while i <= cardinality(v_users) loop
    v_payload := json_build_object('checkpoint', v_checkpoint, 'users', to_json(v_users[i : i + 99]))::text;
    perform pg_notify('edgesync_live', v_payload);
    if v_url is not null and to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is not null then
      execute 'select net.http_post(url := $1, body := $2::jsonb, headers := jsonb_build_object(
                 ''content-type'', ''application/json'', ''x-live-secret'',
                 (select s.decrypted_secret from vault.decrypted_secrets s where s.name = ''edgesync_live_poke_secret'')))'
        using v_url, v_payload;
    end if;
    i := i + 100;
  end loop;
  return null;
end
$$;
revoke all on function edgesync.tg_live_poke() from public, anon, authenticated, service_role;

-- /health: what holds the watermark now is a synced writer still open, nothing else.
create or replace function public.edgesync_health(overdue_after_secs integer default 300)
returns json
language sql
stable
security definer
set search_path = ''
as $$
  select json_build_object(
    'schema_version', (select coalesce(max(version), 0) from edgesync.schema_migrations),
    'watermark', (
      select json_build_object(
        'writers', count(distinct h.pid),
        'oldest_write_age_ms', coalesce(max(floor(extract(epoch from clock_timestamp() - a.xact_start) * 1000)), 0)::bigint,
        'oldest_write_xid_distance', coalesce(max(pg_catalog.age(a.backend_xid)), 0))
      from edgesync.held_positions() h
      left join pg_catalog.pg_stat_activity a on a.pid = h.pid),
    'embeddings', (
      select json_build_object(
        'failed', count(*) filter (where j.status = 'failed'),
        'overdue', count(*) filter (where
          (j.status = 'pending' and j.next_attempt_at < now() - make_interval(secs => greatest(overdue_after_secs, 0)))
          or (j.status = 'running' and j.locked_until < now() - make_interval(secs => greatest(overdue_after_secs, 0)))))
      from edgesync.embedding_jobs j),
    'populate', (
      select json_build_object('errors', count(*) filter (where s.status = 'error'))
      from public.sync_state s)
  )
$$;
revoke all on function public.edgesync_health(integer) from public;
grant execute on function public.edgesync_health(integer) to anon, authenticated, service_role;

insert into edgesync.schema_migrations (version, name) values (12, 'sync_positions')
on conflict (version) do nothing;

notify pgrst, 'reload schema';
