-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.disable_sync(target regclass)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
