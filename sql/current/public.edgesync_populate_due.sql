-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION public.edgesync_populate_due(p_source text, p_stale_after_secs integer, p_limit integer, p_idle_secs integer DEFAULT 300)
 RETURNS TABLE(user_id uuid, run_id uuid, status text, last_completed_at timestamp with time zone)
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
  select s.user_id, s.run_id, s.status, s.last_completed_at
  from public.sync_state s
  where s.source = p_source
    and s.deleted_at is null
    and not (s.status = 'syncing' and coalesce(s.lease_until > now(), false))
    and (s.retry_after is null or s.retry_after <= now())
    and case
          when s.status = 'error' then s.updated_at < now() - make_interval(secs => greatest(p_stale_after_secs, 0))
          when s.run_id is not null then s.updated_at < now() - make_interval(secs => greatest(p_idle_secs, 0))
          else s.last_completed_at is null
            or s.last_completed_at < now() - make_interval(secs => greatest(p_stale_after_secs, 0))
        end
  order by s.last_completed_at nulls first, s.user_id
  limit least(greatest(coalesce(p_limit, 0), 0), 1000)
$function$;
