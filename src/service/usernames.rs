//! The start-up backfill of username indexes written before usernames
//! compared under RFC 8265 ([`profile::username_key`]): the index key never
//! reaches the database, so a migration cannot recompute them. Most rows
//! keep their index (an ASCII name's key is what it was); a non-ASCII name
//! may get a new one, so that "Ａda" registered before is found by "ada".

use uuid::Uuid;

use super::profile;
use crate::crypto::{CryptoError, Keyring};
use crate::store::{Rekeyed, Store, StoreError, StoredUsername};

/// Rows read per round trip.
const BATCH: i64 = 500;

/// What a backfill did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rekeyings {
    /// Rows flagged, their index as it was.
    pub kept: u64,
    /// Rows given a new index.
    pub changed: u64,
    /// Rows left on their old index: another user already holds the name
    /// as RFC 8265 compares it (named in the log by id, for an operator to
    /// rename one of them).
    pub taken: u64,
    /// Rows that could not be opened (left unflagged; the next start tries
    /// them again).
    pub failed: u64,
}

/// One pass in id order, a batch at a time (keyset). Every write of a new
/// username sets the flag in its own statement, and
/// [`crate::store::UserStore::rekey_username`] leaves such a row alone, so
/// it is safe on several replicas at once and can be cut short.
pub async fn rekey(store: &dyn Store, keyring: &Keyring) -> Result<Rekeyings, StoreError> {
    let mut done = Rekeyings::default();
    let mut after: Option<Uuid> = None;
    loop {
        let batch = store.usernames_to_rekey(after, BATCH).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.id);
        for row in &batch {
            let bidx = match index(keyring, row).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(app_id = %row.app_id, users_id = %row.id, error = %e,
                        "username of a user not re-indexed: it does not open");
                    done.failed += 1;
                    continue;
                }
            };
            match store.rekey_username(row, &bidx).await? {
                Rekeyed::Done if bidx == row.username_bidx => done.kept += 1,
                Rekeyed::Done => done.changed += 1,
                Rekeyed::Skipped => {}
                Rekeyed::Taken => {
                    tracing::warn!(app_id = %row.app_id, users_id = %row.id,
                        "username kept its old index: another user of the application has the same name \
                         as RFC 8265 compares it; rename one of them");
                    done.taken += 1;
                }
            }
        }
    }
    Ok(done)
}

async fn index(keyring: &Keyring, row: &StoredUsername) -> Result<Vec<u8>, CryptoError> {
    let name = keyring.open(row.app_id, row.id, profile::USERNAME_FIELD, &row.username_ct).await?;
    keyring.blind(row.app_id, "username", &profile::username_key(&String::from_utf8_lossy(&name))).await
}

/// Runs the backfill in the background of a serving process, logging its
/// outcome; a failure (a database away) is retried at the next start.
pub async fn rekey_in_background(store: std::sync::Arc<dyn Store>, keyring: std::sync::Arc<Keyring>) {
    match rekey(store.as_ref(), &keyring).await {
        Ok(done) if done.changed + done.taken + done.failed == 0 => {}
        Ok(done) => tracing::info!(
            kept = done.kept,
            changed = done.changed,
            taken = done.taken,
            failed = done.failed,
            "username indexes of older users recomputed (RFC 8265)"
        ),
        Err(e) => tracing::warn!(error = %e, "username index backfill stopped; the next start goes on with it"),
    }
}
