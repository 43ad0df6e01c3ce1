//! Applications and their keys on SQLite.

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use crate::store::sqlite::{BEGIN, KEY_COLUMNS, SqliteStore, append_in, insert_key, now_us};
use crate::store::trail::record::AuditRecord;
use crate::store::{ApartSeal, App, AppStore, Result, SealedField, SealedUser, StoredKey, from_row};

#[async_trait]
impl AppStore for SqliteStore {
    async fn create_app(&self, app: &App, api_key_hash: &[u8], keys: &[StoredKey], audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        sqlx::query("INSERT INTO applications (id, name, api_key_hash, created_at) VALUES (?1, ?2, ?3, ?4)")
            .bind(app.id)
            .bind(&app.name)
            .bind(api_key_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for k in keys {
            insert_key(&mut tx, k, now).await?;
        }
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn app_by_key_hash(&self, api_key_hash: &[u8]) -> Result<Option<App>> {
        let row = sqlx::query("SELECT id, name FROM applications WHERE api_key_hash = ?1")
            .bind(api_key_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn app_key(&self, key_id: Uuid) -> Result<Option<StoredKey>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM app_keys WHERE id = ?1"))
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn current_app_key(&self, app_id: Uuid, purpose: &str) -> Result<Option<StoredKey>> {
        let row =
            sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM app_keys WHERE app_id = ?1 AND purpose = ?2 AND current"))
                .bind(app_id)
                .bind(purpose)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn all_app_keys(&self) -> Result<Vec<StoredKey>> {
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM app_keys ORDER BY created_at, id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    async fn rewrap_app_keys(&self, keys: &[StoredKey], audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        for k in keys {
            sqlx::query("UPDATE app_keys SET wrapped = ?2, master_key_id = ?3 WHERE id = ?1")
                .bind(k.id)
                .bind(&k.wrapped)
                .bind(&k.master_key_id)
                .execute(&mut *tx)
                .await?;
        }
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_current_app_key(&self, key: &StoredKey, audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        sqlx::query("UPDATE app_keys SET current = 0 WHERE app_id = ?1 AND purpose = ?2 AND current")
            .bind(key.app_id)
            .bind(&key.purpose)
            .execute(&mut *tx)
            .await?;
        insert_key(&mut tx, key, now_us()).await?;
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
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
        // As on PostgreSQL: ids are 16-byte BLOBs, compared bytewise, in
        // the order of PostgreSQL's uuids.
        let rows = sqlx::query(
            "SELECT id, version, username_ct, profile_ct FROM users
             WHERE app_id = ?1 AND id > ?3 AND key_id <> ?2 ORDER BY id LIMIT ?4",
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
        // The version is left as it is (see the PostgreSQL store).
        let done = sqlx::query(
            "UPDATE users SET username_ct = ?4, profile_ct = ?5, key_id = ?6
             WHERE app_id = ?1 AND id = ?2 AND version = ?3",
        )
        .bind(app_id)
        .bind(user.id)
        .bind(user.version)
        .bind(&user.username_ct)
        .bind(&user.profile_ct)
        .bind(key_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn sealed_page(
        &self,
        kind: ApartSeal,
        app_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SealedField>> {
        let (table, id, ct) = kind.columns();
        // Ids are 16-byte BLOBs, compared bytewise: PostgreSQL's uuid order.
        let rows = sqlx::query(&format!(
            "SELECT {id}, {ct} FROM {table} WHERE app_id = ?1 AND {id} > ?2 ORDER BY {id} LIMIT ?3"
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
        let done = sqlx::query(&format!("UPDATE {table} SET {ct} = ?4 WHERE app_id = ?1 AND {id} = ?2 AND {ct} = ?3"))
            .bind(app_id)
            .bind(old.id)
            .bind(&old.ct)
            .bind(new_ct)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
