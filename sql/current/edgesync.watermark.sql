-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.watermark()
 RETURNS xid8
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_next bigint;
  v_held xid8;
begin
  v_next := edgesync.next_position();
  select min(h.floor_position) into v_held from edgesync.held_positions() h;
  return least(v_next::text::xid8, coalesce(v_held, v_next::text::xid8));
end
$function$;
