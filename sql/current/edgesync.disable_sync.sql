-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.disable_sync(target regclass)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  perform edgesync.disable_sync_tables(target);
  execute format('drop trigger if exists edgesync_live_insert on %s', target);
  execute format('drop trigger if exists edgesync_live_update on %s', target);
end
$function$;
