-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.tg_ps_record()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  v_tbl text := tg_argv[0];
  ignored text[] := coalesce(tg_argv[1:]::text[], '{}') || '{_txid,_writer,updated_at,created_at}'::text[];
begin
  if tg_op = 'UPDATE' then
    if new._txid is not distinct from old._txid then
      -- The version trigger kept the version: nothing clients see changed, or this is
      -- a second write of the row in this transaction (same position), which counts
      -- only if it changed what clients see.
      if new._txid::text is distinct from nullif(current_setting('edgesync.position', true), '')
         or (to_jsonb(new) - ignored) = (to_jsonb(old) - ignored) then
        return null;
      end if;
    end if;
    if new.user_id is distinct from old.user_id then
      perform edgesync.ps_record(old.user_id, v_tbl, old.id, 'R');
    end if;
  end if;
  perform edgesync.ps_record(new.user_id, v_tbl, new.id, case when new.deleted_at is null then 'P' else 'R' end);
  return null;
end
$function$;
