-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.populate_begin_as_caller(p_source text, p_user uuid DEFAULT NULL::uuid, p_run uuid DEFAULT NULL::uuid, p_mode text DEFAULT 'full'::text, p_lease_secs integer DEFAULT 60)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_user uuid := edgesync.populate_user(p_user);
  v_source text := edgesync.populate_source(p_source);
  s public.sync_state;
  resumed boolean := false;
begin
  if p_mode is null or p_mode not in ('full', 'incremental', 'auto') then
    raise sqlstate 'PT400' using message = 'mode must be full or incremental', hint = 'invalid_request';
  end if;
  insert into public.sync_state (user_id, source) values (v_user, v_source) on conflict (user_id, source) do nothing;
  select * into s from public.sync_state where user_id = v_user and source = v_source for update;
  if s.id is null then
    raise sqlstate 'PT403' using message = 'the sync state of this user is not accessible', hint = 'forbidden_row';
  end if;
  if s.status = 'syncing' and s.lease_until > now() then
    raise sqlstate 'PT409' using message = format('a %s populate for this user is already running', v_source),
      hint = 'populate_in_progress',
      detail = json_build_object('retry_after_secs', ceil(extract(epoch from s.lease_until - now())))::text;
  end if;
  if s.status = 'rate_limited' and s.retry_after > now() then
    raise sqlstate 'PT429' using message = format('the %s source asked to wait before the next request', v_source),
      hint = 'source_rate_limited',
      detail = json_build_object('retry_after_secs', ceil(extract(epoch from s.retry_after - now())))::text;
  end if;
  if p_run is not null then
    if s.run_id is distinct from p_run then
      raise sqlstate 'PT410' using
        message = 'this continuation belongs to a populate run that has ended or was replaced; call again without it',
        hint = 'continuation_expired';
    end if;
    resumed := true;
  elsif p_mode = 'auto' and s.run_id is not null then
    resumed := true;
  else
    s.run_id := gen_random_uuid();
    s.run_mode := case when p_mode <> 'full' and s.sync_token is not null then 'incremental' else 'full' end;
    s.cursor := null;
    s.progress := '{}'::jsonb;
    s.last_started_at := now();
  end if;
  update public.sync_state set
    status = 'syncing', run_id = s.run_id, run_mode = s.run_mode, cursor = s.cursor, progress = s.progress,
    last_started_at = s.last_started_at, last_error = null, retry_after = null,
    lease_id = gen_random_uuid(), lease_until = now() + make_interval(secs => greatest(coalesce(p_lease_secs, 60), 1))
  where id = s.id
  returning * into s;
  return jsonb_build_object(
    'user_id', v_user, 'run_id', s.run_id, 'lease_id', s.lease_id, 'mode', s.run_mode, 'cursor', s.cursor,
    'since', case when s.run_mode = 'incremental' then s.sync_token end,
    'progress', s.progress, 'resumed', resumed);
end
$function$;
