-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION public.edgesync_ps_checkpoint(p_floor bigint DEFAULT 0)
 RETURNS json
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  uid uuid := auth.uid();
  v_next bigint;
  v_w bigint;
  v_h bigint;
  v_wait double precision := 0.01;
  v_result json;
  v_behind boolean;
begin
  if uid is null then
    raise sqlstate 'PT401' using message = 'a user token is required', hint = 'user_required';
  end if;
  if current_setting('transaction_isolation') <> 'read committed' then
    raise sqlstate '0A000' using message = 'edgesync_ps_checkpoint must run in a READ COMMITTED transaction',
      hint = 'its sums need a snapshot taken after the watermark is read';
  end if;
  for attempt in 1 .. 8 loop
    v_next := edgesync.next_position();
    v_w := edgesync.watermark()::text::bigint;
    -- A floor above what this database ever handed out: the client is ahead of it (a
    -- restore). Without the floor its checksums fail and it downloads again.
    if coalesce(p_floor, 0) <= v_next then
      v_w := greatest(v_w, coalesce(p_floor, 0));
    end if;
    v_h := (v_w << 24) - 1;
    select json_build_object(
             'w', v_w::text,
             'buckets', coalesce(json_agg(json_build_object(
                'tbl', s.name,
                'checksum', (coalesce(b.checksum, 0) + coalesce(o.sum, 0)) % 4294967296,
                'count', coalesce(b.op_count, 0) + coalesce(o.n, 0),
                'last', coalesce(l.last, 0)::text) order by s.name), '[]'::json)),
           coalesce(bool_or(b.through_op > v_h or c.clear_above), false)
      into v_result, v_behind
      from edgesync.synced_tables s
      left join edgesync.ps_bucket_base b on b.user_id = uid and b.tbl = s.name
      left join lateral (
        select sum(x.checksum) as sum, count(*) as n from edgesync.ps_ops x
         where x.user_id = uid and x.tbl = s.name and x.op_id > coalesce(b.through_op, 0) and x.op_id <= v_h) o on true
      left join lateral (
        select max(x.op_id) as last from edgesync.ps_ops x
         where x.user_id = uid and x.tbl = s.name and x.op_id <= v_h) l on true
      left join lateral (
        select exists (select from edgesync.ps_ops x
                        where x.user_id = uid and x.tbl = s.name and x.op_id > v_h and x.kind = 'C') as clear_above) c on true;
    -- A compaction ran at a later watermark than this one: wait for W to catch up.
    if not v_behind then
      return v_result;
    end if;
    perform pg_catalog.pg_sleep(v_wait);
    v_wait := least(v_wait * 2, 1);
  end loop;
  raise sqlstate 'PT503' using message = 'the checkpoint is behind a compaction; try again', hint = 'checkpoint_behind';
end
$function$;
