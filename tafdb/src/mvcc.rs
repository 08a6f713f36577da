//! In-memory MVCC over the engines of one tablet.
//!
//! Every committed write becomes a [`Version`] `(ts, index, mutation)` in the key's in-memory
//! chain, where `ts` is the commit timestamp and `index` the Raft log index that carried it.
//! Snapshot reads fold the chain (newest base version at or below the read timestamp, plus the
//! delta records after it) over the value in the engine. A background *flusher* takes every
//! version whose log entry was applied longer ago than the window (default 5 s), folds them into
//! the newest value of each key, writes that one value to the engine and drops the versions.
//!
//! Engine values carry a 16-byte header `ts:u64le, index:u64le` naming the newest version they
//! contain. That makes flushing idempotent and crash-safe without atomic multi-engine batches: a
//! reader (or the replay after a restart) ignores chain versions whose index the engine value
//! already contains.
//!
//! The *floor* is the highest commit timestamp ever flushed. Versions below it may have been
//! dropped, so a read or a validation at a timestamp below the floor gets
//! [`Error::SnapshotTooOld`] instead of a possibly wrong answer.
//!
//! Delta records ([`DeltaOp`]) are versions too: they never conflict with each other, readers fold
//! them, and a per-key *memo* caches the folded value so that a key with thousands of pending
//! deltas (a hot parent directory) is not refolded on every read. The flusher merges deltas into
//! the base record in the engine.
//!
//! A reader combines two places, the chains and the engines, while the flusher moves versions
//! from one to the other; it must never see a key "between" them (gone from the chain, not yet
//! in the engine, or the other way round). The rules that make that so:
//! - The flusher writes the engines first and drops chains after. A point read looks at the
//!   chain first and reads the engine after, so whatever it misses in the chain is in the engine.
//! - Scans and dumps list keys from the chains (the ordered key set) *before* they read the
//!   engine, for the same reason, and they take engine rows read *before* a key's chain lookup
//!   only when no flush wrote or dropped anything in between: the flusher's [`MvccStore`] keeps a
//!   sequence number that is odd while a flush is writing or dropping (a seqlock), and a row read
//!   under another number is read again.
//! - Validation looks at the chain, then at the floor: a version a concurrent flush dropped
//!   raised the floor before it was dropped.
//! - The default engine (TafDB's own keys: 2PC locks and status records, and the tablet's meta
//!   record with the durable index) is written in one atomic batch, last, after the other
//!   engines are durable. So after a crash that engine is exactly at the durable index, and a
//!   replay that reads lock state to decide what a 2PC command does reads it as of the log
//!   position it replays, never ahead of it.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys::{FastHash, InlineKey, Key, KeyRange, Value};
use crate::watch::WatchSlot;

/// An update of a field inside a value, folded by readers instead of replacing the value.
///
/// `Add` and `Max` address little-endian 64-bit integers at a byte offset; a value shorter
/// than the field is zero-extended first, and an absent value counts as all zeros. They commute
/// with each other: concurrent writers never conflict. `Set` overwrites bytes at an offset (and
/// with `truncate`, drops everything after them): it commutes with `Add` and `Max` of other
/// fields, but a stable reader ([`crate::Txn::get_stable`]) conflicts with it as with a put, so
/// two transactions that read a record stably and set fields of it are serialized. This keeps
/// TafDB ignorant of the record format while letting the namespace layer bump link counts and
/// timestamps without conflicts, and rename or chmod a directory while creates stream into it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaOp {
    /// Adds `by` (wrapping, two's complement) to the `i64` at `offset`.
    Add {
        /// Byte offset of the field.
        offset: u32,
        /// The increment.
        by: i64,
    },
    /// Replaces the `u64` at `offset` with `max(field, value)`.
    Max {
        /// Byte offset of the field.
        offset: u32,
        /// The candidate maximum.
        value: u64,
    },
    /// Writes `bytes` at `offset` (zero-extending a shorter value); with `truncate`, the value
    /// then ends right after them.
    Set {
        /// Byte offset of the first byte.
        offset: u32,
        /// The new bytes.
        bytes: Vec<u8>,
        /// Whether the value ends after `bytes`.
        truncate: bool,
    },
}

/// The largest byte offset a delta may address.
pub const MAX_DELTA_OFFSET: u32 = 4096;

impl DeltaOp {
    /// Applies the operation to a value in place.
    pub fn apply(&self, value: &mut Vec<u8>) {
        let (offset, by, max) = match self {
            DeltaOp::Add { offset, by } => (*offset as usize, Some(*by), None),
            DeltaOp::Max { offset, value } => (*offset as usize, None, Some(*value)),
            DeltaOp::Set {
                offset,
                bytes,
                truncate,
            } => {
                let (o, end) = (*offset as usize, *offset as usize + bytes.len());
                if value.len() < end {
                    value.resize(end, 0);
                }
                value[o..end].copy_from_slice(bytes);
                if *truncate {
                    value.truncate(end);
                }
                return;
            }
        };
        if value.len() < offset + 8 {
            value.resize(offset + 8, 0);
        }
        let field = &mut value[offset..offset + 8];
        let cur = u64::from_le_bytes([
            field[0], field[1], field[2], field[3], field[4], field[5], field[6], field[7],
        ]);
        let new = match (by, max) {
            (Some(by), _) => cur.wrapping_add(by as u64),
            (None, Some(m)) => cur.max(m),
            (None, None) => cur,
        };
        field.copy_from_slice(&new.to_le_bytes());
    }

    /// The byte offset the op touches.
    pub fn offset(&self) -> u32 {
        match self {
            DeltaOp::Add { offset, .. }
            | DeltaOp::Max { offset, .. }
            | DeltaOp::Set { offset, .. } => *offset,
        }
    }

    /// The byte just past what the op touches.
    pub fn end(&self) -> u64 {
        match self {
            DeltaOp::Set { offset, bytes, .. } => u64::from(*offset) + bytes.len() as u64,
            other => u64::from(other.offset()) + 8,
        }
    }

    /// Whether a stable reader conflicts with it (see [`DeltaOp::Set`]).
    pub fn sets(&self) -> bool {
        matches!(self, DeltaOp::Set { .. })
    }
}

/// What a committed write did to a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// Set the value.
    Put(Value),
    /// Remove the key.
    Delete,
    /// A commutative update folded into the value by readers.
    Delta(DeltaOp),
}

impl Mutation {
    fn is_base(&self) -> bool {
        !matches!(self, Mutation::Delta(_))
    }

    /// Whether a stable reader of the key conflicts with it: a put, a delete or a
    /// [`DeltaOp::Set`].
    pub fn unsettles(&self) -> bool {
        match self {
            Mutation::Delta(op) => op.sets(),
            _ => true,
        }
    }

    /// Whether the mutation replaces the value (a put or a delete) rather than folding into it.
    pub fn replaces(&self) -> bool {
        self.is_base()
    }
}

/// One committed version in a key's chain.
#[derive(Clone, Debug)]
pub struct Version {
    /// Commit timestamp.
    pub ts: u64,
    /// Raft log index of the entry that committed it.
    pub index: u64,
    /// The change.
    pub mutation: Mutation,
}

