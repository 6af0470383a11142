-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.tg_row_version()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  ignored text[] := coalesce(tg_argv::text[], '{}') || '{_txid,_writer,updated_at,created_at}'::text[];
begin
  if tg_op = 'UPDATE' then
    new.created_at := old.created_at;
    if (to_jsonb(new) - ignored) = (to_jsonb(old) - ignored) then
      new._txid := old._txid;
      new._writer := old._writer;
      new.updated_at := old.updated_at;
      return new;
    end if;
  elsif new.created_at is null then
    new.created_at := now();
  end if;
  new._txid := edgesync.sync_position();
  new._writer := nullif(current_setting('edgesync.client_id', true), '')::uuid;
  new.updated_at := now();
  return new;
end
$function$;
