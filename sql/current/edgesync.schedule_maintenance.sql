-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.schedule_maintenance()
 RETURNS text
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  perform edgesync.try_create_extension('pg_cron');
  if to_regprocedure('cron.schedule(text,text,text)') is null then
    return 'pg_cron is not installed: run select edgesync.purge_tombstones(''30 days'') daily and '
        || 'select edgesync.ps_defrag(); select edgesync.ps_compact(); often, from your own scheduler';
  end if;
  perform cron.schedule('edgesync-purge-tombstones', '17 3 * * *',
                        'select edgesync.purge_tombstones(''30 days'')');
  perform cron.schedule('edgesync-ps-defrag', '*/10 * * * *', 'select edgesync.ps_defrag()');
  perform cron.schedule('edgesync-ps-compact', '5-59/10 * * * *', 'select edgesync.ps_compact()');
  return 'edgesync-purge-tombstones scheduled daily at 03:17 UTC; edgesync-ps-defrag and edgesync-ps-compact every 10 minutes';
end
$function$;
