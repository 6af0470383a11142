-- 0013: an operation log for PowerSync's sync protocol (docs/design/powersync-protocol.md).
--
-- A PowerSync client keeps the checksum of every operation it has received, superseded
-- ones included, and compares their sum with the server's at each checkpoint. Rows
-- keep only their latest version, so the history the sums cover lives here: one
-- data-less op per (row, transaction) in edgesync.ps_ops, in one bucket per (user,
-- table). The data of a PUT is read from the row itself, under the caller's RLS, when
-- it is served; a superseded PUT is served as MOVE.
--
-- Op ids are (block << 24) | seq. A block is the writing transaction's sync position
-- (0012), or a later value of the same sequence it takes while still holding its
-- position's lock, so 0012's watermark W bounds them too: every op of a block below W
-- is committed and visible to any later snapshot, and a checkpoint at W covers
-- exactly the op ids up to (W << 24) - 1.
--
-- The fresh-block rule. Positions are taken at a transaction's first synced write, but
-- rows are written in lock order: B (position 744) may write a row after A (745)
-- committed its own write of it. B's op must still sort after A's, or a client keeps
-- A's version. So a write whose row already has an op above the transaction's current
-- block takes a fresh block (nextval) for its op. Holding the row lock, every earlier op
-- of the row is committed and visible to the trigger's statement.
--
-- The op checksum is the first 4 bytes, little-endian, of sha256('<table>/<id>/<op id>'):
-- clients only add checksums, never recompute them, so they need not depend on the
-- data, and compaction can write ops without reading rows.
--
-- Like 0012, this waits for writers in flight on synced tables (SHARE locks), then
-- gives every live row a PUT op, so the first PowerSync download has them all.

set local client_min_messages = warning;

do $$
declare
  t record;
begin
  for t in select s.relid from edgesync.synced_tables s order by s.name loop
    execute format('lock table %s in share mode', t.relid);
  end loop;
  -- 2^39 positions keep every op id below 2^63 (the clients read them as i64).
  if edgesync.next_position() >= 274877906944 then
    raise exception 'edgesync 0013: sync positions are above 2^38; op ids would not fit in 63 bits';
  end if;
end $$;

create table if not exists edgesync.ps_ops (
  user_id  uuid    not null,
  tbl      text    not null,
  pos      bigint  not null,
  seq      integer not null check (seq between 1 and 16777215),
  op_id    bigint  generated always as ((pos << 24) | seq) stored,
  kind     "char"  not null check (kind in ('P', 'R', 'C')),
  row_id   uuid,
  checksum bigint  not null check (checksum between 0 and 4294967295),
  -- CLEAR only: the largest op id that superseded a PUT it absorbed.
  target   bigint,
  primary key (user_id, tbl, op_id) include (checksum),
  check ((kind = 'C') = (row_id is null))
);
-- One op per (row, block); "the row's next op" is the next entry.
create unique index if not exists ps_ops_row on edgesync.ps_ops (user_id, tbl, row_id, pos);

-- What compaction has summed: the bucket's checksum and op count through `through_op`.
create table if not exists edgesync.ps_bucket_base (
  user_id    uuid   not null,
  tbl        text   not null,
  through_op bigint not null,
  checksum   bigint not null check (checksum between 0 and 4294967295),
  op_count   bigint not null,
  primary key (user_id, tbl)
);

alter table edgesync.ps_ops enable row level security;
alter table edgesync.ps_bucket_base enable row level security;
drop policy if exists ps_ops_owner_select on edgesync.ps_ops;
create policy ps_ops_owner_select on edgesync.ps_ops for select to authenticated
  using ((select auth.uid()) = user_id);
drop policy if exists ps_bucket_base_owner_select on edgesync.ps_bucket_base;
create policy ps_bucket_base_owner_select on edgesync.ps_bucket_base for select to authenticated
  using ((select auth.uid()) = user_id);
