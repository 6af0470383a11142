-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.purge_tombstones(retention interval DEFAULT '30 days'::interval)
 RETURNS TABLE(table_name text, purged bigint)
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  t record;
  n bigint;
begin
  perform set_config('edgesync.purging', 'on', true);
  for t in select s.name, s.relid from edgesync.synced_tables s order by s.name loop
    execute format($f$
      with gone as (
        delete from %s where deleted_at is not null and deleted_at < now() - $1 returning user_id, _txid
      ), per_user as (
        insert into edgesync.purge_horizons as h (user_id, horizon, purged_xid)
        select user_id, max(_txid), edgesync.sync_position() from gone group by user_id
        on conflict (user_id) do update
          set horizon = greatest(h.horizon, excluded.horizon), purged_xid = excluded.purged_xid,
              purged_at = now()
      )
      select count(*) from gone
    $f$, t.relid) using retention into n;
    table_name := t.name;
    purged := n;
    return next;
  end loop;
  perform set_config('edgesync.purging', 'off', true);
end
$function$;
