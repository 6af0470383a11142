-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.ps_compact(p_max_buckets integer DEFAULT 1000)
 RETURNS TABLE(buckets bigint, removed bigint)
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
