-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.write_position()
 RETURNS bigint
 LANGUAGE sql
 SET search_path TO ''
AS $function$
  select greatest(edgesync.sync_position()::text::bigint,
                  coalesce(nullif(current_setting('edgesync.ps_block', true), '')::bigint, 0))
$function$;
