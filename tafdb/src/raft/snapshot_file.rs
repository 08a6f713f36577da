//! Full snapshots as files: every engine row of a tablet replica, written and read in a
//! stream, so that shipping a tablet to a new or lagging replica costs bounded memory however
//! large the tablet is.
//!
//! The file is a chain of records in the chunk store's framing ([`chunk_backend::frame`]:
//! sizes and CRC32C of each record and of its predecessor), whose payloads are, in order, one
//! [`Part::Begin`] (a magic string and the tablet's meta record), any number of
//! [`Part::Rows`] of about 1 MiB, and one [`Part::End`] with the row count. A reader checks
//! every record and the chain, and refuses a file that stops before its end: openraft writes
//! the chunks it receives into such a file, and a transfer cut short must never install.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chunk_backend::frame::{self, Header, Link, HEADER};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};

/// Engine rows `(engine index, key, value)`.
pub(crate) type Rows = Vec<(u8, Vec<u8>, Vec<u8>)>;

/// Names a full snapshot file (and its format version).
const MAGIC: &str = "tafdb full snapshot v1";
/// A rows part is written once it holds this many bytes of keys and values.
const PART_BYTES: usize = 1 << 20;

/// One record's payload.
#[derive(Serialize, Deserialize)]
pub(crate) enum Part<M> {
    /// First: what the file is, and the tablet's meta record.
    Begin {
        /// [`MAGIC`].
        magic: String,
        /// The meta record (durable log id, membership, floor, timestamps).
        meta: M,
    },
    /// Engine rows `(engine index, key, value)`.
    Rows(Rows),
    /// Last: how many rows came before.
    End {
        /// The row count.
        rows: u64,
    },
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Corruption(format!("snapshot {}: {what}", path.display()))
}

/// Writes a full snapshot to a temporary name, and renames it into place when finished.
pub(crate) struct Writer {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    prev: Option<Link>,
    rows: Rows,
    bytes: usize,
    count: u64,
}

impl Writer {
    /// Starts the snapshot of `meta` at `path`.
    pub(crate) fn create<M: Serialize>(path: &Path, meta: &M) -> Result<Writer> {
        let tmp = path.with_extension("partial");
        let mut w = Writer {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, File::create(&tmp)?),
            tmp,
            prev: None,
            rows: Vec::new(),
            bytes: 0,
            count: 0,
        };
        w.part(&Part::Begin {
            magic: MAGIC.to_string(),
            meta,
        })?;
        Ok(w)
    }

    fn part<M: Serialize>(&mut self, part: &Part<M>) -> Result<()> {
        let payload = bincode::serialize(part).map_err(|e| Error::Corruption(e.to_string()))?;
        let (bytes, link) = frame::encode(self.prev, &payload);
        self.out.write_all(&bytes)?;
        self.prev = Some(link);
        Ok(())
    }

    /// Adds a row of engine `engine`.
    pub(crate) fn put(&mut self, engine: u8, key: &[u8], value: &[u8]) -> Result<()> {
        self.bytes += key.len() + value.len() + 16;
        self.rows.push((engine, key.to_vec(), value.to_vec()));
        self.count += 1;
        if self.bytes >= PART_BYTES {
            self.flush_rows()?;
        }
        Ok(())
    }

    fn flush_rows(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = Part::<()>::Rows(std::mem::take(&mut self.rows));
        self.bytes = 0;
        self.part(&rows)
    }

    /// Ends the file, makes it durable and moves it into place.
    pub(crate) fn finish(mut self) -> Result<u64> {
        self.flush_rows()?;
        let rows = self.count;
        self.part(&Part::<()>::End { rows })?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::Io(e.into_error()))?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(rows)
    }
}

/// A reader of `file` from its start (the handle itself is left where it was).
fn from_start(file: &File) -> Result<BufReader<File>> {
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(0))?;
    Ok(BufReader::with_capacity(1 << 20, f))
}

/// Whether `file` starts like a full snapshot (its first record is a `Begin` part).
pub(crate) fn is_full(file: &File) -> Result<bool> {
    let mut r = from_start(file)?;
    let mut h = [0u8; HEADER];
    if r.read_exact(&mut h).is_err() {
        return Ok(false);
    }
    let Some(h) = Header::decode(&h) else {
        return Ok(false);
    };
    if h.flags & frame::FLAG_FIRST == 0 || h.curr_size as usize > frame::MAX_PAYLOAD {
        return Ok(false);
    }
    let mut payload = vec![0u8; h.curr_size as usize];
    if r.read_exact(&mut payload).is_err() || crc32c::crc32c(&payload) != h.curr_crc {
        return Ok(false);
    }
    // `Begin` is variant 0 and starts with the magic string (bincode reads a prefix and
    // leaves the meta record alone).
    Ok(matches!(
        bincode::deserialize::<(u32, String)>(&payload),
        Ok((0, magic)) if magic == MAGIC
    ))
}

