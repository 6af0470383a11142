-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION public.edgesync_populate_begin(p_source text, p_user uuid DEFAULT NULL::uuid, p_run uuid DEFAULT NULL::uuid, p_mode text DEFAULT 'full'::text, p_lease_secs integer DEFAULT 60)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  perform set_config('edgesync.populate_writer', 'on', true);
  return edgesync.populate_begin_as_caller(p_source, p_user, p_run, p_mode, p_lease_secs);
end
$function$;
