//! Groups: named sets of users of one application, and their memberships. The trait, and its PostgreSQL and SQLite
//! implementations beside it.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use uuid::Uuid;

use crate::store::Result;
use crate::store::trail::record::AuditRecord;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GroupRecord {
    pub id: Uuid,
    pub name: String,
    pub is_default: bool,
}

#[async_trait]
pub trait GroupStore: Send + Sync {
    async fn create_group(&self, app_id: Uuid, group: &GroupRecord, audit: &AuditRecord) -> Result<()>;

    async fn get_group(&self, app_id: Uuid, group_id: Uuid) -> Result<Option<GroupRecord>>;

    /// Sets the given columns only, so concurrent updates of different
    /// fields both stand. None when there is no such group.
    async fn update_group(
        &self,
        app_id: Uuid,
        group_id: Uuid,
        name: Option<&str>,
        is_default: Option<bool>,
        audit: &AuditRecord,
    ) -> Result<Option<GroupRecord>>;

    async fn delete_group(&self, app_id: Uuid, group_id: Uuid, audit: &AuditRecord) -> Result<bool>;

    /// False when the group or the user is not in the application.
    async fn add_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool>;

    async fn remove_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool>;

    /// A page of a group's members: their ids in id order (UUIDv7: the
    /// order the users were created in) after `after`; at most `limit`.
    async fn list_members(&self, app_id: Uuid, group_id: Uuid, after: Option<Uuid>, limit: i64) -> Result<Vec<Uuid>>;

    /// A page of the application's groups (or only its default ones) in id
    /// order (UUIDv7: creation order) after `after`; at most `limit`.
    async fn list_groups(
        &self,
        app_id: Uuid,
        default_only: bool,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<GroupRecord>>;

    /// A page of the groups a user belongs to, in group id order after
    /// `after`; at most `limit`.
    async fn list_user_groups(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<GroupRecord>>;

    /// The application's groups of this name (names need not be unique).
    async fn groups_named(&self, app_id: Uuid, name: &str) -> Result<Vec<GroupRecord>>;
}
