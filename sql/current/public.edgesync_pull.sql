-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION public.edgesync_pull(since_txid xid8 DEFAULT '0'::xid8, since_id uuid DEFAULT '00000000-0000-0000-0000-000000000000'::uuid, tables text[] DEFAULT NULL::text[], lim integer DEFAULT 1000, max_bytes integer DEFAULT 4194304, since_origin xid8 DEFAULT '0'::xid8)
 RETURNS json
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  limits jsonb := edgesync.limits();
begin
  if lim is not null and (lim < 1 or lim > (limits ->> 'pull_max_rows')::integer) then
    raise sqlstate 'PT400' using message = format('lim must be from 1 to %s', limits ->> 'pull_max_rows'),
      hint = 'invalid_parameter';
  end if;
  if max_bytes is not null and (max_bytes < 1024 or max_bytes > (limits ->> 'pull_max_bytes')::integer) then
    raise sqlstate 'PT400' using message = format('max_bytes must be from 1024 to %s', limits ->> 'pull_max_bytes'),
      hint = 'invalid_parameter';
  end if;
  if coalesce(cardinality(tables), 0) > (limits ->> 'pull_max_tables')::integer then
    raise sqlstate 'PT400' using message = format('at most %s tables', limits ->> 'pull_max_tables'),
      hint = 'invalid_parameter';
  end if;
  return edgesync.pull_page(since_txid, since_id, tables, lim, max_bytes, since_origin);
end
$function$;
