-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.configure_live_pokes(p_url text, p_secret text)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
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
$function$;
