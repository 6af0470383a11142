-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION public.edgesync_ps_page(p_h bigint, p_after jsonb, p_lim integer DEFAULT 1000, p_max_bytes integer DEFAULT 4194304)
 RETURNS text
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
