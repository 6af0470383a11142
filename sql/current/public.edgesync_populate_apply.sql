-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION public.edgesync_populate_apply(p_source text, p_lease uuid, p_rows jsonb, p_cursor text, p_watermark jsonb DEFAULT NULL::jsonb, p_user uuid DEFAULT NULL::uuid, p_lease_secs integer DEFAULT 60)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  perform set_config('edgesync.populate_writer', 'on', true);
  return edgesync.populate_apply_as_caller(p_source, p_lease, p_rows, p_cursor, p_watermark, p_user, p_lease_secs);
end
$function$;
