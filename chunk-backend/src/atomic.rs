//! Atomic, durable file replacement: the one implementation every small state file of the
//! system uses (Raft votes, timestamp marks, tablet layouts, snapshot references, the master's
//! placements, the hash engine's compacted file).
//!
//! [`replace`] writes a temporary file next to the target, `fsync`s it, renames it over the
//! target and `fsync`s the directory, so after a crash the target holds either the old or the
//! new contents, whole. [`write`] and [`read`] add a header (`magic, crc32c, length`) so that a
//! damaged or truncated file is reported as corruption instead of being misread.
//!
//! A replacement needs new disk blocks, so it fails on a full disk. State that must stay
//! writable there (Raft votes and purge marks, the timestamp oracle's mark: without them a
//! store stops) lives in a [`SlotFile`] instead, rewritten in place.

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
    decode(&bytes, &path.display().to_string()).map(Some)
}

/// The payload of the bytes of a file written by [`write`] (`name` says where they came from,
/// for errors).
pub fn decode(bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    let bad = |why: &str| Err(Error::Corrupt(format!("{name}: {why}")));
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
    Ok(payload.to_vec())
}

const SLOT_MAGIC: &[u8; 4] = b"MNS1";
/// Bytes per slot: one sector, which disks write whole.
const SLOT: usize = 512;
const SLOT_HEAD: usize = 20;
/// The largest record a [`SlotFile`] holds.
pub const MAX_SLOT_RECORD: usize = SLOT - SLOT_HEAD;

/// A small record rewritten in place: two fixed one-sector slots, written alternately with
/// `pwrite` and `fdatasync`, each with a sequence number and a checksum. A torn write damages
/// only the slot being written, and the other still holds the previous record; a write never
/// allocates, so it works on a full disk. The file is created once (by [`replace`]).
pub struct SlotFile {
    file: File,
    next: u64,
}

fn parse_slot(b: &[u8]) -> Option<(u64, Vec<u8>)> {
    if b.len() < SLOT || &b[..4] != SLOT_MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(b[4..12].try_into().ok()?);
    let len = u32::from_le_bytes(b[12..16].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(b[16..20].try_into().ok()?);
    if len > MAX_SLOT_RECORD {
        return None;
    }
    let payload = &b[SLOT_HEAD..SLOT_HEAD + len];
    let mut c = crc32c::crc32c(&b[4..16]);
    c = crc32c::crc32c_append(c, payload);
    (c == crc).then(|| (seq, payload.to_vec()))
}

fn slot_bytes(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; SLOT];
    b[..4].copy_from_slice(SLOT_MAGIC);
    b[4..12].copy_from_slice(&seq.to_le_bytes());
    b[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    b[SLOT_HEAD..SLOT_HEAD + payload.len()].copy_from_slice(payload);
    let c = crc32c::crc32c_append(crc32c::crc32c(&b[4..16]), payload);
    b[16..20].copy_from_slice(&c.to_le_bytes());
    b
}

impl SlotFile {
    /// Opens `path` and returns it with its newest record. A missing file is created empty; a
    /// file of the [`write`] format is converted (with its record kept). Both slots damaged is
    /// corruption.
    pub fn open(path: &Path) -> Result<(SlotFile, Option<Vec<u8>>)> {
        let existing = match std::fs::read(path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let (seq, record) = match &existing {
            Some(b) if b.len() >= 4 && &b[..4] == MAGIC => {
                // The older format: convert once, keeping the record.
                let rec = read(path)?;
                let rec = rec.unwrap_or_default();
                Self::create(path, Some(&rec))?;
                (1, Some(rec))
            }
            Some(b) => {
                let slots = [
                    parse_slot(&b[..b.len().min(SLOT)]),
                    parse_slot(b.get(SLOT..).unwrap_or_default()),
                ];
                let newest = slots.into_iter().flatten().max_by_key(|(seq, _)| *seq);
                match newest {
                    Some((seq, rec)) => (seq, (seq > 0).then_some(rec)),
                    None => {
                        return Err(Error::Corrupt(format!(
                            "{}: both slots are damaged",
                            path.display()
                        )))
                    }
                }
            }
            None => {
                Self::create(path, None)?;
                (0, None)
            }
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok((
            SlotFile {
                file,
                next: seq + 1,
            },
            record,
        ))
    }

    /// Writes a new file whose first slot holds `record` (sequence 1), or nothing (sequence 0).
    fn create(path: &Path, record: Option<&[u8]>) -> std::io::Result<()> {
        // Sequence n lives in slot n % 2: an empty file is sequence 0 in slot 0, a converted
        // record sequence 1 in slot 1, so the next write goes to the other slot.
        let (a, b) = match record {
            Some(r) if r.len() > MAX_SLOT_RECORD => {
                return Err(std::io::Error::other(format!(
                    "a {}-byte record does not fit a slot",
                    r.len()
                )))
            }
            Some(r) => (vec![0u8; SLOT], slot_bytes(1, r)),
            None => (slot_bytes(0, &[]), vec![0u8; SLOT]),
        };
        replace(path, |f| {
            f.write_all(&a)?;
            f.write_all(&b)
        })
    }

    /// Replaces the record durably, in place.
    pub fn write(&mut self, record: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if record.len() > MAX_SLOT_RECORD {
            return Err(std::io::Error::other(format!(
                "a {}-byte record does not fit a slot of {MAX_SLOT_RECORD}",
                record.len()
            )));
        }
        let seq = self.next;
        let at = (seq % 2) * SLOT as u64;
        fail::fail_point!("atomic::slot-write", |_| Err(std::io::Error::other(
            "failpoint atomic::slot-write"
        )));
        self.file.write_all_at(&slot_bytes(seq, record), at)?;
        self.file.sync_data()?;
        self.next = seq + 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_files_keep_the_newest_whole_record_and_survive_a_torn_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("mark");
        let (mut f, rec) = SlotFile::open(&p).expect("create");
        assert_eq!(rec, None);
        f.write(b"one").expect("write");
        f.write(b"two").expect("write");
        drop(f);
        let (mut f, rec) = SlotFile::open(&p).expect("open");
        assert_eq!(rec.as_deref(), Some(&b"two"[..]));
        f.write(b"three").expect("write");
        drop(f);
        // Tear the slot written last: the one before it is the record.
        let mut b = std::fs::read(&p).expect("raw");
        // Sequence 3 lives in slot 3 % 2 = 1.
        let torn = SLOT;
        b[torn + SLOT_HEAD] ^= 0xff;
        std::fs::write(&p, &b).expect("tear");
        let (_, rec) = SlotFile::open(&p).expect("open");
        assert_eq!(rec.as_deref(), Some(&b"two"[..]));
        // Both torn: corruption, not a silent reset.
        let mut b = std::fs::read(&p).expect("raw");
        b[SLOT + SLOT_HEAD - torn] ^= 0xff;
        std::fs::write(&p, &b).expect("tear");
        assert!(matches!(SlotFile::open(&p), Err(Error::Corrupt(_))));
        // The older format converts, keeping its record.
        let old = dir.path().join("old");
        write(&old, b"legacy").expect("write");
        let (mut f, rec) = SlotFile::open(&old).expect("convert");
        assert_eq!(rec.as_deref(), Some(&b"legacy"[..]));
        f.write(b"new").expect("write");
        drop(f);
        assert_eq!(
            SlotFile::open(&old).expect("open").1.as_deref(),
            Some(&b"new"[..])
        );
        assert!(SlotFile::open(&old)
            .expect("open")
            .0
            .write(&[0; MAX_SLOT_RECORD + 1])
            .is_err());
    }

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
