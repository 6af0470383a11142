-- 0006: /populate — bulk load of a user's existing data (a Neo4j graph, legacy records)
-- into the sync tables, with the sync_state lifecycle of seed 001.
--
-- A populate is a *run* (sync_state.run_id) made of one or more *calls*. Each call
-- takes a lease (lease_id, lease_until) with edgesync_populate_begin, writes pages with
-- edgesync_populate_apply — which upserts the rows and advances the run's cursor and
-- counts in the same transaction, so what is written is always resumable from the
-- cursor — and releases the lease with edgesync_populate_finish (completed, paused,
-- failed, rate limited). A second call while a lease is live gets 409.
--
-- The functions run as the caller (security invoker): a user's call writes through RLS
-- like every other user request, and can touch only the caller's rows; the service
-- role (the Cron Trigger, an operator populating a named user) bypasses RLS and names
-- the user. They check that the user they are given is the caller.

set local client_min_messages = warning;

alter table public.sync_state
  add column if not exists run_id      uuid,
  add column if not exists run_mode    text check (run_mode in ('full', 'incremental')),
  add column if not exists progress    jsonb not null default '{}'::jsonb,
  add column if not exists lease_id    uuid,
  add column if not exists lease_until timestamptz;

-- The new columns become writable and syncable like the others (a user's client sees
-- its populate's progress through /sync).
do $$
begin
  perform edgesync.enable_sync('public.sync_state');
end
$$;

-- Legacy records are keyed by (legacyType, legacyId) per user (seed 004 §2.4), so a
-- record imported twice is one entry.
create unique index if not exists entries_legacy_key on public.entries
  (user_id, (frontmatter ->> 'legacyType'), (frontmatter ->> 'legacyId'))
  where (frontmatter ? 'legacyType') and (frontmatter ? 'legacyId');

-- {inserted, updated, ...} + {inserted, updated, ...}, key by key.
create or replace function edgesync.add_counts(a jsonb, b jsonb)
returns jsonb
language sql
immutable
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(k, coalesce((a ->> k)::bigint, 0) + coalesce((b ->> k)::bigint, 0)), '{}'::jsonb)
  from (select jsonb_object_keys(coalesce(a, '{}'::jsonb)) union select jsonb_object_keys(coalesce(b, '{}'::jsonb))) s(k)
$$;

-- The user a populate acts for: the caller, or (service role only) the named user.
create or replace function edgesync.populate_user(p_user uuid)
returns uuid
language plpgsql
stable
set search_path = ''
as $$
declare
  uid uuid := auth.uid();
begin
  if coalesce(auth.role(), '') = 'service_role' then
    if p_user is null then
      raise sqlstate 'PT400' using message = 'user_id is required with the service role', hint = 'invalid_request';
    end if;
    return p_user;
  end if;
  if uid is null then
    raise sqlstate 'PT401' using message = 'a user token is required', hint = 'user_required';
  end if;
  if p_user is not null and p_user <> uid then
    raise sqlstate 'PT403' using message = 'a user can populate only their own data', hint = 'user_id_mismatch';
  end if;
  return uid;
end
$$;

