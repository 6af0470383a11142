-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.try_create_extension(p_name text)
 RETURNS boolean
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  if exists (select from pg_catalog.pg_extension where extname = p_name) then
    return true;
  end if;
  if not exists (select from pg_catalog.pg_available_extensions where name = p_name) then
    return false;
  end if;
  begin
    execute format('create extension if not exists %I', p_name);
    return true;
  exception when others then
    raise notice 'edgesync: % is available but could not be created here: %', p_name, sqlerrm;
    return false;
  end;
end
$function$;
