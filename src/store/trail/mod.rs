//! The trail: the hash-chained access records: appended in the writer's transaction, read in chain order. The trait, and its PostgreSQL and SQLite
//! implementations beside it.

pub(in crate::store) mod postgres;
pub mod record;
mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::Result;
pub use record::{AuditRecord, StoredAudit};

/// Filters of `usersvc audit list`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub app_id: Option<Uuid>,
    pub subject_id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    pub after_seq: i64,
    pub limit: i64,
}

#[async_trait]
pub trait TrailStore: Send + Sync {
    /// Appends records to the trail in one transaction.
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()>;

    /// Records in chain order.
    async fn audit_records(&self, filter: &AuditFilter) -> Result<Vec<StoredAudit>>;
}
