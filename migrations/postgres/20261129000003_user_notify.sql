-- Every replica also keeps the user records it read for a moment
-- (src/store/auth_cache.rs). These tell all of them, at commit, which users
-- changed or went: 'u' and the id, or everything ('*') when a statement
-- touched many (deleting an application's users, say).
CREATE FUNCTION usersvc_users_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    r record;
BEGIN
    SELECT count(*) INTO n FROM old_rows;
    IF n > 64 THEN
        PERFORM pg_notify('usersvc_auth', '*');
    ELSE
        FOR r IN SELECT id FROM old_rows LOOP
            PERFORM pg_notify('usersvc_auth', 'u' || r.id::text);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

-- (A trigger with transition tables takes one event only.)
CREATE TRIGGER users_cache_updated AFTER UPDATE ON users
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usersvc_users_changed();

CREATE TRIGGER users_cache_deleted AFTER DELETE ON users
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usersvc_users_changed();
