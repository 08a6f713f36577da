//! Key space rules shared by every layer of the store.
//!
//! Keys are byte strings ordered lexicographically. The first byte names the *table*, so a table
//! is a contiguous key range and a tablet boundary may fall between tables. The byte `0xFF` is
//! reserved for TafDB's own records (two-phase-commit locks, transaction status, tablet
//! metadata); user keys may not start with it.

use crate::error::{Error, Result};

/// Keys are owned byte vectors.
pub type Key = Vec<u8>;
/// Values are owned byte vectors.
pub type Value = Vec<u8>;

/// The hasher of TafDB's in-memory maps (foldhash, randomly seeded per process). SipHash, the
/// standard default, cost a few percent of a commit in hashing alone.
pub(crate) type FastHash = hashbrown::DefaultHashBuilder;

/// Shards of the concurrent maps every read visits (version chains, commit marks). Each read
/// takes a shard's lock word for a moment; with DashMap's default (4 per core: 8 here) two
/// cores reading unrelated keys still write the same few cache lines on every read, and a
/// lookup of ten keys costs more on two cores than on one.
pub const READ_SHARDS: usize = 256;

/// An empty concurrent map sharded for reads (see [`READ_SHARDS`]).
pub(crate) fn read_map<K: Eq + std::hash::Hash, V>() -> dashmap::DashMap<K, V, FastHash> {
    dashmap::DashMap::with_hasher_and_shard_amount(FastHash::default(), READ_SHARDS)
}

/// The first byte of every internal key.
pub const INTERNAL_PREFIX: u8 = 0xFF;
/// Largest accepted key (bytes).
pub const MAX_KEY_LEN: usize = 4096;
/// Largest accepted value (bytes).
pub const MAX_VALUE_LEN: usize = 1 << 20;

/// The longest key an [`InlineKey`] keeps inline.
const INLINE_MAX: usize = 32;

/// A key laid out for in-memory maps and ordered sets that hold many keys.
///
/// A key of up to 32 bytes lives inline, zero-padded, and allocates nothing; a longer key is
/// one heap slice. In a B-tree of `Vec<u8>` every comparison on the way down follows a pointer
/// to another cache line and calls `memcmp`; two inline keys compare as pairs of big-endian
/// 128-bit integers, and nearly all keys are inline (a table byte, a parent id and a name fit in
/// 32 bytes). A hash map keyed by `InlineKey` compares keys without following pointers either,
/// and is looked up with a plain `&[u8]` (it borrows as one). Ordering is the lexicographic
/// order of the bytes.
#[derive(Clone)]
pub(crate) enum InlineKey {
    /// A key of at most [`INLINE_MAX`] bytes, zero-padded.
    Inline { len: u8, bytes: [u8; INLINE_MAX] },
    /// A longer key.
    Heap(Box<[u8]>),
}

impl InlineKey {
    /// Copies `key`.
    pub(crate) fn new(key: &[u8]) -> InlineKey {
        if key.len() <= INLINE_MAX {
            let mut bytes = [0u8; INLINE_MAX];
            bytes[..key.len()].copy_from_slice(key);
            InlineKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            InlineKey::Heap(key.into())
        }
    }

    /// The key's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            InlineKey::Inline { len, bytes } => &bytes[..*len as usize],
            InlineKey::Heap(b) => b,
        }
    }

    /// The whole key as a vector.
    pub(crate) fn to_vec(&self) -> Key {
        self.as_bytes().to_vec()
    }
}

/// The two big-endian halves of a padded inline key.
fn words(bytes: &[u8; INLINE_MAX]) -> (u128, u128) {
    let (hi, lo) = bytes.split_at(16);
    (
        u128::from_be_bytes(hi.try_into().unwrap_or_default()),
        u128::from_be_bytes(lo.try_into().unwrap_or_default()),
    )
}

impl std::borrow::Borrow<[u8]> for InlineKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for InlineKey {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (InlineKey::Inline { len: a, bytes: x }, InlineKey::Inline { len: b, bytes: y }) => {
                a == b && words(x) == words(y)
            }
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}

impl Eq for InlineKey {}

impl std::hash::Hash for InlineKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As the byte slice hashes, so that a map can be looked up with a `&[u8]`.
        self.as_bytes().hash(state);
    }
}

impl Ord for InlineKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            // Zero padding keeps the order exact. Where padded keys first differ inside both,
            // that byte decides, as it does for the keys. Where it lies past the end of one
            // key, that key's byte is padding (0) and the other's is not, and the shorter key
            // is a prefix of the longer, so it sorts first either way. Equal padded keys leave
            // the length: a prefix sorts first.
            (InlineKey::Inline { len: a, bytes: x }, InlineKey::Inline { len: b, bytes: y }) => {
                words(x).cmp(&words(y)).then(a.cmp(b))
            }
            _ => self.as_bytes().cmp(other.as_bytes()),
        }
    }
}

