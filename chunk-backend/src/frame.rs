//! Record framing, as MStore frames every write on disk.
//!
//! ```text
//! offset size field
//!      0    4 prev_size   payload size of the previous record in this chunk (0 for the first)
//!      4    4 curr_size   payload size of this record
//!      8    4 prev_crc    CRC32C of the previous record's payload (0 for the first)
//!     12    4 curr_crc    CRC32C of this record's payload
//!     16    4 flags       bit 0: FIRST (the chunk's first record)
//!     20    4 self_cksum  CRC32C of bytes 0..20
//!     24    -  payload
//! ```
//!
//! Each header names its predecessor, so the records of a chunk form a chain. Recovery
//! ([`scan`]) walks the chain from the start and keeps exactly the complete records:
//! - a header that fails its own checksum, or whose payload is cut short or fails its CRC,
//!   *with nothing valid after it*, is a torn tail (a write that was never acknowledged) and is
//!   dropped;
//! - a record that fails its CRC but is followed by a valid record that names it as its
//!   predecessor is damage in the middle (bit rot), and is reported as a checksum error, never
//!   returned as data and never silently cut off with the acknowledged records after it;
//! - a valid-looking header whose predecessor fields do not match is left-over data from an
//!   earlier use of the space, and ends the chain.
//!
//! All integers are little-endian.

/// Header size in bytes.
pub const HEADER: usize = 24;
/// The chunk's first record.
pub const FLAG_FIRST: u32 = 1;
/// The largest payload of one record.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Payload size of the previous record.
    pub prev_size: u32,
    /// Payload size of this record.
    pub curr_size: u32,
    /// CRC32C of the previous record's payload.
    pub prev_crc: u32,
    /// CRC32C of this record's payload.
    pub curr_crc: u32,
    /// Flags.
    pub flags: u32,
}

/// The link a record leaves for its successor: its payload size and CRC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Payload size.
    pub size: u32,
    /// Payload CRC32C.
    pub crc: u32,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

impl Header {
    /// Encodes the header with its self checksum.
    pub fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0..4].copy_from_slice(&self.prev_size.to_le_bytes());
        h[4..8].copy_from_slice(&self.curr_size.to_le_bytes());
        h[8..12].copy_from_slice(&self.prev_crc.to_le_bytes());
        h[12..16].copy_from_slice(&self.curr_crc.to_le_bytes());
        h[16..20].copy_from_slice(&self.flags.to_le_bytes());
        let ck = crc32c::crc32c(&h[..20]);
        h[20..24].copy_from_slice(&ck.to_le_bytes());
        h
    }

    /// Decodes a header, or `None` if its self checksum fails.
    pub fn decode(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER || crc32c::crc32c(&b[..20]) != u32_at(b, 20) {
            return None;
        }
        Some(Header {
            prev_size: u32_at(b, 0),
            curr_size: u32_at(b, 4),
            prev_crc: u32_at(b, 8),
            curr_crc: u32_at(b, 12),
            flags: u32_at(b, 16),
        })
    }

    /// Whether this header follows `prev` (or starts a chunk when `prev` is `None`).
    pub fn follows(&self, prev: Option<Link>) -> bool {
        match prev {
            None => self.flags & FLAG_FIRST != 0 && self.prev_size == 0 && self.prev_crc == 0,
            Some(l) => {
                self.flags & FLAG_FIRST == 0 && self.prev_size == l.size && self.prev_crc == l.crc
            }
        }
    }
}

/// Frames `payload` after the record `prev` (none: the chunk's first record). Returns the
/// bytes to write and the link for the next record.
pub fn encode(prev: Option<Link>, payload: &[u8]) -> (Vec<u8>, Link) {
    let crc = crc32c::crc32c(payload);
    let p = prev.unwrap_or_default();
    let h = Header {
        prev_size: p.size,
        curr_size: payload.len() as u32,
        prev_crc: p.crc,
        curr_crc: crc,
        flags: if prev.is_none() { FLAG_FIRST } else { 0 },
    };
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(payload);
    (
        out,
        Link {
            size: payload.len() as u32,
            crc,
        },
    )
}

/// One record found by [`scan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Offset of its header.
    pub offset: u64,
    /// Its payload size.
    pub size: u32,
    /// Its link.
    pub link: Link,
}

/// What [`scan`] found in a chunk's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The complete records, in order.
    pub records: Vec<Found>,
    /// Where the next record goes (the end of the last complete record).
    pub end: u64,
    /// Whether bytes after `end` were dropped as a torn tail.
    pub torn: bool,
    /// Offsets of records damaged in the middle of the chain.
    pub corrupt: Vec<u64>,
    /// The link of the chain's last record (damaged or not): what the next record follows.
    pub last: Option<Link>,
}

/// Whether a valid record starting at `at` names `link` as its predecessor.
fn chain_resumes(bytes: &[u8], at: usize, link: Link) -> bool {
    let Some(h) = bytes.get(at..).and_then(Header::decode) else {
        return false;
    };
    let end = at + HEADER + h.curr_size as usize;
    h.follows(Some(link))
        && end <= bytes.len()
        && crc32c::crc32c(&bytes[at + HEADER..end]) == h.curr_crc
}

