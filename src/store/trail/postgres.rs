//! Appending to the audit trail in PostgreSQL. Every record chains from the
//! one committed before it through the one-row `audit_head` (migration
//! `audit_head`): a writer updates the head in the statement that inserts
//! its records, and the row's lock, held to the end of its transaction,
//! gives the chain one order.
//!
//! A single record, the common case (a sign-in, an update), is two common
//! table expressions in the writer's own statement ([`one_record`]); a batch
//! (the read trail, a sign-up's two records) goes through the PL/pgSQL
//! `audit_append`, which chains in a loop. Both take the head's lock before
//! the records get their `seq`, so `seq` follows the chain.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Row,
    postgres::{PgArguments, PgExecutor},
};
use uuid::Uuid;

use crate::store::postgres::PgStore;
use crate::store::trail::record::{self as audit, AuditRecord, StoredAudit};
use crate::store::{AuditFilter, Result, TrailStore};

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, PgArguments>;

/// `audit_append`'s first argument. The advisory lock it named serialised
/// the trail's writers before the head row did; the function keeps its
/// arguments for replicas of the version before.
const AUDIT_LOCK: i64 = 0x7573_6572_7376_6331;

const COLUMNS: &str = "id, at, app_id, actor, actor_id, subject_id, object_id, action, fields, outcome, request_id, client_addr, prev_hash, hash";

/// Two common table expressions over parameters `$first` to `$first + 12`
/// ([`OneRecord`]) that append one record: `head` moves the head on by the
/// record's hash, and `trail` inserts the record with the head's previous
/// and new hashes. Without a head row (the migration makes it and a trigger
/// keeps it) the insert fails on `prev_hash`'s NOT NULL, and the writer's
/// statement with it, instead of writing its change unrecorded.
pub(in crate::store) fn one_record(first: usize) -> String {
    let p: Vec<String> = (first..first + 13).map(|n| format!("${n}")).collect();
    format!(
        "head AS (
             UPDATE audit_head SET prev = hash, hash = sha256(hash || {content}) RETURNING prev, hash
         ),
         trail AS (
             INSERT INTO audit_events ({COLUMNS})
             SELECT {values}, head.prev, head.hash
             FROM (VALUES (1)) AS one (n) LEFT JOIN head ON true
         )",
        content = p[0],
        values = p[1..].join(", "),
    )
}

/// One record's parameters for [`one_record`]: the content its hash covers,
/// then its columns.
pub(in crate::store) struct OneRecord<'a> {
    content: Vec<u8>,
    record: &'a AuditRecord,
}

impl<'a> OneRecord<'a> {
    pub(in crate::store) fn of(record: &'a AuditRecord) -> Self {
        Self { content: audit::canonical(record), record }
    }

    pub(in crate::store) fn bind<'q>(self, q: Query<'q>) -> Query<'q>
    where
        'a: 'q,
    {
        let r = self.record;
        q.bind(self.content)
            .bind(r.id)
            .bind(r.at)
            .bind(r.app_id)
            .bind(&r.actor)
            .bind(r.actor_id)
            .bind(r.subject_id)
            .bind(r.object_id)
            .bind(&r.action)
            .bind(&r.fields)
            .bind(&r.outcome)
            .bind(r.request_id.as_deref())
            .bind(r.client_addr.as_deref())
    }
}

/// A batch of trail records, column by column (bound as arrays), with the
/// content each one's hash covers.
pub(in crate::store) struct AuditColumns {
    content: Vec<Vec<u8>>,
    id: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    app_id: Vec<Option<Uuid>>,
    actor: Vec<String>,
    actor_id: Vec<Option<Uuid>>,
    subject_id: Vec<Option<Uuid>>,
    object_id: Vec<Option<Uuid>>,
    action: Vec<String>,
    /// Each record's field names as a JSON array.
    fields: Vec<String>,
    outcome: Vec<String>,
    request_id: Vec<Option<String>>,
    client_addr: Vec<Option<Vec<u8>>>,
}

