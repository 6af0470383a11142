-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.enqueue_embedding(p_entry uuid, p_user uuid)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
begin
  insert into edgesync.embedding_jobs as j (entry_id, user_id)
  values (p_entry, p_user)
  on conflict (entry_id) do update
    set status = 'pending', generation = j.generation + 1, attempts = 0, next_attempt_at = now(),
        last_error = null, updated_at = now();
  perform pg_notify('edgesync_embed', json_build_object(
    'type', 'UPDATE', 'table', 'entries', 'schema', 'public',
    'record', json_build_object('id', p_entry, 'user_id', p_user), 'old_record', null)::text);
end
$function$;
