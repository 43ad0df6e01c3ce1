//! The Merkle tree of RFC 9162 (Certificate Transparency 2.0, same hashing
//! as RFC 6962): leaf and node hashes, a tree grown leaf by leaf in
//! O(log n) memory, and consistency proofs (that a tree of `n` leaves
//! extends one of `m`), made and checked. Small enough to keep here, and
//! held to the RFC's published test vectors below.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new().chain_update([0u8]).chain_update(data).finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new().chain_update([1u8]).chain_update(left).chain_update(right).finalize().into()
}

/// The tree's right edge: the roots of its perfect subtrees, largest
/// first. Enough to add leaves and to compute the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        // Each trailing one bit of the old size is a subtree of the same
        // height as the new one: they merge.
        let mut n = self.size;
        while n & 1 == 1 {
            if let Some(left) = self.peaks.pop() {
                h = node_hash(&left, &h);
            }
            n >>= 1;
        }
        self.peaks.push(h);
        self.size += 1;
    }

    /// MTH of the leaves so far (of no leaves: SHA-256 of nothing).
    pub fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        match iter.next() {
            None => Sha256::digest([]).into(),
            Some(last) => iter.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }

    /// The peaks, concatenated (a checkpoint stores them so that the next
    /// one grows the tree without reading it again).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.peaks.concat()
    }

    pub fn from_bytes(size: u64, bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(32) || bytes.len() / 32 != size.count_ones() as usize {
            return None;
        }
        let peaks = bytes.chunks_exact(32).map(|c| c.try_into().unwrap_or([0; 32])).collect();
        Some(Self { size, peaks })
    }
}

/// The leaf ranges `[start, end)` whose roots form the consistency proof
/// from `m` leaves to `n` (RFC 9162 2.1.4.1), in proof order. Each is a
/// node of the tree; they do not overlap, so one pass over the leaves can
/// compute them all.
pub fn consistency_ranges(m: u64, n: u64) -> Vec<(u64, u64)> {
    fn sub(m: u64, start: u64, n: u64, complete: bool, out: &mut Vec<(u64, u64)>) {
        if m == n {
            if !complete {
                out.push((start, start + n));
            }
            return;
        }
        let k = largest_power_of_two_below(n);
        if m <= k {
            sub(m, start, k, complete, out);
            out.push((start + k, start + n));
        } else {
            sub(m - k, start + k, n - k, false, out);
            out.push((start, start + k));
        }
    }
    let mut out = Vec::new();
    if 0 < m && m < n {
        sub(m, 0, n, true, &mut out);
    }
    out
}

fn largest_power_of_two_below(n: u64) -> u64 {
    // n >= 2 here.
    1 << (63 - (n - 1).leading_zeros())
}

/// Checks a consistency proof (RFC 9162 2.1.4.2): that the tree of
/// `second` leaves with root `second_root` extends the one of `first`
/// leaves with root `first_root`.
pub fn verify_consistency(first: u64, second: u64, first_root: &Hash, second_root: &Hash, proof: &[Hash]) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        // Every tree extends the empty one.
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((head, rest)) = path.split_first() else { return false };
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    &fr == first_root && &sr == second_root && snode == 0
}

/// Builds the roots of given leaf ranges in one pass over the leaves.
pub struct RangeRoots {
    ranges: Vec<(u64, u64)>,
    trees: Vec<Frontier>,
}

impl RangeRoots {
    pub fn new(ranges: Vec<(u64, u64)>) -> Self {
        let trees = vec![Frontier::default(); ranges.len()];
        Self { ranges, trees }
    }

    /// Leaf number `index` (from 0) is `leaf`.
    pub fn push(&mut self, index: u64, leaf: &Hash) {
        for (i, (start, end)) in self.ranges.iter().enumerate() {
            if (*start..*end).contains(&index) {
                self.trees[i].push(*leaf);
            }
        }
    }

    /// The roots, or None while a range is not yet complete.
    pub fn roots(&self) -> Option<Vec<Hash>> {
        self.ranges
            .iter()
            .zip(&self.trees)
            .map(|((start, end), t)| (t.size() == end - start).then(|| t.root()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The leaves and roots of RFC 6962's reference tests (as used by
    /// Certificate Transparency implementations).
    const LEAVES: [&[u8]; 8] = [
        b"",
        &[0x00],
        &[0x10],
        &[0x20, 0x21],
        &[0x30, 0x31],
        &[0x40, 0x41, 0x42, 0x43],
        &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
        &[0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f],
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn roots_match_the_reference_vectors() {
        let mut t = Frontier::default();
        assert_eq!(hex(&t.root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        for (leaf, root) in LEAVES.iter().zip(ROOTS) {
            t.push(leaf_hash(leaf));
            assert_eq!(hex(&t.root()), root, "size {}", t.size());
            let again = Frontier::from_bytes(t.size(), &t.to_bytes()).unwrap();
            assert_eq!(again, t);
        }
    }

    fn tree(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn root_of(leaves: &[Hash]) -> Hash {
        let mut t = Frontier::default();
        leaves.iter().for_each(|l| t.push(*l));
        t.root()
    }

    fn proof(m: u64, leaves: &[Hash]) -> Vec<Hash> {
        let mut r = RangeRoots::new(consistency_ranges(m, leaves.len() as u64));
        for (i, l) in leaves.iter().enumerate() {
            r.push(i as u64, l);
        }
        r.roots().unwrap()
    }

    #[test]
    fn the_reference_consistency_proofs() {
        // RFC 6962's reference proofs over the eight leaves above.
        let leaves: Vec<Hash> = LEAVES.iter().map(|l| leaf_hash(l)).collect();
        let expect: [(u64, u64, &[&str]); 3] = [
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (m, n, want) in expect {
            let got = proof(m, &leaves[..n as usize]);
            assert_eq!(got.iter().map(hex).collect::<Vec<_>>(), want, "{m} -> {n}");
            let (r1, r2) = (root_of(&leaves[..m as usize]), root_of(&leaves[..n as usize]));
            assert!(verify_consistency(m, n, &r1, &r2, &got));
        }
    }

    #[test]
    fn every_proof_checks_and_no_altered_one_does() {
        for n in 1..=40u64 {
            let leaves = tree(n);
            let rn = root_of(&leaves);
            for m in 1..=n {
                let rm = root_of(&leaves[..m as usize]);
                let p = proof(m, &leaves);
                assert!(verify_consistency(m, n, &rm, &rn, &p), "{m} -> {n}");
                // Another old root, another new root, a changed proof: refused.
                let other = leaf_hash(b"not in the log");
                assert!(!verify_consistency(m, n, &other, &rn, &p), "{m} -> {n}");
                if m < n {
                    assert!(!verify_consistency(m, n, &rm, &other, &p), "{m} -> {n}");
                    for i in 0..p.len() {
                        let mut bad = p.clone();
                        bad[i][0] ^= 1;
                        assert!(!verify_consistency(m, n, &rm, &rn, &bad), "{m} -> {n} at {i}");
                    }
                    // A smaller tree's root does not pass as the old one.
                    if m > 1 {
                        let before = root_of(&leaves[..m as usize - 1]);
                        assert!(!verify_consistency(m, n, &before, &rn, &p));
                    }
                }
            }
        }
    }
}
