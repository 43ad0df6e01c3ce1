//! Groups on SQLite.

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use crate::store::sqlite::{BEGIN, SqliteStore, append_in, now_us};
use crate::store::trail::record::AuditRecord;
use crate::store::{GroupRecord, GroupStore, Result, StoreError, from_row};

#[async_trait]
impl GroupStore for SqliteStore {
    async fn create_group(&self, app_id: Uuid, group: &GroupRecord, audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        sqlx::query("INSERT INTO groups (id, app_id, name, is_default, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")
            .bind(group.id)
            .bind(app_id)
            .bind(&group.name)
            .bind(group.is_default)
            .bind(now_us())
            .execute(&mut *tx)
            .await?;
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_group(&self, app_id: Uuid, group_id: Uuid) -> Result<Option<GroupRecord>> {
        let row = sqlx::query("SELECT id, name, is_default FROM groups WHERE app_id = ?1 AND id = ?2")
            .bind(app_id)
            .bind(group_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn update_group(
        &self,
        app_id: Uuid,
        group_id: Uuid,
        name: Option<&str>,
        is_default: Option<bool>,
        audit: &AuditRecord,
    ) -> Result<Option<GroupRecord>> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let row = sqlx::query(
            "UPDATE groups SET name = COALESCE(?3, name), is_default = COALESCE(?4, is_default)
             WHERE app_id = ?1 AND id = ?2 RETURNING id, name, is_default",
        )
        .bind(app_id)
        .bind(group_id)
        .bind(name)
        .bind(is_default)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        from_row(&row).map(Some)
    }

    async fn delete_group(&self, app_id: Uuid, group_id: Uuid, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let done = sqlx::query("DELETE FROM groups WHERE app_id = ?1 AND id = ?2")
            .bind(app_id)
            .bind(group_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn add_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        // Nothing unless both rows are in the application; an existing
        // membership is left as it is.
        let pair: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM groups g, users u WHERE g.app_id = ?1 AND g.id = ?2 AND u.app_id = ?1 AND u.id = ?3",
        )
        .bind(app_id)
        .bind(group_id)
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        if pair == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO memberships (app_id, group_id, user_id, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (group_id, user_id) DO NOTHING",
        )
        .bind(app_id)
        .bind(group_id)
        .bind(user_id)
        .bind(now_us())
        .execute(&mut *tx)
        .await?;
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn remove_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let done = sqlx::query("DELETE FROM memberships WHERE app_id = ?1 AND group_id = ?2 AND user_id = ?3")
            .bind(app_id)
            .bind(group_id)
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

    async fn list_members(&self, app_id: Uuid, group_id: Uuid, after: Option<Uuid>, limit: i64) -> Result<Vec<Uuid>> {
        // Through the primary key, (group_id, user_id): a page costs its own
        // rows, however deep into the group it starts.
        let sql = format!(
            "SELECT user_id FROM memberships WHERE group_id = ?2 AND app_id = ?1{} ORDER BY user_id LIMIT ?4",
            if after.is_some() { " AND user_id > ?3" } else { "" }
        );
        let rows = sqlx::query(&sql).bind(app_id).bind(group_id).bind(after).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(|r| r.try_get("user_id").map_err(StoreError::from)).collect()
    }

    async fn list_groups(
        &self,
        app_id: Uuid,
        default_only: bool,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<GroupRecord>> {
        // The default-only statement names `is_default` itself, so that it
        // can use the partial index groups_app_default_id.
        let sql = format!(
            "SELECT id, name, is_default FROM groups WHERE app_id = ?1{}{} ORDER BY id LIMIT ?3",
            if default_only { " AND is_default" } else { "" },
            if after.is_some() { " AND id > ?2" } else { "" }
        );
        let rows = sqlx::query(&sql).bind(app_id).bind(after).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    async fn list_user_groups(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<GroupRecord>> {
        let sql = format!(
            "SELECT g.id, g.name, g.is_default FROM memberships m JOIN groups g ON g.id = m.group_id
             WHERE m.user_id = ?2 AND m.app_id = ?1{} ORDER BY m.group_id LIMIT ?4",
            if after.is_some() { " AND m.group_id > ?3" } else { "" }
        );
        let rows = sqlx::query(&sql).bind(app_id).bind(user_id).bind(after).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    async fn groups_named(&self, app_id: Uuid, name: &str) -> Result<Vec<GroupRecord>> {
        let rows = sqlx::query("SELECT id, name, is_default FROM groups WHERE app_id = ?1 AND name = ?2 ORDER BY id")
            .bind(app_id)
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }
}
