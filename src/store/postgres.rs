//! The PostgreSQL store (sqlx). Queries are checked at run time so that the
//! project builds without a database; the end-to-end tests exercise each one.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row, migrate::MigrateDatabase, postgres::PgPoolOptions, postgres::PgRow};
use uuid::Uuid;

use super::{
    App, Credentials, GroupRecord, NewSession, NewUser, Result, SessionInfo, SessionLookup, Store,
    StoreError, UserChange, UserRecord,
};

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Opens a pool; `acquire_timeout` bounds how long a request waits for a
    /// connection before it is answered as unavailable.
    /// The database is created first when it does not exist yet, so a fresh
    /// server needs no manual step.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        if !sqlx::Postgres::database_exists(url).await? {
            // Another process may create it at the same moment; that is fine.
            if let Err(e) = sqlx::Postgres::create_database(url).await
                && !sqlx::Postgres::database_exists(url).await?
            {
                return Err(e.into());
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

const USER_COLUMNS: &str =
    "id, app_id, profile, active, supervisor, version, created_at, updated_at";

fn user_from_row(row: &PgRow) -> Result<UserRecord> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        profile: row.try_get("profile")?,
        active: row.try_get("active")?,
        supervisor: row.try_get("supervisor")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn group_from_row(row: &PgRow) -> Result<GroupRecord> {
    Ok(GroupRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        is_default: row.try_get("is_default")?,
    })
}

fn expiry(session: &NewSession, now: DateTime<Utc>) -> DateTime<Utc> {
    let max_age = chrono::Duration::from_std(session.max_age).unwrap_or(chrono::Duration::MAX);
    now.checked_add_signed(max_age)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Whole seconds: replies show times to the second, and a stored time must
/// read back as it was shown.
fn now_seconds() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now)
}

