-- 0009: what the Workers enforce, the database enforces too, for callers that reach
-- PostgREST directly (it is public: https://<ref>.supabase.co/rest/v1).
--
-- 1. sync_state's populate scheduling columns are server-owned. A user could clear
--    retry_after after a Neo4j 429 (and make the Worker hammer the shared Neo4j
--    account) or reset last_completed_at (and take every Cron slot). They stay
--    readable and synced; a user's write to them, through PostgREST or /upload, leaves
--    them as they were (an insert gets their defaults). Only the populate functions'
--    public entry points, which set `edgesync.populate_writer` for their transaction,
--    and roles other than anon and authenticated (the service role, postgres) write them.
-- 2. edgesync_pull takes at most shared::sync::MAX_LIMIT rows and MAX_PAGE_BYTES per
--    page and MAX_TABLES tables; edgesync_push at most shared::upload::MAX_MUTATIONS.
--    The numbers are in edgesync.limits(); tests/limits.rs checks they equal the
--    Workers'. The functions that do the work move to schema edgesync (not exposed
--    through PostgREST) under new names; the public ones check, then call them.

set local client_min_messages = warning;

create or replace function edgesync.limits()
returns jsonb
language sql
immutable
set search_path = ''
as $$
  select jsonb_build_object('pull_max_rows', 5000, 'pull_max_bytes', 4194304, 'pull_max_tables', 64,
                            'push_max_mutations', 1000)
$$;
grant execute on function edgesync.limits() to authenticated, service_role;

-- 1. Server-owned scheduling columns.
create or replace function edgesync.tg_sync_state_server_owned()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if coalesce(current_setting('edgesync.populate_writer', true), '') = 'on'
     or current_user not in ('anon', 'authenticated') then
    return new;
  end if;
  if tg_op = 'INSERT' then
    new.status := 'idle';
    new.cursor := null;
    new.sync_token := null;
    new.last_started_at := null;
    new.last_completed_at := null;
    new.last_error := null;
    new.retry_after := null;
    new.run_id := null;
    new.run_mode := null;
    new.progress := '{}'::jsonb;
    new.lease_id := null;
    new.lease_until := null;
  else
    new.status := old.status;
    new.cursor := old.cursor;
    new.sync_token := old.sync_token;
    new.last_started_at := old.last_started_at;
    new.last_completed_at := old.last_completed_at;
    new.last_error := old.last_error;
    new.retry_after := old.retry_after;
    new.run_id := old.run_id;
    new.run_mode := old.run_mode;
    new.progress := old.progress;
    new.lease_id := old.lease_id;
    new.lease_until := old.lease_until;
  end if;
  return new;
end
$$;
-- Before edgesync_row_version (triggers fire in name order), so a write that changed
-- only these columns is seen as changing nothing.
drop trigger if exists edgesync_owned_columns on public.sync_state;
create trigger edgesync_owned_columns before insert or update on public.sync_state
  for each row execute function edgesync.tg_sync_state_server_owned();

-- The populate entry points: the functions of 0006 (finish as 0008 left it) become
-- edgesync.populate_*_as_caller; the public ones mark the transaction, then call them.
alter function public.edgesync_populate_begin(text, uuid, uuid, text, integer) set schema edgesync;
alter function edgesync.edgesync_populate_begin(text, uuid, uuid, text, integer) rename to populate_begin_as_caller;
alter function public.edgesync_populate_apply(text, uuid, jsonb, text, jsonb, uuid, integer) set schema edgesync;
alter function edgesync.edgesync_populate_apply(text, uuid, jsonb, text, jsonb, uuid, integer)
  rename to populate_apply_as_caller;
alter function public.edgesync_populate_finish(text, uuid, text, text, integer, uuid) set schema edgesync;
alter function edgesync.edgesync_populate_finish(text, uuid, text, text, integer, uuid) rename to populate_finish_as_caller;

create function public.edgesync_populate_begin(
  p_source text, p_user uuid default null, p_run uuid default null, p_mode text default 'full',
  p_lease_secs integer default 60
)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
  perform set_config('edgesync.populate_writer', 'on', true);
  return edgesync.populate_begin_as_caller(p_source, p_user, p_run, p_mode, p_lease_secs);
end
$$;

