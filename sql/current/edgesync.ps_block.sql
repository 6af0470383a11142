-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.ps_block()
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_block text := nullif(current_setting('edgesync.ps_block', true), '');
  v_pos bigint;
begin
  if v_block is not null then
    return v_block::bigint;
  end if;
  v_pos := edgesync.sync_position()::text::bigint;
  perform set_config('edgesync.ps_block', v_pos::text, true);
  perform set_config('edgesync.ps_seq', '0', true);
  return v_pos;
end
$function$;
