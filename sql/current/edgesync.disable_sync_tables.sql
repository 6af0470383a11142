-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.disable_sync_tables(target regclass)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  delete from edgesync.synced_tables where relid = target;
  execute format('drop trigger if exists edgesync_row_version on %s', target);
  execute format('drop trigger if exists edgesync_soft_delete on %s', target);
end
$function$;