revoke all on edgesync.ps_ops, edgesync.ps_bucket_base from public, anon, authenticated;
grant select on edgesync.ps_ops, edgesync.ps_bucket_base to authenticated;
grant all on edgesync.ps_ops, edgesync.ps_bucket_base to service_role;

-- An op's checksum (see the top of this file). `|` and `<<` bind alike in Postgres:
-- callers parenthesise the op id.
create or replace function edgesync.ps_checksum(tbl text, id uuid, op_id bigint)
returns bigint
language sql
immutable strict parallel safe
set search_path = ''
as $$
  select pg_catalog.get_byte(d, 0)::bigint + (pg_catalog.get_byte(d, 1)::bigint << 8)
       + (pg_catalog.get_byte(d, 2)::bigint << 16) + (pg_catalog.get_byte(d, 3)::bigint << 24)
    from (select pg_catalog.sha256(pg_catalog.convert_to(tbl || '/' || id::text || '/' || op_id::text, 'UTF8')) d) s
$$;

-- The transaction's current block (its sync position until it takes a fresh one).
create or replace function edgesync.ps_block()
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_block text := nullif(current_setting('edgesync.ps_block', true), '');
  v_pos bigint;
begin
  if v_block is not null then
    return v_block::bigint;
  end if;
  v_pos := edgesync.sync_position()::text::bigint;
  perform set_config('edgesync.ps_block', v_pos::text, true);
  perform set_config('edgesync.ps_seq', '0', true);
  return v_pos;
end
$$;

-- A fresh block: a later position of the same sequence, behind the lock this
-- transaction's position already holds.
create or replace function edgesync.ps_fresh_block()
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_block bigint;
begin
  perform edgesync.ps_block();
  v_block := nextval('edgesync.sync_positions');
  perform set_config('edgesync.ps_block', v_block::text, true);
  perform set_config('edgesync.ps_seq', '0', true);
  return v_block;
end
$$;

-- Where a write of this transaction is pulled from: its position, or its latest block.
-- /upload's, /populate's and the live poke's checkpoints are one above it.
create or replace function edgesync.write_position()
returns bigint
language sql
volatile
set search_path = ''
as $$
  select greatest(edgesync.sync_position()::text::bigint,
                  coalesce(nullif(current_setting('edgesync.ps_block', true), '')::bigint, 0))
$$;

-- Record that a row changed in this transaction: its op in the (user, table) bucket.
-- The first write of a row in a block inserts the op; a later one only changes its kind.
create or replace function edgesync.ps_record(p_user uuid, p_tbl text, p_row uuid, p_kind text)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_block bigint := edgesync.ps_block();
  v_seq integer := coalesce(nullif(current_setting('edgesync.ps_seq', true), '')::integer, 0);
  v_latest bigint;
  v_op bigint;
begin
  select max(o.pos) into v_latest
    from edgesync.ps_ops o where o.user_id = p_user and o.tbl = p_tbl and o.row_id = p_row;
  if v_latest = v_block then
    update edgesync.ps_ops o set kind = p_kind::"char"
     where o.user_id = p_user and o.tbl = p_tbl and o.row_id = p_row and o.pos = v_block
    returning o.op_id into v_op;
    return v_op;
  end if;
  if v_latest > v_block or v_seq >= 16777215 then
    v_block := edgesync.ps_fresh_block();
    v_seq := 0;
  end if;
  v_seq := v_seq + 1;
  perform set_config('edgesync.ps_seq', v_seq::text, true);
  v_op := (v_block << 24) | v_seq;
  insert into edgesync.ps_ops (user_id, tbl, pos, seq, kind, row_id, checksum)
  values (p_user, p_tbl, v_block, v_seq, p_kind::"char", p_row, edgesync.ps_checksum(p_tbl, p_row, v_op));
  return v_op;
end
$$;
revoke all on function edgesync.ps_record(uuid, text, uuid, text) from public;

-- After each row write of a synced table: did the row change for clients? Arguments:
-- the wire name, then the server-only columns.
create or replace function edgesync.tg_ps_record()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_tbl text := tg_argv[0];
  ignored text[] := coalesce(tg_argv[1:]::text[], '{}') || '{_txid,_writer,updated_at,created_at}'::text[];
