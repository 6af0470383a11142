-- edgesync schema version 3: resync only the scans that began before a purge.
--
-- Version 2 answered `410 resync_required` to every cursor at or below a user's purge
-- horizon, including the cursors of a rebuild that started *after* the purge: a
-- client with more than one page of data could never finish rebuilding. (Found by the
-- convergence test of the reference client.)
--
-- Now a cursor carries the scan's origin (the watermark of its first page), the purge
-- records its own transaction id, and only a cursor whose scan began before the purge
-- committed, and is still below the horizon, must resync. Cursors without an origin
-- (version 1) count as "began before every purge".

set local client_min_messages = warning;

alter table edgesync.purge_horizons add column if not exists purged_xid xid8;
update edgesync.purge_horizons set purged_xid = pg_current_xact_id() where purged_xid is null;
alter table edgesync.purge_horizons alter column purged_xid set not null;

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
        select user_id, max(_txid), pg_current_xact_id() from gone group by user_id
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

drop function if exists public.edgesync_pull(xid8, uuid, text[], integer, integer);
create or replace function public.edgesync_pull(
  since_txid xid8 default '0',
  since_id   uuid default '00000000-0000-0000-0000-000000000000',
  tables     text[] default null,
  lim        integer default 1000,
  max_bytes  integer default 4194304,
  since_origin xid8 default '0'
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
  v_purged  xid8;
  v_origin  xid8 := case when since_txid > '0'::xid8 then since_origin
                         else pg_snapshot_xmin(pg_current_snapshot()) end;
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
      'watermark', (select w from w)::text,
      'origin', $7::text)
  $q$, branches)
  into result
  using uid, since_txid, since_id, l, b, v_tables, v_origin;
  return result;
end
$$;
revoke all on function public.edgesync_pull(xid8, uuid, text[], integer, integer, xid8) from public, anon;
grant execute on function public.edgesync_pull(xid8, uuid, text[], integer, integer, xid8) to authenticated;

insert into edgesync.schema_migrations (version, name) values (3, 'resync_origin')
on conflict (version) do nothing;

notify pgrst, 'reload schema';
