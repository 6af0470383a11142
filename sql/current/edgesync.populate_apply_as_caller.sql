-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.populate_apply_as_caller(p_source text, p_lease uuid, p_rows jsonb, p_cursor text, p_watermark jsonb DEFAULT NULL::jsonb, p_user uuid DEFAULT NULL::uuid, p_lease_secs integer DEFAULT 60)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
