//! An external sorter: records (byte strings, ordered as bytes) are buffered up to a memory
//! budget, sorted, and spilled to run files; [`Sorter::finish`] merges the runs back in order.
//!
//! Run files are unlinked as soon as they are created, so a crash or a cancelled check leaves
//! nothing behind. A run is a sequence of `len:u32 LE | bytes` records; it is written and read
//! back by the same process within one check, so it carries no checksum, but a length that
//! runs past the file is still an error, never a panic.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Per-record bookkeeping counted against the budget besides the bytes themselves.
const SLOT: usize = 8;

/// Collects records, then hands them back sorted.
pub(crate) struct Sorter {
    dir: PathBuf,
    budget: usize,
    /// The buffered records, back to back, and each one's `(offset, length)`.
    arena: Vec<u8>,
    slots: Vec<(u32, u32)>,
    runs: Vec<File>,
    records: u64,
}

impl Sorter {
    /// A sorter that keeps about `budget` bytes in memory and spills to files in `dir`.
    pub(crate) fn new(dir: &Path, budget: usize) -> Sorter {
        Sorter {
            dir: dir.to_path_buf(),
            budget: budget.max(64),
            arena: Vec::new(),
            slots: Vec::new(),
            runs: Vec::new(),
            records: 0,
        }
    }

    /// Adds one record.
    pub(crate) fn push(&mut self, rec: &[u8]) -> io::Result<()> {
        let len = u32::try_from(rec.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record over 4 GiB"))?;
        if !self.slots.is_empty()
            && self.arena.len() + rec.len() + SLOT * (self.slots.len() + 1) > self.budget
        {
            self.spill()?;
        }
        let off = u32::try_from(self.arena.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "sort buffer over 4 GiB"))?;
        self.arena.extend_from_slice(rec);
        self.slots.push((off, len));
        self.records += 1;
        Ok(())
    }

    /// Records pushed so far.
    pub(crate) fn len(&self) -> u64 {
        self.records
    }

    /// Run files written so far.
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }

    fn sorted_slots(&mut self) -> Vec<(u32, u32)> {
        let arena = &self.arena;
        let at = |&(o, l): &(u32, u32)| &arena[o as usize..(o + l) as usize];
        let mut slots = std::mem::take(&mut self.slots);
        slots.sort_unstable_by(|a, b| at(a).cmp(at(b)));
        slots
    }

    fn spill(&mut self) -> io::Result<()> {
        let slots = self.sorted_slots();
        // Unique within the process (several checks may spill at once) and across processes.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = self.dir.join(format!(
            ".fsck-run-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| with_path(e, &path))?;
        // Unlinked at once: the open handle keeps the data until the check drops it.
        std::fs::remove_file(&path).map_err(|e| with_path(e, &path))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        for &(o, l) in &slots {
            out.write_all(&l.to_le_bytes())?;
            out.write_all(&self.arena[o as usize..(o + l) as usize])?;
        }
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        self.runs.push(file);
        self.arena.clear();
        Ok(())
    }

    /// Every record pushed, in byte order.
    pub(crate) fn finish(mut self) -> io::Result<Sorted> {
        if self.runs.is_empty() {
            let slots = self.sorted_slots();
            return Ok(Sorted {
                inner: Inner::Memory {
                    arena: std::mem::take(&mut self.arena),
                    slots: slots.into_iter(),
                },
            });
        }
        if !self.slots.is_empty() {
            self.spill()?;
        }
        let mut readers: Vec<BufReader<File>> = self
            .runs
            .drain(..)
            .map(|f| BufReader::with_capacity(256 << 10, f))
            .collect();
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(rec) = read_record(r)? {
                heap.push(Reverse((rec, i)));
            }
        }
        Ok(Sorted {
            inner: Inner::Runs { readers, heap },
        })
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn read_record(r: &mut BufReader<File>) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut rec = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut rec).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sort run cut short: {e}"),
        )
    })?;
    Ok(Some(rec))
}

enum Inner {
    Memory {
        arena: Vec<u8>,
        slots: std::vec::IntoIter<(u32, u32)>,
    },
    Runs {
        readers: Vec<BufReader<File>>,
        heap: BinaryHeap<Reverse<(Vec<u8>, usize)>>,
    },
}

/// The sorted records, read one at a time.
pub(crate) struct Sorted {
    inner: Inner,
}

impl Sorted {
    /// The next record in byte order.
    pub(crate) fn next_record(&mut self) -> io::Result<Option<Vec<u8>>> {
        match &mut self.inner {
            Inner::Memory { arena, slots } => Ok(slots
                .next()
                .map(|(o, l)| arena[o as usize..(o + l) as usize].to_vec())),
            Inner::Runs { readers, heap } => {
                let Some(Reverse((rec, i))) = heap.pop() else {
                    return Ok(None);
                };
                if let Some(next) = read_record(&mut readers[i])? {
                    heap.push(Reverse((next, i)));
                }
                Ok(Some(rec))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(budget: usize, recs: &[Vec<u8>]) -> (Vec<Vec<u8>>, usize) {
        let dir = std::env::temp_dir();
        let mut s = Sorter::new(&dir, budget);
        for r in recs {
            s.push(r).expect("push");
        }
        let runs = s.runs();
        let mut out = Vec::new();
        let mut it = s.finish().expect("finish");
        while let Some(r) = it.next_record().expect("next") {
            out.push(r);
        }
        (out, runs)
    }

    #[test]
    fn sorts_in_memory_and_through_runs() {
        // A deterministic scramble, duplicates and empty records included.
        let recs: Vec<Vec<u8>> = (0u32..5000)
            .map(|i| {
                let x = i.wrapping_mul(2_654_435_761) % 1777;
                let mut v = x.to_be_bytes().to_vec();
                v.truncate((x % 5) as usize);
                v
            })
            .collect();
        let mut want = recs.clone();
        want.sort();
        let (mem, runs) = sorted(1 << 30, &recs);
        assert_eq!(runs, 0);
        assert_eq!(mem, want);
        let (spilled, runs) = sorted(512, &recs);
        assert!(runs > 10, "{runs} runs");
        assert_eq!(spilled, want);
    }
}
