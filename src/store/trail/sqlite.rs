//! The trail on SQLite. One writer at a time: records commit in `seq`
//! order, which is the tree's order too.

use async_trait::async_trait;
use sqlx::{Row, sqlite::SqliteRow};

use crate::store::sqlite::{BEGIN, SqliteStore, append_in, audit_from_row, time_of, us};
use crate::store::trail::record::{AuditRecord, Checkpoint, CheckpointSigner, EndorsedKey, StoredAudit, TreePos};
use crate::store::{AuditFilter, Result, TrailStore};

fn checkpoint_of(r: &SqliteRow) -> Result<Checkpoint> {
    Ok(Checkpoint {
        tree_size: r.try_get("tree_size")?,
        root: r.try_get("root")?,
        at: time_of(r, "at")?,
        last: (r.try_get("last_xid")?, r.try_get("last_seq")?),
        frontier: r.try_get("frontier")?,
        key_id: r.try_get("key_id")?,
        signature: r.try_get("signature")?,
    })
}

const LATEST: &str = "SELECT * FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1";

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

    async fn trail_in_tree_order(&self, after: TreePos, limit: i64) -> Result<Vec<StoredAudit>> {
        let rows = sqlx::query("SELECT * FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .bind(after.1)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn seal_trail(&self, signer: &dyn CheckpointSigner, max: i64) -> Result<Option<Checkpoint>> {
        // The write lock first: no record commits while the tree grows.
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let last = sqlx::query(LATEST).fetch_optional(&mut *tx).await?.as_ref().map(checkpoint_of).transpose()?;
        let after = last.as_ref().map(|c| c.last.1).unwrap_or(0);
        let rows = sqlx::query("SELECT * FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .bind(after)
            .bind(max)
            .fetch_all(&mut *tx)
            .await?;
        let records = rows.iter().map(audit_from_row).collect::<Result<Vec<_>>>()?;
        let Some(next) = super::next_checkpoint(last.as_ref(), &records, signer)? else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO audit_checkpoints (tree_size, root, at, last_xid, last_seq, frontier, key_id, signature)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(next.tree_size)
        .bind(&next.root)
        .bind(us(next.at))
        .bind(next.last.0)
        .bind(next.last.1)
        .bind(&next.frontier)
        .bind(&next.key_id)
        .bind(&next.signature)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(next))
    }

    async fn checkpoints(&self, after_size: i64, limit: i64) -> Result<Vec<Checkpoint>> {
        let rows = sqlx::query("SELECT * FROM audit_checkpoints WHERE tree_size > ?1 ORDER BY tree_size LIMIT ?2")
            .bind(after_size)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(checkpoint_of).collect()
    }

    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>> {
        sqlx::query(LATEST).fetch_optional(&self.pool).await?.as_ref().map(checkpoint_of).transpose()
    }

    async fn endorse_checkpoint_key(&self, key: &EndorsedKey) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_checkpoint_keys (key_id, public_key, endorsed_by, endorsement)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(&key.key_id)
        .bind(&key.public_key)
        .bind(&key.endorsed_by)
        .bind(&key.endorsement)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn endorsed_checkpoint_keys(&self) -> Result<Vec<EndorsedKey>> {
        let rows = sqlx::query("SELECT key_id, public_key, endorsed_by, endorsement FROM audit_checkpoint_keys")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(EndorsedKey {
                    key_id: r.try_get("key_id")?,
                    public_key: r.try_get("public_key")?,
                    endorsed_by: r.try_get("endorsed_by")?,
                    endorsement: r.try_get("endorsement")?,
                })
            })
            .collect()
    }
}
