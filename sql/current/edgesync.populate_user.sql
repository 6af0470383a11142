-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.populate_user(p_user uuid)
 RETURNS uuid
 LANGUAGE plpgsql
 STABLE
 SET search_path TO ''
AS $function$
declare
  uid uuid := auth.uid();
begin
  if coalesce(auth.role(), '') = 'service_role' then
    if p_user is null then
      raise sqlstate 'PT400' using message = 'user_id is required with the service role', hint = 'invalid_request';
    end if;
    return p_user;
  end if;
  if uid is null then
    raise sqlstate 'PT401' using message = 'a user token is required', hint = 'user_required';
  end if;
  if p_user is not null and p_user <> uid then
    raise sqlstate 'PT403' using message = 'a user can populate only their own data', hint = 'user_id_mismatch';
  end if;
  return uid;
end
$function$;
