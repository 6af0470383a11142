-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.enqueue_embedding_backfill(p_model text DEFAULT NULL::text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare n bigint;
begin
  with todo as (
    select e.id, e.user_id from public.entries e
     where e.deleted_at is null
       and (e.embedding is null or (p_model is not null and e.embedding_model is distinct from p_model))
       and not exists (select from edgesync.embedding_jobs j where j.entry_id = e.id and j.status <> 'failed')
  ), ins as (
    insert into edgesync.embedding_jobs as j (entry_id, user_id)
    select id, user_id from todo
    on conflict (entry_id) do update
      set status = 'pending', generation = j.generation + 1, attempts = 0, next_attempt_at = now(),
          last_error = null, updated_at = now()
    returning 1
  )
  select count(*) into n from ins;
  return n;
end
$function$;
