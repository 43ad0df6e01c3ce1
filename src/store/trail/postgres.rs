//! The trail in PostgreSQL. A record is a plain INSERT in its writer's
//! transaction: nothing is shared between transactions (before, every
//! writer updated one head row and held its lock to commit, which capped
//! every deployment's writes). Each row carries the id of the transaction
//! that wrote it (`xid`, a column default); the sealer takes, in
//! (xid, seq) order, only records of transactions older than every one
//! still running (the snapshot's xmin), so a transaction that commits
//! after a later one can never land behind a checkpoint (migration
//! `trail_checkpoints`).
//!
//! A single record, the common case (a sign-in, an update), is a common
//! table expression in the writer's own statement ([`one_record`]); a
//! batch is one INSERT from arrays ([`many_records`]).

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Row,
    postgres::{PgArguments, PgExecutor, PgRow},
};
use uuid::Uuid;

use crate::store::postgres::PgStore;
use crate::store::trail::record::{AuditRecord, Checkpoint, CheckpointSigner, EndorsedKey, StoredAudit, TreePos};
use crate::store::{AuditFilter, Result, TrailStore};

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, PgArguments>;

/// Held by the one process sealing at a time (transaction-scoped, so a
/// sealer that dies frees it, and any replica takes over).
const SEAL_LOCK: i64 = 0x7573_6572_7376_6332;

const COLUMNS: &str = "id, at, app_id, actor, actor_id, subject_id, object_id, action, fields, outcome, request_id, client_addr, \
     server_request_id";

/// A common table expression `trail` over parameters `$first` to
/// `$first + 12` ([`OneRecord`]) that appends one record.
pub(in crate::store) fn one_record(first: usize) -> String {
    let p: Vec<String> = (first..first + 13).map(|n| format!("${n}")).collect();
    format!("trail AS (INSERT INTO audit_events ({COLUMNS}) VALUES ({}))", p.join(", "))
}

/// One record's parameters for [`one_record`].
pub(in crate::store) struct OneRecord<'a> {
    record: &'a AuditRecord,
}

impl<'a> OneRecord<'a> {
    pub(in crate::store) fn of(record: &'a AuditRecord) -> Self {
        Self { record }
    }

    pub(in crate::store) fn bind<'q>(self, q: Query<'q>) -> Query<'q>
    where
        'a: 'q,
    {
        let r = self.record;
        q.bind(r.id)
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
            .bind(r.server_request_id)
    }
}

/// A common table expression `trail` that appends a batch of records from
/// the thirteen arrays from `$first` on ([`AuditColumns`]), when `condition`
/// (SQL) holds.
pub(in crate::store) fn many_records(first: usize, condition: &str) -> String {
    /// The arrays' element types, in [`COLUMNS`] order (`fields` as JSON text).
    const TYPES: [&str; 13] = [
        "uuid",
        "timestamptz",
        "uuid",
        "text",
        "uuid",
        "uuid",
        "uuid",
        "text",
        "text",
        "text",
        "text",
        "bytea",
        "uuid",
    ];
    let arrays: Vec<String> = (first..).zip(TYPES).map(|(n, t)| format!("${n}::{t}[]")).collect();
    format!(
        "trail AS (
             INSERT INTO audit_events ({COLUMNS})
             SELECT id, at, app_id, actor, actor_id, subject_id, object_id, action,
                    ARRAY(SELECT jsonb_array_elements_text(fields::jsonb)), outcome, request_id, client_addr,
                    server_request_id
             FROM unnest({}) AS r ({COLUMNS})
             WHERE {condition}
         )",
        arrays.join(", ")
    )
}

/// A batch of trail records, column by column (bound as arrays).
pub(in crate::store) struct AuditColumns {
    id: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    app_id: Vec<Option<Uuid>>,
    actor: Vec<String>,
    actor_id: Vec<Option<Uuid>>,
    subject_id: Vec<Option<Uuid>>,
    object_id: Vec<Option<Uuid>>,
    action: Vec<String>,
    /// Each record's field names as a JSON array (arrays of arrays must be
    /// rectangular).
    fields: Vec<String>,
    outcome: Vec<String>,
    request_id: Vec<Option<String>>,
    client_addr: Vec<Option<Vec<u8>>>,
    server_request_id: Vec<Option<Uuid>>,
}

impl AuditColumns {
    pub(in crate::store) fn of(records: &[AuditRecord]) -> Self {
        Self {
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
            server_request_id: records.iter().map(|r| r.server_request_id).collect(),
        }
    }

