//! Shared request vocabulary: where an operation acts.

use serde::{Deserialize, Serialize};

/// An entry to create, remove or rename: by path, or by parent inode and name (the inode form
/// a FUSE mount uses).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Loc {
    /// An absolute, normalized path; its last component is the entry.
    Path(Vec<u8>),
    /// Entry `name` of directory `parent`.
    Entry {
        /// The parent directory's inode id.
        parent: u64,
        /// The entry's name.
        name: Vec<u8>,
    },
}

/// An existing inode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Obj {
    /// By path; `follow` says whether a symlink in the last component is followed (stat vs
    /// lstat). Symlinks before the last component are always followed.
    Path {
        /// An absolute, normalized path.
        path: Vec<u8>,
        /// Follow a final symlink.
        follow: bool,
    },
    /// By inode id. A caller other than root may name only directories it could reach by path,
    /// and files it owns, this way (ids are sequential: by id it must not get what a path
    /// would not give it).
    Inode(u64),
    /// By inode id, for a client that reached the inode through a path it checked itself: a
    /// FUSE mount, whose kernel walks every path with the caller's search permissions
    /// (`default_permissions`) before it sends an inode's id. Any caller may name a file this
    /// way; the operation still checks its own permission (read, write, ownership) for the
    /// caller. Only callers in the store's process can use it: the gRPC API has no such form.
    Handle(u64),
    /// Entry `name` of directory `parent` (never followed).
    Entry {
        /// The parent directory's inode id.
        parent: u64,
        /// The entry's name.
        name: Vec<u8>,
    },
}

impl Obj {
    /// `path`, not following a final symlink.
    pub fn path(path: impl Into<Vec<u8>>) -> Obj {
        Obj::Path {
            path: path.into(),
            follow: false,
        }
    }
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The name.
    pub name: Vec<u8>,
    /// The inode it names.
    pub id: u64,
    /// The inode's type.
    pub kind: metastore::FileType,
    /// The inode's attributes, when asked for.
    pub attr: Option<metastore::Attr>,
}

/// A namespace in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsInfo {
    /// Its name.
    pub name: Vec<u8>,
    /// Its root directory's inode id.
    pub root: u64,
}

/// A namespace's usage, for `statfs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    /// Inodes in use (the root included).
    pub inodes: u64,
    /// Bytes of regular files (their sizes).
    pub bytes: u64,
    /// The longest name.
    pub name_max: u32,
    /// The block size reported to `statfs`.
    pub block_size: u32,
}