begin
  if tg_op = 'UPDATE' then
    if new._txid is not distinct from old._txid then
      -- The version trigger kept the version: nothing clients see changed, or this is
      -- a second write of the row in this transaction (same position), which counts
      -- only if it changed what clients see.
      if new._txid::text is distinct from nullif(current_setting('edgesync.position', true), '')
         or (to_jsonb(new) - ignored) = (to_jsonb(old) - ignored) then
        return null;
      end if;
    end if;
    if new.user_id is distinct from old.user_id then
      perform edgesync.ps_record(old.user_id, v_tbl, old.id, 'R');
    end if;
  end if;
  perform edgesync.ps_record(new.user_id, v_tbl, new.id, case when new.deleted_at is null then 'P' else 'R' end);
  return null;
end
$$;
revoke all on function edgesync.tg_ps_record() from public, anon, authenticated, service_role;

-- Give every live row of a synced table that has no op a PUT op (a table made
-- syncable, or this migration). Returns how many.
create or replace function edgesync.ps_backfill(p_name text)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_rel regclass;
  v_block bigint;
  v_seq integer;
  v_room integer;
  v_n bigint;
  v_total bigint := 0;
begin
  select s.relid into v_rel from edgesync.synced_tables s where s.name = p_name;
  if v_rel is null then
    raise exception 'edgesync.ps_backfill: % is not a synced table', p_name;
  end if;
  loop
    v_block := edgesync.ps_block();
    v_seq := coalesce(nullif(current_setting('edgesync.ps_seq', true), '')::integer, 0);
    if v_seq >= 16777215 then
      v_block := edgesync.ps_fresh_block();
      v_seq := 0;
    end if;
    v_room := 16777215 - v_seq;
    execute format($q$
      insert into edgesync.ps_ops (user_id, tbl, pos, seq, kind, row_id, checksum)
      select r.user_id, $1, $2, $3 + r.n, 'P', r.id, edgesync.ps_checksum($1, r.id, ($2 << 24) | ($3 + r.n))
        from (select t.user_id, t.id, row_number() over (order by t.id)::integer as n
                from %s t
               where t.deleted_at is null
                 and not exists (select from edgesync.ps_ops o
                                  where o.user_id = t.user_id and o.tbl = $1 and o.row_id = t.id)
               order by t.id
               limit $4) r
    $q$, v_rel) using p_name, v_block, v_seq, v_room;
    get diagnostics v_n = row_count;
    perform set_config('edgesync.ps_seq', (v_seq + v_n)::text, true);
    v_total := v_total + v_n;
    exit when v_n < v_room;
  end loop;
  return v_total;
end
$$;
revoke all on function edgesync.ps_backfill(text) from public;

-- The op trigger of one synced table (after the version trigger has decided).
create or replace function edgesync.enable_ps(target regclass)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_name text;
  v_server_only text[];
  trig_args text;
