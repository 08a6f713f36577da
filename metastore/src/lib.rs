//! The Meta table of Mantle-rs: how the namespace's entries and inodes are laid out as TafDB
//! keys and values.
//!
//! What it is: pure codecs. [`keys`] builds and parses the table's keys (`02 | id | kind | ...`,
//! big-endian so that a directory's children sort together and a readdir is one range scan);
//! [`Attr`] is an inode's attribute record with a fixed-width head whose link count, entry
//! count and times are updated by TafDB delta records ([`attr::delta`]); [`Dentry`] is a
//! directory entry; [`name`] validates names and paths.
//!
//! What it is not: it runs no transactions and checks no permissions. The namespace operations
//! that combine the Meta table with the Index table live in the `coprocessor` crate.
//!
//! Key types: [`Attr`], [`FileType`], [`Dentry`], [`keys`], [`name::check_name`],
//! [`name::split_path`], [`DecodeError`].

pub mod attr;
pub mod dentry;
pub mod keys;
pub mod name;

pub use attr::{Attr, FileType};
pub use dentry::Dentry;

/// A record read from the store does not decode: the data is damaged or from an unknown format.
#[derive(Debug, thiserror::Error)]
#[error("undecodable {what}: {detail}")]
pub struct DecodeError {
    /// What was being decoded.
    pub what: &'static str,
    /// Why it failed.
    pub detail: String,
}

impl DecodeError {
    pub(crate) fn new(what: &'static str, detail: impl Into<String>) -> DecodeError {
        DecodeError {
            what,
            detail: detail.into(),
        }
    }
}
