-- Local bootstrap: what a Supabase project already has, for a plain Postgres.
--
-- NEVER apply this to a real Supabase project: there these roles, the `auth` schema
-- and the `extensions` schema already exist (and differ in detail).
--
-- Modelled on supabase/postgres' init scripts and the `auth.*` helper functions of
-- supabase/auth (migrations 20220224000811 and 20220531120530).
-- Run as the superuser `supabase_admin` (initdb -U supabase_admin), with:
--   psql -v ON_ERROR_STOP=1 -v authpw=<password> -v pgpw=<password> -f local_supabase.sql
-- The migrations then run as `postgres`, which this makes *without* superuser, as on a
-- hosted project: NOSUPERUSER CREATEDB CREATEROLE LOGIN REPLICATION BYPASSRLS.
\set ON_ERROR_STOP on

do $$
begin
  if not exists (select from pg_roles where rolname = 'postgres') then
    create role postgres;
  end if;
end
$$;
alter role postgres with nosuperuser createdb createrole login replication bypassrls password :'pgpw';
-- The database being set up (`postgres` on the stack; tests set up others alike).
do $$
begin
  execute format('grant all on database %I to postgres', current_database());
  execute format('alter database %I set search_path = "$user", public, extensions', current_database());
end
$$;
grant pg_monitor, pg_signal_backend to postgres;

-- The API roles PostgREST switches to, from the JWT's `role` claim.
do $$
begin
  if not exists (select from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;
-- The login role PostgREST connects as; it can only SET ROLE to the three API roles.
alter role authenticator with login noinherit password :'authpw';
grant anon, authenticated, service_role to authenticator;
grant anon, authenticated, service_role to postgres;

alter role anon          set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';

-- Extensions live in their own schema, as on Supabase, and none is enabled yet: the
-- migrations enable what they use (`create extension if not exists vector with schema
-- extensions`). On Supabase, supautils lets `postgres` do that; locally the server runs
-- with `vector.control` marked trusted (xtask/src/stack.rs, privileged_extensions_tree).
create schema if not exists extensions;
grant all on schema extensions to postgres;
grant usage on schema extensions to anon, authenticated, service_role;

grant all on schema public to postgres;
grant usage on schema public to anon, authenticated, service_role;
-- What `postgres` or `supabase_admin` makes in public is granted to the API roles, as
-- on Supabase: a migration revokes where it means to (edgesync.enable_sync does).
alter default privileges for role postgres, supabase_admin in schema public
  grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres, supabase_admin in schema public
  grant all on functions to anon, authenticated, service_role;
alter default privileges for role postgres, supabase_admin in schema public
  grant all on sequences to anon, authenticated, service_role;

create schema if not exists auth;
grant all on schema auth to postgres;
grant usage on schema auth to anon, authenticated, service_role;

create or replace function auth.uid() returns uuid language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.email() returns text language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

create or replace function auth.jwt() returns jsonb language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

grant execute on function auth.uid(), auth.role(), auth.email(), auth.jwt() to anon, authenticated, service_role;
