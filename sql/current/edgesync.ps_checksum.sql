-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.ps_checksum(tbl text, id uuid, op_id bigint)
 RETURNS bigint
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE STRICT
 SET search_path TO ''
AS $function$
  select pg_catalog.get_byte(d, 0)::bigint + (pg_catalog.get_byte(d, 1)::bigint << 8)
       + (pg_catalog.get_byte(d, 2)::bigint << 16) + (pg_catalog.get_byte(d, 3)::bigint << 24)
    from (select pg_catalog.sha256(pg_catalog.convert_to(tbl || '/' || id::text || '/' || op_id::text, 'UTF8')) d) s
$function$;
