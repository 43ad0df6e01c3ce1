-- A NOTIFY takes one lock for the whole server from its transaction's
-- commit until that commit is on disk, so every user update queued behind
-- every other one's flush: that, more than the trail, capped updates near
-- 1,450/s on a 2-core machine. Connections of this version say
-- (usersvc.notify = 'after_commit', set when they connect) that they send
-- their updates' evictions themselves, just after commit, on a connection
-- that does not wait for the disk (src/store/postgres/notify.rs). For
-- anyone else (replicas of the previous version during an upgrade, psql)
-- and for every DELETE, the trigger notifies as before.
CREATE OR REPLACE FUNCTION usersvc_users_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    r record;
BEGIN
    IF TG_OP = 'UPDATE' AND current_setting('usersvc.notify', true) = 'after_commit' THEN
        RETURN NULL;
    END IF;
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
