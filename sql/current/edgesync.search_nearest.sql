-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.search_nearest(query_embedding vector, k integer)
 RETURNS TABLE(id uuid, title text, distance double precision)
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO ''
 SET "hnsw.iterative_scan" TO 'relaxed_order'
 SET enable_seqscan TO 'off'
AS $function$
  select e.id, e.title, e.embedding operator(extensions.<=>) query_embedding
    from public.entries e
   where e.user_id::text = auth.uid()::text
     and e.deleted_at is null
     and e.embedding is not null
   order by e.embedding operator(extensions.<=>) query_embedding
   limit least(greatest(coalesce(k, 10), 1), 100)
$function$;
