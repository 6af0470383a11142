-- 0011: live pokes. Every statement that changes a user's synced rows, whoever
-- runs it (/upload, /populate, PostgREST, plain SQL), tells the sync Worker which
-- users to wake, so an open `/live` socket or a waiting `/sync?wait=` answers at once.
--
-- * One notice per statement, from a statement-level trigger with a transition
--   table: `{"checkpoint": "<n>", "users": ["<uuid>", …]}`, at most 100 users a
--   notice (NOTIFY payloads stop at 8,000 bytes). `checkpoint` is the writing
--   transaction's id + 1, the same kind of number as an /upload `write_checkpoint`:
--   the change has been delivered once a page's `checkpoint` reaches it.
-- * Locally the stack's relay LISTENs on `edgesync_live` and POSTs to `/live/poke`.
--   On Supabase, `edgesync.configure_live_pokes(url, secret)` makes the trigger send
--   the same body through pg_net, with the secret (kept in Vault) in
--   `x-live-secret`. pg_net sends it only if the transaction commits, as NOTIFY does.
-- * Only a new row version pokes: an update that keeps `_txid` (the embedding
--   write-back, which touches server-only columns; an update that changes nothing)
--   wakes no one. Purging tombstones deletes rows no client needs and pokes no one.
-- * A poke is a hint. It carries no data; a lost one delays a change, never loses it.

set local client_min_messages = warning;

-- Where pg_net sends pokes (one row, written by configure_live_pokes).
create table if not exists edgesync.live_target (
  only_row boolean primary key default true check (only_row),
  url      text not null check (url ~ '^https?://[^[:space:]]+$')
);
revoke all on edgesync.live_target from public, anon, authenticated;

create or replace function edgesync.tg_live_poke()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_users text[];
  v_checkpoint text;
  v_payload text;
  v_url text;
  i integer;
begin
  if tg_op = 'INSERT' then
    select array_agg(distinct n.user_id::text order by n.user_id::text) into v_users from new_rows n;
  else
    -- A row moved to another user wakes both.
    select array_agg(distinct v.who order by v.who) into v_users
      from (select n.user_id::text as now_of, o.user_id::text as was_of
              from new_rows n join old_rows o on o.id = n.id
             where n._txid is distinct from o._txid) c,
           lateral (values (c.now_of), (c.was_of)) v(who);
  end if;
  if v_users is null then
    return null;
  end if;
  v_checkpoint := (pg_current_xact_id()::text::numeric + 1)::text;
  select t.url into v_url from edgesync.live_target t;
  i := 1;
  while i <= cardinality(v_users) loop
    v_payload := json_build_object('checkpoint', v_checkpoint, 'users', to_json(v_users[i : i + 99]))::text;
    perform pg_notify('edgesync_live', v_payload);
    if v_url is not null and to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is not null then
      execute 'select net.http_post(url := $1, body := $2::jsonb, headers := jsonb_build_object(
                 ''content-type'', ''application/json'', ''x-live-secret'',
                 (select s.decrypted_secret from vault.decrypted_secrets s where s.name = ''edgesync_live_poke_secret'')))'
        using v_url, v_payload;
    end if;
    i := i + 100;
  end loop;
  return null;
end
$$;
revoke all on function edgesync.tg_live_poke() from public, anon, authenticated, service_role;

-- The live triggers of one synced table (idempotent).
create or replace function edgesync.enable_live(target regclass)
returns void
language plpgsql
set search_path = ''
as $$
begin
  execute format('drop trigger if exists edgesync_live_insert on %s', target);
  execute format('create trigger edgesync_live_insert after insert on %s referencing new table as new_rows
                  for each statement execute function edgesync.tg_live_poke()', target);
  execute format('drop trigger if exists edgesync_live_update on %s', target);
  execute format('create trigger edgesync_live_update after update on %s
                  referencing old table as old_rows new table as new_rows
                  for each statement execute function edgesync.tg_live_poke()', target);
end
$$;
revoke all on function edgesync.enable_live(regclass) from public;

-- enable_sync and disable_sync now also add and remove the live triggers: the
-- functions of 0002 keep their work under a new name, and the old names wrap them.
do $$
begin
  if to_regprocedure('edgesync.enable_sync_tables(regclass,text[],text,text)') is null then
    alter function edgesync.enable_sync(regclass, text[], text, text) rename to enable_sync_tables;
    alter function edgesync.disable_sync(regclass) rename to disable_sync_tables;
  end if;
end $$;
revoke all on function edgesync.enable_sync_tables(regclass, text[], text, text) from public;
revoke all on function edgesync.disable_sync_tables(regclass) from public;

create or replace function edgesync.enable_sync(
  target          regclass,
  server_only     text[] default '{}',
  conflict_policy text default 'last_write_wins',
  wire_name       text default null
)
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform edgesync.enable_sync_tables(target, server_only, conflict_policy, wire_name);
  perform edgesync.enable_live(target);
end
$$;
revoke all on function edgesync.enable_sync(regclass, text[], text, text) from public;

create or replace function edgesync.disable_sync(target regclass)
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform edgesync.disable_sync_tables(target);
  execute format('drop trigger if exists edgesync_live_insert on %s', target);
  execute format('drop trigger if exists edgesync_live_update on %s', target);
end
$$;
revoke all on function edgesync.disable_sync(regclass) from public;

do $$
declare
  t record;
begin
  for t in select s.relid from edgesync.synced_tables s order by s.name loop
    perform edgesync.enable_live(t.relid);
  end loop;
end $$;

-- On Supabase: send pokes through pg_net to `<url>` (the sync Worker's
-- `…/live/poke`), the secret (LIVE_POKE_SECRET) in Vault. Run once by the operator,
-- as postgres, and again to rotate the secret or move the URL; `null` URL stops it.
create or replace function edgesync.configure_live_pokes(p_url text, p_secret text)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_id uuid;
begin
  if p_url is null then
    delete from edgesync.live_target;
    return 'pokes go to NOTIFY edgesync_live only';
  end if;
  if p_url !~ '^https?://[^[:space:]]+/live/poke$' then
    raise exception 'the URL must be http(s)://…/live/poke' using errcode = '22023';
  end if;
  if length(coalesce(p_secret, '')) < 16 then
    raise exception 'the secret must be at least 16 characters (LIVE_POKE_SECRET)' using errcode = '22023';
  end if;
  if not exists (select from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
                  where n.nspname = 'vault' and p.proname in ('create_secret', 'update_secret')
                  having count(distinct p.proname) = 2)
     or to_regclass('vault.decrypted_secrets') is null then
    raise exception 'Supabase Vault (vault.create_secret) is not available: the secret is not stored anywhere else'
      using errcode = '0A000';
  end if;
  select s.id into v_id from vault.secrets s where s.name = 'edgesync_live_poke_secret';
  if v_id is null then
    perform vault.create_secret(p_secret, 'edgesync_live_poke_secret', 'x-live-secret of edgesync /live/poke');
  else
    perform vault.update_secret(v_id, p_secret);
  end if;
  perform edgesync.try_create_extension('pg_net');
  insert into edgesync.live_target (url) values (p_url)
  on conflict (only_row) do update set url = excluded.url;
  if to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is null then
    return 'secret stored in Vault; pg_net is not installed: pokes go to NOTIFY edgesync_live only';
  end if;
  return 'live pokes go to ' || p_url || ', their secret in Vault';
end
$$;
revoke all on function edgesync.configure_live_pokes(text, text) from public, anon, authenticated, service_role;

insert into edgesync.schema_migrations (version, name) values (11, 'live_pokes')
on conflict (version) do nothing;
