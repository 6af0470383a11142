-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.populate_source(p_source text)
 RETURNS text
 LANGUAGE plpgsql
 IMMUTABLE
 SET search_path TO ''
AS $function$
begin
  if p_source is null or p_source not in ('neo4j', 'legacy') then
    raise sqlstate 'PT400' using message = format('unknown populate source %s', coalesce(p_source, 'null')),
      hint = 'invalid_request';
  end if;
  return p_source;
end
$function$;