begin
  select s.name, s.server_only into v_name, v_server_only from edgesync.synced_tables s where s.relid = target;
  if v_name is null then
    raise exception 'edgesync.enable_ps: % is not synced', target;
  end if;
  select string_agg(quote_literal(c), ', ') into trig_args from unnest(array[v_name] || v_server_only) c;
  execute format('drop trigger if exists edgesync_ps_record on %s', target);
  execute format('create trigger edgesync_ps_record after insert or update on %s
                  for each row execute function edgesync.tg_ps_record(%s)', target, trig_args);
  perform edgesync.ps_backfill(v_name);
end
$$;
revoke all on function edgesync.enable_ps(regclass) from public;

create or replace function edgesync.enable_sync(
  target regclass,
  server_only text[] default '{}',
  conflict_policy text default 'last_write_wins',
  wire_name text default null
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
  perform edgesync.enable_ps(target);
end
$$;
revoke all on function edgesync.enable_sync(regclass, text[], text, text) from public;

create or replace function edgesync.disable_sync(target regclass)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_name text := (select s.name from edgesync.synced_tables s where s.relid = target);
begin
  perform edgesync.disable_sync_tables(target);
  execute format('drop trigger if exists edgesync_live_insert on %s', target);
  execute format('drop trigger if exists edgesync_live_update on %s', target);
  execute format('drop trigger if exists edgesync_ps_record on %s', target);
  delete from edgesync.ps_ops o where o.tbl = v_name;
  delete from edgesync.ps_bucket_base b where b.tbl = v_name;
end
$$;
revoke all on function edgesync.disable_sync(regclass) from public;

-- The checkpoint of a PowerSync stream, as the caller: the watermark W (at least
-- p_floor, the largest one this client was handed: W is not monotone, see 0012) and,
-- per synced table, the bucket's checksum, op count and last op id up to (W << 24) - 1.
-- Runs READ COMMITTED: the sums are read in a later statement than W, as pull_page does.
create or replace function public.edgesync_ps_checkpoint(p_floor bigint default 0)
returns json
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
  uid uuid := auth.uid();
  v_next bigint;
  v_w bigint;
  v_h bigint;
  v_wait double precision := 0.01;
  v_result json;
  v_behind boolean;
begin
  if uid is null then
    raise sqlstate 'PT401' using message = 'a user token is required', hint = 'user_required';
  end if;
  if current_setting('transaction_isolation') <> 'read committed' then
    raise sqlstate '0A000' using message = 'edgesync_ps_checkpoint must run in a READ COMMITTED transaction',
      hint = 'its sums need a snapshot taken after the watermark is read';
  end if;
  for attempt in 1 .. 8 loop
    v_next := edgesync.next_position();
    v_w := edgesync.watermark()::text::bigint;
    -- A floor above what this database ever handed out: the client is ahead of it (a
    -- restore). Without the floor its checksums fail and it downloads again.
    if coalesce(p_floor, 0) <= v_next then
      v_w := greatest(v_w, coalesce(p_floor, 0));
    end if;
    v_h := (v_w << 24) - 1;
    select json_build_object(
             'w', v_w::text,
             'buckets', coalesce(json_agg(json_build_object(
                'tbl', s.name,
                'checksum', (coalesce(b.checksum, 0) + coalesce(o.sum, 0)) % 4294967296,
                'count', coalesce(b.op_count, 0) + coalesce(o.n, 0),
                'last', coalesce(l.last, 0)::text) order by s.name), '[]'::json)),
           coalesce(bool_or(b.through_op > v_h or c.clear_above), false)
      into v_result, v_behind
      from edgesync.synced_tables s
      left join edgesync.ps_bucket_base b on b.user_id = uid and b.tbl = s.name
      left join lateral (
        select sum(x.checksum) as sum, count(*) as n from edgesync.ps_ops x
         where x.user_id = uid and x.tbl = s.name and x.op_id > coalesce(b.through_op, 0) and x.op_id <= v_h) o on true
      left join lateral (
        select max(x.op_id) as last from edgesync.ps_ops x
         where x.user_id = uid and x.tbl = s.name and x.op_id <= v_h) l on true
      left join lateral (
        select exists (select from edgesync.ps_ops x
                        where x.user_id = uid and x.tbl = s.name and x.op_id > v_h and x.kind = 'C') as clear_above) c on true;
    -- A compaction ran at a later watermark than this one: wait for W to catch up.
    if not v_behind then
      return v_result;
    end if;
    perform pg_catalog.pg_sleep(v_wait);
    v_wait := least(v_wait * 2, 1);
  end loop;
  raise sqlstate 'PT503' using message = 'the checkpoint is behind a compaction; try again', hint = 'checkpoint_behind';
end
$$;
revoke all on function public.edgesync_ps_checkpoint(bigint) from public, anon;
grant execute on function public.edgesync_ps_checkpoint(bigint) to authenticated;

-- One page of a PowerSync download, as the caller, for the checkpoint h: per bucket
-- named in p_after ({"<table>": "<op id after which to start>"}), the ops after it up
-- to h, at most p_lim ops and about p_max_bytes in all. Returned as the protocol's
-- NDJSON `data` lines, then one trailer line for the Worker (which strips it):
--   {"_es":{"next":{"<table>":"<last op id sent>"},"more":["<table>"],"needs":"<op id>"|null}}
-- An op is served as it stands at h:
--   CLEAR       a CLEAR whose target is <= h
--   REMOVE      a REMOVE, or the latest PUT of a row the caller cannot see (never expected)
--   MOVE        a PUT superseded at or below h
--   PUT         the row's latest op, with the row's client-visible columns as data
-- and a bucket's page stops *before* an op that a later version above h superseded (or
-- a CLEAR that absorbed one): sent as MOVE it would move the client's resume point past
-- a row it does not have yet. `needs` is then the op id the watermark must pass.
create or replace function public.edgesync_ps_page(
  p_h bigint, p_after jsonb, p_lim integer default 1000, p_max_bytes integer default 4194304
)
returns text
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
  uid uuid := auth.uid();
  v_lim integer := least(greatest(coalesce(p_lim, 1000), 1), 10000);
  v_bytes bigint := greatest(coalesce(p_max_bytes, 4194304), 1024);
  s record;
  v_after bigint;
  v_lines text := '';
  v_next jsonb := '{}';
  v_more text[] := '{}';
  v_needs bigint;
  v_line text;
  v_sent integer;
  v_size bigint;
  v_last bigint;
  v_has_more boolean;
  v_stop bigint;
begin
  if uid is null then
    raise sqlstate 'PT401' using message = 'a user token is required', hint = 'user_required';
  end if;
  if p_h is null or p_h < 0 or jsonb_typeof(p_after) is distinct from 'object' then
    raise sqlstate 'PT400' using message = 'p_h must be an op id and p_after an object of op ids by table',
      hint = 'invalid_parameter';
  end if;
  for s in
    select t.name, t.relid, t.server_only, (p_after ->> t.name) as after
      from edgesync.synced_tables t
     where p_after ? t.name
     order by t.name
  loop
    if s.after !~ '^[0-9]{1,19}$' then
      raise sqlstate 'PT400' using message = format('the position of %s is not an op id', s.name),
        hint = 'invalid_parameter';
    end if;
    v_after := s.after::bigint;
    if v_after >= p_h then
      v_next := v_next || jsonb_build_object(s.name, v_after::text);
      continue;
    end if;
    if v_lim <= 0 or v_bytes <= 0 then
      v_next := v_next || jsonb_build_object(s.name, v_after::text);
      v_more := v_more || s.name;
      continue;
    end if;
    execute format($q$
      with ops as materialized (
        select o.op_id, o.kind, o.row_id, o.checksum, o.target,
               (select n.op_id from edgesync.ps_ops n
                 where n.user_id = $1 and n.tbl = $2 and n.row_id = o.row_id and n.pos > o.pos
                 order by n.pos limit 1) as nxt
          from edgesync.ps_ops o
         where o.user_id = $1 and o.tbl = $2 and o.op_id > $3 and o.op_id <= $4
         order by o.op_id
         limit $5 + 1
      ),
      judged as (
        select ops.*,
               case when kind = 'C' and target > $4 then target
                    when kind = 'P' and nxt > $4 then nxt end as needs,
               row_number() over (order by op_id) as rn
          from ops
      ),
      cut as (
        select j.*, bool_or(j.needs is not null) over (order by j.op_id) as stopped from judged j
      ),
      rendered as (
        select c.op_id, c.rn,
               case
                 when c.kind = 'C' then json_build_object('op_id', c.op_id::text, 'op', 'CLEAR', 'checksum', c.checksum)
                 when c.kind = 'P' and c.nxt is not null then
                   json_build_object('op_id', c.op_id::text, 'op', 'MOVE', 'checksum', c.checksum)
                 when c.kind = 'P' and r.data is not null then
                   json_build_object('op_id', c.op_id::text, 'op', 'PUT', 'object_type', $2, 'object_id', c.row_id,
                                     'data', r.data, 'checksum', c.checksum)
                 else json_build_object('op_id', c.op_id::text, 'op', 'REMOVE', 'object_type', $2,
                                        'object_id', c.row_id, 'checksum', c.checksum)
               end::text as op
          from cut c
          left join lateral (
            select (select row_to_json(x) from (select %s) x)::text as data
              from %s t
             where c.kind = 'P' and c.nxt is null and t.id = c.row_id and t.user_id = $1 and t.deleted_at is null
          ) r on true
         where not c.stopped and c.rn <= $5
      ),
      sized as (
        select r.*, sum(octet_length(r.op) + 1) over (order by r.op_id) as cum from rendered r
      ),
      page as (select * from sized where rn = 1 or cum <= $6)
      select (select string_agg(p.op, ',' order by p.op_id) from page p),
             (select count(*) from page)::integer,
             coalesce((select max(cum) from page), 0),
             (select max(op_id) from page),
             -- more: an op this page left out that it could have served
             exists (select from cut c where not c.stopped
                       and c.op_id > coalesce((select max(op_id) from page), $3)),
             (select c.needs from cut c where c.needs is not null order by c.op_id limit 1)
    $q$,
    (select string_agg('t.' || quote_ident(a.attname), ', ' order by a.attnum)
       from pg_catalog.pg_attribute a
      where a.attrelid = s.relid and a.attnum > 0 and not a.attisdropped
        and a.attname <> all (s.server_only || '{_txid,_writer}'::text[])),
    s.relid)
    into v_line, v_sent, v_size, v_last, v_has_more, v_stop
    using uid, s.name, v_after, p_h, v_lim, v_bytes;
    if v_sent > 0 then
      v_lines := v_lines || '{"data":{"bucket":' || to_json(s.name || ':' || uid::text)::text
        || ',"after":"' || v_after::text || '","next_after":"' || v_last::text
        || '","has_more":' || v_has_more::text || ',"data":[' || v_line || ']}}' || E'\n';
    end if;
    v_next := v_next || jsonb_build_object(s.name, coalesce(v_last, v_after)::text);
    v_lim := v_lim - v_sent;
    v_bytes := v_bytes - v_size;
    if v_has_more then
      v_more := v_more || s.name;
    elsif v_stop is not null then
      v_needs := greatest(v_needs, v_stop);
    end if;
  end loop;
  return v_lines || json_build_object('_es', json_build_object(
    'next', v_next, 'more', to_json(v_more), 'needs', v_needs::text))::text || E'\n';
end
$$;
revoke all on function public.edgesync_ps_page(bigint, jsonb, integer, integer) from public, anon;
grant execute on function public.edgesync_ps_page(bigint, jsonb, integer, integer) to authenticated;

-- PowerSync's write checkpoint (GET /write-checkpoint2.json): the next position to be
-- handed out, after skipping one. Every block of the caller's acknowledged writes is
-- below it, so a checkpoint whose W reaches it has them all. The skipped position is
-- never used for a row; it makes every answer new, so even after an upload that wrote
-- nothing (all of it refused) the stream sends a new checkpoint, which the SDK needs
-- before it puts the server's rows back over the refused local writes. It takes no
-- lock: nothing is written at that position.
create or replace function public.edgesync_ps_write_checkpoint()
returns text
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
  if auth.uid() is null then
    raise sqlstate 'PT401' using message = 'a user token is required', hint = 'user_required';
  end if;
  perform nextval('edgesync.sync_positions');
  return edgesync.next_position()::text;
end
$$;
revoke all on function public.edgesync_ps_write_checkpoint() from public, anon;
grant execute on function public.edgesync_ps_write_checkpoint() to authenticated;

-- /upload's and /populate's checkpoint, and the live poke's: above the transaction's
-- latest block, not only its position.
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
          || jsonb_build_object('checkpoint', edgesync.write_position()::text))::json;
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
         || jsonb_build_object('checkpoint', edgesync.write_position()::text);
