-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.enable_ps(target regclass)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_name text;
  v_server_only text[];
  trig_args text;
begin
  select s.name, s.server_only into v_name, v_server_only from edgesync.synced_tables s where s.relid = target;
  if v_name is null then
    raise exception 'edgesync.enable_ps: % is not synced', target;
  end if;
  select string_agg(quote_literal(c), ', ') into trig_args from unnest(array[v_name] || v_server_only) c;
  execute format('drop trigger if exists edgesync_ps_record on %s', target);
  execute format('create trigger edgesync_ps_record after insert or update on %s
                  for each row execute function edgesync.tg_ps_record(%s)', target, trig_args);
  perform edgesync.ps_backfill(v_name);
end
$function$;
