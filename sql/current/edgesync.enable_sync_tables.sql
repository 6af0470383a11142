-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.enable_sync_tables(target regclass, server_only text[] DEFAULT '{}'::text[], conflict_policy text DEFAULT 'last_write_wins'::text, wire_name text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  rel_name   text;
  rel_schema text;
  v_name     text;
  col        text;
  writable   text;
  trig_args  text;
  verb       text;
begin
  select c.relname, n.nspname into rel_name, rel_schema
  from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  where c.oid = target and c.relkind in ('r', 'p');
  if rel_name is null then
    raise exception 'edgesync.enable_sync: % is not a table', target;
  end if;
  v_name := coalesce(wire_name, rel_name);
  if v_name !~ '^[a-z_][a-z0-9_]{0,62}$' then
    raise exception 'edgesync.enable_sync: "%" cannot be a table name on the wire (use wire_name => ...)', v_name;
  end if;
  if not exists (
    select from pg_catalog.pg_index i
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
    where i.indrelid = target and i.indisprimary and i.indnatts = 1
      and a.attname = 'id' and a.atttypid = 'uuid'::regtype
  ) then
    raise exception 'edgesync.enable_sync: % needs "id uuid primary key"', target;
  end if;
  if not exists (
    select from pg_catalog.pg_attribute a
    where a.attrelid = target and a.attname = 'user_id' and a.atttypid = 'uuid'::regtype
      and a.attnotnull and not a.attisdropped
  ) then
    raise exception 'edgesync.enable_sync: % needs "user_id uuid not null"', target;
  end if;
  foreach col in array coalesce(server_only, '{}') loop
    if col in ('id', 'user_id', 'created_at', 'updated_at', 'deleted_at', '_txid', '_writer') then
      raise exception 'edgesync.enable_sync: % cannot be server-only', col;
    end if;
    if not exists (select from pg_catalog.pg_attribute a
                   where a.attrelid = target and a.attname = col and not a.attisdropped and a.attnum > 0) then
      raise exception 'edgesync.enable_sync: % has no column %', target, col;
    end if;
  end loop;

  execute format($f$
    alter table %s
      alter column user_id set default auth.uid(),
      add column if not exists created_at timestamptz not null default now(),
      add column if not exists updated_at timestamptz not null default now(),
      add column if not exists deleted_at timestamptz,
      add column if not exists _txid      xid8 not null default pg_current_xact_id(),
      add column if not exists _writer    uuid
  $f$, target);
  execute format('create index if not exists %I on %s (user_id, _txid, id)', rel_name || '_sync_idx', target);
  execute format('create index if not exists %I on %s (deleted_at) where deleted_at is not null',
                 rel_name || '_tombstones_idx', target);

  select coalesce(string_agg(quote_literal(c), ', '), '') into trig_args from unnest(server_only) c;
  execute format('drop trigger if exists edgesync_row_version on %s', target);
  execute format('create trigger edgesync_row_version before insert or update on %s
                  for each row execute function edgesync.tg_row_version(%s)', target, trig_args);
  execute format('drop trigger if exists edgesync_soft_delete on %s', target);
  execute format('create trigger edgesync_soft_delete before delete on %s
                  for each row execute function edgesync.tg_soft_delete()', target);

  execute format('alter table %s enable row level security', target);
  foreach verb in array array['select', 'insert', 'update', 'delete'] loop
    if not exists (select from pg_catalog.pg_policies p
                   where p.schemaname = rel_schema and p.tablename = rel_name
                     and p.policyname = rel_name || '_owner_' || verb) then
      execute format('create policy %I on %s for %s to authenticated %s', rel_name || '_owner_' || verb, target, verb,
        case verb
          when 'insert' then 'with check ((select auth.uid()) = user_id)'
          when 'update' then 'using ((select auth.uid()) = user_id) with check ((select auth.uid()) = user_id)'
          else 'using ((select auth.uid()) = user_id)'
        end);
    end if;
  end loop;

  select string_agg(quote_ident(a.attname), ', ' order by a.attnum) into writable
  from pg_catalog.pg_attribute a
  where a.attrelid = target and a.attnum > 0 and not a.attisdropped
    and a.attname <> all (coalesce(server_only, '{}') || '{_txid,_writer}'::text[]);
  execute format('revoke all on %s from anon, authenticated', target);
  execute format('grant select, delete on %s to authenticated', target);
  execute format('grant insert (%s), update (%s) on %s to authenticated', writable, writable, target);
  execute format('grant all on %s to service_role', target);

  insert into edgesync.synced_tables as s (name, relid, server_only, conflict_policy)
  values (v_name, target, coalesce(server_only, '{}'), coalesce(conflict_policy, 'last_write_wins'))
  on conflict (name) do update
    set relid = excluded.relid, server_only = excluded.server_only, conflict_policy = excluded.conflict_policy;
end
$function$;
