-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.ps_compact_bucket(p_user uuid, p_tbl text)
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_h bigint;
  v_last bigint;
  v_sum bigint;
  v_n bigint;
  v_target bigint;
  v_first_kind "char";
begin
  -- One compaction of a bucket at a time (a two-key lock: never read as a position).
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('edgesync.ps_compact'),
                                           pg_catalog.hashtext(p_user::text || '/' || p_tbl));
  v_h := (edgesync.watermark()::text::bigint << 24) - 1;
  -- A later statement: every op at or below v_h is committed and in its snapshot.
  with ops as (
    select o.op_id, o.kind, o.checksum, o.target,
           case when o.kind = 'P' then
             (select n.op_id from edgesync.ps_ops n
               where n.user_id = p_user and n.tbl = p_tbl and n.row_id = o.row_id and n.pos > o.pos
               order by n.pos limit 1) end as nxt
      from edgesync.ps_ops o
     where o.user_id = p_user and o.tbl = p_tbl and o.op_id <= v_h
  ),
  marked as (
    select ops.*, bool_and(kind in ('R', 'C') or coalesce(nxt <= v_h, false)) over (order by op_id) as dead
      from ops
  )
  select max(op_id), sum(checksum) % 4294967296, count(*), greatest(max(nxt), max(target)),
         (array_agg(kind order by op_id))[1]
    into v_last, v_sum, v_n, v_target, v_first_kind
    from marked where dead;
  if v_n is null or v_n = 0 or (v_n = 1 and v_first_kind = 'C') then
    v_n := 0;
  else
    delete from edgesync.ps_ops o where o.user_id = p_user and o.tbl = p_tbl and o.op_id <= v_last;
    insert into edgesync.ps_ops (user_id, tbl, pos, seq, kind, row_id, checksum, target)
    values (p_user, p_tbl, v_last >> 24, (v_last & 16777215)::integer, 'C', null, v_sum, v_target);
  end if;
  -- The bucket's sums through v_h, so checkpoints add only what came after.
  insert into edgesync.ps_bucket_base as b (user_id, tbl, through_op, checksum, op_count)
  select p_user, p_tbl, v_h, coalesce(sum(o.checksum), 0) % 4294967296, count(*)
    from edgesync.ps_ops o where o.user_id = p_user and o.tbl = p_tbl and o.op_id <= v_h
  on conflict (user_id, tbl) do update
    set through_op = excluded.through_op, checksum = excluded.checksum, op_count = excluded.op_count
    where b.through_op < excluded.through_op;
  return greatest(v_n - 1, 0);
end
$function$;