    /// Binds the thirteen arrays of [`many_records`].
    pub(in crate::store) fn bind(self, q: Query<'_>) -> Query<'_> {
        q.bind(self.id)
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
            .bind(self.server_request_id)
    }
}

/// Appends records in one statement: inside the caller's transaction when
/// `db` is one (the records commit or vanish with the change they
/// describe), or on their own, all or none.
pub(in crate::store) async fn append<'c>(db: impl PgExecutor<'c>, records: &[AuditRecord]) -> Result<()> {
    static ONE: LazyLock<String> = LazyLock::new(|| format!("WITH {} SELECT 1", one_record(1)));
    static MANY: LazyLock<String> = LazyLock::new(|| format!("WITH {} SELECT 1", many_records(1, "true")));
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

/// Monthly partitions of the trail two years ahead (migration
/// `trail_partitions`).
pub(in crate::store) const PARTITIONS_AHEAD: &str = "SELECT audit_partitions(now(), 24)";

/// The record columns and its place in the tree (`xid_n`: the writer's
/// transaction id as a number).
const STORED: &str = "*, xid::text::bigint AS xid_n";

fn stored_of(r: &PgRow) -> Result<StoredAudit> {
    let seq: i64 = r.try_get("seq")?;
    let xid: i64 = r.try_get("xid_n")?;
    // Only records from before checkpoints (xid 0) were chained; a replica
    // of the previous version still chains its own during an upgrade, but
    // in an order of its own, and the tree covers them.
    let chain = match (xid, r.try_get::<Option<Vec<u8>>, _>("prev_hash")?, r.try_get::<Option<Vec<u8>>, _>("hash")?) {
        (0, Some(p), Some(h)) => Some((p, h)),
        _ => None,
    };
    Ok(StoredAudit {
        seq,
        pos: (xid, seq),
        chain,
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
            server_request_id: r.try_get("server_request_id")?,
        },
    })
}

fn checkpoint_of(r: &PgRow) -> Result<Checkpoint> {
    Ok(Checkpoint {
        tree_size: r.try_get("tree_size")?,
        root: r.try_get("root")?,
        at: r.try_get("at")?,
        last: (r.try_get("last_xid")?, r.try_get("last_seq")?),
        frontier: r.try_get("frontier")?,
        key_id: r.try_get("key_id")?,
        signature: r.try_get("signature")?,
    })
}

async fn latest<'c>(db: impl PgExecutor<'c>) -> Result<Option<Checkpoint>> {
    let row = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1").fetch_optional(db).await?;
    row.as_ref().map(checkpoint_of).transpose()
}

#[async_trait]
impl TrailStore for PgStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        // One statement: no transaction of its own to open and commit.
        append(&self.pool, records).await
    }

    async fn audit_records(&self, f: &AuditFilter) -> Result<Vec<StoredAudit>> {
        // Only the filters given are in the statement: a prepared plan made
        // for "subject = $3 OR $3 IS NULL" may be generic and pass over the
        // subject's index, and `at` must be plain for the months to be
        // pruned. One statement per combination (eight at most).
        let mut sql = format!("SELECT {STORED} FROM audit_events WHERE seq > $1");
        if f.app_id.is_some() {
            sql += " AND app_id = $2";
        }
        if f.subject_id.is_some() {
            sql += " AND subject_id = $3";
        }
        if f.since.is_some() {
            sql += " AND at >= $4";
        }
        sql += " ORDER BY seq LIMIT $5";
        let rows = sqlx::query(&sql)
            .bind(f.after_seq)
            .bind(f.app_id)
            .bind(f.subject_id)
            .bind(f.since)
            .bind(f.limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored_of).collect()
    }

    async fn trail_in_tree_order(&self, after: TreePos, limit: i64) -> Result<Vec<StoredAudit>> {
        let rows = sqlx::query(&format!(
            "SELECT {STORED} FROM audit_events WHERE (xid, seq) > ($1::text::xid8, $2) ORDER BY xid, seq LIMIT $3"
        ))
        .bind(after.0.to_string())
        .bind(after.1)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_of).collect()
    }

    async fn seal_trail(&self, signer: &dyn CheckpointSigner, max: i64) -> Result<Option<Checkpoint>> {
        let mut tx = self.pool.begin().await?;
        let mine: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)").bind(SEAL_LOCK).fetch_one(&mut *tx).await?;
        if !mine {
            return Ok(None);
        }
        let last = latest(&mut *tx).await?;
        let after = last.as_ref().map(|c| c.last).unwrap_or(super::TREE_START);
        // Every transaction older than xmin has ended: its records are all
        // visible now or never will be.
        let rows = sqlx::query(&format!(
            "SELECT {STORED} FROM audit_events
             WHERE (xid, seq) > ($1::text::xid8, $2) AND xid < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY xid, seq LIMIT $3"
        ))
        .bind(after.0.to_string())
        .bind(after.1)
        .bind(max)
        .fetch_all(&mut *tx)
        .await?;
        let records = rows.iter().map(stored_of).collect::<Result<Vec<_>>>()?;
        let Some(next) = super::next_checkpoint(last.as_ref(), &records, signer)? else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO audit_checkpoints (tree_size, root, at, last_xid, last_seq, frontier, key_id, signature)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(next.tree_size)
        .bind(&next.root)
        .bind(next.at)
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
        let rows = sqlx::query("SELECT * FROM audit_checkpoints WHERE tree_size > $1 ORDER BY tree_size LIMIT $2")
            .bind(after_size)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(checkpoint_of).collect()
    }

    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>> {
        latest(&self.pool).await
    }

    async fn prepare_trail(&self) -> Result<()> {
        sqlx::query(PARTITIONS_AHEAD).execute(&self.pool).await?;
        Ok(())
    }

    async fn endorse_checkpoint_key(&self, key: &EndorsedKey) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_checkpoint_keys (key_id, public_key, endorsed_by, endorsement)
             VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING",
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
