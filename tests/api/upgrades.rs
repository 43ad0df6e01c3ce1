//! A database made by the previous version, migrated by this one while the
//! previous version's replicas still write to it (a rolling upgrade).

use std::borrow::Cow;

use sqlx::{Connection, PgConnection};
use usersvc::{
    app::Application,
    audit::{self, AuditRecord},
};

use crate::common::{self, BACKEND, Backend, TestApp};

/// The migration that moved the trail's chain to its head row.
const AUDIT_HEAD: i64 = 20261129000006;

/// Appends the way the previous version's replicas do: `audit_append` with
/// its fifteen arrays, the first two being the advisory lock it took then
/// and the genesis hash.
async fn previous_version_appends(db: &mut PgConnection, actions: &[&str]) {
    let records: Vec<AuditRecord> = actions.iter().map(|a| AuditRecord::new(a, None)).collect();
    let col = |f: fn(&AuditRecord) -> String| records.iter().map(f).collect::<Vec<_>>();
    sqlx::query("SELECT audit_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)")
        .bind(0x7573_6572_7376_6331_i64)
        .bind(audit::GENESIS.as_slice())
        .bind(records.iter().map(audit::canonical).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.at).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.app_id).collect::<Vec<_>>())
        .bind(col(|r| r.actor.clone()))
        .bind(records.iter().map(|r| r.actor_id).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.subject_id).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.object_id).collect::<Vec<_>>())
        .bind(col(|r| r.action.clone()))
        .bind(col(|r| serde_json::to_string(&r.fields).unwrap()))
        .bind(col(|r| r.outcome.clone()))
        .bind(records.iter().map(|r| r.request_id.clone()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.client_addr.clone()).collect::<Vec<_>>())
        .execute(db)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_trail_goes_on_across_the_audit_head_and_checkpoint_migrations() {
    if common::postgres_server().is_none() {
        eprintln!("PostgreSQL run not made: set TEST_DATABASE_URL");
        return;
    }
    BACKEND
        .scope(Backend::Postgres, async {
            let db = common::fresh_database().await;
            let mut conn = PgConnection::connect(&db).await.unwrap();
            let mut before = sqlx::migrate!("./migrations/postgres");
            before.migrations =
                Cow::Owned(before.migrations.iter().filter(|m| m.version < AUDIT_HEAD).cloned().collect());
            before.run(&mut conn).await.unwrap();
            previous_version_appends(&mut conn, &["user.read", "user.update"]).await;
            assert_eq!(common::audit_verified(&db).await, Ok(2));

            // This version migrates and writes: a new application and a sign-up.
            let app = Application::start(&common::serve_args(db.clone())).await.unwrap();
            let (app_id, api_key) = common::new_application(&app).await;
            let t = TestApp { app, app_id, api_key, http: reqwest::Client::new(), db_url: db.clone() };
            t.sign_up("after-the-migration").await;
            let after = common::audit_verified(&db).await.unwrap();
            assert!(after >= 5, "the old records, the application's and the sign-up's: {after}");

            // A replica of the previous version still writing keeps to the same chain.
            previous_version_appends(&mut conn, &["user.read"]).await;
            t.sign_up("after-an-old-replica").await;
            let last = common::audit_verified(&db).await.unwrap();
            assert!(last >= after + 3, "{last} after {after}");
            // Their records, chained by the head the old way, are leaves of
            // the tree like any other: a checkpoint covers every one.
            let checkpoint = common::cli(&db, &["audit", "checkpoint"]).await;
            assert!(checkpoint.status.success(), "{}", String::from_utf8_lossy(&checkpoint.stderr));
            let c: serde_json::Value = serde_json::from_slice(&checkpoint.stdout).unwrap();
            let (total,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM audit_events").fetch_one(&mut conn).await.unwrap();
            assert_eq!(c["treeSize"], total, "{c}");
            // The head row stays.
            assert!(sqlx::query("DELETE FROM audit_head").execute(&mut conn).await.is_err());
        })
        .await;
}