/// Walks the record chain of a chunk's bytes from offset 0.
pub fn scan(bytes: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut corrupt = Vec::new();
    let mut prev: Option<Link> = None;
    let mut pos = 0usize;
    loop {
        let rest = &bytes[pos..];
        if rest.len() < HEADER || rest[..HEADER].iter().all(|&b| b == 0) {
            let torn = rest.iter().any(|&b| b != 0) && rest.len() < HEADER;
            return Scan {
                records,
                end: pos as u64,
                torn,
                corrupt,
                last: prev,
            };
        }
        let Some(h) = Header::decode(rest) else {
            return Scan {
                records,
                end: pos as u64,
                torn: true,
                corrupt,
                last: prev,
            };
        };
        if !h.follows(prev) {
            // Left-over bytes of an earlier use of this space.
            return Scan {
                records,
                end: pos as u64,
                torn: false,
                corrupt,
                last: prev,
            };
        }
        let size = h.curr_size as usize;
        let next = pos + HEADER + size;
        if size > MAX_PAYLOAD || next > bytes.len() {
            return Scan {
                records,
                end: pos as u64,
                torn: true,
                corrupt,
                last: prev,
            };
        }
        let link = Link {
            size: h.curr_size,
            crc: h.curr_crc,
        };
        if crc32c::crc32c(&bytes[pos + HEADER..next]) != h.curr_crc {
            if chain_resumes(bytes, next, link) {
                corrupt.push(pos as u64);
            } else {
                return Scan {
                    records,
                    end: pos as u64,
                    torn: true,
                    corrupt,
                    last: prev,
                };
            }
        } else {
            records.push(Found {
                offset: pos as u64,
                size: h.curr_size,
                link,
            });
        }
        prev = Some(link);
        pos = next;
    }
}

/// Checks and returns the payload of the record at the start of `bytes`.
pub fn payload(bytes: &[u8]) -> Result<&[u8], String> {
    let h = Header::decode(bytes).ok_or("record header fails its checksum")?;
    let end = HEADER + h.curr_size as usize;
    if end > bytes.len() {
        return Err(format!("record of {} bytes is cut short", h.curr_size));
    }
    let p = &bytes[HEADER..end];
    if crc32c::crc32c(p) != h.curr_crc {
        return Err("record payload fails its CRC32C".into());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = None;
        for p in payloads {
            let (b, l) = encode(prev, p);
            out.extend_from_slice(&b);
            prev = Some(l);
        }
        out
    }

    #[test]
    fn a_clean_chain_scans_fully() {
        let b = chain(&[b"one", b"two", b"", b"four"]);
        let s = scan(&b);
        assert_eq!(s.records.len(), 4);
        assert_eq!(s.end as usize, b.len());
        assert!(!s.torn && s.corrupt.is_empty());
        assert_eq!(
            payload(&b[s.records[3].offset as usize..]).expect("ok"),
            b"four"
        );
        // Zeroed space after the chain is a clean end.
        let mut z = b.clone();
        z.extend_from_slice(&[0u8; 100]);
        assert_eq!(scan(&z).end as usize, b.len());
    }

    #[test]
    fn every_truncation_keeps_exactly_the_complete_records() {
        let payloads: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8; 10 + i * 7]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let b = chain(&refs);
        let ends: Vec<usize> = scan(&b)
            .records
            .iter()
            .map(|r| r.offset as usize + HEADER + r.size as usize)
            .collect();
        for cut in 0..=b.len() {
            let s = scan(&b[..cut]);
            let complete = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(s.records.len(), complete, "cut at {cut}");
            assert!(s.corrupt.is_empty());
        }
    }

    #[test]
    fn a_flipped_bit_is_corruption_in_the_middle_and_torn_at_the_end() {
        let b = chain(&[b"aaaa", b"bbbb", b"cccc"]);
        let s = scan(&b);
        // Flip a payload bit of the middle record: reported, the last record is still found.
        let mut m = b.clone();
        m[s.records[1].offset as usize + HEADER + 1] ^= 0x10;
        let sm = scan(&m);
        assert_eq!(sm.corrupt, vec![s.records[1].offset]);
        assert_eq!(sm.records.len(), 2);
        assert_eq!(sm.end as usize, b.len());
        assert!(payload(&m[s.records[1].offset as usize..]).is_err());
        // The same in the last record looks like a torn write: dropped.
        let mut t = b.clone();
        let last = b.len() - 1;
        t[last] ^= 1;
        let st = scan(&t);
        assert_eq!(st.records.len(), 2);
        assert!(st.torn);
        // A damaged header is never taken for a record.
        let mut h = b;
        h[s.records[0].offset as usize + 5] ^= 0xFF;
        assert_eq!(scan(&h).records.len(), 0);
    }

    #[test]
    fn left_over_records_from_earlier_use_end_the_chain() {
        let old = chain(&[b"old-1", b"old-2", b"old-3"]);
        let new = chain(&[b"new-1"]);
        let mut b = old.clone();
        b[..new.len()].copy_from_slice(&new);
        // The old second record's header is valid but does not follow new-1.
        let s = scan(&b);
        assert_eq!(s.records.len(), 1);
    }
}
