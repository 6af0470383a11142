-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.tg_live_poke()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
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
  v_checkpoint := (edgesync.write_position() + 1)::text;
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
$function$;
