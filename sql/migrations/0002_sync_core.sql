-- 0002: the sync machinery and the seed tables.
--
-- Design (see ARCHITECTURE.md "Sync core" and ../shared/recipes/xid8-sync):
--
-- * Every row version carries `_txid xid8`, the id of the transaction that wrote it,
--   set by trigger (a client cannot forge it). A pull returns only versions whose
--   `_txid` is below the snapshot's xmin watermark, in (_txid, id) order, so a row
--   committed late by a long transaction is never skipped: the cursor cannot pass it
--   while it is still running.
-- * Writing only server-only columns (embeddings) keeps `_txid`, so the row is not
--   re-sent.
-- * Deletes are soft (`deleted_at`); even a hard DELETE becomes a soft delete. Old
--   tombstones are purged by `edgesync.purge_tombstones`, which records a per-user
--   horizon; a cursor older than it gets "resync required".
-- * `edgesync.enable_sync(table)` makes any table with `id uuid` primary key and
--   `user_id uuid` syncable; the seed tables below use it themselves.
-- * Pull and push are RPC functions running as the caller (security invoker), so RLS
--   and auth.uid() decide everything a user can read and write.

set local client_min_messages = warning;

-- pgvector, for entries.embedding. A new Supabase project has it available but not
-- enabled; there `postgres` may create it (supautils' privileged extensions).
create extension if not exists vector with schema extensions;

grant usage on schema edgesync to authenticated, service_role;

-- Registered tables. `name` is the table's name on the wire (`type` in a mutation,
-- key of `changes` in a pull).
create table if not exists edgesync.synced_tables (
  name            text primary key check (name ~ '^[a-z_][a-z0-9_]{0,62}$'),
  relid           regclass not null unique,
  server_only     text[] not null default '{}',
  conflict_policy text not null default 'last_write_wins'
                  check (conflict_policy in ('last_write_wins', 'server_wins')),
  registered_at   timestamptz not null default now()
);
grant select on edgesync.synced_tables to authenticated, service_role;

