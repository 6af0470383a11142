-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.sync_position()
 RETURNS xid8
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_held text := current_setting('edgesync.position', true);
  v_floor bigint;
  v_pos bigint;
begin
  if v_held <> '' then
    return v_held::xid8;
  end if;
  v_floor := edgesync.next_position();
  perform pg_catalog.pg_advisory_xact_lock_shared(v_floor | 4611686018427387904);
  v_pos := nextval('edgesync.sync_positions');
  perform set_config('edgesync.position', v_pos::text, true);
  return v_pos::text::xid8;
end
$function$;
