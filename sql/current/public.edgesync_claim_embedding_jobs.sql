-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION public.edgesync_claim_embedding_jobs(p_max integer DEFAULT 16, p_lease_secs integer DEFAULT 120, p_entry uuid DEFAULT NULL::uuid, p_fill boolean DEFAULT false)
 RETURNS TABLE(entry_id uuid, generation bigint, attempts integer, title text, body_markdown text, tags text[], contexts text[], people text[], embedding_hash text, embedding_model text)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  n integer := least(greatest(coalesce(p_max, 16), 1), 256);
begin
  if coalesce(auth.role(), '') <> 'service_role' then
    raise sqlstate 'PT403' using message = 'only the service role may claim embedding jobs', hint = 'forbidden_role';
  end if;
  return query
  with mine as (
    select j.entry_id from edgesync.embedding_jobs j
     where p_entry is not null and j.entry_id = p_entry
       and j.status <> 'failed' and j.next_attempt_at <= now()
       and (j.locked_until is null or j.locked_until < now())
     for update skip locked
  ), others as (
    select j.entry_id from edgesync.embedding_jobs j
     where (p_entry is null or p_fill)
       and j.entry_id is distinct from p_entry
       and j.status <> 'failed' and j.next_attempt_at <= now()
       and (j.locked_until is null or j.locked_until < now())
     order by j.next_attempt_at, j.entry_id
     limit n - (select count(*) from mine)
     for update skip locked
  ), due as (
    select m.entry_id from mine m union all select o.entry_id from others o
  ), claimed as (
    update edgesync.embedding_jobs j
       set status = 'running', attempts = j.attempts + 1,
           locked_until = now() + make_interval(secs => least(greatest(coalesce(p_lease_secs, 120), 10), 900)),
           updated_at = now()
      from due where j.entry_id = due.entry_id
    returning j.entry_id, j.generation, j.attempts
  )
  select c.entry_id, c.generation, c.attempts, e.title, e.body_markdown, e.tags, e.contexts, e.people,
         e.embedding_hash, e.embedding_model
    from claimed c join public.entries e on e.id = c.entry_id;
end
$function$;