end
$$;

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
  v_checkpoint := (edgesync.write_position() + 1)::text;
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

-- Compaction (PowerSync's CLEAR), one bucket: the longest prefix of its ops that are
-- dead at the watermark (REMOVEs, CLEARs, PUTs superseded at or below it) becomes one
-- CLEAR at the prefix's last op id, carrying their summed checksum. A client's sum at
-- any checkpoint at or above that op id is unchanged; a checkpoint below it is never
-- completed (edgesync_ps_checkpoint waits for the watermark to pass `through_op`, and a
-- page stops before a CLEAR whose target is above its checkpoint). It takes no sync
-- position: it adds no op above any checkpoint. Returns how many ops it removed.
create or replace function edgesync.ps_compact_bucket(p_user uuid, p_tbl text)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_h bigint;
  v_last bigint;
  v_sum bigint;
  v_n bigint;
  v_target bigint;
  v_first_kind "char";
begin
  -- One compaction of a bucket at a time (a two-key lock: never read as a position).
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('edgesync.ps_compact'),
                                           pg_catalog.hashtext(p_user::text || '/' || p_tbl));
  v_h := (edgesync.watermark()::text::bigint << 24) - 1;
  -- A later statement: every op at or below v_h is committed and in its snapshot.
  with ops as (
    select o.op_id, o.kind, o.checksum, o.target,
           case when o.kind = 'P' then
             (select n.op_id from edgesync.ps_ops n
               where n.user_id = p_user and n.tbl = p_tbl and n.row_id = o.row_id and n.pos > o.pos
               order by n.pos limit 1) end as nxt
      from edgesync.ps_ops o
     where o.user_id = p_user and o.tbl = p_tbl and o.op_id <= v_h
  ),
  marked as (
    select ops.*, bool_and(kind in ('R', 'C') or coalesce(nxt <= v_h, false)) over (order by op_id) as dead
      from ops
  )
  select max(op_id), sum(checksum) % 4294967296, count(*), greatest(max(nxt), max(target)),
         (array_agg(kind order by op_id))[1]
    into v_last, v_sum, v_n, v_target, v_first_kind
    from marked where dead;
  if v_n is null or v_n = 0 or (v_n = 1 and v_first_kind = 'C') then
    v_n := 0;
  else
    delete from edgesync.ps_ops o where o.user_id = p_user and o.tbl = p_tbl and o.op_id <= v_last;
    insert into edgesync.ps_ops (user_id, tbl, pos, seq, kind, row_id, checksum, target)
    values (p_user, p_tbl, v_last >> 24, (v_last & 16777215)::integer, 'C', null, v_sum, v_target);
  end if;
  -- The bucket's sums through v_h, so checkpoints add only what came after.
  insert into edgesync.ps_bucket_base as b (user_id, tbl, through_op, checksum, op_count)
  select p_user, p_tbl, v_h, coalesce(sum(o.checksum), 0) % 4294967296, count(*)
    from edgesync.ps_ops o where o.user_id = p_user and o.tbl = p_tbl and o.op_id <= v_h
  on conflict (user_id, tbl) do update
    set through_op = excluded.through_op, checksum = excluded.checksum, op_count = excluded.op_count
    where b.through_op < excluded.through_op;
  return greatest(v_n - 1, 0);
