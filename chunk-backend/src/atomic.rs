//! Atomic, durable file replacement: the one implementation every small state file of the
//! system uses (Raft votes, timestamp marks, tablet layouts, snapshot references, the master's
//! placements, the hash engine's compacted file).
//!
//! [`replace`] writes a temporary file next to the target, `fsync`s it, renames it over the
//! target and `fsync`s the directory, so after a crash the target holds either the old or the
//! new contents, whole. [`write`] and [`read`] add a header (`magic, crc32c, length`) so that a
//! damaged or truncated file is reported as corruption instead of being misread.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"MNT1";
const HEADER: usize = 16;

/// Replaces `path` with what `fill` writes, atomically and durably.
pub fn replace(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{}: not a file path", path.display())))?;
    let tmp = path.with_file_name(format!("{}.tmp", name.to_string_lossy()));
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    fill(&mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    fail::fail_point!("atomic::before-sync", |_| Err(std::io::Error::other(
        "failpoint atomic::before-sync"
    )));
    file.sync_all()?;
    fail::fail_point!("atomic::before-rename", |_| Err(std::io::Error::other(
        "failpoint atomic::before-rename"
    )));
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fail::fail_point!("atomic::before-dir-sync", |_| Err(std::io::Error::other(
        "failpoint atomic::before-dir-sync"
    )));
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `payload` under a checksummed header (see [`read`]).
pub fn write(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    replace(path, |f| {
        f.write_all(MAGIC)?;
        f.write_all(&crc32c::crc32c(payload).to_le_bytes())?;
        f.write_all(&(payload.len() as u64).to_le_bytes())?;
        f.write_all(payload)
    })
}

/// Reads a file written by [`write`]: `None` if it does not exist, [`Error::Corrupt`] if its
/// header, length or checksum is wrong.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let bad = |why: &str| Err(Error::Corrupt(format!("{}: {why}", path.display())));
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return bad("not a checksummed state file (wrong header)");
    }
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let payload = &bytes[HEADER..];
    if u64::from_le_bytes(len) != payload.len() as u64 {
        return bad("truncated");
    }
    if crc32c::crc32c(payload) != crc {
        return bad("checksum mismatch");
    }
    Ok(Some(payload.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state");
        assert_eq!(read(&p).expect("read"), None);
        write(&p, b"hello").expect("write");
        assert_eq!(read(&p).expect("read"), Some(b"hello".to_vec()));
        write(&p, b"").expect("write");
        assert_eq!(read(&p).expect("read"), Some(Vec::new()));
        write(&p, b"world").expect("write");
        let mut b = std::fs::read(&p).expect("raw");
        let last = b.len() - 1;
        b[last] ^= 1;
        std::fs::write(&p, &b).expect("damage");
        assert!(matches!(read(&p), Err(Error::Corrupt(_))));
        std::fs::write(&p, &b[..b.len() - 2]).expect("truncate");
        assert!(matches!(read(&p), Err(Error::Corrupt(_))));
        std::fs::write(&p, b"raw old format").expect("old");
        assert!(matches!(read(&p), Err(Error::Corrupt(_))));
        assert!(!dir.path().join("state.tmp").exists());
    }
}
