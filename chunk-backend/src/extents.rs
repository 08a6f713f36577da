//! Where each byte range of a random-write file lives: the extent index shared by
//! `ExtentBlob`s ([`crate::blob`]) and the file store ([`crate::files`]).
//!
//! Writes are log-structured: a write appends a record, and the index maps every byte range to
//! the newest record covering it. Writes may complete out of order, so a piece carries the
//! version of its record and an older write never covers a newer one.

use std::collections::BTreeMap;

use crate::disk::Disk;
use crate::error::{Error, Result};

/// A byte range and the record that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) len: u64,
    pub(crate) version: u64,
    /// The sequence number of the chunk holding the record.
    pub(crate) chunk: u32,
    /// The record's offset in its chunk.
    pub(crate) record: u64,
    /// Where the range's first byte is in the record's payload.
    pub(crate) data: u64,
}

impl Piece {
    pub(crate) fn advance(mut self, by: u64) -> Piece {
        self.len -= by;
        self.data += by;
        self
    }
}

/// One file's index: start offset -> piece, and the size (one past the highest byte written,
/// or what a truncate set).
#[derive(Debug, Default)]
pub(crate) struct Extents {
    index: BTreeMap<u64, Piece>,
    size: u64,
}

impl Extents {
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// One past the highest byte a piece holds (0: none).
    pub(crate) fn end(&self) -> u64 {
        self.index.last_key_value().map_or(0, |(s, p)| s + p.len)
    }

    /// The pieces overlapping `[offset, end)`, as `(start, piece)`.
    pub(crate) fn covering(
        &self,
        offset: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, Piece)> + '_ {
        self.index
            .range(..end)
            .rev()
            .take_while(move |(s, p)| *s + p.len > offset)
            .map(|(s, p)| (*s, *p))
    }

    /// Every piece, as `(start, piece)`.
    pub(crate) fn pieces(&self) -> impl Iterator<Item = (u64, Piece)> + '_ {
        self.index.iter().map(|(s, p)| (*s, *p))
    }

    /// Records that `[start, start + new.len)` now lives in `new`, except where a newer
    /// version already covers it (writes may complete out of order). `live(chunk, bytes)` hears
    /// every change of the bytes each chunk holds that the index still points at.
    pub(crate) fn insert(&mut self, start: u64, new: Piece, live: &mut dyn FnMut(u32, i64)) {
        // An empty write changes nothing, as a zero-byte pwrite does not extend a file.
        if new.len == 0 {
            return;
        }
        let end = start + new.len;
        self.size = self.size.max(end);
        let overlapping: Vec<(u64, Piece)> = self.covering(start, end).collect();
        let mut newer: Vec<(u64, u64)> = Vec::new();
        for (s, p) in overlapping {
            if p.version > new.version {
                newer.push((s.max(start), (s + p.len).min(end)));
                continue;
            }
            self.index.remove(&s);
            live(p.chunk, -(p.len as i64));
            if s < start {
                self.index.insert(
                    s,
                    Piece {
                        len: start - s,
                        ..p
                    },
                );
                live(p.chunk, (start - s) as i64);
            }
            if s + p.len > end {
                self.index.insert(end, p.advance(end - s));
                live(p.chunk, (s + p.len - end) as i64);
            }
        }
        newer.sort_unstable();
        let mut at = start;
        for (ns, ne) in newer.into_iter().chain(std::iter::once((end, end))) {
            if ns > at {
                self.index.insert(
                    at,
                    Piece {
                        len: ns - at,
                        ..new.advance(at - start)
                    },
                );
                live(new.chunk, (ns - at) as i64);
            }
            at = at.max(ne);
        }
    }

    /// Cuts the file to `size` bytes: pieces past it go, the one across it is shortened.
    /// Growing only moves the size (the new bytes are a hole).
    pub(crate) fn truncate(&mut self, size: u64, live: &mut dyn FnMut(u32, i64)) {
        let beyond: Vec<(u64, Piece)> = self.covering(size, u64::MAX).collect();
        for (s, p) in beyond {
            self.index.remove(&s);
            live(p.chunk, -(p.len as i64));
            if s < size {
                self.index.insert(s, Piece { len: size - s, ..p });
                live(p.chunk, (size - s) as i64);
            }
        }
        self.size = size;
    }
}

/// Reads `[offset, offset + len)` from `pieces` (`(start, piece, chunk id)`, as
/// [`Extents::covering`] gave them, with their chunks' ids); bytes no piece covers read as zeros.
/// `what` names the file or blob in errors.
pub(crate) fn assemble(
    disk: &Disk,
    pieces: &[(u64, Piece, u64)],
    offset: u64,
    len: usize,
    what: &str,
) -> Result<Vec<u8>> {
    let end = offset + len as u64;
    let mut out = vec![0u8; len];
    for (s, p, chunk) in pieces {
        let payload = disk.read(*chunk, p.record)?;
        let from = (*s).max(offset);
        let to = (s + p.len).min(end);
        let src = (p.data + (from - s)) as usize;
        let n = (to - from) as usize;
        let bytes = payload
            .get(src..src + n)
            .ok_or_else(|| Error::Corrupt(format!("an extent of {what} points past its record")))?;
        let dst = (from - offset) as usize;
        out[dst..dst + n].copy_from_slice(bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(len: u64, version: u64, chunk: u32) -> Piece {
        Piece {
            len,
            version,
            chunk,
            record: 0,
            data: 0,
        }
    }

    #[test]
    fn live_bytes_follow_overwrites_and_truncates() {
        let mut e = Extents::default();
        let mut live = std::collections::HashMap::<u32, i64>::new();
        {
            let mut f = |c: u32, by: i64| *live.entry(c).or_default() += by;
            e.insert(0, piece(100, 1, 0), &mut f);
            e.insert(40, piece(20, 2, 1), &mut f);
            // An older write completing late does not cover the newer one.
            e.insert(50, piece(30, 1, 2), &mut f);
            e.truncate(70, &mut f);
        }
        let total: u64 = e.pieces().map(|(_, p)| p.len).sum();
        assert_eq!(total, 70);
        assert_eq!(e.size(), 70);
        assert_eq!(live[&0], 40);
        assert_eq!(live[&1], 20);
        assert_eq!(live[&2], 10);
        e.truncate(0, &mut |c: u32, by: i64| *live.entry(c).or_default() += by);
        assert!(live.values().all(|v| *v == 0), "{live:?}");
    }
}