/// Reads the full snapshot in `file` (from its start; `name` for errors): returns its meta
/// record, and hands each batch of rows to `rows` (none at all when `rows` is `None`: a check
/// of the whole file). Fails on any damaged record, a broken chain, a wrong row count, or a
/// file that ends before its `End` part.
pub(crate) fn read<M: DeserializeOwned>(
    file: &File,
    name: &Path,
    mut rows: Option<&mut dyn FnMut(Rows) -> Result<()>>,
) -> Result<M> {
    let path = name;
    let mut r = from_start(file)?;
    let mut prev: Option<Link> = None;
    let mut meta = None;
    let mut count = 0u64;
    loop {
        let mut h = [0u8; HEADER];
        r.read_exact(&mut h)
            .map_err(|_| corrupt(path, "it ends before its last record"))?;
        let h = Header::decode(&h).ok_or_else(|| corrupt(path, "a record header is damaged"))?;
        if !h.follows(prev) || h.curr_size as usize > frame::MAX_PAYLOAD {
            return Err(corrupt(path, "its records do not follow one another"));
        }
        let mut payload = vec![0u8; h.curr_size as usize];
        r.read_exact(&mut payload)
            .map_err(|_| corrupt(path, "a record is cut short"))?;
        if crc32c::crc32c(&payload) != h.curr_crc {
            return Err(corrupt(path, "a record fails its CRC32C"));
        }
        prev = Some(Link {
            size: h.curr_size,
            crc: h.curr_crc,
        });
        let part: Part<M> =
            bincode::deserialize(&payload).map_err(|e| corrupt(path, format!("a record: {e}")))?;
        match (part, meta.is_some()) {
            (Part::Begin { magic, meta: m }, false) if magic == MAGIC => meta = Some(m),
            (Part::Begin { .. }, _) => return Err(corrupt(path, "an unexpected first record")),
            (_, false) => return Err(corrupt(path, "it does not start with its meta record")),
            (Part::Rows(batch), true) => {
                count += batch.len() as u64;
                if let Some(f) = rows.as_mut() {
                    f(batch)?;
                }
            }
            (Part::End { rows: n }, true) => {
                if n != count {
                    return Err(corrupt(
                        path,
                        format!("{count} rows where {n} were written"),
                    ));
                }
                return meta.ok_or_else(|| corrupt(path, "no meta record"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_back_and_damage_or_truncation_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("snap");
        let mut w = Writer::create(&path, &42u64).expect("create");
        let value = vec![9u8; 40 << 10];
        for i in 0..100u32 {
            w.put((i % 3) as u8, &i.to_be_bytes(), &value).expect("put");
        }
        assert_eq!(w.finish().expect("finish"), 100);
        let open = || File::open(&path).expect("open");
        assert!(is_full(&open()).expect("is_full"));
        let mut seen = 0;
        let mut parts = 0;
        let meta: u64 = read(
            &open(),
            &path,
            Some(&mut |rows| {
                parts += 1;
                for (e, k, v) in rows {
                    let i = u32::from_be_bytes(k.as_slice().try_into().expect("key"));
                    assert_eq!((e, i, v.len()), ((i % 3) as u8, seen, 40 << 10));
                    seen += 1;
                }
                Ok(())
            }),
        )
        .expect("read");
        assert_eq!((meta, seen), (42, 100));
        assert!(parts > 1, "rows come in several parts");
        let bytes = std::fs::read(&path).expect("bytes");
        // Cut short anywhere: refused.
        for cut in [10, HEADER + 3, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).expect("write");
            assert!(read::<u64>(&open(), &path, None).is_err(), "cut at {cut}");
        }
        // One flipped byte in the middle: refused.
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        std::fs::write(&path, &bad).expect("write");
        assert!(read::<u64>(&open(), &path, None).is_err());
        // Not a snapshot at all.
        std::fs::write(&path, b"a durable reference").expect("write");
        assert!(!is_full(&open()).expect("is_full"));
    }
}
