//! `usersvc audit verify`: the trail checked against its tree and every
//! signed checkpoint, and, given one, against a checkpoint kept elsewhere,
//! in one pass over the records and O(log n) memory.

use crate::audit::checkpoint::{CheckpointKey, Exported, TrustedKeys};
use crate::store::Store;
use crate::store::trail::merkle::{self, Frontier, RangeRoots};
use crate::store::trail::record::{self, Checkpoint, GENESIS};
use crate::store::trail::{TREE_START, TreePos};

const PAGE: i64 = 5000;

/// What a whole check found.
#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub checkpoints: u64,
    /// Records in the latest checkpoint.
    pub covered: u64,
    /// The consistency proof from the exported checkpoint to the latest
    /// one: its size in hashes, when one was checked.
    pub proof_hashes: Option<usize>,
}

/// Walks records and checkpoints together. The error says what is wrong
/// and where, in words for an operator.
pub async fn check(
    store: &dyn Store,
    key: &CheckpointKey,
    exported: Option<&Exported>,
) -> anyhow::Result<Result<Report, String>> {
    let keys = TrustedKeys::load(store, key).await?;
    let external = match exported {
        None => None,
        Some(e) => match e.open(&keys) {
            Ok(v) => Some(v),
            Err(why) => return Ok(Err(format!("the checkpoint file is refused: {why}"))),
        },
    };
    let latest = store.latest_checkpoint().await?;
    let latest_size = latest.as_ref().map(|c| c.tree_size as u64).unwrap_or(0);
    // The consistency proof spans from the exported checkpoint to the
    // latest one; its nodes are computed in the same pass.
    let mut proof = external
        .and_then(|(m, _)| (m <= latest_size).then(|| RangeRoots::new(merkle::consistency_ranges(m, latest_size))));

    let mut report = Report::default();
    let mut tree = Frontier::default();
    let mut chain_prev = GENESIS.to_vec();
    let mut after: TreePos = TREE_START;
    let mut pending: std::collections::VecDeque<Checkpoint> = store.checkpoints(0, PAGE).await?.into();
    let mut external_root_seen = false;
    loop {
        let page = store.trail_in_tree_order(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.pos;
        for r in &page {
            if let Some((prev, hash)) = &r.chain {
                if *prev != chain_prev || record::chain_hash(&chain_prev, &r.record) != *hash {
                    return Ok(Err(format!(
                        "record {} ({}) was altered: it does not match its chain hash",
                        r.seq, r.record.id
                    )));
                }
                chain_prev = hash.clone();
            }
            let leaf = r.leaf();
            if let Some(p) = proof.as_mut() {
                p.push(tree.size(), &leaf);
            }
            tree.push(leaf);
            report.records += 1;
            if let Some((m, root)) = external
                && tree.size() == m
            {
                if tree.root() != root {
                    return Ok(Err(format!(
                        "the trail's first {m} records are not the ones the exported checkpoint of {} vouches for: \
                         records were altered, removed or inserted",
                        exported.map(|e| e.timestamp.to_rfc3339()).unwrap_or_default()
                    )));
                }
                external_root_seen = true;
            }
            while pending.front().is_some_and(|c| c.tree_size as u64 == tree.size()) {
                let Some(c) = pending.pop_front() else { break };
                if let Some(why) = check_checkpoint(&c, &keys, &tree, r.pos) {
                    return Ok(Err(why));
                }
                report.checkpoints += 1;
                report.covered = tree.size();
                if pending.is_empty() {
                    pending = store.checkpoints(c.tree_size, PAGE).await?.into();
                }
            }
            if pending.front().is_some_and(|c| (c.tree_size as u64) < tree.size()) {
                let c = pending.front().map(|c| c.tree_size).unwrap_or_default();
                return Ok(Err(format!("checkpoint of size {c} does not fall on a record: the trail was altered")));
            }
        }
    }
    if let Some(c) = pending.front() {
        return Ok(Err(format!(
            "checkpoint of {} vouches for {} records but the trail has {}: records were removed",
            c.at.to_rfc3339(),
            c.tree_size,
            tree.size()
        )));
    }
    if let (Some((m, old_root)), Some(e)) = (external, exported) {
        if !external_root_seen {
            return Ok(Err(format!(
                "the exported checkpoint of {} vouches for {m} records but the trail has only {}: \
                 the database was rolled back or its tail cut; records {} to {m} are missing",
                e.timestamp.to_rfc3339(),
                tree.size(),
                tree.size() + 1
            )));
        }
        // Today's latest checkpoint extends the exported one (RFC 9162).
        if let (Some(p), Some(latest)) = (&proof, &latest) {
            let hashes = p.roots().unwrap_or_default();
            let new_root: [u8; 32] = latest.root.as_slice().try_into().unwrap_or([0; 32]);
            if !merkle::verify_consistency(m, latest_size, &old_root, &new_root, &hashes) {
                return Ok(Err("the latest checkpoint does not extend the exported one".into()));
            }
            report.proof_hashes = Some(hashes.len());
        }
    }
    Ok(Ok(report))
}

/// What is wrong with a checkpoint reached at `tree` (its last record at
/// `pos`), if anything.
fn check_checkpoint(c: &Checkpoint, keys: &TrustedKeys, tree: &Frontier, pos: TreePos) -> Option<String> {
    let at = c.at.to_rfc3339();
    if !keys.verifies(&c.key_id, c.tree_size, &c.root, c.at, &c.signature) {
        return Some(format!(
            "checkpoint of {at} (size {}, key {}) does not verify under this deployment's checkpoint keys \
             (current {}): forged, or made under a master key never rotated to this one",
            c.tree_size,
            c.key_id,
            keys.current_id()
        ));
    }
    if tree.root().as_slice() != c.root.as_slice() {
        return Some(format!(
            "the trail's first {} records do not have the root checkpoint of {at} signed: records were altered, \
             removed or inserted",
            c.tree_size
        ));
    }
    if c.last != pos {
        return Some(format!("checkpoint of {at} ends on another record than the trail's {}th", c.tree_size));
    }
    None
}
