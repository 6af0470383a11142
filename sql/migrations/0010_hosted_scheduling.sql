-- 0010: what a hosted Supabase project schedules in the database, scripted.
--
-- * The webhook secret lives in Supabase Vault (`vault.secrets`, read through
--   `vault.decrypted_secrets` at call time). Until now configure_embed_webhook wrote
--   it as a literal into edgesync.tg_embed_webhook's body, which any role can read
--   through pg_proc.
-- * pg_cron, where the project has it: edgesync.purge_tombstones nightly (03:17 UTC,
--   30 days' retention), and, once the webhook is configured, a drain of due
--   embedding jobs every minute (POST <url>/drain with the secret), beside the
--   Workers' own Cron Trigger. Without pg_cron (or pg_net) nothing else changes:
--   the Cron Trigger drains every job, and tombstones wait for a purge by hand.
--
-- Extensions are created only where available and needed, each guarded, so the
-- migration applies the same with or without them (and as the non-superuser
-- `postgres`, which Supabase lets create them).

set local client_min_messages = warning;

-- pg_cron (and pg_net) when the server has them; a refusal (pg_cron lives in one
-- database only, cron.database_name) is reported, not fatal.
create or replace function edgesync.try_create_extension(p_name text)
returns boolean
language plpgsql
set search_path = ''
as $$
begin
  if exists (select from pg_catalog.pg_extension where extname = p_name) then
    return true;
  end if;
  if not exists (select from pg_catalog.pg_available_extensions where name = p_name) then
    return false;
  end if;
  begin
    execute format('create extension if not exists %I', p_name);
    return true;
  exception when others then
    raise notice 'edgesync: % is available but could not be created here: %', p_name, sqlerrm;
    return false;
  end;
end
$$;
revoke all on function edgesync.try_create_extension(text) from public, anon, authenticated, service_role;

-- Schedule (or reschedule: pg_cron replaces a job of the same name) the tombstone purge.
create or replace function edgesync.schedule_maintenance()
returns text
language plpgsql
set search_path = ''
as $$
begin
  perform edgesync.try_create_extension('pg_cron');
  if to_regprocedure('cron.schedule(text,text,text)') is null then
    return 'pg_cron is not installed: run select edgesync.purge_tombstones(''30 days'') from your own scheduler';
  end if;
  perform cron.schedule('edgesync-purge-tombstones', '17 3 * * *',
                        'select edgesync.purge_tombstones(''30 days'')');
  return 'edgesync-purge-tombstones scheduled daily at 03:17 UTC';
end
$$;
revoke all on function edgesync.schedule_maintenance() from public, anon, authenticated, service_role;

select edgesync.schedule_maintenance();

-- The webhook: the secret in Vault, read by the trigger at call time; the URL is not
-- a secret and is written into the trigger. Run once by the operator, as postgres,
-- and again to rotate the secret or move the URL.
create or replace function edgesync.configure_embed_webhook(p_url text, p_secret text)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_id uuid;
  v_cron text := '';
begin
  if coalesce(p_url, '') !~ '^https?://[^[:space:]]+$' then
    raise exception 'the URL must be http(s)://…/embed_entry' using errcode = '22023';
  end if;
  if length(coalesce(p_secret, '')) < 16 then
    raise exception 'the secret must be at least 16 characters (EMBED_WEBHOOK_SECRET)' using errcode = '22023';
  end if;
  -- By name: Vault's create_secret(new_secret, new_name, new_description, new_key_id)
  -- has grown arguments across versions.
  if not exists (select from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
                  where n.nspname = 'vault' and p.proname in ('create_secret', 'update_secret')
                  having count(distinct p.proname) = 2)
     or to_regclass('vault.decrypted_secrets') is null then
    raise exception 'Supabase Vault (vault.create_secret) is not available: the secret is not stored anywhere else'
      using errcode = '0A000';
  end if;
  select s.id into v_id from vault.secrets s where s.name = 'edgesync_embed_webhook_secret';
  if v_id is null then
    perform vault.create_secret(p_secret, 'edgesync_embed_webhook_secret', 'x-webhook-secret of edgesync embed_entry');
  else
    perform vault.update_secret(v_id, p_secret);
  end if;

  perform edgesync.try_create_extension('pg_net');
  if to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is null then
    return 'secret stored in Vault; pg_net is not installed: no webhook (the Cron Trigger still drains every job)';
  end if;
  execute format($f$
    create or replace function edgesync.tg_embed_webhook() returns trigger language plpgsql
    security definer set search_path = '' as $b$
    begin
      perform net.http_post(url := %L,
        body := jsonb_build_object('type', tg_op, 'table', 'entries', 'schema', 'public',
                                   'record', jsonb_build_object('id', new.entry_id, 'user_id', new.user_id),
                                   'old_record', null),
        headers := jsonb_build_object('content-type', 'application/json', 'x-webhook-secret',
                     (select s.decrypted_secret from vault.decrypted_secrets s
                       where s.name = 'edgesync_embed_webhook_secret')));
      return null;
    end $b$;
  $f$, p_url);
  revoke all on function edgesync.tg_embed_webhook() from public, anon, authenticated, service_role;
  execute 'drop trigger if exists embedding_jobs_webhook on edgesync.embedding_jobs';
  execute 'create trigger embedding_jobs_webhook after insert or update of generation on edgesync.embedding_jobs
           for each row when (new.status = ''pending'') execute function edgesync.tg_embed_webhook()';

  if to_regprocedure('cron.schedule(text,text,text)') is not null then
    perform cron.schedule('edgesync-embed-drain', '* * * * *', format(
      $c$select net.http_post(url := %L, body := '{}'::jsonb,
           headers := jsonb_build_object('content-type', 'application/json', 'x-webhook-secret',
                        (select s.decrypted_secret from vault.decrypted_secrets s
                          where s.name = 'edgesync_embed_webhook_secret')))$c$,
      p_url || '/drain'));
    v_cron := '; edgesync-embed-drain scheduled every minute';
  end if;
  return 'webhook configured, its secret in Vault' || v_cron;
end
$$;
revoke all on function edgesync.configure_embed_webhook(text, text) from public, anon, authenticated, service_role;

insert into edgesync.schema_migrations (version, name) values (10, 'hosted_scheduling')
on conflict (version) do nothing;

notify pgrst, 'reload schema';