-- Each client (device install) belongs to the user who first used it, and remembers
-- the last op_id applied for it: the idempotency ledger of /upload.
create table if not exists edgesync.clients (
  client_id  uuid primary key,
  user_id    uuid not null default auth.uid(),
  last_op_id bigint not null default 0 check (last_op_id >= 0),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists clients_user_idx on edgesync.clients (user_id);
alter table edgesync.clients enable row level security;
drop policy if exists clients_owner on edgesync.clients;
create policy clients_owner on edgesync.clients for all to authenticated
  using ((select auth.uid()) = user_id) with check ((select auth.uid()) = user_id);
grant select, insert, update (last_op_id, updated_at) on edgesync.clients to authenticated;
grant all on edgesync.clients to service_role;

-- Per user: the highest `_txid` of a tombstone that has been purged. A cursor at or
-- below it may have missed that delete.
create table if not exists edgesync.purge_horizons (
  user_id   uuid primary key,
  horizon   xid8 not null,
  purged_at timestamptz not null default now()
);
alter table edgesync.purge_horizons enable row level security;
drop policy if exists purge_horizons_owner on edgesync.purge_horizons;
create policy purge_horizons_owner on edgesync.purge_horizons for select to authenticated
  using ((select auth.uid()) = user_id);
grant select on edgesync.purge_horizons to authenticated;
grant all on edgesync.purge_horizons to service_role;

-- Row versioning. TG_ARGV lists the table's server-only columns: a change to them
-- alone (or an update that changes nothing) keeps the version, so it is not re-sent.
-- The comparison is over the whole row as jsonb, so a column added later is covered
-- without touching this trigger.
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
  new._txid := pg_current_xact_id();
  new._writer := nullif(current_setting('edgesync.client_id', true), '')::uuid;
  new.updated_at := now();
  return new;
end
$$;

-- A DELETE becomes a soft delete, so every delete reaches /sync as a tombstone.
-- Only edgesync.purge_tombstones removes rows for good.
create or replace function edgesync.tg_soft_delete()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if current_setting('edgesync.purging', true) = 'on' then
    return old;
  end if;
  execute format('update %s set deleted_at = now() where id = $1 and deleted_at is null', tg_relid::regclass)
    using old.id;
  return null;
end
$$;

-- Make a table syncable: sync columns, triggers, index, RLS (owner only, every verb),
-- column grants (server-only columns are not writable by users) and registration.
-- Idempotent: run it again after adding columns so they become writable.
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
declare
  rel_name   text;
  rel_schema text;
  v_name     text;
  col        text;
  writable   text;
  trig_args  text;
  verb       text;
begin
  select c.relname, n.nspname into rel_name, rel_schema
  from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  where c.oid = target and c.relkind in ('r', 'p');
  if rel_name is null then
    raise exception 'edgesync.enable_sync: % is not a table', target;
  end if;
  v_name := coalesce(wire_name, rel_name);
  if v_name !~ '^[a-z_][a-z0-9_]{0,62}$' then
    raise exception 'edgesync.enable_sync: "%" cannot be a table name on the wire (use wire_name => ...)', v_name;
  end if;
  if not exists (
    select from pg_catalog.pg_index i
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
    where i.indrelid = target and i.indisprimary and i.indnatts = 1
      and a.attname = 'id' and a.atttypid = 'uuid'::regtype
  ) then
    raise exception 'edgesync.enable_sync: % needs "id uuid primary key"', target;
  end if;
  if not exists (
    select from pg_catalog.pg_attribute a
    where a.attrelid = target and a.attname = 'user_id' and a.atttypid = 'uuid'::regtype
      and a.attnotnull and not a.attisdropped
  ) then
    raise exception 'edgesync.enable_sync: % needs "user_id uuid not null"', target;
  end if;
  foreach col in array coalesce(server_only, '{}') loop
    if col in ('id', 'user_id', 'created_at', 'updated_at', 'deleted_at', '_txid', '_writer') then
      raise exception 'edgesync.enable_sync: % cannot be server-only', col;
    end if;
    if not exists (select from pg_catalog.pg_attribute a
                   where a.attrelid = target and a.attname = col and not a.attisdropped and a.attnum > 0) then
      raise exception 'edgesync.enable_sync: % has no column %', target, col;
    end if;
  end loop;

  execute format($f$
    alter table %s
      alter column user_id set default auth.uid(),
      add column if not exists created_at timestamptz not null default now(),
      add column if not exists updated_at timestamptz not null default now(),
      add column if not exists deleted_at timestamptz,
      add column if not exists _txid      xid8 not null default pg_current_xact_id(),
      add column if not exists _writer    uuid
  $f$, target);
  execute format('create index if not exists %I on %s (user_id, _txid, id)', rel_name || '_sync_idx', target);
  execute format('create index if not exists %I on %s (deleted_at) where deleted_at is not null',
                 rel_name || '_tombstones_idx', target);

  select coalesce(string_agg(quote_literal(c), ', '), '') into trig_args from unnest(server_only) c;
  execute format('drop trigger if exists edgesync_row_version on %s', target);
  execute format('create trigger edgesync_row_version before insert or update on %s
                  for each row execute function edgesync.tg_row_version(%s)', target, trig_args);
  execute format('drop trigger if exists edgesync_soft_delete on %s', target);
  execute format('create trigger edgesync_soft_delete before delete on %s
                  for each row execute function edgesync.tg_soft_delete()', target);

  execute format('alter table %s enable row level security', target);
  foreach verb in array array['select', 'insert', 'update', 'delete'] loop
    if not exists (select from pg_catalog.pg_policies p
                   where p.schemaname = rel_schema and p.tablename = rel_name
                     and p.policyname = rel_name || '_owner_' || verb) then
      execute format('create policy %I on %s for %s to authenticated %s', rel_name || '_owner_' || verb, target, verb,
        case verb
          when 'insert' then 'with check ((select auth.uid()) = user_id)'
          when 'update' then 'using ((select auth.uid()) = user_id) with check ((select auth.uid()) = user_id)'
          else 'using ((select auth.uid()) = user_id)'
        end);
    end if;
  end loop;

  select string_agg(quote_ident(a.attname), ', ' order by a.attnum) into writable
  from pg_catalog.pg_attribute a
  where a.attrelid = target and a.attnum > 0 and not a.attisdropped
    and a.attname <> all (coalesce(server_only, '{}') || '{_txid,_writer}'::text[]);
  execute format('revoke all on %s from anon, authenticated', target);
  execute format('grant select, delete on %s to authenticated', target);
  execute format('grant insert (%s), update (%s) on %s to authenticated', writable, writable, target);
  execute format('grant all on %s to service_role', target);

  insert into edgesync.synced_tables as s (name, relid, server_only, conflict_policy)
  values (v_name, target, coalesce(server_only, '{}'), coalesce(conflict_policy, 'last_write_wins'))
  on conflict (name) do update
    set relid = excluded.relid, server_only = excluded.server_only, conflict_policy = excluded.conflict_policy;
end
$$;
revoke all on function edgesync.enable_sync(regclass, text[], text, text) from public;

-- Stop syncing a table: unregister it and remove the triggers (the columns, data,
-- policies and grants stay). Run it before dropping a synced table.
create or replace function edgesync.disable_sync(target regclass)
returns void
language plpgsql
set search_path = ''
as $$
begin
  delete from edgesync.synced_tables where relid = target;
  execute format('drop trigger if exists edgesync_row_version on %s', target);
  execute format('drop trigger if exists edgesync_soft_delete on %s', target);
end
$$;
revoke all on function edgesync.disable_sync(regclass) from public;

-- Purge tombstones older than `retention`, recording each user's horizon in the same
-- transaction. Run it from cron (pg_cron on Supabase) as the owner.
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
        insert into edgesync.purge_horizons as h (user_id, horizon)
        select user_id, max(_txid) from gone group by user_id
        on conflict (user_id) do update
          set horizon = greatest(h.horizon, excluded.horizon), purged_at = now()
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

-- Turn a value that local SQLite stored as TEXT (or a number) into what the column's
-- type expects. Everything else is left to the type's own input function.
create or replace function edgesync.normalize_value(v jsonb, typ text)
returns jsonb
language sql
immutable
set search_path = ''
as $$
  select case
    when v is null or jsonb_typeof(v) = 'null' then v
    when typ in ('json', 'jsonb') and jsonb_typeof(v) = 'string' and ltrim(v #>> '{}') ~ '^[\[{]'
      then (v #>> '{}')::jsonb
    when typ like '%[]' and jsonb_typeof(v) = 'string' and ltrim(v #>> '{}') ~ '^\['
      then (v #>> '{}')::jsonb
    when typ = 'boolean' and jsonb_typeof(v) = 'number'
      then to_jsonb((v #>> '{}')::numeric <> 0)
    when (typ like 'timestamp%' or typ = 'date') and jsonb_typeof(v) = 'number'
      -- Unix time: seconds, or milliseconds when it is that large (JavaScript's Date.now()).
      then to_jsonb(to_timestamp(case when abs((v #>> '{}')::numeric) >= 100000000000
                                      then (v #>> '{}')::numeric / 1000 else (v #>> '{}')::numeric end))
    else v
  end
$$;

-- Delta pull. One call reads one page for all requested tables in one statement (one
-- snapshot), returning versions with (_txid, id) > (since_txid, since_id) and
-- _txid < the snapshot's xmin. Pages are bounded by `lim` rows and about `max_bytes`
-- of row JSON. Returns one json value (not a set), so PostgREST's max-rows never
-- truncates a page.
create or replace function public.edgesync_pull(
  since_txid xid8 default '0',
  since_id   uuid default '00000000-0000-0000-0000-000000000000',
  tables     text[] default null,
  lim        integer default 1000,
  max_bytes  integer default 4194304
)
returns json
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
  uid      uuid := auth.uid();
  v_tables text[];
  unknown  text[];
  v_horizon xid8;
  branches text;
  l        integer := least(greatest(coalesce(lim, 1000), 1), 10000);
  b        integer := greatest(coalesce(max_bytes, 4194304), 1024);
  result   json;
begin
  if uid is null then
    raise sqlstate 'PT401' using message = 'a user token is required', hint = 'user_required';
  end if;
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
      'next_txid', greatest(since_txid, pg_snapshot_xmin(pg_current_snapshot()))::text,
      'next_id', '00000000-0000-0000-0000-000000000000');
  end if;

  if since_txid > '0'::xid8 then
    select h.horizon into v_horizon from edgesync.purge_horizons h where h.user_id = uid;
    if v_horizon is not null and since_txid <= v_horizon then
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
    with w as materialized (select pg_snapshot_xmin(pg_current_snapshot()) as w),
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
      'watermark', (select w from w)::text)
  $q$, branches)
  into result
  using uid, since_txid, since_id, l, b, v_tables;
  return result;
end
$$;
revoke all on function public.edgesync_pull(xid8, uuid, text[], integer, integer) from public, anon;
grant execute on function public.edgesync_pull(xid8, uuid, text[], integer, integer) to authenticated;

-- Push a client's outbox. `mutations` is an array of
--   {op_id, op: PUT|PATCH|DELETE, type, id, data, base_txid?, base_id?}
-- (the Worker has already checked their shape, but this function is also reachable
-- through PostgREST directly, so it trusts nothing). All of it happens in the
-- caller's transaction: either every mutation and the client's new last op_id
-- commit together, or nothing does.
create or replace function public.edgesync_push(client_id uuid, mutations jsonb)
returns json
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
  uid       uuid := auth.uid();
  v_client  uuid := client_id;
  v_last    bigint;
  meta      jsonb;
  tm        jsonb;
  m         jsonb;
  errs      jsonb := '[]'::jsonb;
  forbidden boolean := false;
  results   jsonb := '[]'::jsonb;
  k         text;
  v_op      text;
  v_op_id   bigint;
  v_id      uuid;
  v_data    jsonb;
  norm      jsonb;
  cols      text;
  sets      text;
  cur_txid  xid8;
  cur_writer uuid;
  cur_row   jsonb;
  cur_del   boolean;
  conflicted boolean;
  st        text;
  msg       text;
  hint_code text;
  status_code text;
begin
  if uid is null then
    raise sqlstate 'PT401' using message = 'a user token is required', hint = 'user_required';
  end if;
  if v_client is null then
    raise sqlstate 'PT400' using message = 'client_id is required', hint = 'invalid_request';
  end if;
  if mutations is null or jsonb_typeof(mutations) <> 'array' then
    raise sqlstate 'PT400' using message = 'mutations must be a JSON array', hint = 'invalid_request';
  end if;

  -- Each registered table: its relation, policy, and the columns a client may write
  -- with their types.
  -- `put_set` is the SET list of a PUT's upsert, the same for every PUT on the table:
  -- a PUT replaces the row, so columns it leaves out go back to their defaults.
  select jsonb_object_agg(s.name, jsonb_build_object(
           'rel', s.relid::text,
           'policy', s.conflict_policy,
           'hidden', to_jsonb(s.server_only || '{_txid,_writer}'::text[]),
           'cols', (select jsonb_object_agg(a.attname, format_type(a.atttypid, null))
                    from pg_catalog.pg_attribute a
                    where a.attrelid = s.relid and a.attnum > 0 and not a.attisdropped),
           'put_set', (select string_agg(format('%1$I = excluded.%1$I', a.attname), ', ')
                       from pg_catalog.pg_attribute a
                       where a.attrelid = s.relid and a.attnum > 0 and not a.attisdropped
                         and a.attname not in ('id', 'user_id', 'created_at', 'updated_at', 'deleted_at')
                         and a.attname <> all (s.server_only || '{_txid,_writer}'::text[]))))
  into meta from edgesync.synced_tables s;

  -- Validate everything first, so a bad batch is rejected as a whole with one error
  -- per bad mutation.
  for m in select e from jsonb_array_elements(mutations) e loop
    if jsonb_typeof(m) is distinct from 'object' or jsonb_typeof(m -> 'op_id') is distinct from 'number'
       or (m ->> 'op_id') !~ '^[0-9]{1,18}$' or (m ->> 'op_id')::bigint < 1 then
      errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'invalid_op_id',
                                         'message', 'op_id must be a positive integer');
      continue;
    end if;
    if (m ->> 'op') is null or (m ->> 'op') not in ('PUT', 'PATCH', 'DELETE') then
      errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'invalid_op',
                                         'message', 'op must be PUT, PATCH or DELETE');
    end if;
    if coalesce(m ->> 'id', '') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
      errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'invalid_id', 'message', 'id must be a UUID');
    end if;
    tm := meta -> (m ->> 'type');
    if tm is null then
      errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'unknown_table',
                                         'message', format('unknown table: %s', coalesce(m ->> 'type', '(none)')));
      continue;
    end if;
    if m ? 'data' and jsonb_typeof(m -> 'data') not in ('object', 'null') then
      errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'invalid_data',
                                         'message', 'data must be an object');
      continue;
    end if;
    for k in select jsonb_object_keys(coalesce(nullif(m -> 'data', 'null'::jsonb), '{}'::jsonb)) loop
      if not (tm -> 'cols') ? k then
        errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'unknown_column', 'column', k,
                                           'message', format('%s has no column %s', m ->> 'type', k));
      elsif (tm -> 'hidden') ? k then
        errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'read_only_column', 'column', k,
                                           'message', format('%s.%s is managed by the server', m ->> 'type', k));
      elsif k = 'user_id' and (m -> 'data' ->> 'user_id') is distinct from uid::text then
        forbidden := true;
        errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'user_id_mismatch', 'column', k,
                                           'message', 'user_id must be the signed-in user (or be left out)');
      elsif k = 'id' and (m -> 'data' ->> 'id') is distinct from (m ->> 'id') then
        errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'id_mismatch', 'column', k,
                                           'message', 'data.id differs from the mutation id');
      end if;
    end loop;
  end loop;
  if jsonb_array_length(errs) > 0 then
    if forbidden then
      raise sqlstate 'PT403' using message = 'a mutation names another user', hint = 'user_id_mismatch',
                                   detail = jsonb_build_object('errors', errs)::text;
    end if;
    raise sqlstate 'PT400' using message = format('%s invalid mutation(s); nothing was applied', jsonb_array_length(errs)),
                                 hint = 'invalid_mutations', detail = jsonb_build_object('errors', errs)::text;
  end if;

  -- Claim the client_id (a no-op if it exists, whoever owns it), then lock our row.
  -- RLS hides another user's row, so "not found" means it is someone else's.
  insert into edgesync.clients (client_id, user_id) values (v_client, uid) on conflict on constraint clients_pkey do nothing;
  select c.last_op_id into v_last from edgesync.clients c where c.client_id = v_client for update;
  if not found then
    raise sqlstate 'PT403' using message = 'client_id belongs to another user; generate a new one',
                                 hint = 'client_id_taken';
  end if;
  perform set_config('edgesync.client_id', v_client::text, true);

  begin
    for m in select e from jsonb_array_elements(mutations) e order by (e ->> 'op_id')::bigint loop
      v_op_id := (m ->> 'op_id')::bigint;
      if v_op_id <= v_last then
        results := results || jsonb_build_object('op_id', v_op_id, 'status', 'duplicate');
        continue;
      end if;
      v_last := v_op_id;
      v_op := m ->> 'op';
      v_id := (m ->> 'id')::uuid;
      tm := meta -> (m ->> 'type');
      v_data := coalesce(nullif(m -> 'data', 'null'::jsonb), '{}'::jsonb);

      -- The row as it is now (locked), when the conflict check or PATCH needs it.
      cur_txid := null; cur_writer := null; cur_del := null; cur_row := null;
      if (m ->> 'base_txid') is not null or v_op = 'PATCH' then
        execute format('select t._txid, t._writer, t.deleted_at is not null, to_jsonb(t) - $2::text[]
                          from %s t where t.id = $1 for update', tm ->> 'rel')
          into cur_txid, cur_writer, cur_del, cur_row
          using v_id, array(select jsonb_array_elements_text(tm -> 'hidden'));
      end if;
      -- A conflict: the row changed after the version the client based its edit on,
      -- and not by this client.
      conflicted := (m ->> 'base_txid') is not null and cur_txid is not null
        and (cur_txid, v_id) > ((m ->> 'base_txid')::xid8, coalesce((m ->> 'base_id')::uuid, '00000000-0000-0000-0000-000000000000'))
        and cur_writer is distinct from v_client;
      if conflicted and tm ->> 'policy' = 'server_wins' then
        results := results || jsonb_build_object('op_id', v_op_id, 'status', 'conflict', 'policy', 'server_wins',
                                                 'server_row', case when cur_del then null else cur_row end);
        continue;
      end if;

      if v_op = 'DELETE' then
        execute format('update %s set deleted_at = now() where id = $1 and deleted_at is null', tm ->> 'rel')
          using v_id;
      else
        select coalesce(jsonb_object_agg(key, edgesync.normalize_value(value, (tm -> 'cols') ->> key)), '{}'::jsonb)
        into norm
        from jsonb_each(v_data)
        where key not in ('id', 'user_id', 'updated_at', 'deleted_at');
        if v_op = 'PUT' then
          norm := norm || jsonb_build_object('id', v_id, 'user_id', uid);
          select string_agg(quote_ident(key), ', ') into cols from jsonb_object_keys(norm) key;
          execute format('insert into %1$s as t (%2$s) select %2$s from jsonb_populate_record(null::%1$s, $1)
                          on conflict (id) do update set %3$s deleted_at = null',
                         tm ->> 'rel', cols, coalesce((tm ->> 'put_set') || ',', '')) using norm;
        else -- PATCH: only the given columns, and only on a live row.
          if cur_txid is null or cur_del then
            results := results || jsonb_build_object('op_id', v_op_id, 'status', 'conflict', 'reason', 'row_missing',
                                                     'server_row', null);
            continue;
          end if;
          select string_agg(format('%1$I = p.%1$I', key), ', ') into sets from jsonb_object_keys(norm) key;
          if sets is not null then
            execute format('update %1$s t set %2$s from jsonb_populate_record(null::%1$s, $1) p where t.id = $2',
                           tm ->> 'rel', sets) using norm, v_id;
          end if;
        end if;
      end if;
      if conflicted then
        -- Last write wins: applied, and the overwritten version is reported.
        results := results || jsonb_build_object('op_id', v_op_id, 'status', 'applied', 'conflict', true,
                                                 'policy', 'last_write_wins',
                                                 'server_row', case when cur_del then null else cur_row end);
      else
        results := results || jsonb_build_object('op_id', v_op_id, 'status', 'applied');
      end if;
    end loop;
  exception when others then
    get stacked diagnostics st = returned_sqlstate, msg = message_text;
    if st like 'PT%' then
      raise;
    end if;
    if st = '42501' then
      status_code := 'PT403'; hint_code := 'forbidden_row';
      msg := format('row %s of %s belongs to another user or may not be written', v_id, m ->> 'type');
    elsif st = '23505' then
      status_code := 'PT409'; hint_code := 'unique_violation';
      msg := format('%s %s conflicts with another row on a unique key: %s', m ->> 'type', v_id, msg);
    elsif st like '22%' or st in ('23502', '23514', '23503', '42804', '2200G') then
      status_code := 'PT400'; hint_code := 'invalid_value';
    else
      raise;
    end if;
    raise exception using errcode = status_code,
            message = format('op_id %s (%s %s): %s; nothing was applied', v_op_id, v_op, m ->> 'type', msg),
            hint = hint_code,
            detail = jsonb_build_object('errors', jsonb_build_array(jsonb_build_object(
                       'op_id', v_op_id, 'code', hint_code, 'message', msg)))::text;
  end;

  update edgesync.clients c set last_op_id = v_last, updated_at = now() where c.client_id = v_client;
  return json_build_object('results', results, 'last_op_id', v_last, 'checkpoint', pg_current_xact_id()::text);
end
$$;
revoke all on function public.edgesync_push(uuid, jsonb) from public, anon;
grant execute on function public.edgesync_push(uuid, jsonb) to authenticated;

-- ---------------------------------------------------------------------------
-- The seed tables (SPEC §4).

create table if not exists public.sync_entities (
  id           uuid primary key default gen_random_uuid(),
  user_id      uuid not null default auth.uid(),
  type         text not null,
  key          text not null,
  display_name text,
  properties   jsonb not null default '{}'::jsonb,
  constraint sync_entities_natural_key unique (user_id, type, key)
);

create table if not exists public.sync_events (
  id              uuid primary key default gen_random_uuid(),
  user_id         uuid not null default auth.uid(),
  title           text,
  description     text,
  start_time      timestamptz,
  end_time        timestamptz,
  all_day         boolean not null default false,
  location        text,
  google_event_id text,
  source          text,
  source_id       text,
  properties      jsonb not null default '{}'::jsonb,
  constraint sync_events_natural_key unique (user_id, google_event_id)
);

create table if not exists public.sync_relationships (
  id         uuid primary key default gen_random_uuid(),
  user_id    uuid not null default auth.uid(),
  from_id    uuid not null,
  to_id      uuid not null,
  type       text not null,
  properties jsonb not null default '{}'::jsonb,
  constraint sync_relationships_natural_key unique (user_id, from_id, to_id, type)
);

create table if not exists public.entries (
  id              uuid primary key default gen_random_uuid(),
  user_id         uuid not null default auth.uid(),
  title           text,
  body_markdown   text,
  facets          text[] not null default '{}',
  tags            text[] not null default '{}',
  contexts        text[] not null default '{}',
  people          text[] not null default '{}',
  frontmatter     jsonb not null default '{}'::jsonb,
  start_at        timestamptz,
  end_at          timestamptz,
  embedding       extensions.vector(1536),
  embedding_model text,
  embedding_hash  text
);

create table if not exists public.sync_state (
  id                uuid primary key default gen_random_uuid(),
  user_id           uuid not null default auth.uid(),
  source            text not null,
  status            text not null default 'idle' check (status in ('idle', 'syncing', 'error', 'rate_limited')),
  cursor            text,
  sync_token        text,
  last_started_at   timestamptz,
  last_completed_at timestamptz,
  last_error        text,
  retry_after       timestamptz,
  constraint sync_state_user_source unique (user_id, source)
);

do $$
begin
  perform edgesync.enable_sync('public.sync_entities');
  perform edgesync.enable_sync('public.sync_events');
  perform edgesync.enable_sync('public.sync_relationships');
  perform edgesync.enable_sync('public.entries', server_only => array['embedding', 'embedding_model', 'embedding_hash']);
  perform edgesync.enable_sync('public.sync_state');
end
$$;

insert into edgesync.schema_migrations (version, name) values (2, 'sync_core')
on conflict (version) do nothing;

notify pgrst, 'reload schema';