create or replace function edgesync.populate_source(p_source text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
begin
  if p_source is null or p_source not in ('neo4j', 'legacy') then
    raise sqlstate 'PT400' using message = format('unknown populate source %s', coalesce(p_source, 'null')),
      hint = 'invalid_request';
  end if;
  return p_source;
end
$$;

-- Start or resume a call. p_run: the run a continuation names (must be this user's
-- current run, else 410). p_mode: 'full' (a new full run), 'incremental' (a new run of
-- what changed since the last completed one; full when there was none), or 'auto'
-- (resume the unfinished run if any, else incremental) for the Cron Trigger.
create or replace function public.edgesync_populate_begin(
  p_source text, p_user uuid default null, p_run uuid default null, p_mode text default 'full',
  p_lease_secs integer default 60
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
  s public.sync_state;
  resumed boolean := false;
begin
  if p_mode is null or p_mode not in ('full', 'incremental', 'auto') then
    raise sqlstate 'PT400' using message = 'mode must be full or incremental', hint = 'invalid_request';
  end if;
  insert into public.sync_state (user_id, source) values (v_user, v_source) on conflict (user_id, source) do nothing;
  select * into s from public.sync_state where user_id = v_user and source = v_source for update;
  if s.id is null then
    raise sqlstate 'PT403' using message = 'the sync state of this user is not accessible', hint = 'forbidden_row';
  end if;
  if s.status = 'syncing' and s.lease_until > now() then
    raise sqlstate 'PT409' using message = format('a %s populate for this user is already running', v_source),
      hint = 'populate_in_progress',
      detail = json_build_object('retry_after_secs', ceil(extract(epoch from s.lease_until - now())))::text;
  end if;
  if s.status = 'rate_limited' and s.retry_after > now() then
    raise sqlstate 'PT429' using message = format('the %s source asked to wait before the next request', v_source),
      hint = 'source_rate_limited',
      detail = json_build_object('retry_after_secs', ceil(extract(epoch from s.retry_after - now())))::text;
  end if;
  if p_run is not null then
    if s.run_id is distinct from p_run then
      raise sqlstate 'PT410' using
        message = 'this continuation belongs to a populate run that has ended or was replaced; call again without it',
        hint = 'continuation_expired';
    end if;
    resumed := true;
  elsif p_mode = 'auto' and s.run_id is not null then
    resumed := true;
  else
    s.run_id := gen_random_uuid();
    s.run_mode := case when p_mode <> 'full' and s.sync_token is not null then 'incremental' else 'full' end;
    s.cursor := null;
    s.progress := '{}'::jsonb;
    s.last_started_at := now();
  end if;
  update public.sync_state set
    status = 'syncing', run_id = s.run_id, run_mode = s.run_mode, cursor = s.cursor, progress = s.progress,
    last_started_at = s.last_started_at, last_error = null, retry_after = null,
    lease_id = gen_random_uuid(), lease_until = now() + make_interval(secs => greatest(coalesce(p_lease_secs, 60), 1))
  where id = s.id
  returning * into s;
  return jsonb_build_object(
    'user_id', v_user, 'run_id', s.run_id, 'lease_id', s.lease_id, 'mode', s.run_mode, 'cursor', s.cursor,
    'since', case when s.run_mode = 'incremental' then s.sync_token end,
    'progress', s.progress, 'resumed', resumed);
end
$$;

-- The sync_state row of a live lease, locked; 409 when the lease was lost.
create or replace function edgesync.populate_lease(p_user uuid, p_source text, p_lease uuid)
returns public.sync_state
language plpgsql
volatile
set search_path = ''
as $$
declare
  s public.sync_state;
begin
  select * into s from public.sync_state
  where user_id = p_user and source = p_source and lease_id = p_lease and status = 'syncing'
  for update;
  if s.id is null then
    raise sqlstate 'PT409' using message = 'this populate call lost its lease to another call', hint = 'populate_in_progress';
  end if;
  return s;
end
$$;

-- Write one page and move the run's cursor past it, in one transaction.
-- p_rows: {"entities": [...], "events": [...], "relationships": [...], "entries": [...]}
-- as the Worker mapped them (shared/src/populate). Natural keys decide insert or
-- update; a row equal to the stored one is not written (so a second run changes
-- nothing and re-sends nothing); a row the user deleted stays deleted ("skipped").
create or replace function public.edgesync_populate_apply(
  p_source text, p_lease uuid, p_rows jsonb, p_cursor text, p_watermark jsonb default null,
  p_user uuid default null, p_lease_secs integer default 60
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
  total jsonb := '{}'::jsonb;
  c jsonb;
  rej jsonb;
  rejected jsonb := '[]'::jsonb;
  results jsonb := '[]'::jsonb;
begin
  if p_rows is null or jsonb_typeof(p_rows) <> 'object' then
    raise sqlstate 'PT400' using message = 'rows must be a JSON object', hint = 'invalid_request';
  end if;
  -- What the Worker refused or skipped itself (malformed or unmapped items) counts too.
  total := jsonb_build_object('rejected', coalesce((p_rows ->> 'rejected')::bigint, 0),
                              'skipped', coalesce((p_rows ->> 'skipped')::bigint, 0));

  -- Entities, keyed by (type, key).
  with input as (
    select * from jsonb_to_recordset(coalesce(p_rows -> 'entities', '[]'::jsonb))
      as x(ref text, type text, key text, display_name text, properties jsonb)
  ), ranked as (
    select i.*, row_number() over (partition by i.type, i.key order by i.ref) as n from input i
  ), matched as (
    select r.*, e.id as cur_id, e.deleted_at as cur_deleted,
           e.display_name is not distinct from r.display_name and e.properties = coalesce(r.properties, '{}') as same
    from ranked r
    left join public.sync_entities e on e.user_id = v_user and e.type = r.type and e.key = r.key
    where r.n = 1
  ), ins as (
    insert into public.sync_entities (user_id, type, key, display_name, properties)
    select v_user, m.type, m.key, m.display_name, coalesce(m.properties, '{}') from matched m where m.cur_id is null
    on conflict do nothing
    returning 1
  ), upd as (
    update public.sync_entities e set display_name = m.display_name, properties = coalesce(m.properties, '{}')
    from matched m where e.id = m.cur_id and m.cur_deleted is null and not m.same
    returning 1
  )
  select jsonb_build_object(
           'inserted', (select count(*) from ins), 'updated', (select count(*) from upd),
           'unchanged', (select count(*) from matched where cur_id is not null and cur_deleted is null and same),
           'skipped', (select count(*) from matched where cur_deleted is not null),
           'rejected', (select count(*) from ranked where n > 1)),
         (select coalesce(jsonb_agg(jsonb_build_object('ref', r.ref,
                    'reason', format('another node maps to the same %s key %s', r.type, r.key))), '[]'::jsonb)
          from ranked r where r.n > 1)
  into c, rej;
  total := edgesync.add_counts(total, c);
  rejected := rejected || rej;

  -- Events, keyed by google_event_id.
  with input as (
    select * from jsonb_to_recordset(coalesce(p_rows -> 'events', '[]'::jsonb))
      as x(ref text, google_event_id text, title text, description text, start_time timestamptz,
           end_time timestamptz, all_day boolean, location text, source text, source_id text, properties jsonb)
  ), ranked as (
    select i.*, row_number() over (partition by i.google_event_id order by i.ref) as n from input i
  ), matched as (
    select r.*, e.id as cur_id, e.deleted_at as cur_deleted,
           (e.title, e.description, e.start_time, e.end_time, e.all_day, e.location, e.source, e.source_id, e.properties)
             is not distinct from
           (r.title, r.description, r.start_time, r.end_time, coalesce(r.all_day, false), r.location, r.source,
            r.source_id, coalesce(r.properties, '{}')) as same
    from ranked r
    left join public.sync_events e on e.user_id = v_user and e.google_event_id = r.google_event_id
    where r.n = 1
  ), ins as (
    insert into public.sync_events (user_id, google_event_id, title, description, start_time, end_time, all_day,
                                    location, source, source_id, properties)
    select v_user, m.google_event_id, m.title, m.description, m.start_time, m.end_time, coalesce(m.all_day, false),
           m.location, m.source, m.source_id, coalesce(m.properties, '{}')
    from matched m where m.cur_id is null
    on conflict do nothing
    returning 1
  ), upd as (
    update public.sync_events e set title = m.title, description = m.description, start_time = m.start_time,
      end_time = m.end_time, all_day = coalesce(m.all_day, false), location = m.location, source = m.source,
      source_id = m.source_id, properties = coalesce(m.properties, '{}')
    from matched m where e.id = m.cur_id and m.cur_deleted is null and not m.same
    returning 1
  )
  select jsonb_build_object(
           'inserted', (select count(*) from ins), 'updated', (select count(*) from upd),
           'unchanged', (select count(*) from matched where cur_id is not null and cur_deleted is null and same),
           'skipped', (select count(*) from matched where cur_deleted is not null),
           'rejected', (select count(*) from ranked where n > 1)),
         (select coalesce(jsonb_agg(jsonb_build_object('ref', r.ref,
                    'reason', format('another node maps to the same google_event_id %s', r.google_event_id))), '[]'::jsonb)
          from ranked r where r.n > 1)
  into c, rej;
  total := edgesync.add_counts(total, c);
  rejected := rejected || rej;

  -- Relationships, keyed by (from_id, to_id, type); their ends are found by natural key
  -- among this user's live entities and events.
  with input as (
    select * from jsonb_to_recordset(coalesce(p_rows -> 'relationships', '[]'::jsonb))
      as x(ref text, type text, from_table text, from_type text, from_key text,
           to_table text, to_type text, to_key text, properties jsonb)
  ), resolved as (
    select i.*,
      case i.from_table
        when 'sync_entities' then (select e.id from public.sync_entities e where e.user_id = v_user
                                     and e.type = i.from_type and e.key = i.from_key and e.deleted_at is null)
        when 'sync_events' then (select e.id from public.sync_events e where e.user_id = v_user
                                   and e.google_event_id = i.from_key and e.deleted_at is null)
      end as from_id,
      case i.to_table
        when 'sync_entities' then (select e.id from public.sync_entities e where e.user_id = v_user
                                     and e.type = i.to_type and e.key = i.to_key and e.deleted_at is null)
        when 'sync_events' then (select e.id from public.sync_events e where e.user_id = v_user
                                   and e.google_event_id = i.to_key and e.deleted_at is null)
      end as to_id
    from input i
  ), ranked as (
    select r.*, row_number() over (partition by r.from_id, r.to_id, r.type order by r.ref) as n
    from resolved r where r.from_id is not null and r.to_id is not null
  ), matched as (
    select r.*, e.id as cur_id, e.deleted_at as cur_deleted, e.properties = coalesce(r.properties, '{}') as same
    from ranked r
    left join public.sync_relationships e
      on e.user_id = v_user and e.from_id = r.from_id and e.to_id = r.to_id and e.type = r.type
    where r.n = 1
  ), ins as (
    insert into public.sync_relationships (user_id, from_id, to_id, type, properties)
    select v_user, m.from_id, m.to_id, m.type, coalesce(m.properties, '{}') from matched m where m.cur_id is null
    on conflict do nothing
    returning 1
  ), upd as (
    update public.sync_relationships e set properties = coalesce(m.properties, '{}')
    from matched m where e.id = m.cur_id and m.cur_deleted is null and not m.same
    returning 1
  ), bad as (
    select r.ref, format('its %s end %s is not in the database (unmapped, rejected or deleted)',
                         case when r.from_id is null then 'start' else 'end' end,
                         case when r.from_id is null then concat_ws('/', r.from_type, r.from_key)
                              else concat_ws('/', r.to_type, r.to_key) end) as reason
    from resolved r where r.from_id is null or r.to_id is null
    union all
    select r.ref, format('another relationship has the same ends and type %s', r.type) from ranked r where r.n > 1
  )
  select jsonb_build_object(
           'inserted', (select count(*) from ins), 'updated', (select count(*) from upd),
           'unchanged', (select count(*) from matched where cur_id is not null and cur_deleted is null and same),
           'skipped', (select count(*) from matched where cur_deleted is not null),
           'rejected', (select count(*) from bad)),
         (select coalesce(jsonb_agg(jsonb_build_object('ref', b.ref, 'reason', b.reason)), '[]'::jsonb) from bad b)
  into c, rej;
  total := edgesync.add_counts(total, c);
  rejected := rejected || rej;

  -- Entries from legacy records, keyed by (legacyType, legacyId); each gets its own result.
  with input as (
    select * from jsonb_to_recordset(coalesce(p_rows -> 'entries', '[]'::jsonb))
      as x(ref text, title text, body_markdown text, facets text[], tags text[], contexts text[], people text[],
           frontmatter jsonb, start_at timestamptz, end_at timestamptz, created_at timestamptz)
  ), ranked as (
    select i.*, i.frontmatter ->> 'legacyType' as lt, i.frontmatter ->> 'legacyId' as lid,
           row_number() over (partition by i.frontmatter ->> 'legacyType', i.frontmatter ->> 'legacyId' order by i.ref) as n
    from input i
  ), matched as (
    select r.*, e.id as cur_id, e.deleted_at as cur_deleted,
           (e.title, e.body_markdown, e.facets, e.tags, e.contexts, e.people, e.frontmatter, e.start_at, e.end_at)
             is not distinct from
           (r.title, r.body_markdown, coalesce(r.facets, '{}'), coalesce(r.tags, '{}'), coalesce(r.contexts, '{}'),
            coalesce(r.people, '{}'), r.frontmatter, r.start_at, r.end_at) as same
    from ranked r
    left join public.entries e on e.user_id = v_user and (e.frontmatter ? 'legacyType') and (e.frontmatter ? 'legacyId')
      and e.frontmatter ->> 'legacyType' = r.lt and e.frontmatter ->> 'legacyId' = r.lid
    where r.n = 1
  ), ins as (
    insert into public.entries (user_id, title, body_markdown, facets, tags, contexts, people, frontmatter,
                                start_at, end_at, created_at)
    select v_user, m.title, m.body_markdown, coalesce(m.facets, '{}'), coalesce(m.tags, '{}'),
           coalesce(m.contexts, '{}'), coalesce(m.people, '{}'), m.frontmatter, m.start_at, m.end_at, m.created_at
    from matched m where m.cur_id is null
    on conflict do nothing
    returning id, frontmatter ->> 'legacyType' as lt, frontmatter ->> 'legacyId' as lid
  ), upd as (
    update public.entries e set title = m.title, body_markdown = m.body_markdown, facets = coalesce(m.facets, '{}'),
      tags = coalesce(m.tags, '{}'), contexts = coalesce(m.contexts, '{}'), people = coalesce(m.people, '{}'),
      frontmatter = m.frontmatter, start_at = m.start_at, end_at = m.end_at
    from matched m where e.id = m.cur_id and m.cur_deleted is null and not m.same
    returning e.id
  ), outcome as (
    select m.ref, coalesce(m.cur_id, i.id) as id,
      case
        when m.cur_id is null and i.id is null then 'skipped'
        when m.cur_id is null then 'inserted'
        when m.cur_deleted is not null then 'skipped'
        when u.id is not null then 'updated'
        else 'unchanged'
      end as status
    from matched m
    left join ins i on m.cur_id is null and i.lt = m.lt and i.lid = m.lid
    left join upd u on u.id = m.cur_id
    union all
    select r.ref, null, 'duplicate' from ranked r where r.n > 1
  )
  select jsonb_build_object(
           'inserted', count(*) filter (where o.status = 'inserted'),
           'updated', count(*) filter (where o.status = 'updated'),
           'unchanged', count(*) filter (where o.status = 'unchanged'),
           'skipped', count(*) filter (where o.status = 'skipped'),
           'rejected', count(*) filter (where o.status = 'duplicate')),
         coalesce(jsonb_agg(jsonb_build_object('ref', o.ref, 'id', o.id, 'status', o.status)), '[]'::jsonb)
  into c, results
  from outcome o;
  total := edgesync.add_counts(total, c);

  update public.sync_state set
    cursor = p_cursor,
    progress = edgesync.add_counts(progress - 'watermark', total)
      || case
           when p_watermark is null or jsonb_typeof(p_watermark) = 'null' then
             case when progress ? 'watermark' then jsonb_build_object('watermark', progress -> 'watermark')
                  else '{}'::jsonb end
           when progress -> 'watermark' is null then jsonb_build_object('watermark', p_watermark)
           else jsonb_build_object('watermark', greatest(progress -> 'watermark', p_watermark))
         end,
    lease_until = now() + make_interval(secs => greatest(coalesce(p_lease_secs, 60), 1))
  where id = s.id;

  return jsonb_build_object('counts', total, 'rejected', rejected, 'results', results);
end
$$;

-- End a call. p_outcome:
--   completed    the run is done: idle, last_completed_at, the run's high-water mark
--                becomes the token of the next incremental run, the cursor is cleared;
--   paused       more remains: the run stays (status syncing), the lease is released
--                so the continuation (or the Cron Trigger) can take it;
--   failed       status error with p_error; the run and its cursor stay, resumable;
--   rate_limited status rate_limited with retry_after; the run stays, resumable;
--   restart      the source refused the cursor or token (410, or one we cannot read):
--                clear them and start the run again from the beginning, fully; the
--                lease is kept, the call goes on.
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
  return jsonb_build_object('status', s.status, 'run_id', s.run_id, 'progress', s.progress,
                            'retry_after', s.retry_after, 'last_error', s.last_error);
end
$$;

-- The users whose sync from p_source is due (seed 001's getUsersNeedingSync): not
-- running now, past any retry-after, and either last completed longer than
-- p_stale_after_secs ago, or with an unfinished run that nobody has continued for
-- p_idle_secs (a client between two calls keeps its run), or failed longer than
-- p_stale_after_secs ago. Oldest first, at most p_limit. Service role only.
create or replace function public.edgesync_populate_due(
  p_source text, p_stale_after_secs integer, p_limit integer, p_idle_secs integer default 300
)
returns table (user_id uuid, run_id uuid, status text, last_completed_at timestamptz)
language sql
stable
security invoker
set search_path = ''
as $$
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
$$;

revoke all on function edgesync.add_counts(jsonb, jsonb) from public;
revoke all on function edgesync.populate_user(uuid) from public;
revoke all on function edgesync.populate_source(text) from public;
revoke all on function edgesync.populate_lease(uuid, text, uuid) from public;
grant execute on function edgesync.add_counts(jsonb, jsonb), edgesync.populate_user(uuid),
  edgesync.populate_source(text), edgesync.populate_lease(uuid, text, uuid) to authenticated, service_role;

revoke all on function public.edgesync_populate_begin(text, uuid, uuid, text, integer) from public, anon;
revoke all on function public.edgesync_populate_apply(text, uuid, jsonb, text, jsonb, uuid, integer) from public, anon;
revoke all on function public.edgesync_populate_finish(text, uuid, text, text, integer, uuid) from public, anon;
grant execute on function public.edgesync_populate_begin(text, uuid, uuid, text, integer),
  public.edgesync_populate_apply(text, uuid, jsonb, text, jsonb, uuid, integer),
  public.edgesync_populate_finish(text, uuid, text, text, integer, uuid) to authenticated, service_role;
revoke all on function public.edgesync_populate_due(text, integer, integer, integer) from public, anon, authenticated;
grant execute on function public.edgesync_populate_due(text, integer, integer, integer) to service_role;

insert into edgesync.schema_migrations (version, name) values (6, 'populate')
on conflict (version) do nothing;

notify pgrst, 'reload schema';
