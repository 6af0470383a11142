-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION public.edgesync_push(client_id uuid, mutations jsonb)
 RETURNS json
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  most integer := (edgesync.limits() ->> 'push_max_mutations')::integer;
begin
  if jsonb_typeof(mutations) = 'array' and jsonb_array_length(mutations) > most then
    raise sqlstate 'PT413' using
      message = format('%s mutations in one batch; the limit is %s: split the outbox', jsonb_array_length(mutations), most),
      hint = 'too_many_mutations';
  end if;
  return (edgesync.push_batch(client_id, mutations)::jsonb
          || jsonb_build_object('checkpoint', edgesync.write_position()::text))::json;
end
$function$;
