-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.ps_defrag(p_min_ops integer DEFAULT 1000, p_ratio numeric DEFAULT 2, p_chunk integer DEFAULT 1000)
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
