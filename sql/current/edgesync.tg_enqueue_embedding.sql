-- Generated from the database after every migration (tests/migrations.rs); do not edit.

CREATE OR REPLACE FUNCTION edgesync.tg_enqueue_embedding()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
begin
  if new.deleted_at is not null then
    delete from edgesync.embedding_jobs where entry_id = new.id;
    return null;
  end if;
  perform edgesync.enqueue_embedding(new.id, new.user_id);
  return null;
end
$function$;
