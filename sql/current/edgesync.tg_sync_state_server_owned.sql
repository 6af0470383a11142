-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.tg_sync_state_server_owned()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  if coalesce(current_setting('edgesync.populate_writer', true), '') = 'on'
     or current_user not in ('anon', 'authenticated') then
    return new;
  end if;
  if tg_op = 'INSERT' then
    new.status := 'idle';
    new.cursor := null;
    new.sync_token := null;
    new.last_started_at := null;
    new.last_completed_at := null;
    new.last_error := null;
    new.retry_after := null;
    new.run_id := null;
    new.run_mode := null;
    new.progress := '{}'::jsonb;
    new.lease_id := null;
    new.lease_until := null;
  else
    new.status := old.status;
    new.cursor := old.cursor;
    new.sync_token := old.sync_token;
    new.last_started_at := old.last_started_at;
    new.last_completed_at := old.last_completed_at;
    new.last_error := old.last_error;
    new.retry_after := old.retry_after;
    new.run_id := old.run_id;
    new.run_mode := old.run_mode;
    new.progress := old.progress;
    new.lease_id := old.lease_id;
    new.lease_until := old.lease_until;
  end if;
  return new;
end
$function$;
