//! The inode record (`/_ATTR`): an inode's attributes in a fixed-width little-endian head
//! followed by a symlink target.
//!
//! ```text
//! offset  size  field     updated by
//!      0     8  nlink     delta Add (a directory's link count: 2 + subdirectories)
//!      8     8  entries   delta Add (a directory's number of children)
//!     16     8  mtime ns  delta Max
//!     24     8  ctime ns  delta Max
//!     32     8  atime ns  set
//!     40     8  size      set
//!     48     8  id        (never changes)
//!     56     8  parent    set (directories: the parent directory's id; the root: itself)
//!     64     4  mode      set (S_IFMT type bits and permission bits)
//!     68     4  uid       set
//!     72     4  gid       set
//!     76     4  rdev      set
//!     80     1  format    (2)
//!     81     8  ns        (never changes: the root id of the inode's namespace)
//!     89     -  a symlink's target; a directory's own name (empty for a root): set
//! ```
//!
//! The fields at offsets 0-31 are the ones concurrent operations in one directory touch: they
//! change only through TafDB delta records ([`delta`]), so a thousand creates in a directory
//! commute instead of conflicting. The rest is written whole when an inode is made, and later
//! changed by field sets ([`delta::changes`]: rename, chmod, chown, utimens, truncate), so a
//! busy directory can be renamed or chmod'ed while creates stream into it.

use tafdb::DeltaOp;

use crate::DecodeError;

/// Size of the fixed head.
pub const HEAD: usize = 89;
const FORMAT: u8 = 2;

/// Type bits of `mode` (as `S_IFMT`).
pub const S_IFMT: u32 = 0o170_000;
/// The permission bits, with setuid, setgid and sticky.
pub const PERM_MASK: u32 = 0o7777;

/// What kind of inode this is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum FileType {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl FileType {
    /// The `S_IFMT` bits.
    pub fn bits(self) -> u32 {
        match self {
            FileType::Regular => 0o100_000,
            FileType::Directory => 0o040_000,
            FileType::Symlink => 0o120_000,
            FileType::Fifo => 0o010_000,
            FileType::Socket => 0o140_000,
            FileType::CharDevice => 0o020_000,
            FileType::BlockDevice => 0o060_000,
        }
    }

    /// The type of a `mode`, if its type bits name one.
    pub fn from_mode(mode: u32) -> Option<FileType> {
        Some(match mode & S_IFMT {
            0o100_000 => FileType::Regular,
            0o040_000 => FileType::Directory,
            0o120_000 => FileType::Symlink,
            0o010_000 => FileType::Fifo,
            0o140_000 => FileType::Socket,
            0o020_000 => FileType::CharDevice,
            0o060_000 => FileType::BlockDevice,
            _ => return None,
        })
    }

    /// A one-byte code for directory entries.
    pub fn code(self) -> u8 {
        (self.bits() >> 12) as u8
    }

    /// The type of a one-byte code.
    pub fn from_code(code: u8) -> Option<FileType> {
        FileType::from_mode(u32::from(code) << 12)
    }

    /// Whether this is a directory.
    pub fn is_dir(self) -> bool {
        self == FileType::Directory
    }
}

/// An inode's attributes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attr {
    /// The inode id.
    pub id: u64,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links (directories: 2 + subdirectories).
    pub nlink: u64,
    /// A directory's number of entries (0 for other inodes).
    pub entries: u64,
    /// Size in bytes (a symlink: the target's length).
    pub size: u64,
    /// Access time, ns since the epoch.
    pub atime: u64,
    /// Modification time, ns since the epoch.
    pub mtime: u64,
    /// Change time, ns since the epoch.
    pub ctime: u64,
    /// Device number of a device node.
    pub rdev: u32,
    /// A directory's parent (the root's is itself); 0 for other inodes.
    pub parent: u64,
    /// The root directory id of the namespace the inode belongs to, so that a request by inode
    /// id can be held to its namespace.
    pub ns: u64,
    /// A symlink's target; a directory's own name (empty for a namespace root), so that a
    /// directory reached by id can find its Index entry `(parent, name)`.
    pub target: Vec<u8>,
}

