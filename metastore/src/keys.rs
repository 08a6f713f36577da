//! Keys of the Meta table (TafDB table 2) and of the namespace's system records (table 0).
//!
//! All integers are big-endian so that byte order is numeric order:
//!
//! ```text
//! 02 | id:u64 | 00                 the inode record of `id` (its /_ATTR): an [`crate::Attr`]
//! 02 | pid:u64 | 02 | name         a directory entry of directory `pid`: a [`crate::Dentry`]
//! 02 | id:u64 | 03 | name          an extended attribute of inode `id`
//! 00 | "ns/" | name                a namespace's registry record
//! 00 | "alloc"                     the inode id allocator's high-water mark
//! 00 | "nsstat/" | root:u64        a namespace's usage counters (delta records)
//! 00 | "req/" | client:16 | slot:u32  the last committed request of a client's slot
//! 00 | "script/" | name            a script's head: current and latest version (`dsl`)
//! 00 | "scriptv/" | name | "/" | v:u64  version `v` of a script: its source
//! 00 | "hooks/" | root:u64         the script hooks bound in the namespace rooted at `root`
//! 00 | "sdata/" | name | "/" | key  a script's own records
//! ```
//!
//! A directory's inode record sorts right before its children, so a directory and its
//! entries form one contiguous range that a tablet split keeps together.

use tafdb::{Key, KeyRange};

/// The Meta table's first key byte.
pub const META_TABLE: u8 = 2;
/// The system table's first key byte.
pub const SYSTEM_TABLE: u8 = 0;

const ATTR: u8 = 0;
const DENTRY: u8 = 2;
const XATTR: u8 = 3;

fn with_id(id: u64, kind: u8, extra: usize) -> Key {
    let mut k = Vec::with_capacity(10 + extra);
    k.push(META_TABLE);
    k.extend_from_slice(&id.to_be_bytes());
    k.push(kind);
    k
}

/// The inode record key of `id`.
pub fn attr_key(id: u64) -> Key {
    with_id(id, ATTR, 0)
}

/// The key of entry `name` in directory `pid`.
pub fn dentry_key(pid: u64, name: &[u8]) -> Key {
    let mut k = with_id(pid, DENTRY, name.len());
    k.extend_from_slice(name);
    k
}

/// The entries of directory `pid` that sort after `after` (all of them when `after` is empty).
pub fn dentry_range(pid: u64, after: &[u8]) -> KeyRange {
    let mut start = dentry_key(pid, after);
    if !after.is_empty() {
        start.push(0);
    }
    KeyRange::new(start, Some(with_id(pid, DENTRY + 1, 0)))
}

/// The name part of a dentry key of directory `pid`, or `None` if `key` is not one.
pub fn dentry_name(pid: u64, key: &[u8]) -> Option<&[u8]> {
    let prefix = with_id(pid, DENTRY, 0);
    key.strip_prefix(prefix.as_slice())
}

/// The key of extended attribute `name` of inode `id`.
pub fn xattr_key(id: u64, name: &[u8]) -> Key {
    let mut k = with_id(id, XATTR, name.len());
    k.extend_from_slice(name);
    k
}

/// Every extended attribute of inode `id`.
pub fn xattr_range(id: u64) -> KeyRange {
    KeyRange::new(with_id(id, XATTR, 0), Some(with_id(id, XATTR + 1, 0)))
}

/// The name part of an xattr key of inode `id`.
pub fn xattr_name(id: u64, key: &[u8]) -> Option<&[u8]> {
    let prefix = with_id(id, XATTR, 0);
    key.strip_prefix(prefix.as_slice())
}

/// What a Meta-table key is, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaKey<'a> {
    /// An inode record.
    Attr(u64),
    /// A directory entry.
    Dentry(u64, &'a [u8]),
    /// An extended attribute.
    Xattr(u64, &'a [u8]),
}

/// Parses a Meta-table key.
pub fn parse(key: &[u8]) -> Option<MetaKey<'_>> {
    if key.len() < 10 || key[0] != META_TABLE {
        return None;
    }
    let id = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let rest = &key[10..];
    match key[9] {
        ATTR if rest.is_empty() => Some(MetaKey::Attr(id)),
        DENTRY if !rest.is_empty() => Some(MetaKey::Dentry(id, rest)),
        XATTR if !rest.is_empty() => Some(MetaKey::Xattr(id, rest)),
        _ => None,
    }
}

