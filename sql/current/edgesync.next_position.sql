-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.next_position()
 RETURNS bigint
 LANGUAGE sql
 SET search_path TO ''
AS $function$
  select case when s.is_called then s.last_value + 1 else s.last_value end from edgesync.sync_positions s
$function$;
