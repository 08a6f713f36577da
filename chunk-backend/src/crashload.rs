//! The workload of the `chunk-crashload` binary, shared with the crash test that checks it.

use crate::disk::DiskConfig;

/// The payload of record `i` of thread `t`: deterministic, 50..4000 bytes, naming itself.
pub fn payload(t: u64, i: u64) -> Vec<u8> {
    let len = 50 + ((t * 7919 + i * 104_729) % 3950) as usize;
    let mut v = format!("t{t}-i{i}-").into_bytes();
    while v.len() < len {
        v.push(b'a' + ((t + i + v.len() as u64) % 26) as u8);
    }
    v
}

/// Parses the `(thread, i)` a payload names.
pub fn parse(p: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(p.get(..p.len().min(40))?).ok()?;
    let mut it = s.splitn(3, '-');
    let t = it.next()?.strip_prefix('t')?.parse().ok()?;
    let i = it.next()?.strip_prefix('i')?.parse().ok()?;
    Some((t, i))
}

/// The store's shape: small chunks, so that runs cross chunk boundaries.
pub fn config() -> DiskConfig {
    DiskConfig {
        block_size: 64 << 10,
        blocks: 4096,
        chunk_slots: 512,
        chunk_blocks: 8,
    }
}
