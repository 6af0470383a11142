-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.configure_embed_webhook(p_url text, p_secret text)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
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
$function$;