struct Chain {
    /// Versions sorted by `ts`. Those before `start` were flushed and only wait to be compacted
    /// away: a hot key keeps hundreds of thousands of versions in the window, and cutting the
    /// flushed prefix off at every flush shifted all the others every time.
    all: Vec<Version>,
    start: usize,
    /// Whether the live versions are in log-index order too, so that the flushable ones are a
    /// prefix. Always, unless a 2PC commit was applied after a later-stamped one.
    index_sorted: bool,
    /// The newest log index under which the key was added to the ordered key set (see
    /// [`OrderedKeys`]).
    listed: u64,
    /// The folded value at `memo.0`, covering every version with `ts <= memo.0`.
    memo: Option<(u64, Option<Value>)>,
    /// Bumped whenever the chain changes in a way that can change a fold up to some timestamp
    /// it already holds: a version that is not strictly the newest (a 2PC commit applied after a
    /// later-stamped one, a second delta of one commit seen by a read at `u64::MAX`), or
    /// versions dropped by a flush. A reader remembers its fold only if the epoch did not move
    /// meanwhile. (Bumping it on every add kept a hot counter's memo from ever being taken.)
    epoch: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            all: Vec::new(),
            start: 0,
            index_sorted: true,
            listed: 0,
            memo: None,
            epoch: 0,
        }
    }
}

/// Folds `versions` (sorted by ts, already restricted to the read timestamp) over `base`.
fn fold(mut base: Option<Value>, versions: &[Version]) -> Option<Value> {
    let start = versions.iter().rposition(|v| v.mutation.is_base());
    let rest = match start {
        Some(i) => {
            base = match &versions[i].mutation {
                Mutation::Put(v) => Some(v.clone()),
                _ => None,
            };
            &versions[i + 1..]
        }
        None => versions,
    };
    for v in rest {
        if let Mutation::Delta(op) = &v.mutation {
            let buf = base.get_or_insert_with(Vec::new);
            op.apply(buf);
        }
    }
    base
}

/// Like [`fold`], over versions given by an iterator (sorted by ts): the last base version,
/// then the deltas after it.
fn fold_iter<'a, I>(mut base: Option<Value>, versions: I) -> Option<Value>
where
    I: Iterator<Item = &'a Version> + Clone,
{
    let last_base = versions
        .clone()
        .enumerate()
        .filter(|(_, v)| v.mutation.is_base())
        .map(|(i, _)| i)
        .last();
    let skip = match last_base {
        Some(i) => {
            base = match versions.clone().nth(i).map(|v| &v.mutation) {
                Some(Mutation::Put(v)) => Some(v.clone()),
                _ => None,
            };
            i + 1
        }
        None => 0,
    };
    for v in versions.skip(skip) {
        if let Mutation::Delta(op) = &v.mutation {
            op.apply(base.get_or_insert_with(Vec::new));
        }
    }
    base
}

/// Header of every engine value.
const HEADER: usize = 16;

fn encode_engine_value(ts: u64, index: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// An engine row a scan or dump read before looking up the key's chain, with the flush sequence
/// number it was read under (see [`MvccStore::flush_seq`]); `raw` is `None` when the engine had
/// no row for the key.
struct Prefetched {
    raw: Option<Vec<u8>>,
    seq: u64,
}

/// An engine value split into `(ts, index, value)`.
#[derive(Clone, Debug)]
struct EngineValue {
    index: u64,
    value: Value,
}

fn decode_engine_value(key: &[u8], raw: Vec<u8>) -> Result<EngineValue> {
    if raw.len() < HEADER {
        return Err(Error::Corruption(format!(
            "engine value of key {} is {} bytes, shorter than its header",
            crate::error::escape(key),
            raw.len()
        )));
    }
    let index = u64::from_le_bytes(raw[8..16].try_into().unwrap_or_default());
    Ok(EngineValue {
        index,
        value: raw[HEADER..].to_vec(),
    })
}

/// Routes keys to engines: one engine per configured table, a default one for the rest.
#[derive(Clone)]
pub struct EngineSet {
    by_table: [Option<Arc<dyn Engine>>; 256],
    default: Arc<dyn Engine>,
}

impl EngineSet {
    /// A set where `tables` name the engines of specific tables and `default` holds the rest
    /// (including TafDB's internal keys).
    pub fn new(default: Arc<dyn Engine>, tables: Vec<(u8, Arc<dyn Engine>)>) -> Self {
        let mut by_table: [Option<Arc<dyn Engine>>; 256] = std::array::from_fn(|_| None);
        for (id, e) in tables {
            by_table[id as usize] = Some(e);
        }
        EngineSet { by_table, default }
    }

    /// The engine that stores `key`.
    pub fn for_key(&self, key: &[u8]) -> &Arc<dyn Engine> {
        self.by_table[crate::keys::table_of(key) as usize]
            .as_ref()
            .unwrap_or(&self.default)
    }

    /// The default engine.
    pub fn default_engine(&self) -> &Arc<dyn Engine> {
        &self.default
    }

    /// Whether an engine latched after a failed write (see [`Engine::latched`]); without the
    /// allocation of [`EngineSet::all`], for the flusher's every round.
    pub fn any_latched(&self) -> bool {
        self.default.latched() || self.by_table.iter().flatten().any(|e| e.latched())
    }

    /// Every distinct engine, the default last.
    pub fn all(&self) -> Vec<Arc<dyn Engine>> {
        let mut out: Vec<Arc<dyn Engine>> = Vec::new();
        for e in self.by_table.iter().flatten() {
            if !out.iter().any(|o| Arc::ptr_eq(o, e)) {
                out.push(e.clone());
            }
        }
        out.push(self.default.clone());
        out
    }

    /// Whether every key in `range` lives in an engine that can scan.
    pub fn can_scan(&self, range: &KeyRange) -> bool {
        let first = crate::keys::table_of(&range.start);
        let last = match &range.end {
            None => 255u8,
            Some(e) if e.len() == 1 => e[0].saturating_sub(1),
            Some(e) => crate::keys::table_of(e),
        };
        (first..=last.max(first)).all(|t| {
            self.by_table[t as usize]
                .as_ref()
                .unwrap_or(&self.default)
                .supports_scan()
        })
    }
}

/// Statistics for monitoring and tests.
#[derive(Clone, Debug, Default)]
pub struct MvccStats {
    /// Keys with an in-memory chain.
    pub keys: usize,
    /// Versions held in memory.
    pub versions: usize,
    /// The floor timestamp.
    pub floor: u64,
}

/// The in-memory MVCC layer of one tablet.
pub struct MvccStore {
    engines: EngineSet,
    /// Keyed inline (see [`InlineKey`]): no allocation per key, and no pointer to follow when a
    /// lookup compares keys.
    chains: DashMap<InlineKey, Chain, FastHash>,
    /// Keys of scannable tables that may have a chain but no engine row, in order, for scans.
    ordered: RwLock<OrderedKeys>,
    /// Keys touched per log index, oldest first, for the flusher.
    dirty: Mutex<VecDeque<(u64, InlineKey)>>,
    floor: AtomicU64,
    flush_lock: Mutex<()>,
    /// Odd while a flush writes the engines or drops chains, even otherwise (a seqlock): an
    /// engine row read under an even number that is still current after the key's chain was
    /// looked up cannot be older than the chain says.
    flush_seq: AtomicU64,
    /// The write watch of the tablet (see [`crate::watch`]), told of every installed version
    /// and lock change of its keys, and of [`MvccStore::clear`].
    watch: Arc<WatchSlot>,
}

/// Makes the flush sequence number even again when a flush ends, however it ends.
struct FlushSeqGuard<'a>(&'a AtomicU64);

impl Drop for FlushSeqGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// The extra row of [`MvccStore::flush_durably`]: called with the new floor.
pub type LastRow<'a> = &'a dyn Fn(u64) -> Result<Option<(Key, Value)>>;

