-- 0001: the edgesync schema, its migration ledger, and the health probe.
--
-- Runs on plain Postgres >= 15 (after sql/bootstrap/local_supabase.sql) and on
-- Supabase. Each migration runs in one transaction and records itself in
-- edgesync.schema_migrations; /health compares the highest version with the one the
-- deployed functions expect.

create schema if not exists edgesync;
-- Internal machinery lives here; PostgREST does not expose it (only `public` is).
revoke all on schema edgesync from public;

create table if not exists edgesync.schema_migrations (
  version    bigint primary key,
  name       text not null,
  applied_at timestamptz not null default now()
);

-- /health calls this as the anonymous role, so it must reveal nothing but the
-- version: security definer, fixed search_path, one integer out.
create or replace function public.edgesync_health()
returns json
language sql
stable
security definer
set search_path = ''
as $$
  select json_build_object('schema_version', (select coalesce(max(version), 0) from edgesync.schema_migrations))
$$;

revoke all on function public.edgesync_health() from public;
grant execute on function public.edgesync_health() to anon, authenticated, service_role;

insert into edgesync.schema_migrations (version, name) values (1, 'edgesync_schema')
on conflict (version) do nothing;
