-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.populate_lease(p_user uuid, p_source text, p_lease uuid)
 RETURNS sync_state
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  s public.sync_state;
begin
  select * into s from public.sync_state
  where user_id = p_user and source = p_source and lease_id = p_lease and status = 'syncing'
  for update;
  if s.id is null then
    raise sqlstate 'PT409' using message = 'this populate call lost its lease to another call', hint = 'populate_in_progress';
  end if;
  return s;
end
$function$;
