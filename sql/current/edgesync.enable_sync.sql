-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.enable_sync(target regclass, server_only text[] DEFAULT '{}'::text[], conflict_policy text DEFAULT 'last_write_wins'::text, wire_name text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  -- Before enable_sync_tables adds `_txid` the old way (an id, not a position).
  if exists (select from pg_catalog.pg_class c where c.oid = target and c.relkind in ('r', 'p')) then
    execute format('alter table %s add column if not exists _txid xid8 not null default edgesync.sync_position()',
                   target);
  end if;
  perform edgesync.enable_sync_tables(target, server_only, conflict_policy, wire_name);
  execute format('alter table %s alter column _txid set default edgesync.sync_position()', target);
  perform edgesync.enable_live(target);
  perform edgesync.enable_ps(target);
end
$function$;
