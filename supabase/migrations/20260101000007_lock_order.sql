-- 0007: embedding write-backs take locks in the same order as user writes.
--
-- A push that edits an entry locks the entry row, then (through the content trigger)
-- its embedding job. `edgesync_complete_embedding_jobs` used to lock the job first (to
-- delete it) and the entry second (to write the vector), so a push and a write-back
-- on the same entry could deadlock; Postgres then aborted one of them, and the client
-- saw a 5xx (found by the TypeScript-baseline comparison tests, two
-- "deadlock detected" in the log). Now the write-back locks each entry first, in
-- entry-id order, then finishes its job. (A deadlock that is still possible — two
-- multi-row transactions in opposite orders — is answered 503 with Retry-After by
-- the Workers; the aborted transaction wrote nothing.)

create or replace function public.edgesync_complete_embedding_jobs(p_results jsonb)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
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
$$;
revoke all on function public.edgesync_complete_embedding_jobs(jsonb) from public, anon, authenticated;
grant execute on function public.edgesync_complete_embedding_jobs(jsonb) to service_role;

insert into edgesync.schema_migrations (version, name) values (7, 'lock_order')
on conflict (version) do nothing;

notify pgrst, 'reload schema';
