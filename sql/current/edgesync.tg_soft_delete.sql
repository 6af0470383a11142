-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.tg_soft_delete()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  if current_setting('edgesync.purging', true) = 'on' then
    return old;
  end if;
  execute format('update %s set deleted_at = now() where id = $1 and deleted_at is null', tg_relid::regclass)
    using old.id;
  return null;
end
$function$;
