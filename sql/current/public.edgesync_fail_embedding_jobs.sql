-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION public.edgesync_fail_embedding_jobs(p_entries uuid[], p_error text, p_retry_after_secs integer DEFAULT 0, p_max_attempts integer DEFAULT 5)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
begin
  if coalesce(auth.role(), '') <> 'service_role' then
    raise sqlstate 'PT403' using message = 'only the service role may fail embedding jobs', hint = 'forbidden_role';
  end if;
  update edgesync.embedding_jobs j
     set status = case when j.attempts >= p_max_attempts then 'failed' else 'pending' end,
         next_attempt_at = now() + make_interval(secs => least(3600,
                             greatest(coalesce(p_retry_after_secs, 0), power(2, least(j.attempts, 12))::integer))),
         locked_until = null, last_error = left(p_error, 2000), updated_at = now()
   where j.entry_id = any (p_entries) and j.status = 'running';
  -- Jobs re-armed by a change since the claim keep their fresh schedule; only the
  -- lease is released.
  update edgesync.embedding_jobs j set locked_until = null, updated_at = now()
   where j.entry_id = any (p_entries) and j.status = 'pending';
end
$function$;
