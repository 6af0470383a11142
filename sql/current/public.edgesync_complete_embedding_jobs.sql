-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION public.edgesync_complete_embedding_jobs(p_results jsonb)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  r jsonb;
  written integer := 0;
  n integer;
begin
  if coalesce(auth.role(), '') <> 'service_role' then
    raise sqlstate 'PT403' using message = 'only the service role may complete embedding jobs', hint = 'forbidden_role';
  end if;
  for r in select x from jsonb_array_elements(p_results) x order by x ->> 'entry_id' loop
    -- The entry first, as a push does.
    perform 1 from public.entries e where e.id = (r ->> 'entry_id')::uuid for no key update;
    delete from edgesync.embedding_jobs j
     where j.entry_id = (r ->> 'entry_id')::uuid and j.generation = (r ->> 'generation')::bigint;
    get diagnostics n = row_count;
    if n = 0 then
      -- The entry changed since the claim: release the lease so the new generation
      -- is embedded by the next run, without waiting for the lease to expire.
      update edgesync.embedding_jobs j set locked_until = null, updated_at = now()
       where j.entry_id = (r ->> 'entry_id')::uuid and j.status = 'pending';
    end if;
    if n = 1 and r ? 'embedding' then
      update public.entries e
         set embedding = (r ->> 'embedding')::extensions.vector, embedding_model = r ->> 'model',
             embedding_hash = r ->> 'hash'
       where e.id = (r ->> 'entry_id')::uuid and e.deleted_at is null;
      get diagnostics n = row_count;
      written := written + n;
    end if;
  end loop;
  return written;
end
$function$;