impl Attr {
    /// The inode's type. Records are validated on decode, so this cannot fail for them.
    pub fn kind(&self) -> FileType {
        FileType::from_mode(self.mode).unwrap_or(FileType::Regular)
    }

    /// The permission bits (with setuid, setgid and sticky).
    pub fn perm(&self) -> u32 {
        self.mode & PERM_MASK
    }

    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEAD + self.target.len());
        v.extend_from_slice(&self.nlink.to_le_bytes());
        v.extend_from_slice(&self.entries.to_le_bytes());
        v.extend_from_slice(&self.mtime.to_le_bytes());
        v.extend_from_slice(&self.ctime.to_le_bytes());
        v.extend_from_slice(&self.atime.to_le_bytes());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.id.to_le_bytes());
        v.extend_from_slice(&self.parent.to_le_bytes());
        v.extend_from_slice(&self.mode.to_le_bytes());
        v.extend_from_slice(&self.uid.to_le_bytes());
        v.extend_from_slice(&self.gid.to_le_bytes());
        v.extend_from_slice(&self.rdev.to_le_bytes());
        v.push(FORMAT);
        v.extend_from_slice(&self.ns.to_le_bytes());
        v.extend_from_slice(&self.target);
        v
    }

    /// Decodes a record, checking its format and type.
    pub fn decode(v: &[u8]) -> Result<Attr, DecodeError> {
        if v.len() < HEAD {
            return Err(DecodeError::new(
                "inode record",
                format!("{} bytes, the head alone is {HEAD}", v.len()),
            ));
        }
        if v[80] != FORMAT {
            return Err(DecodeError::new(
                "inode record",
                format!("unknown format {}", v[80]),
            ));
        }
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |o: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&v[o..o + 4]);
            u32::from_le_bytes(b)
        };
        let mode = u32_at(64);
        if FileType::from_mode(mode).is_none() {
            return Err(DecodeError::new(
                "inode record",
                format!("mode {mode:o} has no file type"),
            ));
        }
        Ok(Attr {
            nlink: u64_at(0),
            entries: u64_at(8),
            mtime: u64_at(16),
            ctime: u64_at(24),
            atime: u64_at(32),
            size: u64_at(40),
            id: u64_at(48),
            parent: u64_at(56),
            mode,
            uid: u32_at(68),
            gid: u32_at(72),
            rdev: u32_at(76),
            ns: u64_at(81),
            target: v[HEAD..].to_vec(),
        })
    }
}

/// The delta records the namespace writes to an inode record.
pub mod delta {
    use super::{Attr, DeltaOp};

    /// Adds `by` to the link count.
    pub fn nlink(by: i64) -> DeltaOp {
        DeltaOp::Add { offset: 0, by }
    }

    /// Adds `by` to a directory's entry count.
    pub fn entries(by: i64) -> DeltaOp {
        DeltaOp::Add { offset: 8, by }
    }

    /// Raises the modification time to at least `ns`.
    pub fn mtime(ns: u64) -> DeltaOp {
        DeltaOp::Max {
            offset: 16,
            value: ns,
        }
    }

    /// Raises the change time to at least `ns`.
    pub fn ctime(ns: u64) -> DeltaOp {
        DeltaOp::Max {
            offset: 24,
            value: ns,
        }
    }

    fn set(offset: u32, bytes: &[u8], truncate: bool) -> DeltaOp {
        DeltaOp::Set {
            offset,
            bytes: bytes.to_vec(),
            truncate,
        }
    }

