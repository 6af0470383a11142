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
  select case when s.is_called then s.last_value + 1 else s.last_value end into v_next
    from edgesync.sync_positions s;
  v_held := edgesync.held_position();
  return least(v_next::text::xid8, coalesce(v_held, v_next::text::xid8));
end
$function$;