/// The whole Meta table.
pub fn meta_table() -> KeyRange {
    KeyRange::prefix(&[META_TABLE])
}

/// The registry record of namespace `name`.
pub fn namespace_key(name: &[u8]) -> Key {
    let mut k = vec![SYSTEM_TABLE];
    k.extend_from_slice(b"ns/");
    k.extend_from_slice(name);
    k
}

/// Every namespace registry record.
pub fn namespace_range() -> KeyRange {
    KeyRange::prefix(&[SYSTEM_TABLE, b'n', b's', b'/'])
}

/// The usage counters of the namespace rooted at `root`.
pub fn nsstat_key(root: u64) -> Key {
    let mut k = vec![SYSTEM_TABLE];
    k.extend_from_slice(b"nsstat/");
    k.extend_from_slice(&root.to_be_bytes());
    k
}

/// The inode id allocator's record.
pub fn alloc_key() -> Key {
    vec![SYSTEM_TABLE, b'a', b'l', b'l', b'o', b'c']
}

/// The request record of slot `slot` of client `client` (see `coprocessor::dedup`).
pub fn request_key(client: &[u8; 16], slot: u32) -> Key {
    let mut k = Vec::with_capacity(24);
    k.push(SYSTEM_TABLE);
    k.extend_from_slice(b"req/");
    k.extend_from_slice(client);
    k.extend_from_slice(&slot.to_be_bytes());
    k
}

/// Every request record.
pub fn request_range() -> KeyRange {
    KeyRange::prefix(&[SYSTEM_TABLE, b'r', b'e', b'q', b'/'])
}

fn system(tag: &[u8], rest: &[u8], extra: usize) -> Key {
    let mut k = Vec::with_capacity(1 + tag.len() + rest.len() + extra);
    k.push(SYSTEM_TABLE);
    k.extend_from_slice(tag);
    k.extend_from_slice(rest);
    k
}

/// The head record of script `name` (names never hold `/`).
pub fn script_key(name: &[u8]) -> Key {
    system(b"script/", name, 0)
}

/// Every script's head record.
pub fn script_range() -> KeyRange {
    KeyRange::prefix(&system(b"script/", b"", 0))
}

/// Version `version` of script `name`.
pub fn script_version_key(name: &[u8], version: u64) -> Key {
    let mut k = system(b"scriptv/", name, 9);
    k.push(b'/');
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// Every version of script `name`.
pub fn script_versions(name: &[u8]) -> KeyRange {
    let mut k = system(b"scriptv/", name, 1);
    k.push(b'/');
    KeyRange::prefix(&k)
}

/// The script hooks bound in the namespace rooted at `root`.
pub fn hooks_key(root: u64) -> Key {
    system(b"hooks/", &root.to_be_bytes(), 0)
}

/// The prefix of script `name`'s own records (`sdata/name/`).
pub fn script_data_prefix(name: &[u8]) -> Key {
    let mut k = system(b"sdata/", name, 1);
    k.push(b'/');
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort() {
        assert_eq!(parse(&attr_key(7)), Some(MetaKey::Attr(7)));
        assert_eq!(parse(&dentry_key(7, b"x")), Some(MetaKey::Dentry(7, b"x")));
        assert_eq!(
            parse(&xattr_key(7, b"user.a")),
            Some(MetaKey::Xattr(7, b"user.a"))
        );
        assert_eq!(parse(&[2, 0, 0]), None);
        // A directory's record, then its entries, then the next directory.
        assert!(attr_key(7) < dentry_key(7, b"a"));
        assert!(dentry_key(7, b"\xff\xff") < attr_key(8));
        assert!(dentry_key(255, b"z") < dentry_key(256, b"a"));
        let r = dentry_range(7, b"b");
        assert!(!r.contains(&dentry_key(7, b"b")));
        assert!(r.contains(&dentry_key(7, b"b\0")));
        assert!(r.contains(&dentry_key(7, b"c")));
        assert!(!r.contains(&xattr_key(7, b"c")));
        assert_eq!(dentry_name(7, &dentry_key(7, b"q")), Some(&b"q"[..]));
    }
}
