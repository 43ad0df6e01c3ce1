//! Users on SQLite.

use async_trait::async_trait;
use uuid::Uuid;

use crate::store::sqlite::{
    BEGIN, SqliteStore, USER_COLUMNS, append_in, insert_session, now_seconds, now_us, queue_mail_in, us, user_from_row,
};
use crate::store::trail::record::AuditRecord;
use crate::store::{
    Credentials, ImportedUser, NewSession, NewUser, QueuedMail, Rekeyed, Result, SignInAttempt, StoreError,
    StoredUsername, ThrottleRule, ThrottleStore, UserChange, UserListFilter, UserRecord, UserSecrets, UserStore,
    from_row,
};

#[async_trait]
impl UserStore for SqliteStore {
    async fn list_users(
        &self,
        app_id: Uuid,
        f: &UserListFilter,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<UserRecord>> {
        let sql = f.statement(USER_COLUMNS, after.is_some(), '?');
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
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let id: Option<Uuid> = sqlx::query_scalar(
            "UPDATE users SET supervisor = ?3 WHERE app_id = ?1 AND username_bidx = ?2 RETURNING id",
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
        append_in(&mut tx, &[audit]).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn create_user_mailing(
        &self,
        user: NewUser,
        session: Option<NewSession>,
        mail: &[QueuedMail],
        audit: &[AuditRecord],
    ) -> Result<Option<UserRecord>> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_seconds();
        let row = sqlx::query(&format!(
            "INSERT INTO users (id, app_id, key_id, username_ct, username_bidx, password_hash, email_bidx,
                                profile_ct, active, created_at, updated_at, mrns_indexed, username_precis)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, 1, 1
             WHERE EXISTS (SELECT 1 FROM app_keys WHERE id = ?3 AND current)
             RETURNING {USER_COLUMNS}"
        ))
        .bind(user.id)
        .bind(user.app_id)
        .bind(user.key_id)
        .bind(&user.username_ct)
        .bind(&user.username_bidx)
        .bind(&user.password_hash)
        .bind(&user.email_bidx)
        .bind(&user.profile_ct)
        .bind(user.active)
        .bind(us(now))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        insert_mrns(&mut tx, user.app_id, user.id, &user.mrn_bidx).await?;
        sqlx::query(
            "INSERT INTO memberships (app_id, group_id, user_id, created_at)
             SELECT app_id, id, ?2, ?3 FROM groups WHERE app_id = ?1 AND is_default",
        )
        .bind(user.app_id)
        .bind(user.id)
        .bind(now_us())
        .execute(&mut *tx)
        .await?;
        if let Some(s) = &session {
            insert_session(&mut tx, user.app_id, user.id, s).await?;
        }
        for m in mail {
            queue_mail_in(&mut tx, user.app_id, user.id, m).await?;
        }
        append_in(&mut tx, audit).await?;
        tx.commit().await?;
        user_from_row(&row).map(Some)
    }

    async fn import_users(
        &self,
        app_id: Uuid,
        key_id: Uuid,
        users: &[ImportedUser],
        audit: &[AuditRecord],
    ) -> Result<Option<Vec<Uuid>>> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT 1 FROM app_keys WHERE id = ?1 AND current")
            .bind(key_id)
            .fetch_optional(&mut *tx)
            .await?;
        if current.is_none() {
            return Ok(None);
        }
        let mut inserted = Vec::new();
        for i in users {
            let u = &i.user;
            let at = us(i.created_at);
            let id: Option<Uuid> = sqlx::query_scalar(
                "INSERT INTO users (id, app_id, key_id, username_ct, username_bidx, password_hash, email_bidx,
                                    profile_ct, active, supervisor, created_at, updated_at, mrns_indexed,
                                    username_precis)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, 1, 1)
                 ON CONFLICT (app_id, username_bidx) DO NOTHING
                 RETURNING id",
            )
            .bind(u.id)
            .bind(app_id)
            .bind(key_id)
            .bind(&u.username_ct)
            .bind(&u.username_bidx)
            .bind(&u.password_hash)
            .bind(&u.email_bidx)
            .bind(&u.profile_ct)
            .bind(u.active)
            .bind(i.supervisor)
            .bind(at)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = id else { continue };
            insert_mrns(&mut tx, app_id, id, &u.mrn_bidx).await?;
            sqlx::query(
                "INSERT OR IGNORE INTO memberships (app_id, group_id, user_id, created_at)
                 SELECT app_id, id, ?2, ?3 FROM groups WHERE app_id = ?1 AND is_default",
            )
            .bind(app_id)
            .bind(id)
            .bind(now_us())
            .execute(&mut *tx)
            .await?;
            for g in &i.groups {
                sqlx::query(
                    "INSERT OR IGNORE INTO memberships (app_id, group_id, user_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                )
                .bind(app_id)
                .bind(g)
                .bind(id)
                .bind(now_us())
                .execute(&mut *tx)
                .await?;
            }
            inserted.push(id);
        }
        let written: Vec<AuditRecord> =
            audit.iter().filter(|r| r.subject_id.is_some_and(|s| inserted.contains(&s))).cloned().collect();
        append_in(&mut tx, &written).await?;
        tx.commit().await?;
        Ok(Some(inserted))
    }

    async fn analyze_users(&self) -> Result<()> {
        sqlx::query("ANALYZE").execute(&self.pool).await?;
        Ok(())
    }

    async fn user_secrets(&self, app_id: Uuid, ids: &[Uuid]) -> Result<Vec<UserSecrets>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let row = sqlx::query("SELECT id, username_ct, password_hash FROM users WHERE app_id = ?1 AND id = ?2")
                .bind(app_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(r) = row {
                out.push(from_row(&r)?);
            }
        }
        Ok(out)
    }

    async fn get_user(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<UserRecord>> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE app_id = ?1 AND id = ?2"))
            .bind(app_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn credentials(&self, app_id: Uuid, username_bidx: &[u8]) -> Result<Option<Credentials>> {
        let row = sqlx::query("SELECT id, password_hash, active FROM users WHERE app_id = ?1 AND username_bidx = ?2")
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
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let (username_ct, username_bidx) = change.username.clone().unzip();
        // A key rotated away since the caller sealed makes this a conflict:
        // the caller re-reads and seals again under the current key.
        let row = sqlx::query(&format!(
            "UPDATE users SET
                 key_id = ?4,
                 username_ct = COALESCE(?5, username_ct),
                 username_bidx = COALESCE(?6, username_bidx),
                 username_precis = username_precis OR ?6 IS NOT NULL,
                 password_hash = COALESCE(?7, password_hash),
                 email_bidx = ?8,
                 profile_ct = ?9,
                 active = ?10,
                 mrns_indexed = 1,
                 version = version + 1,
                 updated_at = MAX(?11, updated_at)
             WHERE app_id = ?1 AND id = ?2 AND version = ?3
               AND EXISTS (SELECT 1 FROM app_keys WHERE id = ?4 AND current)
             RETURNING {USER_COLUMNS}"
        ))
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
        .bind(us(now_seconds()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        // The new set replaces the old, in the row's transaction.
        sqlx::query("DELETE FROM user_mrns WHERE user_id = ?1").bind(user_id).execute(&mut *tx).await?;
        insert_mrns(&mut tx, app_id, user_id, &change.mrn_bidx).await?;
        if let Some(end) = change.end_sessions {
            sqlx::query("DELETE FROM sessions WHERE app_id = ?1 AND user_id = ?2 AND id IS NOT ?3")
                .bind(app_id)
                .bind(user_id)
                .bind(end.keep)
                .execute(&mut *tx)
                .await?;
        }
        if change.void_resets {
            for void in [
                "DELETE FROM password_resets WHERE app_id = ?1 AND user_id = ?2",
                "DELETE FROM outbox WHERE app_id = ?1 AND user_id = ?2 AND kind = 'password_reset'",
            ] {
                sqlx::query(void).bind(app_id).bind(user_id).execute(&mut *tx).await?;
            }
        }
        for m in &change.mail {
            queue_mail_in(&mut tx, app_id, user_id, m).await?;
        }
        append_in(&mut tx, audit).await?;
        tx.commit().await?;
        user_from_row(&row).map(Some)
    }

    async fn users_without_mrn_index(&self, after: Option<Uuid>, limit: i64) -> Result<Vec<UserRecord>> {
        // Through the partial index users_mrns_unindexed; the nil id sorts
        // before every other.
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE NOT mrns_indexed AND id > ?1 ORDER BY id LIMIT ?2"
        ))
        .bind(after.unwrap_or_else(Uuid::nil))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn usernames_to_rekey(&self, after: Option<Uuid>, limit: i64) -> Result<Vec<StoredUsername>> {
        let rows = sqlx::query_as(
            "SELECT app_id, id, username_ct, username_bidx FROM users
             WHERE NOT username_precis AND id > ?1 ORDER BY id LIMIT ?2",
        )
        .bind(after.unwrap_or_else(Uuid::nil))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn rekey_username(&self, user: &StoredUsername, username_bidx: &[u8]) -> Result<Rekeyed> {
        // Guarded as on PostgreSQL: by the flag and the old index.
        let done = sqlx::query(
            "UPDATE users SET username_bidx = ?4, username_precis = 1
             WHERE app_id = ?1 AND id = ?2 AND NOT username_precis AND username_bidx = ?3",
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
                    "UPDATE users SET username_precis = 1
                     WHERE app_id = ?1 AND id = ?2 AND NOT username_precis AND username_bidx = ?3",
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
        // The flag is the guard (see the PostgreSQL store): a row still
        // unflagged has the MRNs the caller read; one writer at a time.
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let done = sqlx::query("UPDATE users SET mrns_indexed = 1 WHERE app_id = ?1 AND id = ?2 AND NOT mrns_indexed")
            .bind(app_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_mrns(&mut tx, app_id, user_id, mrn_bidx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_user(&self, app_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool> {
        // Sessions, memberships, MRN indexes, reset tokens and outbox rows go by ON DELETE
        // CASCADE (foreign_keys is on); the trail stays.
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let done = sqlx::query("DELETE FROM users WHERE app_id = ?1 AND id = ?2")
            .bind(app_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn sign_in_attempt(
        &self,
        keys: &[(Vec<u8>, ThrottleRule)],
        app_id: Uuid,
        username_bidx: Option<&[u8]>,
    ) -> Result<SignInAttempt> {
        // The one connection runs the two statements back to back.
        if let Some(wait) = self.throttle_attempt(keys).await? {
            return Ok(SignInAttempt::Wait(wait));
        }
        Ok(SignInAttempt::Go(match username_bidx {
            Some(bidx) => self.credentials(app_id, bidx).await?,
            None => None,
        }))
    }
}

/// A user's MRN indexes, in the transaction writing the user.
async fn insert_mrns(
    conn: &mut sqlx::SqliteConnection,
    app_id: Uuid,
    user_id: Uuid,
    mrn_bidx: &[Vec<u8>],
) -> Result<()> {
    for b in mrn_bidx {
        sqlx::query("INSERT OR IGNORE INTO user_mrns (app_id, user_id, mrn_bidx) VALUES (?1, ?2, ?3)")
            .bind(app_id)
            .bind(user_id)
            .bind(b)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
