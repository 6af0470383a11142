-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.limits()
 RETURNS jsonb
 LANGUAGE sql
 IMMUTABLE
 SET search_path TO ''
AS $function$
  select jsonb_build_object('pull_max_rows', 5000, 'pull_max_bytes', 4194304, 'pull_max_tables', 64,
                            'push_max_mutations', 1000)
$function$;
