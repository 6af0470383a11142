-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.ps_fresh_block()
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_block bigint;
begin
  perform edgesync.ps_block();
  v_block := nextval('edgesync.sync_positions');
  perform set_config('edgesync.ps_block', v_block::text, true);
  perform set_config('edgesync.ps_seq', '0', true);
  return v_block;
end
$function$;
