//! Users on PostgreSQL.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::Row;
use uuid::Uuid;

use crate::store::postgres::{PgStore, USER_COLUMNS, expiry, now_seconds, user_from_row};
use crate::store::throttles::postgres::{self as pg_throttle, ThrottleArgs};
use crate::store::trail::postgres::{self as pg_audit, AuditColumns, many_records};
use crate::store::trail::record::AuditRecord;
use crate::store::{
    Credentials, ImportedUser, NewSession, NewUser, QueuedMail, Rekeyed, Result, SignInAttempt, StoreError,
    StoredUsername, ThrottleRule, UserChange, UserListFilter, UserRecord, UserSecrets, UserStore, from_row,
};

#[async_trait]
impl UserStore for PgStore {
    async fn list_users(
        &self,
        app_id: Uuid,
        f: &UserListFilter,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<UserRecord>> {
        let sql = f.statement(USER_COLUMNS, after.is_some(), '$');
        let rows = sqlx::query(&sql)
            .bind(app_id)
            .bind(after)
            .bind(&f.email_bidx)
            .bind(&f.username_bidx)
            .bind(f.active)
            .bind(f.group_id)
            .bind(&f.mrn_bidx)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn set_supervisor(&self, app_id: Uuid, username_bidx: &[u8], on: bool, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let id: Option<Uuid> = sqlx::query_scalar(
            "UPDATE users SET supervisor = $3 WHERE app_id = $1 AND username_bidx = $2 RETURNING id",
        )
        .bind(app_id)
        .bind(username_bidx)
        .bind(on)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = id else {
            return Ok(false);
        };
        let mut audit = audit.clone();
        audit.subject_id = Some(id);
        pg_audit::append(&mut *tx, &[audit]).await?;
        tx.commit().await?;
        // What the user's sessions grant changed.
        self.users_changed(&[id]);
        self.auth.evict_all();
        Ok(true)
    }

    async fn create_user_mailing(
        &self,
        user: NewUser,
        session: Option<NewSession>,
        mail: &[QueuedMail],
        audit: &[AuditRecord],
    ) -> Result<Option<UserRecord>> {
        // The user, their MRN indexes, their default groups, their first
        // session and the trail records in one statement: one transaction,
        // one round trip (the side rows' foreign keys are checked at its
        // end, when the user row is there). Under a key rotated away, no
        // user row and so nothing else.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH u AS (
                     INSERT INTO users (id, app_id, key_id, username_ct, username_bidx, password_hash, email_bidx,
                                        profile_ct, active, created_at, updated_at, mrns_indexed,
                                        username_precis)
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, true, true
                     WHERE EXISTS (SELECT 1 FROM app_keys WHERE id = $3 AND current)
                     RETURNING {USER_COLUMNS}
                 ), r AS (
                     INSERT INTO user_mrns (app_id, user_id, mrn_bidx)
                     SELECT u.app_id, u.id, b FROM u, unnest($14::bytea[]) AS b
                     ON CONFLICT DO NOTHING
                 ), m AS (
                     INSERT INTO memberships (app_id, group_id, user_id)
                     SELECT g.app_id, g.id, u.id FROM groups g, u WHERE g.app_id = $2 AND g.is_default
                 ), s AS (
                     INSERT INTO sessions (id, app_id, user_id, token_hash, expires_at)
                     SELECT $11, $2, u.id, $12, $13 FROM u WHERE $11::uuid IS NOT NULL
                 ), mail AS (
                     INSERT INTO outbox (id, app_id, user_id, kind, payload_ct)
                     SELECT m.id, u.app_id, u.id, m.kind, m.payload_ct
                     FROM u, unnest($15::uuid[], $16::text[], $17::bytea[]) AS m (id, kind, payload_ct)
                 ), {}
                 SELECT u.* FROM u",
                many_records(18, "EXISTS (SELECT 1 FROM u)")
            )
        });
        let q = sqlx::query(&SQL)
            .bind(user.id)
            .bind(user.app_id)
            .bind(user.key_id)
            .bind(&user.username_ct)
            .bind(&user.username_bidx)
            .bind(&user.password_hash)
            .bind(&user.email_bidx)
            .bind(&user.profile_ct)
            .bind(user.active)
            .bind(now_seconds())
            .bind(session.as_ref().map(|s| s.id))
            .bind(session.as_ref().map(|s| s.token_hash.as_slice()))
            .bind(session.as_ref().map(|s| expiry(s, Utc::now())))
            .bind(&user.mrn_bidx)
            .bind(mail.iter().map(|m| m.id).collect::<Vec<_>>())
            .bind(mail.iter().map(|m| m.kind).collect::<Vec<_>>())
            .bind(mail.iter().map(|m| m.payload_ct.clone()).collect::<Vec<_>>());
        let row = AuditColumns::of(audit).bind(q).fetch_optional(&self.pool).await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn import_users(
        &self,
        app_id: Uuid,
        key_id: Uuid,
        users: &[ImportedUser],
        audit: &[AuditRecord],
    ) -> Result<Option<Vec<Uuid>>> {
        // One statement for the whole batch: rows as arrays, so its cost is
        // a round trip and the rows' own writes.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH key AS (SELECT 1 FROM app_keys WHERE id = $2 AND current),
                 u AS (
                     INSERT INTO users (id, app_id, key_id, username_ct, username_bidx, password_hash, email_bidx,
                                        profile_ct, active, supervisor, created_at, updated_at, mrns_indexed,
                                        username_precis)
                     SELECT id, $1, $2, username_ct, username_bidx, password_hash, email_bidx, profile_ct, active,
                            supervisor, created_at, created_at, true, true
                     FROM unnest($3::uuid[], $4::bytea[], $5::bytea[], $6::text[], $7::bytea[], $8::bytea[],
                                 $9::bool[], $10::bool[], $11::timestamptz[])
                          AS i (id, username_ct, username_bidx, password_hash, email_bidx, profile_ct, active,
                                supervisor, created_at)
                     WHERE EXISTS (SELECT 1 FROM key)
                     ON CONFLICT (app_id, username_bidx) DO NOTHING
                     RETURNING id
                 ), m AS (
                     INSERT INTO memberships (app_id, group_id, user_id)
                     SELECT $1, g.id, u.id FROM u, groups g WHERE g.app_id = $1 AND g.is_default
                     UNION
                     SELECT $1, x.group_id, x.user_id
                     FROM unnest($12::uuid[], $13::uuid[]) AS x (user_id, group_id) JOIN u ON u.id = x.user_id
                 ), mrns AS (
                     INSERT INTO user_mrns (app_id, user_id, mrn_bidx)
                     SELECT $1, x.user_id, x.mrn_bidx
                     FROM unnest($14::uuid[], $15::bytea[]) AS x (user_id, mrn_bidx) JOIN u ON u.id = x.user_id
                     ON CONFLICT DO NOTHING
                 ), {}
                 SELECT (SELECT count(*) FROM key) AS current, (SELECT array_agg(id) FROM u) AS ids",
                many_records(16, "r.subject_id IN (SELECT id FROM u)")
            )
        });
        let (pairs_user, pairs_group): (Vec<Uuid>, Vec<Uuid>) =
            users.iter().flat_map(|i| i.groups.iter().map(|g| (i.user.id, *g))).unzip();
        // (user, MRN index) pairs, as the groups: of the users inserted only
        // (a skipped repeat's pairs join no row of `u`).
        let (mrn_user, mrn_bidx): (Vec<Uuid>, Vec<&[u8]>) =
            users.iter().flat_map(|i| i.user.mrn_bidx.iter().map(|b| (i.user.id, b.as_slice()))).unzip();
        let q = sqlx::query(&SQL)
            .bind(app_id)
            .bind(key_id)
            .bind(users.iter().map(|i| i.user.id).collect::<Vec<_>>())
            .bind(users.iter().map(|i| i.user.username_ct.as_slice()).collect::<Vec<_>>())
            .bind(users.iter().map(|i| i.user.username_bidx.as_slice()).collect::<Vec<_>>())
            .bind(users.iter().map(|i| i.user.password_hash.as_str()).collect::<Vec<_>>())
            .bind(users.iter().map(|i| i.user.email_bidx.as_deref()).collect::<Vec<_>>())
            .bind(users.iter().map(|i| i.user.profile_ct.as_slice()).collect::<Vec<_>>())
            .bind(users.iter().map(|i| i.user.active).collect::<Vec<_>>())
            .bind(users.iter().map(|i| i.supervisor).collect::<Vec<_>>())
            .bind(users.iter().map(|i| i.created_at).collect::<Vec<_>>())
            .bind(pairs_user)
            .bind(pairs_group)
            .bind(mrn_user)
            .bind(mrn_bidx);
        let row = AuditColumns::of(audit).bind(q).fetch_one(&self.pool).await?;
        if row.try_get::<i64, _>("current")? == 0 {
            return Ok(None);
        }
        Ok(Some(row.try_get::<Option<Vec<Uuid>>, _>("ids")?.unwrap_or_default()))
    }

    async fn analyze_users(&self) -> Result<()> {
        sqlx::query("ANALYZE users, memberships, user_mrns").execute(&self.pool).await?;
        Ok(())
    }

    async fn user_secrets(&self, app_id: Uuid, ids: &[Uuid]) -> Result<Vec<UserSecrets>> {
        let rows = sqlx::query("SELECT id, username_ct, password_hash FROM users WHERE app_id = $1 AND id = ANY($2)")
            .bind(app_id)
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    async fn get_user(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<UserRecord>> {
        if let Some(user) = self.auth.user(app_id, user_id) {
            return Ok(Some(user));
        }
        let seen = self.auth.generation();
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE app_id = $1 AND id = $2"))
            .bind(app_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        let user = row.as_ref().map(user_from_row).transpose()?;
        if let Some(u) = &user {
            self.auth.put_user(seen, u);
        }
        Ok(user)
    }

    async fn credentials(&self, app_id: Uuid, username_bidx: &[u8]) -> Result<Option<Credentials>> {
        let row = sqlx::query("SELECT id, password_hash, active FROM users WHERE app_id = $1 AND username_bidx = $2")
            .bind(app_id)
            .bind(username_bidx)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn update_user(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        change: UserChange,
        audit: &[AuditRecord],
    ) -> Result<Option<UserRecord>> {
        // One statement, so one round trip and one transaction: the row's
        // compare-and-set, its MRN indexes replaced by the new set, the
        // sessions a password change ends, the reset links a deactivation
        // voids, the notices queued and the trail records (nothing but the
        // row when the compare-and-set fails). A key rotated away since the
        // caller sealed makes this a conflict too: the caller re-reads and
        // seals again under the current key.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH u AS (
                     UPDATE users SET
                         key_id = $4,
                         username_ct = COALESCE($5, username_ct),
                         username_bidx = COALESCE($6, username_bidx),
                         username_precis = username_precis OR $6 IS NOT NULL,
                         password_hash = COALESCE($7, password_hash),
                         email_bidx = $8,
                         profile_ct = $9,
                         active = $10,
                         mrns_indexed = true,
                         version = version + 1,
                         updated_at = GREATEST($11, updated_at)
                     WHERE app_id = $1 AND id = $2 AND version = $3
                       AND EXISTS (SELECT 1 FROM app_keys WHERE id = $4 AND current)
                     RETURNING {USER_COLUMNS}
                 ), mrn_gone AS (
                     DELETE FROM user_mrns
                     WHERE user_id = $2 AND mrn_bidx <> ALL($14::bytea[]) AND EXISTS (SELECT 1 FROM u)
                 ), mrn_new AS (
                     -- The ones kept conflict with their row: left as they are.
                     INSERT INTO user_mrns (app_id, user_id, mrn_bidx)
                     SELECT u.app_id, u.id, b FROM u, unnest($14::bytea[]) AS b
                     ON CONFLICT DO NOTHING
                 ), ended AS (
                     DELETE FROM sessions
                     WHERE $12 AND app_id = $1 AND user_id = $2 AND id IS DISTINCT FROM $13
                       AND EXISTS (SELECT 1 FROM u)
                     RETURNING token_hash
                 ), voided AS (
                     DELETE FROM password_resets
                     WHERE $15 AND app_id = $1 AND user_id = $2 AND EXISTS (SELECT 1 FROM u)
                 ), unsent AS (
                     DELETE FROM outbox
                     WHERE $15 AND app_id = $1 AND user_id = $2 AND kind = 'password_reset'
                       AND EXISTS (SELECT 1 FROM u)
                 ), mail AS (
                     INSERT INTO outbox (id, app_id, user_id, kind, payload_ct)
                     SELECT m.id, u.app_id, u.id, m.kind, m.payload_ct
                     FROM u, unnest($16::uuid[], $17::text[], $18::bytea[]) AS m (id, kind, payload_ct)
                 ), {}
                 SELECT u.*, ARRAY(SELECT token_hash FROM ended) AS ended FROM u",
                many_records(19, "EXISTS (SELECT 1 FROM u)")
            )
        });
        let (username_ct, username_bidx) = change.username.clone().unzip();
        let q = sqlx::query(&SQL)
            .bind(app_id)
            .bind(user_id)
            .bind(change.expected_version)
            .bind(change.key_id)
            .bind(username_ct)
            .bind(username_bidx)
            .bind(&change.password_hash)
            .bind(&change.email_bidx)
            .bind(&change.profile_ct)
            .bind(change.active)
            .bind(now_seconds())
            .bind(change.end_sessions.is_some())
            .bind(change.end_sessions.and_then(|e| e.keep))
            .bind(&change.mrn_bidx)
            .bind(change.void_resets)
            .bind(change.mail.iter().map(|m| m.id).collect::<Vec<_>>())
            .bind(change.mail.iter().map(|m| m.kind).collect::<Vec<_>>())
            .bind(change.mail.iter().map(|m| m.payload_ct.clone()).collect::<Vec<_>>());
        // The records' arrays come last: however many columns a record has.
        let row = AuditColumns::of(audit).bind(q).fetch_optional(&self.pool).await?;
        let Some(row) = row else {
            // Lost the compare-and-set: what this replica remembers of the
            // user is older than the row, so the retry reads the row.
            self.auth.evict_users([user_id]);
            return Ok(None);
        };
        let ended: Vec<Vec<u8>> = row.try_get("ended")?;
        self.users_changed(&[user_id]);
        self.auth.evict_sessions(ended.iter().map(Vec::as_slice));
        user_from_row(&row).map(Some)
    }

    async fn users_without_mrn_index(&self, after: Option<Uuid>, limit: i64) -> Result<Vec<UserRecord>> {
        // Through the partial index users_mrns_unindexed; the nil id sorts
        // before every other, so "from the start" is the same range.
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE NOT mrns_indexed AND id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after.unwrap_or_else(Uuid::nil))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn usernames_to_rekey(&self, after: Option<Uuid>, limit: i64) -> Result<Vec<StoredUsername>> {
        // Through the partial index users_username_unprecised.
        let rows = sqlx::query_as(
            "SELECT app_id, id, username_ct, username_bidx FROM users
             WHERE NOT username_precis AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after.unwrap_or_else(Uuid::nil))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn rekey_username(&self, user: &StoredUsername, username_bidx: &[u8]) -> Result<Rekeyed> {
        // Guarded by the flag and the old index: a new username written
        // since (which sets the flag) is left alone.
        let done = sqlx::query(
            "UPDATE users SET username_bidx = $4, username_precis = true
             WHERE app_id = $1 AND id = $2 AND NOT username_precis AND username_bidx = $3",
        )
        .bind(user.app_id)
        .bind(user.id)
        .bind(&user.username_bidx)
        .bind(username_bidx)
        .execute(&self.pool)
        .await;
        match done.map_err(StoreError::from) {
            Ok(d) if d.rows_affected() == 0 => Ok(Rekeyed::Skipped),
            Ok(_) => Ok(Rekeyed::Done),
            Err(StoreError::Conflict(c)) if c == "users_app_username_key" => {
                sqlx::query(
                    "UPDATE users SET username_precis = true
                     WHERE app_id = $1 AND id = $2 AND NOT username_precis AND username_bidx = $3",
                )
                .bind(user.app_id)
                .bind(user.id)
                .bind(&user.username_bidx)
                .execute(&self.pool)
                .await?;
                Ok(Rekeyed::Taken)
            }
            Err(e) => Err(e),
        }
    }

    async fn index_mrns(&self, app_id: Uuid, user_id: Uuid, mrn_bidx: &[Vec<u8>]) -> Result<bool> {
        // The flag is the guard: every write that sets a user's MRNs sets it
        // in its own transaction, so a row still unflagged here (the update
        // waits for, then re-checks, a row another statement holds) has the
        // MRNs the caller read. A re-seal under a new key changes the
        // ciphertext, not them.
        let indexed: i64 = sqlx::query_scalar(
            "WITH u AS (
                 UPDATE users SET mrns_indexed = true
                 WHERE app_id = $1 AND id = $2 AND NOT mrns_indexed
                 RETURNING app_id, id
             ), r AS (
                 INSERT INTO user_mrns (app_id, user_id, mrn_bidx)
                 SELECT u.app_id, u.id, b FROM u, unnest($3::bytea[]) AS b
                 ON CONFLICT DO NOTHING
             )
             SELECT count(*) FROM u",
        )
        .bind(app_id)
        .bind(user_id)
        .bind(mrn_bidx)
        .fetch_one(&self.pool)
        .await?;
        Ok(indexed > 0)
    }

    async fn delete_user(&self, app_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool> {
        // Sessions, memberships, MRN indexes and outbox rows go by ON DELETE CASCADE, in
        // the same statement; the trail stays (it holds no PII).
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM users WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        // Its sessions went by cascade.
        self.auth.evict_all();
        Ok(true)
    }

    async fn sign_in_attempt(
        &self,
        keys: &[(Vec<u8>, ThrottleRule)],
        app_id: Uuid,
        username_bidx: Option<&[u8]>,
    ) -> Result<SignInAttempt> {
        // One round trip: the count and, if there is no wait, the
        // credentials.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH {}
                 SELECT {}, c.id, c.password_hash, c.active
                 FROM waiting w
                 LEFT JOIN LATERAL (SELECT id, password_hash, active FROM users
                                    WHERE app_id = $5 AND username_bidx = $6 AND w.wait IS NULL) c ON true",
                *pg_throttle::COUNT,
                pg_throttle::OUTCOME
            )
        });
        let q = ThrottleArgs::of(keys).bind(sqlx::query(&SQL));
        let row = q.bind(app_id).bind(username_bidx).fetch_one(&self.pool).await?;
        if let Some(wait) = pg_throttle::counted_wait(&row)? {
            return Ok(SignInAttempt::Wait(wait));
        }
        // No user row joined: no such user.
        let found = row.try_get::<Option<Uuid>, _>("id")?.is_some();
        Ok(SignInAttempt::Go(found.then(|| from_row(&row)).transpose()?))
    }
}
