//! Medical record numbers as a search key: their blind indexes, kept in
//! `user_mrns` beside the user row, and the start-up backfill of the users
//! written before that table existed.
//!
//! The index binds the MRN's value only, not its institution
//! (`blind(app_id, "mrn", fold(mrn))`): a clinician searching types the
//! number on the chart, and binding `institutions_id` too would make every
//! search name the institution as well. Two users holding the same number
//! at different institutions both match; the reply carries each one's
//! `mrns`, institutions included, to tell them apart.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::profile;
use crate::crypto::{CryptoError, Keyring};
use crate::pb;
use crate::store::{Store, StoreError, UserRecord};

/// The kind bound into an MRN's blind index.
const KIND: &str = "mrn";

/// Unindexed users read per round trip by the backfill.
const BACKFILL_BATCH: i64 = 500;

/// The blind index of an MRN as searched for.
pub async fn index(keyring: &Keyring, app_id: Uuid, mrn: &str) -> Result<Vec<u8>, CryptoError> {
    keyring.blind(app_id, KIND, &profile::fold(mrn)).await
}

/// The blind indexes of a user's MRNs: one per distinct folded value, none
/// for an empty one (nothing to search by).
pub async fn indexes(keyring: &Keyring, app_id: Uuid, user: &pb::User) -> Result<Vec<Vec<u8>>, CryptoError> {
    let values: BTreeSet<String> = user.mrns.iter().map(|m| profile::fold(&m.mrn)).filter(|m| !m.is_empty()).collect();
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        out.push(keyring.blind(app_id, KIND, &v).await?);
    }
    Ok(out)
}

/// What a backfill did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backfilled {
    /// Users whose MRN indexes it wrote (with none, for a user without MRNs).
    pub indexed: u64,
    /// Users it could not open (left unindexed, and named in the log): the
    /// next start tries them again.
    pub failed: u64,
}

/// Indexes the MRNs of every user written before `user_mrns` existed (the
/// migration cannot: the index key never reaches the database). One pass in
/// id order, a batch at a time from where the last ended (keyset, so a
/// batch costs the same wherever it is). One pass is enough: every write
/// that sets a user's MRNs (create, update, import) writes their indexes and
/// the flag in its own transaction, and [`Store::index_mrns`] leaves a user
/// such a write got to first alone. Safe to run on several replicas at once,
/// and to cut short: what is left is done by the next run.
pub async fn backfill(store: &dyn Store, keyring: &Keyring) -> Result<Backfilled, StoreError> {
    let mut done = Backfilled::default();
    let mut after = None;
    loop {
        let batch = store.users_without_mrn_index(after, BACKFILL_BATCH).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.id);
        for rec in &batch {
            let bidx = match opened_indexes(keyring, rec).await {
                Ok(bidx) => bidx,
                Err(e) => {
                    // The reason's kind, never the profile.
                    tracing::warn!(app_id = %rec.app_id, users_id = %rec.id, error = %e,
                        "MRNs of a user not indexed: the profile does not open");
                    done.failed += 1;
                    continue;
                }
            };
            if store.index_mrns(rec.app_id, rec.id, &bidx).await? {
                done.indexed += 1;
            }
        }
    }
    Ok(done)
}

/// Why a stored user's MRNs could not be indexed.
#[derive(Debug, thiserror::Error)]
enum Unopened {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("the profile does not parse")]
    Profile,
}

async fn opened_indexes(keyring: &Keyring, rec: &UserRecord) -> Result<Vec<Vec<u8>>, Unopened> {
    let plain = keyring.open(rec.app_id, rec.id, profile::PROFILE_FIELD, &rec.profile_ct).await?;
    let user = profile::to_user(rec, &plain).map_err(|_| Unopened::Profile)?;
    Ok(indexes(keyring, rec.app_id, &user).await?)
}

/// Runs the backfill in the background of a serving process, logging its
/// outcome; a failure (a database away) is retried at the next start.
pub async fn backfill_in_background(store: std::sync::Arc<dyn Store>, keyring: std::sync::Arc<Keyring>) {
    match backfill(store.as_ref(), &keyring).await {
        Ok(Backfilled { indexed: 0, failed: 0 }) => {}
        Ok(done) => tracing::info!(indexed = done.indexed, failed = done.failed, "MRN indexes of older users written"),
        Err(e) => tracing::warn!(error = %e, "MRN index backfill stopped; the next start goes on with it"),
    }
}
