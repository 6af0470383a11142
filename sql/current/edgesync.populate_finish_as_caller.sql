-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.populate_finish_as_caller(p_source text, p_lease uuid, p_outcome text, p_error text DEFAULT NULL::text, p_retry_after_secs integer DEFAULT NULL::integer, p_user uuid DEFAULT NULL::uuid)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_user uuid := edgesync.populate_user(p_user);
  v_source text := edgesync.populate_source(p_source);
  s public.sync_state := edgesync.populate_lease(v_user, v_source, p_lease);
begin
  case p_outcome
    when 'completed' then
      update public.sync_state set status = 'idle', last_completed_at = now(), run_id = null, cursor = null,
        sync_token = coalesce(nullif((progress -> 'watermark')::text, 'null'), sync_token), lease_id = null, lease_until = null
      where id = s.id returning * into s;
    when 'paused' then
      update public.sync_state set lease_id = null, lease_until = null where id = s.id returning * into s;
    when 'failed' then
      update public.sync_state set status = 'error', last_error = left(coalesce(p_error, 'failed'), 2000),
        lease_id = null, lease_until = null
      where id = s.id returning * into s;
    when 'rate_limited' then
      update public.sync_state set status = 'rate_limited', last_error = left(p_error, 2000),
        retry_after = now() + make_interval(secs => greatest(coalesce(p_retry_after_secs, 60), 1)),
        lease_id = null, lease_until = null
      where id = s.id returning * into s;
    when 'restart' then
      update public.sync_state set cursor = null, sync_token = null, run_mode = 'full', progress = '{}'::jsonb
      where id = s.id returning * into s;
    else
      raise sqlstate 'PT400' using message = format('unknown outcome %s', coalesce(p_outcome, 'null')),
        hint = 'invalid_request';
  end case;
  -- This transaction comes after every apply of the call, which have committed: a pull
  -- whose checkpoint passes its id sees all they wrote (the answer's write_checkpoint).
  return jsonb_build_object('status', s.status, 'run_id', s.run_id, 'progress', s.progress,
                            'retry_after', s.retry_after, 'last_error', s.last_error,
                            'checkpoint', pg_current_xact_id()::text);
end
$function$;
