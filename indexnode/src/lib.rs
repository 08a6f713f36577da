//! The Index table of Mantle-rs: every directory, and nothing else, keyed by
//! `(parent id, name)`, so that a whole path resolves in one call against one table.
//!
//! ```text
//! 01 | pid:u64be | name  ->  id:u64le | mode:u32le | uid:u32le | gid:u32le | lock:u8
//! 01 | 0 | namespace     ->  the same, for a namespace's root directory
//! ```
//!
//! The value carries what path resolution needs (the id to descend into and the permission to
//! check), about 21 bytes plus the key, so that millions of directories fit one node's memory;
//! TafDB keeps this table in its hash engine. The table never receives delta records, which is
//! why a transaction may read an ancestor's entry without conflicting with concurrent creates
//! below it.
//!
//! [`cache`] is the TopDirPathCache with its Invalidator: path prefixes of resolved paths
//! (all but the last `k` levels) mapped to their last directory, answered without a lock and
//! kept exact by a write watch on the Index table's tablet.
//!
//! What it is not: it does not follow symlinks or look at files (those live in the Meta table,
//! see the `metastore` crate); [`walk`] stops at the first component that is not a directory
//! and the namespace layer (the `coprocessor` crate) takes over.
//!
//! Key types: [`IndexEntry`], [`Cred`], [`walk`], [`Walk`], [`PathCache`], [`CacheConfig`].

pub mod cache;
mod perm;

pub use cache::{CacheConfig, CacheStats, PathCache};
pub use perm::{Cred, MAY_EXEC, MAY_READ, MAY_WRITE};

use tafdb::{Error, Key, KeyRange, Result, Txn};

/// The Index table's first key byte.
pub const INDEX_TABLE: u8 = 1;

/// The key of directory `name` under `pid`.
pub fn index_key(pid: u64, name: &[u8]) -> Key {
    let mut k = Vec::with_capacity(9 + name.len());
    k.push(INDEX_TABLE);
    k.extend_from_slice(&pid.to_be_bytes());
    k.extend_from_slice(name);
    k
}

/// The key of namespace `ns`'s root.
pub fn root_key(ns: &[u8]) -> Key {
    index_key(0, ns)
}

/// Parses an index key into `(pid, name)`.
pub fn parse_key(key: &[u8]) -> Option<(u64, &[u8])> {
    if key.len() < 10 || key[0] != INDEX_TABLE {
        return None;
    }
    let pid = u64::from_be_bytes(key[1..9].try_into().ok()?);
    Some((pid, &key[9..]))
}

/// The whole Index table.
pub fn index_table() -> KeyRange {
    KeyRange::prefix(&[INDEX_TABLE])
}

/// One directory's Index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexEntry {
    /// The directory's id.
    pub id: u64,
    /// Its mode (type and permission bits).
    pub mode: u32,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Set while a cross-directory rename of this directory is in flight (distributed mode).
    pub locked: bool,
}

impl IndexEntry {
    /// Encodes the entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(21);
        v.extend_from_slice(&self.id.to_le_bytes());
        v.extend_from_slice(&self.mode.to_le_bytes());
        v.extend_from_slice(&self.uid.to_le_bytes());
        v.extend_from_slice(&self.gid.to_le_bytes());
        v.push(u8::from(self.locked));
        v
    }

    /// Decodes an entry.
    pub fn decode(v: &[u8]) -> Result<IndexEntry> {
        if v.len() != 21 || v[20] > 1 {
            return Err(Error::Corruption(format!(
                "index entry of {} bytes (expected 21)",
                v.len()
            )));
        }
        let u32_at = |o: usize| u32::from_le_bytes([v[o], v[o + 1], v[o + 2], v[o + 3]]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&v[..8]);
        Ok(IndexEntry {
            id: u64::from_le_bytes(id),
            mode: u32_at(8),
            uid: u32_at(12),
            gid: u32_at(16),
            locked: v[20] == 1,
        })
    }

    /// Whether `cred` may do `want` (a mask of [`MAY_READ`], [`MAY_WRITE`], [`MAY_EXEC`]).
    pub fn allows(&self, cred: &Cred, want: u32) -> bool {
        cred.may(self.mode, self.uid, self.gid, want)
    }
}

/// Reads the Index entry `(pid, name)` in `txn` (an ordinary, recorded read).
pub async fn get(txn: &mut Txn, pid: u64, name: &[u8]) -> Result<Option<IndexEntry>> {
    match txn.get(&index_key(pid, name)).await? {
        Some(v) => Ok(Some(IndexEntry::decode(&v)?)),
        None => Ok(None),
    }
}

/// Where a [`walk`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// Every name was a directory.
    Done,
    /// `names[i]` is not in the Index table (a file, a symlink, or nothing).
    NotADirectory(usize),
    /// The caller may not search the directory that holds `names[i]`.
    Denied(usize),
}

/// Descends from the last directory of `stack` through `names`, pushing every directory
/// found, until a name is not a directory or search permission is missing. Every entry read is
/// recorded in `txn`, so a concurrent rename, removal or `chmod` of any directory on the way
/// aborts the transaction instead of letting it act on a stale path.
pub async fn walk(
    txn: &mut Txn,
    stack: &mut Vec<IndexEntry>,
    names: &[&[u8]],
    cred: &Cred,
) -> Result<Walk> {
    for (i, name) in names.iter().enumerate() {
        let Some(cur) = stack.last().copied() else {
            return Err(Error::InvalidArgument("walk from an empty stack".into()));
        };
        if !cur.allows(cred, MAY_EXEC) {
            return Ok(Walk::Denied(i));
        }
        match get(txn, cur.id, name).await? {
            Some(e) => stack.push(e),
            None => return Ok(Walk::NotADirectory(i)),
        }
    }
    Ok(Walk::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_keys_round_trip() {
        let e = IndexEntry {
            id: 7,
            mode: 0o40755,
            uid: 1,
            gid: 2,
            locked: true,
        };
        assert_eq!(IndexEntry::decode(&e.encode()).expect("decode"), e);
        assert!(IndexEntry::decode(&[0; 20]).is_err());
        assert_eq!(parse_key(&index_key(9, b"x")), Some((9, &b"x"[..])));
        assert!(index_key(1, b"zz") < index_key(2, b"a"));
    }
}
