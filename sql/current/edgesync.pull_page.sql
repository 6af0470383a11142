-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.pull_page(since_txid xid8 DEFAULT '0'::xid8, since_id uuid DEFAULT '00000000-0000-0000-0000-000000000000'::uuid, tables text[] DEFAULT NULL::text[], lim integer DEFAULT 1000, max_bytes integer DEFAULT 4194304, since_origin xid8 DEFAULT '0'::xid8)
 RETURNS json
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
