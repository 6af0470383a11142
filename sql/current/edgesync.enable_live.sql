-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.enable_live(target regclass)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  execute format('drop trigger if exists edgesync_live_insert on %s', target);
  execute format('create trigger edgesync_live_insert after insert on %s referencing new table as new_rows
                  for each statement execute function edgesync.tg_live_poke()', target);
  execute format('drop trigger if exists edgesync_live_update on %s', target);
  execute format('create trigger edgesync_live_update after update on %s
                  referencing old table as old_rows new table as new_rows
                  for each statement execute function edgesync.tg_live_poke()', target);
end
$function$;
