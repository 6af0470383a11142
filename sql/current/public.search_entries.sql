-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION public.search_entries(query_embedding vector, match_threshold double precision DEFAULT 0.7, match_count integer DEFAULT 10)
 RETURNS TABLE(id uuid, title text, similarity double precision)
 LANGUAGE plpgsql
 STABLE
 SET search_path TO ''
AS $function$
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
$function$;
