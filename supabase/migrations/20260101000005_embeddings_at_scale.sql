-- edgesync schema version 5: embeddings at scale.
--
-- 1. A webhook nudge embeds a batch, not one entry. A burst of writes (an /upload of 50 entries, a populate) sends one webhook per
-- entry. With `p_fill`, the claim for the nudged entry also takes up to p_max - 1
-- other due jobs, so the first few webhooks embed the burst in batches (one embeddings
-- request each) and the rest find nothing left to do. Without `p_fill`, `p_entry`
-- claims that entry's job only, as before.
--
-- 2. search_entries uses the HNSW index for users with many entries (the planner
-- never did: see edgesync.search_nearest), and an exact scan for the others. An HNSW
-- scan yields the ef_search (40) nearest vectors of *all* users before the user
-- filter, so pgvector 0.8's iterative scan is on: it goes on until `match_count` rows
-- pass the filter; relaxed order is re-sorted exactly by the caller.
--
-- 3. enqueue_embedding_recheck(p_user): queue every live entry (of one user, or of
-- all when null) that has no pending job. The
-- Worker compares each stored hash (model, dimensions, text) with the current one and
-- embeds only the stale ones, so this finds embeddings made from text that changed
-- while the triggers were off, or with other settings, at no API cost for the rest.

set local client_min_messages = warning;

drop function if exists public.edgesync_claim_embedding_jobs(integer, integer, uuid);

create or replace function public.edgesync_claim_embedding_jobs(
  p_max integer default 16,
  p_lease_secs integer default 120,
  p_entry uuid default null,
  p_fill boolean default false
)
returns table (entry_id uuid, generation bigint, attempts integer, title text, body_markdown text,
               tags text[], contexts text[], people text[], embedding_hash text, embedding_model text)
language plpgsql
security definer
set search_path = ''
as $$
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
$$;
revoke all on function public.edgesync_claim_embedding_jobs(integer, integer, uuid, boolean)
  from public, anon, authenticated;
grant execute on function public.edgesync_claim_embedding_jobs(integer, integer, uuid, boolean) to service_role;

-- The HNSW half of search_entries, for the caller's own live entries. The planner
-- never picks HNSW for `user_id = auth.uid()` by itself: RLS adds that same,
-- btree-indexable predicate and the planner cannot tell that this user owns thousands
-- of rows, so it compared every one of them (46-85 ms at 10,000 entries, against
-- ~3 ms through the index). Here RLS is bypassed (security definer) and the user test,
-- the same one RLS makes, is written so no btree serves it; sequential scans are off
-- for this function only. It reads nothing but rows of auth.uid().
--
-- `hnsw.iterative_scan` is pgvector's parameter, known to Postgres only once the
-- library is loaded in this session; until then a non-superuser (`postgres` on
-- Supabase) may not name it in a function's SET clause. Using the type loads it.
do $$ begin perform '[0]'::extensions.vector; end $$;

create or replace function edgesync.search_nearest(query_embedding extensions.vector(1536), k integer)
returns table (id uuid, title text, distance double precision)
language sql
stable
security definer
set search_path = ''
set hnsw.iterative_scan = 'relaxed_order'
set enable_seqscan = off
as $$
  select e.id, e.title, e.embedding operator(extensions.<=>) query_embedding
    from public.entries e
   where e.user_id::text = auth.uid()::text
     and e.deleted_at is null
     and e.embedding is not null
   order by e.embedding operator(extensions.<=>) query_embedding
   limit least(greatest(coalesce(k, 10), 1), 100)
$$;
revoke all on function edgesync.search_nearest(extensions.vector, integer) from public, anon;
grant execute on function edgesync.search_nearest(extensions.vector, integer) to authenticated;

-- Below 2,000 embedded entries an exact scan of the caller's rows (through RLS) is
-- both exact and fast (~15 ms); above, the HNSW index (approximate, as every HNSW
-- search is). Either way only the caller's live entries, best first.
create or replace function public.search_entries(
  query_embedding extensions.vector(1536),
  match_threshold double precision default 0.7,
  match_count integer default 10
)
returns table (id uuid, title text, similarity double precision)
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
  uid uuid := auth.uid();
  k integer := least(greatest(coalesce(match_count, 10), 1), 100);
  many boolean;
begin
  if uid is null then
    return;
  end if;
  select count(*) >= 2000 into many
    from (select from public.entries e where e.user_id = uid and e.embedding is not null limit 2000) s;
  if many then
    return query
      select n.id, n.title, 1 - n.distance
        from edgesync.search_nearest(query_embedding, k) n
       where 1 - n.distance > match_threshold
       order by n.distance;
  else
    return query
      select e.id, e.title, 1 - (e.embedding operator(extensions.<=>) query_embedding)
        from public.entries e
       where e.user_id = uid and e.deleted_at is null and e.embedding is not null
         and 1 - (e.embedding operator(extensions.<=>) query_embedding) > match_threshold
       order by e.embedding operator(extensions.<=>) query_embedding
       limit k;
  end if;
end
$$;
revoke all on function public.search_entries(extensions.vector, double precision, integer) from public, anon;
grant execute on function public.search_entries(extensions.vector, double precision, integer) to authenticated;

create or replace function edgesync.enqueue_embedding_recheck(p_user uuid default null)
returns bigint
language sql
security definer
set search_path = ''
as $$
  with ins as (
    insert into edgesync.embedding_jobs as j (entry_id, user_id)
    select e.id, e.user_id from public.entries e
     where e.deleted_at is null
       and (p_user is null or e.user_id = p_user)
       and not exists (select from edgesync.embedding_jobs k where k.entry_id = e.id and k.status <> 'failed')
    on conflict (entry_id) do update
      set status = 'pending', generation = j.generation + 1, attempts = 0, next_attempt_at = now(),
          last_error = null, updated_at = now()
    returning 1
  )
  select count(*) from ins
$$;
revoke all on function edgesync.enqueue_embedding_recheck(uuid) from public, anon, authenticated;
grant execute on function edgesync.enqueue_embedding_recheck(uuid) to service_role;

insert into edgesync.schema_migrations (version, name) values (5, 'embeddings_at_scale')
  on conflict (version) do nothing;

notify pgrst, 'reload schema';
