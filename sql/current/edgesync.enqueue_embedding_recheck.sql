-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.enqueue_embedding_recheck(p_user uuid DEFAULT NULL::uuid)
 RETURNS bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
  with ins as (
    insert into edgesync.embedding_jobs as j (entry_id, user_id)
    select e.id, e.user_id from public.entries e
     where e.deleted_at is null
       and (p_user is null or e.user_id = p_user)
       and not exists (select from edgesync.embedding_jobs k where k.entry_id = e.id and k.status <> 'failed')
    on conflict (entry_id) do update
      set status = 'pending', generation = j.generation + 1, attempts = 0, next_attempt_at = now(),
          last_error = null, updated_at = now()
    returning 1
  )
  select count(*) from ins
$function$;