create function public.edgesync_populate_apply(
  p_source text, p_lease uuid, p_rows jsonb, p_cursor text, p_watermark jsonb default null,
  p_user uuid default null, p_lease_secs integer default 60
)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
  perform set_config('edgesync.populate_writer', 'on', true);
  return edgesync.populate_apply_as_caller(p_source, p_lease, p_rows, p_cursor, p_watermark, p_user, p_lease_secs);
end
$$;

create function public.edgesync_populate_finish(
  p_source text, p_lease uuid, p_outcome text, p_error text default null, p_retry_after_secs integer default null,
  p_user uuid default null
)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
  perform set_config('edgesync.populate_writer', 'on', true);
  return edgesync.populate_finish_as_caller(p_source, p_lease, p_outcome, p_error, p_retry_after_secs, p_user);
end
$$;

revoke all on function public.edgesync_populate_begin(text, uuid, uuid, text, integer) from public, anon;
revoke all on function public.edgesync_populate_apply(text, uuid, jsonb, text, jsonb, uuid, integer) from public, anon;
revoke all on function public.edgesync_populate_finish(text, uuid, text, text, integer, uuid) from public, anon;
grant execute on function public.edgesync_populate_begin(text, uuid, uuid, text, integer) to authenticated, service_role;
grant execute on function public.edgesync_populate_apply(text, uuid, jsonb, text, jsonb, uuid, integer)
  to authenticated, service_role;
grant execute on function public.edgesync_populate_finish(text, uuid, text, text, integer, uuid)
  to authenticated, service_role;

-- 2. Pull and push limits.
alter function public.edgesync_pull(xid8, uuid, text[], integer, integer, xid8) set schema edgesync;
alter function edgesync.edgesync_pull(xid8, uuid, text[], integer, integer, xid8) rename to pull_page;

create function public.edgesync_pull(
  since_txid xid8 default '0',
  since_id   uuid default '00000000-0000-0000-0000-000000000000',
  tables     text[] default null,
  lim        integer default 1000,
  max_bytes  integer default 4194304,
  since_origin xid8 default '0'
)
returns json
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
  limits jsonb := edgesync.limits();
begin
  if lim is not null and (lim < 1 or lim > (limits ->> 'pull_max_rows')::integer) then
    raise sqlstate 'PT400' using message = format('lim must be from 1 to %s', limits ->> 'pull_max_rows'),
      hint = 'invalid_parameter';
  end if;
  if max_bytes is not null and (max_bytes < 1024 or max_bytes > (limits ->> 'pull_max_bytes')::integer) then
    raise sqlstate 'PT400' using message = format('max_bytes must be from 1024 to %s', limits ->> 'pull_max_bytes'),
      hint = 'invalid_parameter';
  end if;
  if coalesce(cardinality(tables), 0) > (limits ->> 'pull_max_tables')::integer then
    raise sqlstate 'PT400' using message = format('at most %s tables', limits ->> 'pull_max_tables'),
      hint = 'invalid_parameter';
  end if;
  return edgesync.pull_page(since_txid, since_id, tables, lim, max_bytes, since_origin);
end
$$;
revoke all on function public.edgesync_pull(xid8, uuid, text[], integer, integer, xid8) from public, anon;
grant execute on function public.edgesync_pull(xid8, uuid, text[], integer, integer, xid8) to authenticated;

alter function public.edgesync_push(uuid, jsonb) set schema edgesync;
alter function edgesync.edgesync_push(uuid, jsonb) rename to push_batch;

create function public.edgesync_push(client_id uuid, mutations jsonb)
returns json
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
  most integer := (edgesync.limits() ->> 'push_max_mutations')::integer;
begin
  if jsonb_typeof(mutations) = 'array' and jsonb_array_length(mutations) > most then
    raise sqlstate 'PT413' using
      message = format('%s mutations in one batch; the limit is %s: split the outbox', jsonb_array_length(mutations), most),
      hint = 'too_many_mutations';
  end if;
  return edgesync.push_batch(client_id, mutations);
end
$$;
revoke all on function public.edgesync_push(uuid, jsonb) from public, anon;
grant execute on function public.edgesync_push(uuid, jsonb) to authenticated;

insert into edgesync.schema_migrations (version, name) values (9, 'server_limits')
on conflict (version) do nothing;

notify pgrst, 'reload schema';