end
$$;
revoke all on function edgesync.ps_compact_bucket(uuid, text) from public;

-- Compact the buckets with the most ops, at most p_max_buckets of them.
create or replace function edgesync.ps_compact(p_max_buckets integer default 1000)
returns table (buckets bigint, removed bigint)
language plpgsql
set search_path = ''
as $$
declare
  b record;
begin
  buckets := 0;
  removed := 0;
  for b in
    select o.user_id, o.tbl from edgesync.ps_ops o
     group by o.user_id, o.tbl having count(*) > 1
     order by count(*) desc limit greatest(p_max_buckets, 0)
  loop
    removed := removed + edgesync.ps_compact_bucket(b.user_id, b.tbl);
    buckets := buckets + 1;
  end loop;
  return next;
end
$$;
revoke all on function edgesync.ps_compact(integer) from public;

-- Defragmentation: a bucket whose oldest live row pins a long run of dead ops behind it
-- (more than max(p_min_ops, p_ratio x live rows) ops) gets fresh PUTs for its oldest
-- live rows, at most p_chunk of them, so the next compaction can clear the prefix.
-- Rows are not changed (their version stays, /sync sends nothing); only their ops move.
-- Clients download those rows once more, as ordinary PUTs. Returns how many rows.
create or replace function edgesync.ps_defrag(p_min_ops integer default 1000, p_ratio numeric default 2,
                                              p_chunk integer default 1000)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  b record;
  v_ids uuid[];
  v_id uuid;
  v_total bigint := 0;
