-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.held_positions()
 RETURNS TABLE(pid integer, floor_position xid8)
 LANGUAGE sql
 SET search_path TO ''
AS $function$
  select l.pid, (((l.classid::bigint & 1073741823) << 32) | l.objid::bigint)::text::xid8
    from pg_catalog.pg_locks l
   where l.locktype = 'advisory' and l.objsubid = 1 and l.classid::bigint >= 1073741824
     and l.database = (select d.oid from pg_catalog.pg_database d where d.datname = pg_catalog.current_database())
$function$;
