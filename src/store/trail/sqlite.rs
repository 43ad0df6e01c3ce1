//! The trail on SQLite.

use async_trait::async_trait;

use crate::store::sqlite::{BEGIN, SqliteStore, append_in, audit_from_row, us};
use crate::store::trail::record::{AuditRecord, StoredAudit};
use crate::store::{AuditFilter, Result, TrailStore};

#[async_trait]
impl TrailStore for SqliteStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        append_in(&mut tx, records).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_records(&self, f: &AuditFilter) -> Result<Vec<StoredAudit>> {
        let rows = sqlx::query(
            "SELECT * FROM audit_events
             WHERE seq > ?1 AND (?2 IS NULL OR app_id = ?2) AND (?3 IS NULL OR subject_id = ?3)
               AND (?4 IS NULL OR at >= ?4)
             ORDER BY seq LIMIT ?5",
        )
        .bind(f.after_seq)
        .bind(f.app_id)
        .bind(f.subject_id)
        .bind(f.since.map(us))
        .bind(f.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }
}