async fn insert_session<'e, E>(
    executor: E,
    app_id: Uuid,
    user_id: Uuid,
    s: &NewSession,
) -> Result<()>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query(
        "INSERT INTO sessions (id, app_id, user_id, token_hash, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(s.id)
    .bind(app_id)
    .bind(user_id)
    .bind(&s.token_hash)
    .bind(expiry(s, Utc::now()))
    .execute(executor)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    async fn create_app(&self, id: Uuid, name: &str, api_key_hash: &[u8]) -> Result<App> {
        sqlx::query("INSERT INTO applications (id, name, api_key_hash) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(name)
            .bind(api_key_hash)
            .execute(&self.pool)
            .await?;
        Ok(App {
            id,
            name: name.to_owned(),
        })
    }

    async fn app_by_key_hash(&self, api_key_hash: &[u8]) -> Result<Option<App>> {
        let row = sqlx::query("SELECT id, name FROM applications WHERE api_key_hash = $1")
            .bind(api_key_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(App {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
            })
        })
        .transpose()
    }

    async fn set_supervisor(&self, app_id: Uuid, username_key: &str, on: bool) -> Result<bool> {
        let done =
            sqlx::query("UPDATE users SET supervisor = $3 WHERE app_id = $1 AND username_key = $2")
                .bind(app_id)
                .bind(username_key)
                .bind(on)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn create_user(&self, user: NewUser, session: Option<NewSession>) -> Result<UserRecord> {
        let now = now_seconds();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO users (id, app_id, username, username_key, password_hash, email_key, profile, active, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING {USER_COLUMNS}"
        ))
        .bind(user.id)
        .bind(user.app_id)
        .bind(&user.username)
        .bind(&user.username_key)
        .bind(&user.password_hash)
        .bind(&user.email_key)
        .bind(&user.profile)
        .bind(user.active)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO memberships (app_id, group_id, user_id)
             SELECT app_id, id, $2 FROM groups WHERE app_id = $1 AND is_default",
        )
        .bind(user.app_id)
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
        if let Some(s) = &session {
            insert_session(&mut *tx, user.app_id, user.id, s).await?;
        }
        tx.commit().await?;
        user_from_row(&row)
    }

    async fn get_user(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<UserRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE app_id = $1 AND id = $2"
        ))
        .bind(app_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn credentials(&self, app_id: Uuid, username_key: &str) -> Result<Option<Credentials>> {
        let row = sqlx::query(
            "SELECT id, password_hash, active FROM users WHERE app_id = $1 AND username_key = $2",
        )
        .bind(app_id)
        .bind(username_key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Credentials {
                user_id: r.try_get("id")?,
                password_hash: r.try_get("password_hash")?,
                active: r.try_get("active")?,
            })
        })
        .transpose()
    }

    async fn update_user(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        change: UserChange,
    ) -> Result<Option<UserRecord>> {
        let mut tx = self.pool.begin().await?;
        let (username, username_key) = change.username.clone().unzip();
        let row = sqlx::query(&format!(
            "UPDATE users SET
                 username = COALESCE($4, username),
                 username_key = COALESCE($5, username_key),
                 password_hash = COALESCE($6, password_hash),
                 email_key = $7,
                 profile = $8,
                 active = $9,
                 version = version + 1,
                 updated_at = GREATEST($10, updated_at)
             WHERE app_id = $1 AND id = $2 AND version = $3
             RETURNING {USER_COLUMNS}"
        ))
        .bind(app_id)
        .bind(user_id)
        .bind(change.expected_version)
        .bind(username)
        .bind(username_key)
        .bind(&change.password_hash)
        .bind(&change.email_key)
        .bind(&change.profile)
        .bind(change.active)
        .bind(now_seconds())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if change.password_hash.is_some() || !change.active {
            // A new password or a deactivation ends the user's other sessions.
            sqlx::query("DELETE FROM sessions WHERE app_id = $1 AND user_id = $2 AND id IS DISTINCT FROM $3")
                .bind(app_id)
                .bind(user_id)
                .bind(change.keep_session.filter(|_| change.active))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        user_from_row(&row).map(Some)
    }

    async fn delete_user(&self, app_id: Uuid, user_id: Uuid) -> Result<bool> {
        // Sessions, memberships and outbox rows go by ON DELETE CASCADE, in
        // the same statement and so the same transaction.
        let done = sqlx::query("DELETE FROM users WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn queue_username_reminders(&self, app_id: Uuid, email_key: &str) -> Result<u64> {
        let done = sqlx::query(
            "INSERT INTO outbox (id, app_id, user_id, kind)
             SELECT gen_random_uuid(), app_id, id, 'username_reminder' FROM users
             WHERE app_id = $1 AND email_key = $2",
        )
        .bind(app_id)
        .bind(email_key)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn create_session(&self, app_id: Uuid, user_id: Uuid, session: NewSession) -> Result<()> {
        insert_session(&self.pool, app_id, user_id, &session).await
    }

    async fn lookup_session(
        &self,
        app_id: Uuid,
        token_hash: &[u8],
        idle_timeout: Duration,
        touch_after: Duration,
    ) -> Result<SessionLookup> {
        let row = sqlx::query(
            "SELECT s.id, s.user_id, u.supervisor,
                    (u.active AND s.expires_at > now() AND s.last_seen_at > now() - make_interval(secs => $3)) AS live,
                    s.last_seen_at < now() - make_interval(secs => $4) AS stale
             FROM sessions s JOIN users u ON u.app_id = s.app_id AND u.id = s.user_id
             WHERE s.token_hash = $1 AND s.app_id = $2",
        )
        .bind(token_hash)
        .bind(app_id)
        .bind(idle_timeout.as_secs_f64())
        .bind(touch_after.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(SessionLookup::Unknown);
        };
        let session_id: Uuid = row.try_get("id")?;
        if !row.try_get::<bool, _>("live")? {
            self.delete_session(app_id, session_id).await?;
            return Ok(SessionLookup::Expired);
        }
        if row.try_get::<bool, _>("stale")? {
            sqlx::query("UPDATE sessions SET last_seen_at = now() WHERE id = $1")
                .bind(session_id)
                .execute(&self.pool)
                .await?;
        }
        Ok(SessionLookup::Live(SessionInfo {
            session_id,
            user_id: row.try_get("user_id")?,
            supervisor: row.try_get("supervisor")?,
        }))
    }

    async fn delete_session(&self, app_id: Uuid, session_id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(session_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_group(
        &self,
        app_id: Uuid,
        id: Uuid,
        name: &str,
        is_default: bool,
    ) -> Result<GroupRecord> {
        let row = sqlx::query(
            "INSERT INTO groups (id, app_id, name, is_default) VALUES ($1, $2, $3, $4) RETURNING id, name, is_default",
        )
        .bind(id)
        .bind(app_id)
        .bind(name)
        .bind(is_default)
        .fetch_one(&self.pool)
        .await?;
        group_from_row(&row)
    }

    async fn get_group(&self, app_id: Uuid, group_id: Uuid) -> Result<Option<GroupRecord>> {
        let row =
            sqlx::query("SELECT id, name, is_default FROM groups WHERE app_id = $1 AND id = $2")
                .bind(app_id)
                .bind(group_id)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(group_from_row).transpose()
    }

    async fn update_group(&self, app_id: Uuid, group: &GroupRecord) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE groups SET name = $3, is_default = $4 WHERE app_id = $1 AND id = $2",
        )
        .bind(app_id)
        .bind(group.id)
        .bind(&group.name)
        .bind(group.is_default)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_group(&self, app_id: Uuid, group_id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM groups WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(group_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn add_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid) -> Result<bool> {
        // The SELECT finds nothing unless both rows are in the application;
        // an existing membership is left as it is.
        let row = sqlx::query(
            "WITH pair AS (
                 SELECT g.id AS group_id, u.id AS user_id FROM groups g, users u
                 WHERE g.app_id = $1 AND g.id = $2 AND u.app_id = $1 AND u.id = $3
             ), ins AS (
                 INSERT INTO memberships (app_id, group_id, user_id)
                 SELECT $1, group_id, user_id FROM pair
                 ON CONFLICT (group_id, user_id) DO NOTHING
             )
             SELECT count(*) AS n FROM pair",
        )
        .bind(app_id)
        .bind(group_id)
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    async fn remove_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM memberships WHERE app_id = $1 AND group_id = $2 AND user_id = $3",
        )
        .bind(app_id)
        .bind(group_id)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_members(&self, app_id: Uuid, group_id: Uuid) -> Result<Vec<Uuid>> {
        let rows = sqlx::query(
            "SELECT user_id FROM memberships WHERE app_id = $1 AND group_id = $2 ORDER BY created_at, user_id",
        )
        .bind(app_id)
        .bind(group_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("user_id").map_err(StoreError::from))
            .collect()
    }

    async fn list_groups(&self, app_id: Uuid, default_only: bool) -> Result<Vec<GroupRecord>> {
        let rows = sqlx::query(
            "SELECT id, name, is_default FROM groups WHERE app_id = $1 AND (is_default OR NOT $2) ORDER BY created_at, id",
        )
        .bind(app_id)
        .bind(default_only)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(group_from_row).collect()
    }

    async fn list_user_groups(&self, app_id: Uuid, user_id: Uuid) -> Result<Vec<GroupRecord>> {
        let rows = sqlx::query(
            "SELECT g.id, g.name, g.is_default FROM memberships m JOIN groups g ON g.id = m.group_id
             WHERE m.app_id = $1 AND m.user_id = $2 ORDER BY m.created_at, g.id",
        )
        .bind(app_id)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(group_from_row).collect()
    }
}
