-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION public.edgesync_health(overdue_after_secs integer DEFAULT 300)
 RETURNS json
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO ''
AS $function$
  select json_build_object(
    'schema_version', (select coalesce(max(version), 0) from edgesync.schema_migrations),
    'watermark', (
      select json_build_object(
        'writers', count(distinct h.pid),
        'oldest_write_age_ms', coalesce(max(floor(extract(epoch from clock_timestamp() - a.xact_start) * 1000)), 0)::bigint,
        'oldest_write_xid_distance', coalesce(max(pg_catalog.age(a.backend_xid)), 0))
      from edgesync.held_positions() h
      left join pg_catalog.pg_stat_activity a on a.pid = h.pid),
    'embeddings', (
      select json_build_object(
        'failed', count(*) filter (where j.status = 'failed'),
        'overdue', count(*) filter (where
          (j.status = 'pending' and j.next_attempt_at < now() - make_interval(secs => greatest(overdue_after_secs, 0)))
          or (j.status = 'running' and j.locked_until < now() - make_interval(secs => greatest(overdue_after_secs, 0)))))
      from edgesync.embedding_jobs j),
    'populate', (
      select json_build_object('errors', count(*) filter (where s.status = 'error'))
      from public.sync_state s)
  )
$function$;
