-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.push_batch(client_id uuid, mutations jsonb)
 RETURNS json
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  uid       uuid := auth.uid();
  v_client  uuid := client_id;
  v_last    bigint;
  meta      jsonb;
  tm        jsonb;
  m         jsonb;
  errs      jsonb := '[]'::jsonb;
  forbidden boolean := false;
  results   jsonb := '[]'::jsonb;
  k         text;
  v_op      text;
  v_op_id   bigint;
  v_id      uuid;
  v_data    jsonb;
  norm      jsonb;
  cols      text;
  sets      text;
  cur_txid  xid8;
  cur_writer uuid;
  cur_row   jsonb;
  cur_del   boolean;
  conflicted boolean;
  st        text;
  msg       text;
  hint_code text;
  status_code text;
begin
  if uid is null then
    raise sqlstate 'PT401' using message = 'a user token is required', hint = 'user_required';
  end if;
  if v_client is null then
    raise sqlstate 'PT400' using message = 'client_id is required', hint = 'invalid_request';
  end if;
  if mutations is null or jsonb_typeof(mutations) <> 'array' then
    raise sqlstate 'PT400' using message = 'mutations must be a JSON array', hint = 'invalid_request';
  end if;

  -- Each registered table: its relation, policy, and the columns a client may write
  -- with their types.
  -- `put_set` is the SET list of a PUT's upsert, the same for every PUT on the table:
  -- a PUT replaces the row, so columns it leaves out go back to their defaults.
  select jsonb_object_agg(s.name, jsonb_build_object(
           'rel', s.relid::text,
           'policy', s.conflict_policy,
           'hidden', to_jsonb(s.server_only || '{_txid,_writer}'::text[]),
           'cols', (select jsonb_object_agg(a.attname, format_type(a.atttypid, null))
                    from pg_catalog.pg_attribute a
                    where a.attrelid = s.relid and a.attnum > 0 and not a.attisdropped),
           'put_set', (select string_agg(format('%1$I = excluded.%1$I', a.attname), ', ')
                       from pg_catalog.pg_attribute a
                       where a.attrelid = s.relid and a.attnum > 0 and not a.attisdropped
                         and a.attname not in ('id', 'user_id', 'created_at', 'updated_at', 'deleted_at')
                         and a.attname <> all (s.server_only || '{_txid,_writer}'::text[]))))
  into meta from edgesync.synced_tables s;

  -- Validate everything first, so a bad batch is rejected as a whole with one error
  -- per bad mutation.
  for m in select e from jsonb_array_elements(mutations) e loop
    if jsonb_typeof(m) is distinct from 'object' or jsonb_typeof(m -> 'op_id') is distinct from 'number'
       or (m ->> 'op_id') !~ '^[0-9]{1,18}$' or (m ->> 'op_id')::bigint < 1 then
      errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'invalid_op_id',
                                         'message', 'op_id must be a positive integer');
      continue;
    end if;
    if (m ->> 'op') is null or (m ->> 'op') not in ('PUT', 'PATCH', 'DELETE') then
      errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'invalid_op',
                                         'message', 'op must be PUT, PATCH or DELETE');
    end if;
    if coalesce(m ->> 'id', '') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
      errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'invalid_id', 'message', 'id must be a UUID');
    end if;
    tm := meta -> (m ->> 'type');
    if tm is null then
      errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'unknown_table',
                                         'message', format('unknown table: %s', coalesce(m ->> 'type', '(none)')));
      continue;
    end if;
    if m ? 'data' and jsonb_typeof(m -> 'data') not in ('object', 'null') then
      errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'invalid_data',
                                         'message', 'data must be an object');
      continue;
    end if;
    for k in select jsonb_object_keys(coalesce(nullif(m -> 'data', 'null'::jsonb), '{}'::jsonb)) loop
      if not (tm -> 'cols') ? k then
        errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'unknown_column', 'column', k,
                                           'message', format('%s has no column %s', m ->> 'type', k));
      elsif (tm -> 'hidden') ? k then
        errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'read_only_column', 'column', k,
                                           'message', format('%s.%s is managed by the server', m ->> 'type', k));
      elsif k = 'user_id' and (m -> 'data' ->> 'user_id') is distinct from uid::text then
        forbidden := true;
        errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'user_id_mismatch', 'column', k,
                                           'message', 'user_id must be the signed-in user (or be left out)');
      elsif k = 'id' and (m -> 'data' ->> 'id') is distinct from (m ->> 'id') then
        errs := errs || jsonb_build_object('op_id', m -> 'op_id', 'code', 'id_mismatch', 'column', k,
                                           'message', 'data.id differs from the mutation id');
      end if;
    end loop;
  end loop;
  if jsonb_array_length(errs) > 0 then
    if forbidden then
      raise sqlstate 'PT403' using message = 'a mutation names another user', hint = 'user_id_mismatch',
                                   detail = jsonb_build_object('errors', errs)::text;
    end if;
    raise sqlstate 'PT400' using message = format('%s invalid mutation(s); nothing was applied', jsonb_array_length(errs)),
                                 hint = 'invalid_mutations', detail = jsonb_build_object('errors', errs)::text;
  end if;

  -- Claim the client_id (a no-op if it exists, whoever owns it), then lock our row.
  -- RLS hides another user's row, so "not found" means it is someone else's.
  insert into edgesync.clients (client_id, user_id) values (v_client, uid) on conflict on constraint clients_pkey do nothing;
  select c.last_op_id into v_last from edgesync.clients c where c.client_id = v_client for update;
  if not found then
    raise sqlstate 'PT403' using message = 'client_id belongs to another user; generate a new one',
                                 hint = 'client_id_taken';
  end if;
  perform set_config('edgesync.client_id', v_client::text, true);

  begin
    for m in select e from jsonb_array_elements(mutations) e order by (e ->> 'op_id')::bigint loop
      v_op_id := (m ->> 'op_id')::bigint;
      if v_op_id <= v_last then
        results := results || jsonb_build_object('op_id', v_op_id, 'status', 'duplicate');
        continue;
      end if;
      v_last := v_op_id;
      v_op := m ->> 'op';
      v_id := (m ->> 'id')::uuid;
      tm := meta -> (m ->> 'type');
      v_data := coalesce(nullif(m -> 'data', 'null'::jsonb), '{}'::jsonb);

      -- The row as it is now (locked), when the conflict check or PATCH needs it.
      cur_txid := null; cur_writer := null; cur_del := null; cur_row := null;
      if (m ->> 'base_txid') is not null or v_op = 'PATCH' then
        execute format('select t._txid, t._writer, t.deleted_at is not null, to_jsonb(t) - $2::text[]
                          from %s t where t.id = $1 for update', tm ->> 'rel')
          into cur_txid, cur_writer, cur_del, cur_row
          using v_id, array(select jsonb_array_elements_text(tm -> 'hidden'));
      end if;
      -- A conflict: the row changed after the version the client based its edit on,
      -- and not by this client.
      conflicted := (m ->> 'base_txid') is not null and cur_txid is not null
        and (cur_txid, v_id) > ((m ->> 'base_txid')::xid8, coalesce((m ->> 'base_id')::uuid, '00000000-0000-0000-0000-000000000000'))
        and cur_writer is distinct from v_client;
      if conflicted and tm ->> 'policy' = 'server_wins' then
        results := results || jsonb_build_object('op_id', v_op_id, 'status', 'conflict', 'policy', 'server_wins',
                                                 'server_row', case when cur_del then null else cur_row end);
        continue;
      end if;

      if v_op = 'DELETE' then
        execute format('update %s set deleted_at = now() where id = $1 and deleted_at is null', tm ->> 'rel')
          using v_id;
      else
        select coalesce(jsonb_object_agg(key, edgesync.normalize_value(value, (tm -> 'cols') ->> key)), '{}'::jsonb)
        into norm
        from jsonb_each(v_data)
        where key not in ('id', 'user_id', 'updated_at', 'deleted_at');
        if v_op = 'PUT' then
          norm := norm || jsonb_build_object('id', v_id, 'user_id', uid);
          select string_agg(quote_ident(key), ', ') into cols from jsonb_object_keys(norm) key;
          execute format('insert into %1$s as t (%2$s) select %2$s from jsonb_populate_record(null::%1$s, $1)
                          on conflict (id) do update set %3$s deleted_at = null',
                         tm ->> 'rel', cols, coalesce((tm ->> 'put_set') || ',', '')) using norm;
        else -- PATCH: only the given columns, and only on a live row.
          if cur_txid is null or cur_del then
            results := results || jsonb_build_object('op_id', v_op_id, 'status', 'conflict', 'reason', 'row_missing',
                                                     'server_row', null);
            continue;
          end if;
          select string_agg(format('%1$I = p.%1$I', key), ', ') into sets from jsonb_object_keys(norm) key;
          if sets is not null then
            execute format('update %1$s t set %2$s from jsonb_populate_record(null::%1$s, $1) p where t.id = $2',
                           tm ->> 'rel', sets) using norm, v_id;
          end if;
        end if;
      end if;
      if conflicted then
        -- Last write wins: applied, and the overwritten version is reported.
        results := results || jsonb_build_object('op_id', v_op_id, 'status', 'applied', 'conflict', true,
                                                 'policy', 'last_write_wins',
                                                 'server_row', case when cur_del then null else cur_row end);
      else
        results := results || jsonb_build_object('op_id', v_op_id, 'status', 'applied');
      end if;
    end loop;
  exception when others then
    get stacked diagnostics st = returned_sqlstate, msg = message_text;
    if st like 'PT%' then
      raise;
    end if;
    if st = '42501' then
      status_code := 'PT403'; hint_code := 'forbidden_row';
      msg := format('row %s of %s belongs to another user or may not be written', v_id, m ->> 'type');
    elsif st = '23505' then
      status_code := 'PT409'; hint_code := 'unique_violation';
      msg := format('%s %s conflicts with another row on a unique key: %s', m ->> 'type', v_id, msg);
    elsif st like '22%' or st in ('23502', '23514', '23503', '42804', '2200G') then
      status_code := 'PT400'; hint_code := 'invalid_value';
    else
      raise;
    end if;
    raise exception using errcode = status_code,
            message = format('op_id %s (%s %s): %s; nothing was applied', v_op_id, v_op, m ->> 'type', msg),
            hint = hint_code,
            detail = jsonb_build_object('errors', jsonb_build_array(jsonb_build_object(
                       'op_id', v_op_id, 'code', hint_code, 'message', msg)))::text;
  end;

  update edgesync.clients c set last_op_id = v_last, updated_at = now() where c.client_id = v_client;
  return json_build_object('results', results, 'last_op_id', v_last, 'checkpoint', pg_current_xact_id()::text);
end
$function$;
