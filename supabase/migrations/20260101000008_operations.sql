-- 0008: what stalls sync or embeddings, for /health to report; /populate's checkpoint.
--
-- The one thing that holds back every user's pull is a long write transaction
-- anywhere in the database: the pull watermark is the snapshot's xmin, so no row
-- version at or above the oldest running transaction id is returned until it ends
-- (ARCHITECTURE.md "Sync core"). edgesync_health now reports that transaction's age
-- and id distance, with the embedding jobs that failed for good or are overdue and
-- the populate runs in error: counts and ages only, never a user's data.
--
-- It reads pg_stat_activity as its owner, `postgres`, which on Supabase (and on the
-- local stack) holds the predefined monitoring roles and so sees every session's
-- transaction id.

set local client_min_messages = warning;

-- Replaced by a version with a parameter (PostgREST must see one function only).
drop function if exists public.edgesync_health();

create or replace function public.edgesync_health(overdue_after_secs integer default 300)
returns json
language sql
stable
security definer
set search_path = ''
as $$
  select json_build_object(
    'schema_version', (select coalesce(max(version), 0) from edgesync.schema_migrations),
    'watermark', (
      select json_build_object(
        'writers', count(*),
        'oldest_write_age_ms', coalesce(max(floor(extract(epoch from clock_timestamp() - a.xact_start) * 1000))
                                          filter (where a.backend_xid = oldest.xid), 0)::bigint,
        'oldest_write_xid_distance', coalesce(max(pg_catalog.age(a.backend_xid)), 0))
      from pg_catalog.pg_stat_activity a
      left join lateral (
        select b.backend_xid as xid
        from pg_catalog.pg_stat_activity b
        where b.backend_xid is not null
        order by pg_catalog.age(b.backend_xid) desc
        limit 1
      ) oldest on true
      where a.backend_xid is not null),
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
$$;

revoke all on function public.edgesync_health(integer) from public;
grant execute on function public.edgesync_health(integer) to anon, authenticated, service_role;

-- /populate answers with a write_checkpoint, as /upload does: a pull right after a
-- populate may otherwise return none of the loaded rows while another write is in
-- flight (the watermark), and nothing would tell the client to wait. The finish of a
-- call (0006) now also returns its own transaction id.
create or replace function public.edgesync_populate_finish(
  p_source text, p_lease uuid, p_outcome text, p_error text default null, p_retry_after_secs integer default null,
  p_user uuid default null
)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
  v_user uuid := edgesync.populate_user(p_user);
  v_source text := edgesync.populate_source(p_source);
  s public.sync_state := edgesync.populate_lease(v_user, v_source, p_lease);
begin
  case p_outcome
    when 'completed' then
      update public.sync_state set status = 'idle', last_completed_at = now(), run_id = null, cursor = null,
        sync_token = coalesce(nullif((progress -> 'watermark')::text, 'null'), sync_token), lease_id = null, lease_until = null
      where id = s.id returning * into s;
    when 'paused' then
      update public.sync_state set lease_id = null, lease_until = null where id = s.id returning * into s;
    when 'failed' then
      update public.sync_state set status = 'error', last_error = left(coalesce(p_error, 'failed'), 2000),
        lease_id = null, lease_until = null
      where id = s.id returning * into s;
    when 'rate_limited' then
      update public.sync_state set status = 'rate_limited', last_error = left(p_error, 2000),
        retry_after = now() + make_interval(secs => greatest(coalesce(p_retry_after_secs, 60), 1)),
        lease_id = null, lease_until = null
      where id = s.id returning * into s;
    when 'restart' then
      update public.sync_state set cursor = null, sync_token = null, run_mode = 'full', progress = '{}'::jsonb
      where id = s.id returning * into s;
    else
      raise sqlstate 'PT400' using message = format('unknown outcome %s', coalesce(p_outcome, 'null')),
        hint = 'invalid_request';
  end case;
  -- This transaction comes after every apply of the call, which have committed: a pull
  -- whose checkpoint passes its id sees all they wrote (the answer's write_checkpoint).
  return jsonb_build_object('status', s.status, 'run_id', s.run_id, 'progress', s.progress,
                            'retry_after', s.retry_after, 'last_error', s.last_error,
                            'checkpoint', pg_current_xact_id()::text);
end
$$;

insert into edgesync.schema_migrations (version, name) values (8, 'operations')
on conflict (version) do nothing;

notify pgrst, 'reload schema';
