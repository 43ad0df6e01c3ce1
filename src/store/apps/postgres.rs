//! Applications and their keys on PostgreSQL.

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use crate::store::postgres::{PgStore, insert_key};
use crate::store::trail::postgres::{self as pg_audit};
use crate::store::trail::record::AuditRecord;
use crate::store::{ApartSeal, App, AppStore, Result, SealedField, SealedUser, StoredKey, from_row};

#[async_trait]
impl AppStore for PgStore {
    async fn create_app(&self, app: &App, api_key_hash: &[u8], keys: &[StoredKey], audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO applications (id, name, api_key_hash) VALUES ($1, $2, $3)")
            .bind(app.id)
            .bind(&app.name)
            .bind(api_key_hash)
            .execute(&mut *tx)
            .await?;
        for k in keys {
            insert_key(&mut tx, k).await?;
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn app_by_key_hash(&self, api_key_hash: &[u8]) -> Result<Option<App>> {
        if let Some(app) = self.auth.app(api_key_hash) {
            return Ok(Some(app));
        }
        let seen = self.auth.generation();
        let row = sqlx::query("SELECT id, name FROM applications WHERE api_key_hash = $1")
            .bind(api_key_hash)
            .fetch_optional(&self.pool)
            .await?;
        let app: Option<App> = row.as_ref().map(from_row).transpose()?;
        if let Some(app) = &app {
            self.auth.put_app(seen, api_key_hash, app);
        }
        Ok(app)
    }

    async fn app_key(&self, key_id: Uuid) -> Result<Option<StoredKey>> {
        let row = sqlx::query("SELECT * FROM app_keys WHERE id = $1").bind(key_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn current_app_key(&self, app_id: Uuid, purpose: &str) -> Result<Option<StoredKey>> {
        let row = sqlx::query("SELECT * FROM app_keys WHERE app_id = $1 AND purpose = $2 AND current")
            .bind(app_id)
            .bind(purpose)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn all_app_keys(&self) -> Result<Vec<StoredKey>> {
        let rows = sqlx::query("SELECT * FROM app_keys ORDER BY created_at, id").fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    async fn rewrap_app_keys(&self, keys: &[StoredKey], audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for k in keys {
            sqlx::query("UPDATE app_keys SET wrapped = $2, master_key_id = $3 WHERE id = $1")
                .bind(k.id)
                .bind(&k.wrapped)
                .bind(&k.master_key_id)
                .execute(&mut *tx)
                .await?;
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_current_app_key(&self, key: &StoredKey, audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE app_keys SET current = false WHERE app_id = $1 AND purpose = $2 AND current")
            .bind(key.app_id)
            .bind(&key.purpose)
            .execute(&mut *tx)
            .await?;
        insert_key(&mut tx, key).await?;
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn users_not_under_key(
        &self,
        app_id: Uuid,
        key_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SealedUser>> {
        // The nil id sorts before every other: "from the start" is one
        // range condition, which the (app_id, id) index serves.
        let rows = sqlx::query(
            "SELECT id, version, username_ct, profile_ct FROM users
             WHERE app_id = $1 AND id > $3 AND key_id <> $2 ORDER BY id LIMIT $4",
        )
        .bind(app_id)
        .bind(key_id)
        .bind(after.unwrap_or_else(Uuid::nil))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    async fn reseal_user(&self, app_id: Uuid, user: &SealedUser, key_id: Uuid) -> Result<bool> {
        // The version is left as it is: a concurrent update that read the
        // row before keeps its compare-and-set, and its own ciphertexts are
        // under the current key anyway.
        let done = sqlx::query(
            "UPDATE users SET username_ct = $4, profile_ct = $5, key_id = $6
             WHERE app_id = $1 AND id = $2 AND version = $3",
        )
        .bind(app_id)
        .bind(user.id)
        .bind(user.version)
        .bind(&user.username_ct)
        .bind(&user.profile_ct)
        .bind(key_id)
        .execute(&self.pool)
        .await;
        self.users_changed(&[user.id]);
        Ok(done?.rows_affected() > 0)
    }

    async fn sealed_page(
        &self,
        kind: ApartSeal,
        app_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SealedField>> {
        let (table, id, ct) = kind.columns();
        let rows = sqlx::query(&format!(
            "SELECT {id}, {ct} FROM {table} WHERE app_id = $1 AND {id} > $2 ORDER BY {id} LIMIT $3"
        ))
        .bind(app_id)
        .bind(after.unwrap_or_else(Uuid::nil))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(SealedField { id: r.try_get(id)?, ct: r.try_get(ct)? })).collect()
    }

    async fn reseal_field(&self, kind: ApartSeal, app_id: Uuid, old: &SealedField, new_ct: &[u8]) -> Result<bool> {
        let (table, id, ct) = kind.columns();
        let done = sqlx::query(&format!("UPDATE {table} SET {ct} = $4 WHERE app_id = $1 AND {id} = $2 AND {ct} = $3"))
            .bind(app_id)
            .bind(old.id)
            .bind(&old.ct)
            .bind(new_ct)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
