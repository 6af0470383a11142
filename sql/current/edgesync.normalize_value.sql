-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.normalize_value(v jsonb, typ text)
 RETURNS jsonb
 LANGUAGE sql
 IMMUTABLE
 SET search_path TO ''
AS $function$
  select case
    when v is null or jsonb_typeof(v) = 'null' then v
    when typ in ('json', 'jsonb') and jsonb_typeof(v) = 'string' and ltrim(v #>> '{}') ~ '^[\[{]'
      then (v #>> '{}')::jsonb
    when typ like '%[]' and jsonb_typeof(v) = 'string' and ltrim(v #>> '{}') ~ '^\['
      then (v #>> '{}')::jsonb
    when typ = 'boolean' and jsonb_typeof(v) = 'number'
      then to_jsonb((v #>> '{}')::numeric <> 0)
    when (typ like 'timestamp%' or typ = 'date') and jsonb_typeof(v) = 'number'
      -- Unix time: seconds, or milliseconds when it is that large (JavaScript's Date.now()).
      then to_jsonb(to_timestamp(case when abs((v #>> '{}')::numeric) >= 100000000000
                                      then (v #>> '{}')::numeric / 1000 else (v #>> '{}')::numeric end))
    else v
  end
$function$;