/// Result of one flush cycle.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlushOutcome {
    /// Keys written to the engines.
    pub keys: usize,
    /// Versions dropped from memory.
    pub versions: usize,
}

impl MvccStore {
    /// A store over `engines`, whose flushed data has floor timestamp `floor`.
    pub fn new(engines: EngineSet, floor: u64) -> Self {
        MvccStore {
            engines,
            chains: crate::keys::read_map(),
            ordered: RwLock::new(OrderedKeys::default()),
            dirty: Mutex::new(Default::default()),
            floor: AtomicU64::new(floor),
            flush_lock: Mutex::new(()),
            flush_seq: AtomicU64::new(0),
            watch: Arc::default(),
        }
    }

    /// The tablet's write watch slot.
    pub(crate) fn watch(&self) -> &Arc<WatchSlot> {
        &self.watch
    }

    /// The engines.
    pub fn engines(&self) -> &EngineSet {
        &self.engines
    }

    /// The highest flushed commit timestamp.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// Installs a committed version. Versions of one key normally arrive in timestamp order;
    /// an out-of-order delta is inserted at its place.
    pub fn install(&self, key: &[u8], ts: u64, index: u64, mutation: Mutation) {
        self.batch().install(key.to_vec(), ts, index, mutation);
    }

    /// Starts installing many versions together (the commands of one Raft entry).
    pub fn batch(&self) -> InstallBatch<'_> {
        InstallBatch {
            store: self,
            new_keys: Vec::new(),
            max_index: 0,
            dirty: Vec::new(),
        }
    }

    fn engine_value(&self, key: &[u8]) -> Result<Option<EngineValue>> {
        match self.engines.for_key(key).get(key)? {
            Some(raw) => Ok(Some(decode_engine_value(key, raw)?)),
            None => Ok(None),
        }
    }

    fn too_old(&self, ts: u64) -> Result<()> {
        let floor = self.floor();
        if ts < floor {
            return Err(Error::SnapshotTooOld { ts, floor });
        }
        Ok(())
    }

    /// The value of `key` as of timestamp `ts`.
    pub fn get(&self, key: &[u8], ts: u64) -> Result<Option<Value>> {
        self.get_with(key, ts, None)
    }

    /// Like [`MvccStore::get`]; `prefetched` may carry the engine row a scan or dump read
    /// before this lookup, which is used only if no flush touched the engines since.
    fn get_with(
        &self,
        key: &[u8],
        ts: u64,
        prefetched: Option<Prefetched>,
    ) -> Result<Option<Value>> {
        self.too_old(ts)?;
        // The versions to fold over the engine's row, when the chain holds no base and no memo
        // for this read (copied, so that the engine is read without holding the chain).
        let mut versions: Vec<Version> = Vec::new();
        let mut fold_len = 0;
        // What a memo of this read would stand for: the newest folded version and the chain's
        // generation.
        let mut folded_upto: Option<(u64, u64)> = None;
        if let Some(chain) = self.chains.get(key) {
            let upto = chain.versions().partition_point(|v| v.ts <= ts);
            let visible = &chain.versions()[..upto];
            // Fast path: the newest visible version is a full value.
            if let Some(last) = visible.last() {
                match &last.mutation {
                    Mutation::Put(v) => return Ok(Some(v.clone())),
                    Mutation::Delete => return Ok(None),
                    Mutation::Delta(_) => {}
                }
                folded_upto = Some((last.ts, chain.epoch));
            }
            // Folded in place, under the chain's read guard: a hot directory's chain holds
            // thousands of deltas, and copying them (or even scanning all of them for a base)
            // on every read was a third of the CPU of a shared-directory create load.
            let in_chain = match &chain.memo {
                // The memo covers every version up to its timestamp; a base after it is found
                // by `fold` in the tail.
                Some((m_ts, m_val)) if *m_ts <= ts => {
                    let from = visible.partition_point(|v| v.ts <= *m_ts);
                    fold_len = visible.len() - from;
                    Some(fold(m_val.clone(), &visible[from..]))
                }
                _ => match visible.iter().rposition(|v| v.mutation.is_base()) {
                    Some(p) => {
                        fold_len = visible.len() - p;
                        Some(fold(None, &visible[p..]))
                    }
                    None => {
                        fold_len = visible.len();
                        versions.extend_from_slice(visible);
                        None
                    }
                },
            };
            drop(chain);
            if let Some(value) = in_chain {
                // Move the memo up to this read: otherwise every later read folds every delta
                // since the first memo again, and a hot directory's reads grow with its chain
                // (measured: half the CPU of a shared-directory create load).
                if fold_len > 32 {
                    if let Some((last_ts, generation)) = folded_upto {
                        self.remember(key, last_ts, generation, &value);
                    }
                }
                return Ok(value);
            }
        }
        // The chain has only deltas (or nothing) at this timestamp: the base is in the engine.
        // A row read before the chain lookup is current only if no flush wrote the engines or
        // dropped chains since (the flusher writes first and drops after, so a row read now,
        // after the lookup, already contains whatever the chain lost meanwhile).
        let raw = match prefetched {
            Some(p) if p.seq % 2 == 0 && self.flush_seq.load(Ordering::SeqCst) == p.seq => p.raw,
            _ => self.engines.for_key(key).get(key)?,
        };
        let ev = raw.map(|r| decode_engine_value(key, r)).transpose()?;
        // A flush may have run between reading the chain and the engine; the versions the
        // engine value already contains are skipped, and the floor is checked again.
        self.too_old(ts)?;
        let (base, skip_upto) = match ev {
            Some(ev) => (Some(ev.value), ev.index),
            None => (None, 0),
        };
        versions.retain(|v| v.index > skip_upto);
        let value = fold(base, &versions);
        if fold_len > 32 {
            if let Some((last_ts, generation)) = folded_upto {
                self.remember(key, last_ts, generation, &value);
            }
        }
        Ok(value)
    }

    /// Caches `value`, the fold of every version up to `last_ts`, if no version was added to
    /// the chain since it was read (generation `generation`).
    fn remember(&self, key: &[u8], last_ts: u64, generation: u64, value: &Option<Value>) {
        if let Some(mut chain) = self.chains.get_mut(key) {
            if chain.epoch == generation && chain.memo.as_ref().is_none_or(|(m, _)| *m < last_ts) {
                chain.memo = Some((last_ts, value.clone()));
            }
        }
    }

    /// The newest commit timestamp of `key`, for validation of a transaction that started at
    /// `start_ts`. Returns `Err(SnapshotTooOld)` when `start_ts` is below the floor, because
    /// then versions newer than `start_ts` may already have left memory.
    ///
    /// The floor is checked *after* the chain is looked up: a flush that dropped a newer version
    /// between the two raised the floor before it dropped anything, so either the chain still
    /// shows the version or the floor shows the flush.
    pub fn newer_than(&self, key: &[u8], start_ts: u64) -> Result<bool> {
        let newer = self
            .chains
            .get(key)
            .is_some_and(|c| c.versions().last().is_some_and(|v| v.ts > start_ts));
        fail::fail_point!("mvcc::validate-after-chain");
        self.too_old(start_ts)?;
        Ok(newer)
    }

    /// Whether `key` has a put or delete newer than `start_ts` (deltas are ignored): the
    /// validation of a stable read. The floor is checked after the chain, as in
    /// [`MvccStore::newer_than`].
    pub fn base_newer_than(&self, key: &[u8], start_ts: u64) -> Result<bool> {
        let newer = self.chains.get(key).is_some_and(|c| {
            c.versions()
                .iter()
                .rev()
                .take_while(|v| v.ts > start_ts)
                .any(|v| v.mutation.unsettles())
        });
        self.too_old(start_ts)?;
        Ok(newer)
    }

    /// Whether any key in `range` has a version newer than `start_ts` (phantom detection).
    /// A key whose run of the ordered set expired, or whose chain was dropped, before it was
    /// looked at was flushed, and the floor (checked last) covers its versions.
    pub fn range_newer_than(&self, range: &KeyRange, start_ts: u64) -> Result<Option<Key>> {
        self.too_old(start_ts)?;
        let keys: Vec<Key> = {
            let end = match &range.end {
                Some(e) => Bound::Excluded(InlineKey::new(e)),
                None => Bound::Unbounded,
            };
            self.ordered.read().range(
                Bound::Included(InlineKey::new(&range.start)),
                end,
                usize::MAX,
            )
        };
        for k in keys {
            if self.newer_than(&k, start_ts)? {
                return Ok(Some(k));
            }
        }
        self.too_old(start_ts)?;
        Ok(None)
    }

    /// Every live entry of `range` as of `ts`, in key order, for any engine (a hash table
    /// included): the engine is visited in full and merged with the chains. It costs a pass
    /// over the whole engine, so it is meant for checkers and tools, not for queries.
    pub fn dump(&self, range: &KeyRange, ts: u64) -> Result<Vec<(Key, Value)>> {
        self.too_old(ts)?;
        let engine = self.engines.for_key(&range.start).clone();
        // The chains first, the engine after (see the module docs): a chain dropped in between
        // was written to the engine before it was dropped. Hash tables keep no ordered key set,
        // so walk the chains themselves.
        let seq = self.flush_seq.load(Ordering::SeqCst);
        let mut keys: std::collections::BTreeMap<Key, Option<Vec<u8>>> = Default::default();
        for c in self.chains.iter() {
            if range.contains(c.key().as_bytes()) {
                keys.insert(c.key().to_vec(), None);
            }
        }
        engine.for_each(&mut |k, v| {
            if range.contains(k) {
                keys.insert(k.to_vec(), Some(v.to_vec()));
            }
            Ok(())
        })?;
        fail::fail_point!("mvcc::dump-after-engine");
        let mut out = Vec::with_capacity(keys.len());
        for (k, raw) in keys {
            if let Some(v) = self.get_with(&k, ts, Some(Prefetched { raw, seq }))? {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    /// Up to `limit` live entries of `range` as of `ts`, in key order.
    ///
    /// Page by page: the keys with chains first (up to a page of them), then the engine's rows
    /// up to the last of those keys, then each key's value (see the module docs for why in this
    /// order).
    pub fn scan(&self, range: &KeyRange, ts: u64, limit: usize) -> Result<Vec<(Key, Value)>> {
        self.too_old(ts)?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let engine = self.engines.for_key(&range.start).clone();
        if !self.engines.can_scan(range) {
            return Err(Error::Unsupported(
                "range scan over a hash-engine table".into(),
            ));
        }
        let page = limit.saturating_add(16).min(4096);
        let mut cursor = range.clone();
        loop {
            let seq = self.flush_seq.load(Ordering::SeqCst);
            let end = match &cursor.end {
                Some(e) => Bound::Excluded(InlineKey::new(e)),
                None => Bound::Unbounded,
            };
            let chain_keys: Vec<Key> = self.ordered.read().range(
                Bound::Included(InlineKey::new(&cursor.start)),
                end,
                page,
            );
            // When a page of chain keys was found, this page covers the range up to the last of
            // them; the engine is read only that far.
            let chain_upper: Option<Key> = (chain_keys.len() >= page)
                .then(|| chain_keys.last().cloned())
                .flatten();
            let engine_range = match &chain_upper {
                Some(u) => KeyRange {
                    start: cursor.start.clone(),
                    end: Some([u.as_slice(), &[0]].concat()),
                },
                None => cursor.clone(),
            };
            fail::fail_point!("mvcc::scan-after-chain-keys");
            let rows = engine.scan(&engine_range, page)?;
            fail::fail_point!("mvcc::scan-after-engine-page");
            // The page covers keys up to `upper` (inclusive), or to the end of the cursor.
            let upper: Option<Key> = if rows.len() >= page {
                rows.last().map(|(k, _)| k.clone())
            } else {
                chain_upper
            };
            let mut rows = rows.into_iter().peekable();
            let mut chain_keys = chain_keys
                .into_iter()
                .filter(|k| upper.as_ref().is_none_or(|u| k <= u))
                .peekable();
            loop {
                let (key, raw) = match (rows.peek(), chain_keys.peek()) {
                    (None, None) => break,
                    (Some((rk, _)), Some(ck)) if ck < rk => {
                        (chain_keys.next().unwrap_or_default(), None)
                    }
                    (Some((rk, _)), Some(ck)) if ck == rk => {
                        chain_keys.next();
                        let (k, v) = rows.next().unwrap_or_default();
                        (k, Some(v))
                    }
                    (Some(_), _) => {
                        let (k, v) = rows.next().unwrap_or_default();
                        (k, Some(v))
                    }
                    (None, Some(_)) => (chain_keys.next().unwrap_or_default(), None),
                };
                // A chain key without an engine row in this page has none in the engine: the
                // page covers its position. Either way the row counts only if no flush ran
                // since it was read; otherwise `get_with` reads the engine again.
                if let Some(v) = self.get_with(&key, ts, Some(Prefetched { raw, seq }))? {
                    out.push((key, v));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            let Some(last) = upper else { return Ok(out) };
            let mut next = last;
            next.push(0);
            cursor = KeyRange {
                start: next,
                end: cursor.end.clone(),
            };
        }
    }

    /// Flushes every version applied at log index `<= upto` to the engines, makes them durable
    /// and drops the versions from memory. Returns what was done.
    pub fn flush(&self, upto: u64) -> Result<FlushOutcome> {
        self.flush_durably(upto, &|_| Ok(None))
    }

    /// Like [`MvccStore::flush`]; `last_row(floor)` may name one more raw row of the default
    /// engine (the tablet's meta record with the new durable index), which is written in the
    /// same atomic batch as that engine's flushed rows, after every other engine is durable.
    pub fn flush_durably(&self, upto: u64, last_row: LastRow<'_>) -> Result<FlushOutcome> {
        let _guard = self.flush_lock.lock();
        let keys: Vec<InlineKey> = {
            // Take the entries out under the lock and deduplicate outside it: the apply path
            // appends to the same list.
            let taken: Vec<(u64, InlineKey)> = {
                let mut dirty = self.dirty.lock();
                let n = dirty.partition_point(|(i, _)| *i <= upto);
                dirty.drain(..n).collect()
            };
            // In key order: RocksDB inserts into its memtable (a skip list) from where the
            // previous insert ended, so sorted batches cost a fraction of random ones. Sorting
            // also puts duplicates side by side, which is cheaper than hashing every key.
            let mut keys: Vec<InlineKey> = taken.into_iter().map(|(_, k)| k).collect();
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        let result = self.flush_keys(&keys, upto, last_row);
        if result.is_err() {
            // Nothing is lost: the keys go back to the front of the list (their versions are
            // all at or below `upto`, older than everything listed after them), and the next
            // flush writes them again. Writing a key twice is harmless (see the module docs).
            let mut dirty = self.dirty.lock();
            for k in keys.into_iter().rev() {
                dirty.push_front((upto, k));
            }
        }
        result
    }

    /// The body of [`MvccStore::flush`] for the listed `keys`.
    fn flush_keys(
        &self,
        keys: &[InlineKey],
        upto: u64,
        last_row: LastRow<'_>,
    ) -> Result<FlushOutcome> {
        let mut outcome = FlushOutcome::default();
        // Per engine: `(position in keys, new engine value or None to delete)`.
        type Ops = Vec<(usize, Option<Vec<u8>>)>;
        let mut batches: Vec<(Arc<dyn Engine>, Ops)> = Vec::new();
        let mut max_ts = 0u64;
        // Per key: whether every version was flushed (the chain can go).
        let mut drained = Vec::with_capacity(keys.len());
        for (pos, ikey) in keys.iter().enumerate() {
            let key = ikey.as_bytes();
            // Fold in place under the chain's guard: a hot key has hundreds of thousands of
            // versions in the window, and copying them was a large part of a flush. Versions at
            // or below `upto` do not change while the flush lock is held; newer ones may arrive
            // meanwhile. Only a chain whose oldest flushable version is a delta needs the
            // engine's value, read without holding the guard.
            let mut engine_base: Option<(Option<Value>, u64)> = None;
            let folded = loop {
                let Some(c) = self.chains.get(key) else {
                    break None;
                };
                let prefix = c.flushable_prefix(upto);
                let flushable = c.versions().iter().filter(|v| v.index <= upto);
                let first = match prefix {
                    Some(n) => c.versions()[..n].first(),
                    None => flushable.clone().next(),
                };
                let Some(first) = first else {
                    break None;
                };
                let (base, skip) = match (&engine_base, first.mutation.is_base()) {
                    (_, true) => (None, 0),
                    (Some((b, s)), false) => (b.clone(), *s),
                    (None, false) => {
                        drop(c);
                        engine_base = Some(match self.engine_value(key)? {
                            Some(ev) => (Some(ev.value), ev.index),
                            None => (None, 0),
                        });
                        continue;
                    }
                };
                if let Some(n) = prefix {
                    // The common case: slices, no scan of the versions that stay.
                    let live = c.versions();
                    let (done, rest) = live.split_at(n);
                    let Some(last) = done.last() else {
                        break None;
                    };
                    let from = done.partition_point(|v| v.index <= skip);
                    let value = fold(base, &done[from..]);
                    let newer = rest.last().map(|v| v.index);
                    break Some((value, last.ts, last.index, newer));
                }
                let newest_ts = flushable.clone().map(|v| v.ts).max().unwrap_or(0);
                let top_index = flushable.clone().map(|v| v.index).max().unwrap_or(0);
                let value = fold_iter(base, flushable.filter(|v| v.index > skip));
                let newer = c
                    .versions()
                    .iter()
                    .map(|v| v.index)
                    .filter(|i| *i > upto)
                    .max();
                break Some((value, newest_ts, top_index, newer));
            };
            let Some((value, newest_ts, top_index, newer_left)) = folded else {
                drained.push(false);
                continue;
            };
            drained.push(newer_left.is_none());
            max_ts = max_ts.max(newest_ts);
            let op = match value {
                Some(v) => (pos, Some(encode_engine_value(newest_ts, top_index, &v))),
                None => (pos, None),
            };
            let engine = self.engines.for_key(key);
            match batches.iter_mut().find(|(e, _)| Arc::ptr_eq(e, engine)) {
                Some((_, b)) => b.push(op),
                None => batches.push((engine.clone(), vec![op])),
            }
            outcome.keys += 1;
        }
        // Raise the floor before the engines change: a reader that folds the chain over the new
        // engine value at an older timestamp must fail rather than answer wrongly.
        self.floor.fetch_max(max_ts, Ordering::AcqRel);
        let floor = self.floor();
        // Odd from here until the chains are dropped (or the flush fails): readers holding an
        // engine row read before their chain lookup read it again.
        self.flush_seq.fetch_add(1, Ordering::SeqCst);
        let _seq = FlushSeqGuard(&self.flush_seq);
        let default = self.engines.default_engine().clone();
        fn refs<'a>(
            keys: &'a [InlineKey],
            batch: &'a [(usize, Option<Vec<u8>>)],
        ) -> Vec<(&'a [u8], Option<&'a [u8]>)> {
            batch
                .iter()
                .map(|(pos, v)| (keys[*pos].as_bytes(), v.as_deref()))
                .collect()
        }
        // Every other engine first, durably.
        for (engine, batch) in batches.iter().filter(|(e, _)| !Arc::ptr_eq(e, &default)) {
            for chunk in batch.chunks(4096) {
                engine.write_refs(&refs(keys, chunk))?;
            }
            fail::fail_point!("mvcc::flush-before-persist", |_| Err(Error::Io(
                std::io::Error::other("failpoint mvcc::flush-before-persist")
            )));
            engine.persist()?;
        }
        // Then the default engine in one atomic batch with the caller's row (see the module
        // docs: after a crash it is exactly at the durable index).
        fail::fail_point!("mvcc::flush-before-default", |_| Err(Error::Io(
            std::io::Error::other("failpoint mvcc::flush-before-default")
        )));
        let extra = last_row(floor)?;
        let mut rows = batches
            .iter()
            .find(|(e, _)| Arc::ptr_eq(e, &default))
            .map(|(_, b)| refs(keys, b))
            .unwrap_or_default();
        if let Some((k, v)) = &extra {
            rows.push((k.as_slice(), Some(v.as_slice())));
        }
        if !rows.is_empty() {
            default.write_refs(&rows)?;
            default.persist()?;
        }
        fail::fail_point!("mvcc::flush-before-drop");
        // A key of a run that expires here has had every version it was listed for written;
        // a newer version listed it again, in a run that stays.
        self.ordered.write().expire(upto);
        for (key, drained) in keys.iter().map(InlineKey::as_bytes).zip(drained) {
            // One lookup for a chain that was flushed whole, the common case; the predicate is
            // checked again because new versions may have arrived since.
            if drained {
                if let Some((_, c)) = self
                    .chains
                    .remove_if(key, |_, c| c.versions().iter().all(|v| v.index <= upto))
                {
                    outcome.versions += c.versions().len();
                    continue;
                }
            }
            let mut emptied = false;
            if let Some(mut chain) = self.chains.get_mut(key) {
                outcome.versions += chain.drop_flushed(upto);
                emptied = chain.versions().is_empty();
            }
            if emptied {
                self.chains.remove_if(key, |_, c| c.versions().is_empty());
            }
        }
        Ok(outcome)
    }

    /// Drops everything in memory (after the engines were replaced by a snapshot).
    pub fn clear(&self, floor: u64) {
        let _guard = self.flush_lock.lock();
        self.chains.clear();
        *self.ordered.write() = OrderedKeys::default();
        self.dirty.lock().clear();
        self.floor.store(floor, Ordering::Release);
        if let Some(w) = self.watch.any() {
            w.reset();
        }
    }

    /// Counts what is in memory.
    pub fn stats(&self) -> MvccStats {
        let mut s = MvccStats {
            floor: self.floor(),
            ..Default::default()
        };
        for c in self.chains.iter() {
            s.keys += 1;
            s.versions += c.versions().len();
        }
        s
    }
}

/// Recent keys that are sorted into a run of the ordered key set.
const RUN_KEYS: usize = 64 * 1024;

/// One sorted run of the ordered key set.
struct Run {
    keys: Vec<InlineKey>,
    /// The newest log index whose installs added a key to the run.
    max_index: u64,
}

/// The keys of scannable tables that have a chain, in order: what scans must find besides the
/// engine's rows, and what phantom checks look at.
///
/// With a 5 s window at 100k commits per second that is about a million keys. In one B-tree,
/// inserting each new key (a random position, a cache miss per level, some forty comparisons)
/// on the single apply path was the largest cost of a commit; removing each key again when its
/// chain was flushed cost as much. So keys go into a small B-tree that stays in cache, which is
/// sorted into an immutable run every 64k keys, and runs are never edited. A key is added with
/// the log index of every entry that gives it a version (once per entry), and a run is dropped
/// whole once the flusher has written every entry up to the newest index it holds. So a key
/// with a chain is always in a live run or in the B-tree: its newest version was added with
/// its index, and that run outlives the version. A key may be listed several times, or after
/// its chain is gone: readers then find no chain and read the engine, as for any other key.
struct OrderedKeys {
    /// Keys in `recent` that make a run ([`RUN_KEYS`]; smaller in tests).
    run_keys: usize,
    /// Sorted runs, oldest first.
    runs: Vec<Arc<Run>>,
    /// Keys added since the last run was cut.
    recent: BTreeSet<InlineKey>,
    /// The newest log index whose installs added a key to `recent`.
    recent_max: u64,
}

impl Default for OrderedKeys {
    fn default() -> Self {
        OrderedKeys {
            run_keys: RUN_KEYS,
            runs: Vec::new(),
            recent: BTreeSet::new(),
            recent_max: 0,
        }
    }
}

impl OrderedKeys {
    /// Adds keys installed at log index `index`, cutting a run when `recent` is full.
    fn add(&mut self, keys: impl Iterator<Item = InlineKey>, index: u64) {
        let mut any = false;
        for k in keys {
            self.recent.insert(k);
            any = true;
        }
        if any {
            self.recent_max = self.recent_max.max(index);
        }
        if self.recent.len() >= self.run_keys {
            // A B-tree iterates in order, so cutting a run only moves the keys.
            let keys: Vec<InlineKey> = std::mem::take(&mut self.recent).into_iter().collect();
            self.runs.push(Arc::new(Run {
                keys,
                max_index: self.recent_max,
            }));
            self.recent_max = 0;
        }
    }

    /// Drops what the flusher has written up to log index `upto`.
    fn expire(&mut self, upto: u64) {
        self.runs.retain(|r| r.max_index > upto);
        if self.recent_max <= upto {
            self.recent.clear();
            self.recent_max = 0;
        }
    }

    /// The first `limit` keys between the bounds, sorted and unique.
    fn range(&self, lo: Bound<InlineKey>, hi: Bound<InlineKey>, limit: usize) -> Vec<Key> {
        let mut keys: Vec<&InlineKey> = Vec::new();
        let mut sources = 0;
        for run in &self.runs {
            let run = &run.keys;
            let from = match &lo {
                Bound::Included(k) => run.partition_point(|x| x < k),
                Bound::Excluded(k) => run.partition_point(|x| x <= k),
                Bound::Unbounded => 0,
            };
            let to = match &hi {
                Bound::Included(k) => run.partition_point(|x| x <= k),
                Bound::Excluded(k) => run.partition_point(|x| x < k),
                Bound::Unbounded => run.len(),
            };
            // The first `limit` keys overall are among the first `limit` of each source.
            let to = to.min(from.saturating_add(limit));
            if to > from {
                keys.extend(&run[from..to]);
                sources += 1;
            }
        }
        let before = keys.len();
        keys.extend(
            self.recent
                .range::<InlineKey, _>((lo.as_ref(), hi.as_ref()))
                .take(limit),
        );
        if keys.len() > before {
            sources += 1;
        }
        if sources > 1 {
            keys.sort_unstable();
            keys.dedup();
        }
        keys.truncate(limit);
        keys.into_iter().map(InlineKey::to_vec).collect()
    }
}

/// Versions being installed together (the commands of one Raft entry).
///
/// Chains change at once. The ordered key set and the flusher's list are updated when the batch
/// is dropped, under one lock each instead of once per key: with hundreds of thousands of keys
/// in the window, a write lock and a B-tree insert per key on the (single) apply path was the
/// largest cost of a commit. Until the drop, a key new to the store is missing from the ordered
/// set, so a scan does not meet it yet. That is safe: the tablet keeps every commit of the entry
/// *pending* until the entry is applied, and readers wait for pending commits in their range
/// while validators conflict with them.
pub struct InstallBatch<'a> {
    store: &'a MvccStore,
    new_keys: Vec<InlineKey>,
    /// The newest log index installed.
    max_index: u64,
    dirty: Vec<(u64, InlineKey)>,
}

impl InstallBatch<'_> {
    /// The store the batch installs into (for reads while applying).
    pub fn store(&self) -> &MvccStore {
        self.store
    }

    /// Installs a committed version (see [`MvccStore::install`]).
    pub fn install(&mut self, key: Key, ts: u64, index: u64, mutation: Mutation) {
        match self.store.watch.for_key(&key) {
            // After the chain has the version: a watcher that fills a cache validates against
            // the chain, so either its validation sees the version or this call sees its entry.
            Some(w) => {
                let k = key.clone();
                self.install_version(key, ts, index, mutation);
                w.applied(&k);
            }
            None => self.install_version(key, ts, index, mutation),
        }
    }

    fn install_version(&mut self, key: Key, ts: u64, index: u64, mutation: Mutation) {
        let store = self.store;
        let version = Version {
            ts,
            index,
            mutation,
        };
        self.max_index = self.max_index.max(index);
        let ikey = InlineKey::new(&key);
        match store.chains.entry(ikey.clone()) {
            dashmap::mapref::entry::Entry::Occupied(mut e) => {
                let chain = e.get_mut();
                // A hot key gets many versions from one entry; the flusher and the ordered set
                // need to hear of it once per entry.
                let seen = chain.versions().last().is_some_and(|v| v.index == index);
                chain.add(version);
                if index > chain.listed && store.engines.for_key(&key).supports_scan() {
                    chain.listed = index;
                    self.new_keys.push(ikey.clone());
                }
                if seen {
                    return;
                }
            }
            dashmap::mapref::entry::Entry::Vacant(e) => {
                let mut chain = Chain::default();
                chain.add(version);
                if store.engines.for_key(&key).supports_scan() {
                    chain.listed = index;
                    self.new_keys.push(ikey.clone());
                }
                e.insert(chain);
            }
        }
        self.dirty.push((index, ikey));
    }
}

impl Drop for InstallBatch<'_> {
    fn drop(&mut self) {
        if !self.new_keys.is_empty() {
            // Sorted keys descend through the same nodes one after another, which keeps them
            // in cache.
            self.new_keys.sort_unstable();
            let index = self.max_index;
            self.store
                .ordered
                .write()
                .add(self.new_keys.drain(..), index);
        }
        if !self.dirty.is_empty() {
            self.store.dirty.lock().extend(self.dirty.drain(..));
        }
    }
}

impl Chain {
    /// The live versions, sorted by `ts`.
    fn versions(&self) -> &[Version] {
        &self.all[self.start..]
    }

    /// How many leading live versions have a log index `<= upto`, when those are exactly the
    /// versions at or below `upto`.
    fn flushable_prefix(&self, upto: u64) -> Option<usize> {
        self.index_sorted
            .then(|| self.versions().partition_point(|v| v.index <= upto))
    }

    fn add(&mut self, version: Version) {
        let live = self.versions();
        let pos = live
            .iter()
            .rposition(|v| v.ts <= version.ts)
            .map_or(0, |p| p + 1);
        let before = pos.checked_sub(1).map(|p| live[p].index);
        let after = live.get(pos).map(|v| v.index);
        let newest = live.last().is_none_or(|l| l.ts < version.ts);
        if before.is_some_and(|i| i > version.index) || after.is_some_and(|i| i < version.index) {
            self.index_sorted = false;
        }
        if let Some((memo_ts, _)) = self.memo {
            if version.ts <= memo_ts {
                self.memo = None;
            }
        }
        if !newest {
            self.epoch += 1;
        }
        self.all.insert(self.start + pos, version);
    }

    /// Drops the versions at or below log index `upto`; returns how many.
    fn drop_flushed(&mut self, upto: u64) -> usize {
        // The memo covers the versions up to its timestamp and readers fold the live versions
        // after it: once a version newer than the memo leaves the chain, the memo would miss
        // it (a hot counter then read low until its next put; fsck saw usage counters behind
        // the tree).
        let prefix = self.flushable_prefix(upto);
        let dropped_ts = match prefix {
            // Sorted by ts: the prefix's last is its newest.
            Some(n) => n.checked_sub(1).map(|i| self.versions()[i].ts),
            None => self
                .versions()
                .iter()
                .filter(|v| v.index <= upto)
                .map(|v| v.ts)
                .max(),
        };
        if dropped_ts.is_some() {
            self.epoch += 1;
        }
        if let (Some((memo_ts, _)), Some(d)) = (&self.memo, dropped_ts) {
            if *memo_ts < d {
                self.memo = None;
            }
        }
        match prefix {
            Some(n) => {
                self.start += n;
                // Compact once the dead prefix is as long as the live part: each version is
                // moved a constant number of times on average.
                if self.start >= 64 && self.start * 2 >= self.all.len() {
                    self.all.drain(..self.start);
                    self.start = 0;
                }
                n
            }
            None => {
                self.all.drain(..self.start);
                self.start = 0;
                let before = self.all.len();
                self.all.retain(|v| v.index > upto);
                self.index_sorted = self.all.windows(2).all(|w| w[0].index <= w[1].index);
                before - self.all.len()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineKind, HashEngine, LsmEngine};

    fn store(dir: &std::path::Path) -> MvccStore {
        let lsm: Arc<dyn Engine> = Arc::new(LsmEngine::open(&dir.join("lsm")).expect("lsm"));
        let hash: Arc<dyn Engine> = Arc::new(HashEngine::open(&dir.join("hash")).expect("hash"));
        assert_eq!(hash.kind(), EngineKind::Hash);
        MvccStore::new(EngineSet::new(lsm, vec![(1, hash)]), 0)
    }

    #[test]
    fn snapshot_reads_see_the_right_version_before_and_after_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        for key in [b"\x01k".as_slice(), b"\x02k".as_slice()] {
            s.install(key, 10, 1, Mutation::Put(b"a".to_vec()));
            s.install(
                key,
                20,
                2,
                Mutation::Delta(DeltaOp::Add { offset: 0, by: 5 }),
            );
            s.install(key, 30, 3, Mutation::Put(b"c".to_vec()));
            s.install(key, 40, 4, Mutation::Delete);
            assert_eq!(s.get(key, 5).expect("get"), None);
            assert_eq!(s.get(key, 10).expect("get"), Some(b"a".to_vec()));
            let mut a5 = b"a".to_vec();
            DeltaOp::Add { offset: 0, by: 5 }.apply(&mut a5);
            assert_eq!(s.get(key, 25).expect("get"), Some(a5));
            assert_eq!(s.get(key, 35).expect("get"), Some(b"c".to_vec()));
            assert_eq!(s.get(key, 45).expect("get"), None);
        }
        s.install(b"\x02j", 50, 5, Mutation::Put(b"j".to_vec()));
        s.install(
            b"\x02j",
            60,
            6,
            Mutation::Delta(DeltaOp::Max {
                offset: 8,
                value: 7,
            }),
        );
        s.flush(5).expect("flush");
        assert_eq!(s.floor(), 50);
        assert!(matches!(
            s.get(b"\x02j", 45),
            Err(Error::SnapshotTooOld { .. })
        ));
        let mut j = b"j".to_vec();
        DeltaOp::Max {
            offset: 8,
            value: 7,
        }
        .apply(&mut j);
        assert_eq!(s.get(b"\x02j", 55).expect("get"), Some(b"j".to_vec()));
        assert_eq!(s.get(b"\x02j", 65).expect("get"), Some(j.clone()));
        s.flush(6).expect("flush");
        assert_eq!(s.get(b"\x02j", 65).expect("get"), Some(j));
        assert_eq!(s.stats().versions, 0, "everything flushed leaves memory");
        assert_eq!(s.get(b"\x02k", 60).expect("get"), None);
    }

    #[test]
    fn chains_drop_flushed_prefixes_and_handle_out_of_order_indexes() {
        let v = |ts: u64, index: u64| Version {
            ts,
            index,
            mutation: Mutation::Delta(DeltaOp::Add { offset: 0, by: 1 }),
        };
        let mut c = Chain::default();
        for i in 1..=200u64 {
            c.add(v(i * 10, i));
        }
        assert_eq!(c.flushable_prefix(50), Some(50));
        assert_eq!(c.drop_flushed(50), 50);
        assert_eq!(c.versions().len(), 150);
        assert_eq!(c.versions()[0].index, 51);
        assert_eq!(c.start, 50, "not compacted while the dead prefix is short");
        assert_eq!(c.drop_flushed(120), 70);
        assert_eq!(
            c.start, 0,
            "compacted once the dead prefix outgrew the live part"
        );
        assert_eq!(c.versions()[0].index, 121);
        // A 2PC commit stamped earlier but applied later breaks the index order.
        c.add(v(1_215, 500));
        assert!(!c.index_sorted);
        assert_eq!(c.flushable_prefix(130), None);
        let flushed = c.drop_flushed(130);
        assert_eq!(flushed, 10);
        let idx: Vec<u64> = c.versions().iter().map(|v| v.index).collect();
        assert!(idx.contains(&500) && !idx.iter().any(|i| *i <= 130));
        assert!(!c.index_sorted, "still out of order");
        assert_eq!(c.drop_flushed(499), 70);
        assert!(c.index_sorted, "order is back once the stragglers left");
        assert_eq!(c.versions().len(), 1);
    }

    #[test]
    fn an_out_of_order_version_is_flushed_exactly_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let add = |by: i64| Mutation::Delta(DeltaOp::Add { offset: 0, by });
        s.install(b"\x02n", 10, 1, add(1));
        s.install(b"\x02n", 30, 2, add(10));
        // Stamped at 20, applied at index 3 (after index 2).
        s.install(b"\x02n", 20, 3, add(100));
        let read = |ts| {
            s.get(b"\x02n", ts)
                .expect("get")
                .map(|v| i64::from_le_bytes(v[..8].try_into().expect("8 bytes")))
        };
        assert_eq!(read(25), Some(101));
        s.flush(2).expect("flush");
        assert_eq!(
            read(40),
            Some(111),
            "index 3 still folds over the flushed 1 and 2"
        );
        s.flush(3).expect("flush");
        assert_eq!(read(40), Some(111));
        assert_eq!(s.stats().versions, 0);
    }

    #[test]
    fn ordered_keys_cut_runs_and_expire_them_whole() {
        let k = |i: u8| InlineKey::new(&[2, i]);
        let all = |o: &OrderedKeys| o.range(Bound::Unbounded, Bound::Unbounded, usize::MAX);
        let mut o = OrderedKeys {
            run_keys: 3,
            ..OrderedKeys::default()
        };
        o.add([k(5), k(1)].into_iter(), 10);
        o.add([k(3)].into_iter(), 11);
        assert_eq!(o.runs.len(), 1, "three keys make a run");
        o.add([k(2), k(1)].into_iter(), 12);
        assert_eq!(
            all(&o),
            vec![vec![2, 1], vec![2, 2], vec![2, 3], vec![2, 5]],
            "sorted and unique across the run and the recent keys"
        );
        assert_eq!(
            o.range(Bound::Excluded(k(1)), Bound::Included(k(3)), usize::MAX),
            vec![vec![2, 2], vec![2, 3]]
        );
        o.expire(10);
        assert_eq!(all(&o).len(), 4, "the run holds a key of index 11");
        o.expire(11);
        assert_eq!(
            all(&o),
            vec![vec![2, 1], vec![2, 2]],
            "the run is gone whole"
        );
        o.expire(12);
        assert!(all(&o).is_empty());
    }

    #[test]
    fn a_key_flushed_as_deleted_with_newer_versions_stays_scannable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.install(&[2, 9], 10, 1, Mutation::Put(b"old".to_vec()));
        s.install(&[2, 9], 20, 2, Mutation::Delete);
        s.install(&[2, 9], 30, 3, Mutation::Put(b"new".to_vec()));
        // The engine gets the deletion; the chain keeps version 3, and no engine row
        // leads a scan to it any more.
        s.flush(2).expect("flush");
        let got = s
            .scan(&KeyRange::prefix(&[2]), 40, usize::MAX)
            .expect("scan");
        assert_eq!(got, vec![(vec![2, 9], b"new".to_vec())]);
        assert_eq!(
            s.range_newer_than(&KeyRange::prefix(&[2]), 25)
                .expect("phantom check"),
            Some(vec![2, 9])
        );
        s.flush(3).expect("flush");
        let got = s
            .scan(&KeyRange::prefix(&[2]), 40, usize::MAX)
            .expect("scan");
        assert_eq!(got, vec![(vec![2, 9], b"new".to_vec())]);
    }

    #[test]
    fn a_phantom_check_sees_an_update_after_the_first_version_was_flushed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.install(&[2, 9], 10, 1, Mutation::Put(b"a".to_vec()));
        s.install(&[2, 9], 30, 3, Mutation::Put(b"b".to_vec()));
        // The engine row holds version 1; the chain keeps version 3, newer than 20.
        s.flush(2).expect("flush");
        assert_eq!(
            s.range_newer_than(&KeyRange::prefix(&[2]), 20)
                .expect("phantom check"),
            Some(vec![2, 9])
        );
    }

    #[test]
    fn scans_merge_memory_and_engine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        for i in 0..50u8 {
            s.install(&[2, i], 10 + i as u64, 1 + i as u64, Mutation::Put(vec![i]));
        }
        s.flush(25).expect("flush");
        s.install(&[2, 3], 100, 60, Mutation::Delete);
        s.install(&[2, 30], 101, 61, Mutation::Delete);
        s.install(&[2, 7, 1], 102, 62, Mutation::Put(b"new".to_vec()));
        let got = s
            .scan(&KeyRange::prefix(&[2]), 200, usize::MAX)
            .expect("scan");
        let keys: Vec<Vec<u8>> = got.iter().map(|(k, _)| k.clone()).collect();
        let mut want: Vec<Vec<u8>> = (0..50u8)
            .filter(|i| *i != 3 && *i != 30)
            .map(|i| vec![2, i])
            .collect();
        want.push(vec![2, 7, 1]);
        want.sort();
        assert_eq!(keys, want);
        let got = s.scan(&KeyRange::prefix(&[2]), 200, 5).expect("scan");
        assert_eq!(got.len(), 5);
        // Snapshot at 99 still sees the deleted keys.
        let got = s
            .scan(&KeyRange::prefix(&[2]), 99, usize::MAX)
            .expect("scan");
        assert_eq!(got.len(), 50);
        assert!(matches!(
            s.scan(&KeyRange::prefix(&[1]), 200, 10),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn a_memo_older_than_a_flushed_prefix_is_not_used() {
        // A counter with deltas only (a namespace's usage record): the memo is taken, more
        // deltas arrive, and a flush drops versions newer than the memo.
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let add = || Mutation::Delta(DeltaOp::Add { offset: 0, by: 1 });
        for i in 1..=40u64 {
            s.install(b"\x00c", i, i, add());
        }
        let read = || {
            let v = s.get(b"\x00c", u64::MAX).expect("get").expect("some");
            u64::from_le_bytes(v[..8].try_into().expect("8"))
        };
        assert_eq!(read(), 40, "folds 40 deltas and remembers the result");
        for i in 41..=50u64 {
            s.install(b"\x00c", i, i, add());
        }
        s.flush(45).expect("flush");
        assert_eq!(
            read(),
            50,
            "the versions 41-45 left the chain after the memo was taken"
        );
        s.flush(50).expect("flush");
        assert_eq!(read(), 50);
    }

    #[test]
    fn many_deltas_fold_exactly_and_use_the_memo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.install(b"\x02p", 1, 1, Mutation::Put(vec![0; 16]));
        for i in 0..1000u64 {
            s.install(
                b"\x02p",
                2 + i,
                2 + i,
                Mutation::Delta(DeltaOp::Add { offset: 0, by: 1 }),
            );
            s.install(
                b"\x02p",
                2 + i,
                2 + i,
                Mutation::Delta(DeltaOp::Max {
                    offset: 8,
                    value: i,
                }),
            );
        }
        let read = |ts| {
            let v = s.get(b"\x02p", ts).expect("get").expect("some");
            (
                u64::from_le_bytes(v[..8].try_into().expect("8")),
                u64::from_le_bytes(v[8..16].try_into().expect("8")),
            )
        };
        assert_eq!(read(5000), (1000, 999));
        assert_eq!(read(5000), (1000, 999), "memo answer equals the full fold");
        assert_eq!(read(501), (500, 499));
        // An out-of-order delta below the memo invalidates it.
        s.install(
            b"\x02p",
            3,
            3000,
            Mutation::Delta(DeltaOp::Add { offset: 0, by: 10 }),
        );
        assert_eq!(read(5000), (1010, 999));
        s.flush(1500).expect("flush");
        assert_eq!(read(5000), (1010, 999));
        s.flush(3000).expect("flush");
        assert_eq!(read(5000), (1010, 999));
    }

    #[test]
    fn a_replayed_version_already_in_the_engine_is_not_folded_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = store(dir.path());
            s.install(b"\x02c", 1, 1, Mutation::Put(vec![0; 8]));
            s.install(
                b"\x02c",
                2,
                2,
                Mutation::Delta(DeltaOp::Add { offset: 0, by: 1 }),
            );
            s.flush(2).expect("flush");
            for e in s.engines().all() {
                e.persist().expect("persist");
            }
        }
        // After a crash the log is replayed from an older durable index (say 1).
        let s = store(dir.path());
        s.install(
            b"\x02c",
            2,
            2,
            Mutation::Delta(DeltaOp::Add { offset: 0, by: 1 }),
        );
        s.install(
            b"\x02c",
            3,
            3,
            Mutation::Delta(DeltaOp::Add { offset: 0, by: 1 }),
        );
        let v = s.get(b"\x02c", 10).expect("get").expect("some");
        assert_eq!(u64::from_le_bytes(v[..8].try_into().expect("8")), 2);
    }
}