    /// The updates that turn record `old` into `new` without rewriting it: a field set for
    /// every changed field outside the delta-maintained head (atime, size, parent, mode, uid,
    /// gid, rdev, the name or target), a set of an mtime that changed, and ctime raised. A
    /// set of the mtime does not commute with the `Max` deltas creates write on a directory's
    /// mtime: for a directory whose mtime changes, rewrite the record after a full read
    /// instead. The
    /// link and entry counts are never touched, so creates and removals in a directory keep
    /// commuting with a rename or chmod of it. A transaction using them must have read the
    /// record stably (`Txn::get_stable`): stable readers and other setters conflict with them.
    pub fn changes(old: &Attr, new: &Attr) -> Vec<DeltaOp> {
        let mut out = Vec::new();
        let (o, n) = (old.encode(), new.encode());
        if old.mtime != new.mtime {
            out.push(set(16, &n[16..24], false));
        }
        // atime and size; id (never changes) and parent; mode, uid, gid, rdev.
        for (from, to) in [(32usize, 48usize), (56, 64), (64, 80)] {
            if o[from..to] != n[from..to] {
                out.push(set(from as u32, &n[from..to], false));
            }
        }
        if old.target != new.target {
            out.push(set(super::HEAD as u32, &new.target, true));
        }
        if new.ctime > old.ctime || !out.is_empty() {
            out.push(ctime(new.ctime));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Attr {
        Attr {
            id: 42,
            mode: FileType::Symlink.bits() | 0o777,
            uid: 1000,
            gid: 100,
            nlink: 1,
            entries: 0,
            size: 3,
            atime: 1,
            mtime: 2,
            ctime: 3,
            rdev: 0,
            parent: 0,
            ns: 16,
            target: b"a/b".to_vec(),
        }
    }

    proptest! {
        #[test]
        fn changes_turn_the_old_record_into_the_new_one(
            mode in 0u32..0o7777, uid: u32, gid: u32, size: u64, atime: u64, mtime: u64,
            ctime in 4u64..u64::MAX, parent: u64, rdev: u32,
            target in proptest::collection::vec(any::<u8>(), 0..300),
            entries in 0u64..100, nlink in 0u64..100,
        ) {
            let old = sample();
            let mut new = old.clone();
            new.mode = FileType::Symlink.bits() | mode;
            new.uid = uid;
            new.gid = gid;
            new.size = size;
            new.atime = atime;
            new.mtime = mtime;
            new.ctime = ctime;
            new.parent = parent;
            new.rdev = rdev;
            new.target = target;
            let mut v = old.encode();
            // Concurrent deltas of the counts, before and after.
            delta::entries(entries as i64).apply(&mut v);
            for op in delta::changes(&old, &new) {
                op.apply(&mut v);
            }
            delta::nlink(nlink as i64).apply(&mut v);
            let got = Attr::decode(&v).expect("decodes");
            let mut want = new.clone();
            want.entries = old.entries + entries;
            want.nlink = old.nlink + nlink;
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn no_change_no_updates() {
        assert!(delta::changes(&sample(), &sample()).is_empty());
    }

    #[test]
    fn deltas_address_the_documented_fields() {
        let mut v = sample().encode();
        delta::nlink(2).apply(&mut v);
        delta::entries(5).apply(&mut v);
        delta::mtime(10).apply(&mut v);
        delta::mtime(7).apply(&mut v);
        delta::ctime(11).apply(&mut v);
        let a = Attr::decode(&v).expect("decode");
        assert_eq!((a.nlink, a.entries, a.mtime, a.ctime), (3, 5, 10, 11));
        assert_eq!(a.target, b"a/b");
    }

    #[test]
    fn damaged_records_are_errors() {
        let v = sample().encode();
        assert!(Attr::decode(&v[..40]).is_err());
        let mut bad = v.clone();
        bad[80] = 9;
        assert!(Attr::decode(&bad).is_err());
        let mut bad = v;
        bad[64..68].copy_from_slice(&0o777u32.to_le_bytes());
        assert!(Attr::decode(&bad).is_err());
        // A delta folded into an absent record is not a record.
        let mut ghost = Vec::new();
        delta::nlink(1).apply(&mut ghost);
        assert!(Attr::decode(&ghost).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(id: u64, perm in 0u32..0o7777, uid: u32, gid: u32, nlink: u64,
                      size: u64, t: (u64, u64, u64), target in proptest::collection::vec(any::<u8>(), 0..64)) {
            let a = Attr { id, mode: FileType::Regular.bits() | perm, uid, gid, nlink, entries: 0,
                size, atime: t.0, mtime: t.1, ctime: t.2, rdev: 0, parent: 0, ns: id ^ 1, target };
            prop_assert_eq!(Attr::decode(&a.encode()).expect("decode"), a);
        }
    }
}