impl PartialOrd for InlineKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Debug for InlineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_vec())
    }
}

/// The table id of a key: its first byte.
pub fn table_of(key: &[u8]) -> u8 {
    key.first().copied().unwrap_or(0)
}

/// Checks that a key may be written or read by a user transaction.
pub fn check_user_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("empty key".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidArgument(format!(
            "key of {} bytes exceeds the limit of {MAX_KEY_LEN}",
            key.len()
        )));
    }
    if key[0] == INTERNAL_PREFIX {
        return Err(Error::InvalidArgument(
            "keys starting with 0xFF are reserved for TafDB".into(),
        ));
    }
    Ok(())
}

/// Checks a value's size.
pub fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::InvalidArgument(format!(
            "value of {} bytes exceeds the limit of {MAX_VALUE_LEN}",
            value.len()
        )));
    }
    Ok(())
}

/// The smallest key strictly greater than every key that starts with `prefix`, or `None` when
/// no such key exists (the prefix is all `0xFF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Key> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A half-open key range `[start, end)`; `end == None` means unbounded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRange {
    /// Inclusive start.
    pub start: Key,
    /// Exclusive end, or unbounded.
    pub end: Option<Key>,
}

impl KeyRange {
    /// Builds `[start, end)`.
    pub fn new(start: impl Into<Key>, end: Option<Key>) -> Self {
        KeyRange {
            start: start.into(),
            end,
        }
    }

    /// Every key with the given prefix.
    pub fn prefix(prefix: &[u8]) -> Self {
        KeyRange {
            start: prefix.to_vec(),
            end: prefix_end(prefix),
        }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| key < e)
    }

    /// Whether two ranges share at least one key.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        let a_before_b_end = other
            .end
            .as_deref()
            .is_none_or(|e| self.start.as_slice() < e);
        let b_before_a_end = self
            .end
            .as_deref()
            .is_none_or(|e| other.start.as_slice() < e);
        a_before_b_end && b_before_a_end
    }

    /// The intersection of two ranges, if not empty.
    pub fn intersect(&self, other: &KeyRange) -> Option<KeyRange> {
        let start = std::cmp::max(&self.start, &other.start).clone();
        let end = match (&self.end, &other.end) {
            (None, None) => None,
            (Some(e), None) | (None, Some(e)) => Some(e.clone()),
            (Some(a), Some(b)) => Some(std::cmp::min(a, b).clone()),
        };
        let r = KeyRange { start, end };
        match &r.end {
            Some(e) if e <= &r.start => None,
            _ => Some(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::Just;

    proptest::proptest! {
        /// Inline keys order exactly like the byte strings they hold, around the inline size.
        #[test]
        fn inline_keys_order_like_bytes(
            a in proptest::collection::vec(proptest::prop_oneof![Just(0u8), Just(1u8), Just(255u8)], 0..70),
            b in proptest::collection::vec(proptest::prop_oneof![Just(0u8), Just(1u8), Just(255u8)], 0..70),
            cut in 0usize..70,
        ) {
            // Also compare keys that share a long prefix, which random bytes rarely do.
            let c: Vec<u8> = a.iter().take(cut).chain(b.iter()).copied().collect();
            for (x, y) in [(&a, &b), (&a, &c), (&c, &b)] {
                let (ix, iy) = (InlineKey::new(x), InlineKey::new(y));
                proptest::prop_assert_eq!(ix.cmp(&iy), x.cmp(y));
                proptest::prop_assert_eq!(ix == iy, x == y);
                proptest::prop_assert_eq!(&ix.to_vec(), x);
                proptest::prop_assert_eq!(ix.as_bytes(), x.as_slice());
                let hash = |v: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    v(&mut h);
                    std::hash::Hasher::finish(&h)
                };
                use std::hash::Hash;
                proptest::prop_assert_eq!(hash(&|h| ix.hash(h)), hash(&|h| x.as_slice().hash(h)));
            }
        }
    }

    #[test]
    fn prefix_end_handles_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }

    #[test]
    fn ranges_overlap_and_intersect() {
        let a = KeyRange::new(b"b".to_vec(), Some(b"d".to_vec()));
        let b = KeyRange::new(b"c".to_vec(), None);
        let c = KeyRange::new(b"d".to_vec(), Some(b"e".to_vec()));
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
        assert_eq!(
            a.intersect(&b),
            Some(KeyRange::new(b"c".to_vec(), Some(b"d".to_vec())))
        );
        assert_eq!(a.intersect(&c), None);
        assert!(a.contains(b"c"));
        assert!(!a.contains(b"d"));
    }

    #[test]
    fn user_keys_are_checked() {
        assert!(check_user_key(b"").is_err());
        assert!(check_user_key(&[0xFF, 1]).is_err());
        assert!(check_user_key(&vec![1u8; MAX_KEY_LEN + 1]).is_err());
        assert!(check_user_key(b"\x02abc").is_ok());
    }
}
