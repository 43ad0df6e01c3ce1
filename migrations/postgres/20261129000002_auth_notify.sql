-- Every replica keeps API keys and sessions in memory for a moment
-- (src/store/auth_cache.rs). These triggers tell all of them, at commit,
-- when one of those stops being true: an ended session by its token digest,
-- anything else ('*') by forgetting everything.
CREATE FUNCTION usersvc_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'sessions' THEN
        PERFORM pg_notify('usersvc_auth', encode(OLD.token_hash, 'hex'));
    ELSE
        PERFORM pg_notify('usersvc_auth', '*');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER sessions_auth_changed AFTER DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION usersvc_auth_changed();

CREATE TRIGGER users_auth_changed AFTER UPDATE OF active, supervisor ON users
    FOR EACH ROW WHEN (OLD.active IS DISTINCT FROM NEW.active OR OLD.supervisor IS DISTINCT FROM NEW.supervisor)
    EXECUTE FUNCTION usersvc_auth_changed();

CREATE TRIGGER applications_auth_changed AFTER UPDATE OR DELETE ON applications
    FOR EACH ROW EXECUTE FUNCTION usersvc_auth_changed();
