//! Record framing shared by the on-disk files of the store (the hash engine's batch file and
//! the Raft log): `len:u32le, crc32c:u32le, payload`.

/// Frames `payload` as one record.
pub(crate) fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Whether `rest` starts with a complete record whose checksum holds. A bad record followed by
/// a valid one is corruption; a bad record at the end is a torn write.
pub(crate) fn valid_record_at(rest: &[u8]) -> bool {
    let Some(h) = rest.get(..8) else { return false };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    rest.get(8..8 + len)
        .is_some_and(|p| crc32c::crc32c(p) == crc)
}
