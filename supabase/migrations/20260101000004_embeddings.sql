-- edgesync schema version 4: embeddings that are never lost, and semantic search.
--
-- * Every change to an entry's content columns (title, body_markdown, tags, contexts,
--   people) records a job in edgesync.embedding_jobs, in the same transaction: the
--   job table, not the webhook, is what guarantees each entry gets embedded. The
--   webhook (pg_net on Supabase, a LISTEN/NOTIFY relay locally) is only a nudge; a
--   Cron Trigger drains due jobs too.
-- * Jobs are deduplicated per entry. Each change bumps the job's generation; a worker
--   finishes a job only for the generation it claimed, so a change made while an
--   embedding was being computed is embedded again, never lost.
-- * The embed_entry Worker claims jobs with FOR UPDATE SKIP LOCKED and a lease, so two
--   runs never embed the same job at once; failures back off exponentially (or as the
--   embeddings API's Retry-After says) and after max_attempts the job is `failed`,
--   visible with its last error.
-- * The write-back changes only server-only columns, which neither bump the row
--   version nor enqueue a job: it cannot loop.
-- * search_entries runs as the caller: RLS and auth.uid() decide which rows it sees.

set local client_min_messages = warning;

create table if not exists edgesync.embedding_jobs (
  entry_id        uuid primary key references public.entries (id) on delete cascade,
  user_id         uuid not null,
  status          text not null default 'pending' check (status in ('pending', 'running', 'failed')),
  generation      bigint not null default 1,
  attempts        integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  locked_until    timestamptz,
  last_error      text,
  enqueued_at     timestamptz not null default now(),
  updated_at      timestamptz not null default now()
);
create index if not exists embedding_jobs_due on edgesync.embedding_jobs (next_attempt_at)
  where status <> 'failed';
alter table edgesync.embedding_jobs enable row level security;
-- Users may see the state of their own entries' jobs; only the service role changes them.
drop policy if exists embedding_jobs_owner on edgesync.embedding_jobs;
create policy embedding_jobs_owner on edgesync.embedding_jobs for select to authenticated
  using ((select auth.uid()) = user_id);
grant select on edgesync.embedding_jobs to authenticated;
grant all on edgesync.embedding_jobs to service_role;

-- Enqueue (or re-arm) the job of one entry. Also tells LISTEN/NOTIFY listeners (the
-- local webhook relay); a NOTIFY nobody listens to costs nothing.
create or replace function edgesync.enqueue_embedding(p_entry uuid, p_user uuid)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into edgesync.embedding_jobs as j (entry_id, user_id)
  values (p_entry, p_user)
  on conflict (entry_id) do update
    set status = 'pending', generation = j.generation + 1, attempts = 0, next_attempt_at = now(),
        last_error = null, updated_at = now();
  perform pg_notify('edgesync_embed', json_build_object(
    'type', 'UPDATE', 'table', 'entries', 'schema', 'public',
    'record', json_build_object('id', p_entry, 'user_id', p_user), 'old_record', null)::text);
end
$$;
revoke all on function edgesync.enqueue_embedding(uuid, uuid) from public, anon, authenticated;

create or replace function edgesync.tg_enqueue_embedding()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if new.deleted_at is not null then
    delete from edgesync.embedding_jobs where entry_id = new.id;
    return null;
  end if;
  perform edgesync.enqueue_embedding(new.id, new.user_id);
  return null;
end
$$;

drop trigger if exists entries_enqueue_embedding_insert on public.entries;
create trigger entries_enqueue_embedding_insert
  after insert on public.entries
  for each row execute function edgesync.tg_enqueue_embedding();
-- Only a change of content (or a revival) re-embeds; a PUT that rewrites the same
-- values, an edit of other columns and the embedding write-back do not.
drop trigger if exists entries_enqueue_embedding_update on public.entries;
create trigger entries_enqueue_embedding_update
  after update on public.entries
  for each row
  when (old.title is distinct from new.title
        or old.body_markdown is distinct from new.body_markdown
        or old.tags is distinct from new.tags
        or old.contexts is distinct from new.contexts
        or old.people is distinct from new.people
        or (old.deleted_at is null) <> (new.deleted_at is null))
  execute function edgesync.tg_enqueue_embedding();

-- Backfill: enqueue live entries without an embedding, or embedded by another model.
-- The Worker skips those whose hash already matches.
create or replace function edgesync.enqueue_embedding_backfill(p_model text default null)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
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
$$;
revoke all on function edgesync.enqueue_embedding_backfill(text) from public, anon, authenticated;
grant execute on function edgesync.enqueue_embedding_backfill(text) to service_role;

-- Claim up to p_max due jobs (or only p_entry's) for p_lease_secs, and return each
-- entry's current content and stored hash. For the service role only.
create or replace function public.edgesync_claim_embedding_jobs(
  p_max integer default 16,
  p_lease_secs integer default 120,
  p_entry uuid default null
)
returns table (entry_id uuid, generation bigint, attempts integer, title text, body_markdown text,
               tags text[], contexts text[], people text[], embedding_hash text, embedding_model text)
language plpgsql
security definer
set search_path = ''
as $$
begin
  if coalesce(auth.role(), '') <> 'service_role' then
    raise sqlstate 'PT403' using message = 'only the service role may claim embedding jobs', hint = 'forbidden_role';
  end if;
  return query
  with due as (
    select j.entry_id from edgesync.embedding_jobs j
     where j.status <> 'failed'
       and j.next_attempt_at <= now()
       and (j.locked_until is null or j.locked_until < now())
       and (p_entry is null or j.entry_id = p_entry)
     order by j.next_attempt_at, j.entry_id
     limit least(greatest(coalesce(p_max, 16), 1), 256)
     for update skip locked
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
$$;
revoke all on function public.edgesync_claim_embedding_jobs(integer, integer, uuid) from public, anon, authenticated;
grant execute on function public.edgesync_claim_embedding_jobs(integer, integer, uuid) to service_role;

-- Finish claimed jobs: [{entry_id, generation, embedding?: "[…]", model?, hash?}, …].
-- With an embedding, it is written (if the job is still at that generation); without,
-- the stored one was already current. The job is removed only at its claimed
-- generation; a newer change stays pending. Returns how many embeddings were written.
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
  for r in select * from jsonb_array_elements(p_results) loop
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

-- Record a failed attempt: back off (2^attempts seconds, at least p_retry_after_secs,
-- at most an hour) or, after p_max_attempts, mark the job failed.
create or replace function public.edgesync_fail_embedding_jobs(
  p_entries uuid[],
  p_error text,
  p_retry_after_secs integer default 0,
  p_max_attempts integer default 5
)
returns void
language plpgsql
security definer
set search_path = ''
as $$
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
$$;
revoke all on function public.edgesync_fail_embedding_jobs(uuid[], text, integer, integer) from public, anon, authenticated;
grant execute on function public.edgesync_fail_embedding_jobs(uuid[], text, integer, integer) to service_role;

-- Seed 004 §5.4, as the caller: RLS and auth.uid() decide; deleted entries never match.
create or replace function public.search_entries(
  query_embedding extensions.vector(1536),
  match_threshold double precision default 0.7,
  match_count integer default 10
)
returns table (id uuid, title text, similarity double precision)
language sql
stable
security invoker
set search_path = ''
as $$
  select e.id, e.title, 1 - (e.embedding operator(extensions.<=>) query_embedding) as similarity
    from public.entries e
   where e.user_id = auth.uid()
     and e.deleted_at is null
     and e.embedding is not null
     and 1 - (e.embedding operator(extensions.<=>) query_embedding) > match_threshold
   order by e.embedding operator(extensions.<=>) query_embedding
   limit least(greatest(coalesce(match_count, 10), 1), 100)
$$;
revoke all on function public.search_entries(extensions.vector, double precision, integer) from public, anon;
grant execute on function public.search_entries(extensions.vector, double precision, integer) to authenticated;

create index if not exists entries_embedding_idx on public.entries
  using hnsw (embedding extensions.vector_cosine_ops) where embedding is not null;

-- On Supabase, the webhook nudge: call embed_entry through pg_net on every enqueue.
-- select edgesync.configure_embed_webhook('https://api.example.com/embed_entry', '<secret>');
create or replace function edgesync.configure_embed_webhook(p_url text, p_secret text)
returns text
language plpgsql
security definer
set search_path = ''
as $$
begin
  if not exists (select from pg_extension where extname = 'pg_net') then
    return 'pg_net is not installed: no webhook (the Cron Trigger still drains every job)';
  end if;
  execute format($f$
    create or replace function edgesync.tg_embed_webhook() returns trigger language plpgsql
    security definer set search_path = '' as $b$
    begin
      perform net.http_post(url := %L,
        body := jsonb_build_object('type', tg_op, 'table', 'entries', 'schema', 'public',
                                   'record', jsonb_build_object('id', new.entry_id, 'user_id', new.user_id),
                                   'old_record', null),
        headers := jsonb_build_object('content-type', 'application/json', 'x-webhook-secret', %L));
      return null;
    end $b$;
  $f$, p_url, p_secret);
  execute 'drop trigger if exists embedding_jobs_webhook on edgesync.embedding_jobs';
  execute 'create trigger embedding_jobs_webhook after insert or update of generation on edgesync.embedding_jobs
           for each row when (new.status = ''pending'') execute function edgesync.tg_embed_webhook()';
  return 'webhook configured';
end
$$;
revoke all on function edgesync.configure_embed_webhook(text, text) from public, anon, authenticated;

-- Existing entries get their first embedding through the same path.
select edgesync.enqueue_embedding_backfill();

insert into edgesync.schema_migrations (version, name) values (4, 'embeddings')
on conflict (version) do nothing;

notify pgrst, 'reload schema';
