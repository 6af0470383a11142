-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.ps_record(p_user uuid, p_tbl text, p_row uuid, p_kind text)
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_block bigint := edgesync.ps_block();
  v_seq integer := coalesce(nullif(current_setting('edgesync.ps_seq', true), '')::integer, 0);
  v_latest bigint;
  v_op bigint;
begin
  select max(o.pos) into v_latest
    from edgesync.ps_ops o where o.user_id = p_user and o.tbl = p_tbl and o.row_id = p_row;
  if v_latest = v_block then
    update edgesync.ps_ops o set kind = p_kind::"char"
     where o.user_id = p_user and o.tbl = p_tbl and o.row_id = p_row and o.pos = v_block
    returning o.op_id into v_op;
    return v_op;
  end if;
  if v_latest > v_block or v_seq >= 16777215 then
    v_block := edgesync.ps_fresh_block();
    v_seq := 0;
  end if;
  v_seq := v_seq + 1;
  perform set_config('edgesync.ps_seq', v_seq::text, true);
  v_op := (v_block << 24) | v_seq;
  insert into edgesync.ps_ops (user_id, tbl, pos, seq, kind, row_id, checksum)
  values (p_user, p_tbl, v_block, v_seq, p_kind::"char", p_row, edgesync.ps_checksum(p_tbl, p_row, v_op));
  return v_op;
end
$function$;
