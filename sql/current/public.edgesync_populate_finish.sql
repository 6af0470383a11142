-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION public.edgesync_populate_finish(p_source text, p_lease uuid, p_outcome text, p_error text DEFAULT NULL::text, p_retry_after_secs integer DEFAULT NULL::integer, p_user uuid DEFAULT NULL::uuid)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  perform set_config('edgesync.populate_writer', 'on', true);
  -- Taken after every apply of the call committed, so it is above all they wrote.
  return edgesync.populate_finish_as_caller(p_source, p_lease, p_outcome, p_error, p_retry_after_secs, p_user)
         || jsonb_build_object('checkpoint', edgesync.write_position()::text);
end
$function$;
