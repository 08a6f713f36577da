//! The hash engine's in-memory map: one allocation per entry.
//!
//! A `DashMap<Vec<u8>, Vec<u8>>` costs two heap allocations and 48 bytes of slot per entry:
//! 185 bytes for an Index-table entry (26-byte key, 21-byte value), measured with
//! `cargo run --release -p tafdb --example index_memory`. Here an entry is one boxed slice,
//! `varint(key length) | key | value` behind a thin pointer (8 bytes of slot in a sharded
//! `hashbrown::HashTable`; the entry's length lives in its allocation), which is what lets one node hold a namespace's whole directory tree (Mantle keeps
//! about 80 bytes per directory).

use std::hash::BuildHasher;

use hashbrown::hash_table::{Entry, HashTable};
use parking_lot::RwLock;

use crate::keys::Value;

/// Shards: enough that the flusher writing and readers reading rarely meet on one lock.
const SHARDS: usize = 64;

/// Appends `n` as a LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// One entry behind a thin pointer: `varint(body length) | body` in one allocation, the body
/// being `varint(key length) | key | value`. A boxed slice would take 16 bytes of table slot
/// per entry for its length; the length lives in the allocation instead, 8 bytes saved per
/// directory (about 13 with the table's slack).
struct Packed(std::ptr::NonNull<u8>);

// SAFETY: a `Packed` owns its allocation exclusively (no interior mutability, no sharing), so
// moving it to or reading it from another thread is what a `Box<[u8]>` allows.
#[allow(unsafe_code)]
unsafe impl Send for Packed {}
// SAFETY: as above; `&Packed` only gives out shared `&[u8]`.
#[allow(unsafe_code)]
unsafe impl Sync for Packed {}

impl Packed {
    #[allow(unsafe_code)]
    fn new(key: &[u8], value: &[u8]) -> Packed {
        let body_len = varint_len(key.len()) + key.len() + value.len();
        let mut bytes = Vec::with_capacity(varint_len(body_len) + body_len);
        put_varint(&mut bytes, body_len);
        put_varint(&mut bytes, key.len());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value);
        let layout = std::alloc::Layout::array::<u8>(bytes.len())
            .unwrap_or_else(|_| std::alloc::handle_alloc_error(std::alloc::Layout::new::<u8>()));
        // SAFETY: `layout` has a non-zero size (a body length varint is at least one byte).
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: `ptr` is valid for `bytes.len()` writes (just allocated with that size) and
        // cannot overlap `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), bytes.len()) };
        Packed(ptr)
    }

    /// The whole allocation, and the length of its header.
    #[allow(unsafe_code)]
    fn all(&self) -> (&[u8], usize) {
        let p = self.0.as_ptr();
        let (mut n, mut shift, mut i) = (0usize, 0u32, 0usize);
        loop {
            // SAFETY: the header was written whole by `new`, and reading stops at its last
            // byte (the first without the continuation bit), inside the allocation.
            let b = unsafe { *p.add(i) };
            n |= usize::from(b & 0x7f) << shift;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        // SAFETY: `new` allocated and initialized exactly `i + n` bytes (header and body), and
        // they live as long as `self`.
        (unsafe { std::slice::from_raw_parts(p, i + n) }, i)
    }

    /// The body: `varint(key length) | key | value`.
    fn body(&self) -> &[u8] {
        let (all, header) = self.all();
        &all[header..]
    }
}

impl Drop for Packed {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let len = self.all().0.len();
        // SAFETY: allocated by `new` with exactly this layout (an array of `len` bytes), and
        // dropped once.
        unsafe {
            std::alloc::dealloc(
                self.0.as_ptr(),
                std::alloc::Layout::from_size_align_unchecked(len, 1),
            )
        };
    }
}

/// The key and value of an entry this module packed.
fn unpack(e: &[u8]) -> (&[u8], &[u8]) {
    let mut n = 0usize;
    let mut shift = 0;
    let mut i = 0;
    while let Some(&b) = e.get(i) {
        n |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let key_end = (i + n).min(e.len());
    (&e[i..key_end], &e[key_end..])
}

/// A concurrent map of byte keys to byte values, one allocation per entry.
pub(crate) struct PackedMap {
    shards: Box<[RwLock<HashTable<Packed>>]>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl Default for PackedMap {
    fn default() -> Self {
        PackedMap {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }
}

impl PackedMap {
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &RwLock<HashTable<Packed>> {
        // The high bits pick the shard; the table uses the low ones.
        &self.shards[(hash >> 58) as usize % SHARDS]
    }

    /// A copy of `key`'s value.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Value> {
        let h = self.hash(key);
        let shard = self.shard(h).read();
        shard
            .find(h, |e| unpack(e.body()).0 == key)
            .map(|e| unpack(e.body()).1.to_vec())
    }

    /// Sets `key` to `value`; returns the length of the value it replaced.
    pub(crate) fn insert(&self, key: &[u8], value: &[u8]) -> Option<usize> {
        let h = self.hash(key);
        let packed = Packed::new(key, value);
        let mut shard = self.shard(h).write();
        let hasher = |e: &Packed| self.hasher.hash_one(unpack(e.body()).0);
        match shard.entry(h, |e| unpack(e.body()).0 == key, hasher) {
            Entry::Occupied(mut o) => {
                let old = unpack(o.get().body()).1.len();
                *o.get_mut() = packed;
                Some(old)
            }
            Entry::Vacant(v) => {
                v.insert(packed);
                None
            }
        }
    }

    /// Removes `key`; returns the length of its value.
    pub(crate) fn remove(&self, key: &[u8]) -> Option<usize> {
        let h = self.hash(key);
        let mut shard = self.shard(h).write();
        match shard.find_entry(h, |e| unpack(e.body()).0 == key) {
            Ok(o) => {
                let (e, _) = o.remove();
                Some(unpack(e.body()).1.len())
            }
            Err(_) => None,
        }
    }

    /// Calls `f` with every entry, a shard at a time (each shard is read-locked while it is
    /// visited; writers to other shards go on).
    pub(crate) fn for_each<E>(
        &self,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for s in self.shards.iter() {
            for e in s.read().iter() {
                let (k, v) = unpack(e.body());
                f(k, v)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_pack_and_unpack_with_long_keys_too() {
        for klen in [0usize, 1, 127, 128, 300, 70_000] {
            let k = vec![7u8; klen];
            let e = Packed::new(&k, b"value");
            assert_eq!(
                unpack(e.body()),
                (&k[..], &b"value"[..]),
                "key of {klen} bytes"
            );
        }
        let m = PackedMap::default();
        assert_eq!(m.insert(b"a", b"1"), None);
        assert_eq!(m.insert(b"a", b"22"), Some(1));
        assert_eq!(m.insert(b"", b"empty key"), None);
        assert_eq!(m.get(b"a"), Some(b"22".to_vec()));
        assert_eq!(m.get(b""), Some(b"empty key".to_vec()));
        assert_eq!(m.get(b"b"), None);
        assert_eq!(m.remove(b"a"), Some(2));
        assert_eq!(m.remove(b"a"), None);
        assert_eq!(m.remove(b""), Some(9));
        for i in 0..10_000u32 {
            m.insert(&i.to_be_bytes(), &i.to_le_bytes());
        }
        let mut n = 0;
        m.for_each(|k, v| {
            assert_eq!(k.len(), 4);
            let i = u32::from_be_bytes(k.try_into().expect("4 bytes"));
            assert_eq!(v, &i.to_le_bytes());
            n += 1;
            Ok::<(), ()>(())
        })
        .expect("visit");
        assert_eq!(n, 10_000);
    }
}
