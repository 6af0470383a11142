-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.ps_backfill(p_name text)
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
