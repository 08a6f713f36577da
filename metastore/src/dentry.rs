//! Directory entries: `02 | pid | 02 | name -> type:u8 | id:u64le`.
//!
//! An entry names an inode and carries its type, so that readdir answers `d_type` without
//! reading inode records. The inode's attributes live in its own record (see
//! [`crate::keys::attr_key`]) so that hard links share them and the inode form of the API (the
//! FUSE mount) can reach any inode by id.

use crate::attr::FileType;
use crate::DecodeError;

/// A directory entry's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dentry {
    /// The inode it names.
    pub id: u64,
    /// The inode's type.
    pub kind: FileType,
}

impl Dentry {
    /// Encodes the entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(9);
        v.push(self.kind.code());
        v.extend_from_slice(&self.id.to_le_bytes());
        v
    }

    /// Decodes an entry.
    pub fn decode(v: &[u8]) -> Result<Dentry, DecodeError> {
        if v.len() != 9 {
            return Err(DecodeError::new(
                "directory entry",
                format!("{} bytes, expected 9", v.len()),
            ));
        }
        let kind = FileType::from_code(v[0])
            .ok_or_else(|| DecodeError::new("directory entry", format!("type code {}", v[0])))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&v[1..9]);
        Ok(Dentry {
            id: u64::from_le_bytes(id),
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        for kind in [
            FileType::Regular,
            FileType::Directory,
            FileType::Symlink,
            FileType::Fifo,
            FileType::Socket,
            FileType::CharDevice,
            FileType::BlockDevice,
        ] {
            let d = Dentry { id: 99, kind };
            assert_eq!(Dentry::decode(&d.encode()).expect("decode"), d);
        }
        assert!(Dentry::decode(&[4, 0]).is_err());
        assert!(Dentry::decode(&[0; 9]).is_err());
    }
}