begin
  for b in
    select o.user_id, o.tbl, s.relid, count(*) as n,
           count(*) filter (where o.kind = 'P' and not exists (
             select from edgesync.ps_ops n
              where n.user_id = o.user_id and n.tbl = o.tbl and n.row_id = o.row_id and n.pos > o.pos)) as puts
      from edgesync.ps_ops o join edgesync.synced_tables s on s.name = o.tbl
     group by o.user_id, o.tbl, s.relid
  loop
    -- Live rows have one current PUT each; the rest of the bucket is history.
    continue when b.n <= greatest(p_min_ops, p_ratio * b.puts);
    select array_agg(x.row_id order by x.op_id) into v_ids from (
      select o.row_id, o.op_id from edgesync.ps_ops o
       where o.user_id = b.user_id and o.tbl = b.tbl and o.kind = 'P'
         and not exists (select from edgesync.ps_ops n
                          where n.user_id = o.user_id and n.tbl = o.tbl and n.row_id = o.row_id and n.pos > o.pos)
       order by o.op_id limit greatest(p_chunk, 1)) x;
    -- Locked (skipping rows being written), so every earlier op of each is committed.
    for v_id in execute format('select t.id from %s t where t.id = any ($1) and t.deleted_at is null
                                for update skip locked', b.relid) using v_ids
    loop
      perform edgesync.ps_record(b.user_id, b.tbl, v_id, 'P');
      v_total := v_total + 1;
    end loop;
  end loop;
  return v_total;
end
$$;
revoke all on function edgesync.ps_defrag(integer, numeric, integer) from public;

-- pg_cron: the nightly purge, and the op log's upkeep every ten minutes.
create or replace function edgesync.schedule_maintenance()
returns text
language plpgsql
set search_path = ''
as $$
begin
  perform edgesync.try_create_extension('pg_cron');
  if to_regprocedure('cron.schedule(text,text,text)') is null then
    return 'pg_cron is not installed: run select edgesync.purge_tombstones(''30 days'') daily and '
        || 'select edgesync.ps_defrag(); select edgesync.ps_compact(); often, from your own scheduler';
  end if;
  perform cron.schedule('edgesync-purge-tombstones', '17 3 * * *',
                        'select edgesync.purge_tombstones(''30 days'')');
  perform cron.schedule('edgesync-ps-defrag', '*/10 * * * *', 'select edgesync.ps_defrag()');
  perform cron.schedule('edgesync-ps-compact', '5-59/10 * * * *', 'select edgesync.ps_compact()');
  return 'edgesync-purge-tombstones scheduled daily at 03:17 UTC; edgesync-ps-defrag and edgesync-ps-compact every 10 minutes';
end
$$;
revoke all on function edgesync.schedule_maintenance() from public, anon, authenticated, service_role;
select edgesync.schedule_maintenance();

-- Every synced table records ops from now on, and its live rows get one each.
do $$
declare
  t record;
begin
  for t in select s.relid from edgesync.synced_tables s order by s.name loop
    perform edgesync.enable_ps(t.relid);
  end loop;
end $$;

insert into edgesync.schema_migrations (version, name) values (13, 'powersync_ops')
on conflict (version) do nothing;

notify pgrst, 'reload schema';