impl AuditColumns {
    pub(in crate::store) fn of(records: &[AuditRecord]) -> Self {
        Self {
            content: records.iter().map(audit::canonical).collect(),
            id: records.iter().map(|r| r.id).collect(),
            at: records.iter().map(|r| r.at).collect(),
            app_id: records.iter().map(|r| r.app_id).collect(),
            actor: records.iter().map(|r| r.actor.clone()).collect(),
            actor_id: records.iter().map(|r| r.actor_id).collect(),
            subject_id: records.iter().map(|r| r.subject_id).collect(),
            object_id: records.iter().map(|r| r.object_id).collect(),
            action: records.iter().map(|r| r.action.clone()).collect(),
            fields: records.iter().map(|r| serde_json::to_string(&r.fields).unwrap_or_else(|_| "[]".into())).collect(),
            outcome: records.iter().map(|r| r.outcome.clone()).collect(),
            request_id: records.iter().map(|r| r.request_id.clone()).collect(),
            client_addr: records.iter().map(|r| r.client_addr.clone()).collect(),
        }
    }

    /// Binds the 15 arguments of `audit_append` (see [`audit_append_call`]).
    pub(in crate::store) fn bind(self, q: Query<'_>) -> Query<'_> {
        q.bind(AUDIT_LOCK)
            .bind(audit::GENESIS.as_slice())
            .bind(self.content)
            .bind(self.id)
            .bind(self.at)
            .bind(self.app_id)
            .bind(self.actor)
            .bind(self.actor_id)
            .bind(self.subject_id)
            .bind(self.object_id)
            .bind(self.action)
            .bind(self.fields)
            .bind(self.outcome)
            .bind(self.request_id)
            .bind(self.client_addr)
    }
}

/// `audit_append(...)` (migrations `round_trips` and `audit_head`) with its
/// arguments from parameter `$first` on: chains and inserts the records, in
/// one round trip.
pub(in crate::store) fn audit_append_call(first: usize) -> String {
    let args: Vec<String> = (first..first + 15).map(|n| format!("${n}")).collect();
    format!("audit_append({})", args.join(", "))
}

/// Appends records in one statement: inside the caller's transaction when
/// `db` is one (the records commit or vanish with the change they
/// describe), or on their own, all or none.
pub(in crate::store) async fn append<'c>(db: impl PgExecutor<'c>, records: &[AuditRecord]) -> Result<()> {
    static ONE: LazyLock<String> = LazyLock::new(|| format!("WITH {} SELECT 1", one_record(1)));
    static MANY: LazyLock<String> = LazyLock::new(|| format!("SELECT {}", audit_append_call(1)));
    match records {
        [] => {}
        [one] => {
            OneRecord::of(one).bind(sqlx::query(&ONE)).execute(db).await?;
        }
        many => {
            AuditColumns::of(many).bind(sqlx::query(&MANY)).execute(db).await?;
        }
    }
    Ok(())
}

#[async_trait]
impl TrailStore for PgStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        // One statement: no transaction of its own to open and commit.
        append(&self.pool, records).await
    }

    async fn audit_records(&self, f: &AuditFilter) -> Result<Vec<StoredAudit>> {
        let rows = sqlx::query(
            "SELECT * FROM audit_events
             WHERE seq > $1 AND ($2::uuid IS NULL OR app_id = $2) AND ($3::uuid IS NULL OR subject_id = $3)
               AND ($4::timestamptz IS NULL OR at >= $4)
             ORDER BY seq LIMIT $5",
        )
        .bind(f.after_seq)
        .bind(f.app_id)
        .bind(f.subject_id)
        .bind(f.since)
        .bind(f.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredAudit {
                    seq: r.try_get("seq")?,
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                    record: AuditRecord {
                        id: r.try_get("id")?,
                        at: r.try_get("at")?,
                        app_id: r.try_get("app_id")?,
                        actor: r.try_get("actor")?,
                        actor_id: r.try_get("actor_id")?,
                        subject_id: r.try_get("subject_id")?,
                        object_id: r.try_get("object_id")?,
                        action: r.try_get("action")?,
                        fields: r.try_get("fields")?,
                        outcome: r.try_get("outcome")?,
                        request_id: r.try_get("request_id")?,
                        client_addr: r.try_get("client_addr")?,
                    },
                })
            })
            .collect()
    }
}
