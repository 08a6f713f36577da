//! The engine conformance suite: every [`Engine`] implementation must pass all of it.
//!
//! Each check takes an `open` function that opens (or reopens) an engine in a directory, so the
//! suite can restart engines and check durability. The suite runs in this crate's tests for both
//! built-in engines, and is public so that a new engine elsewhere can run it too.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::{BatchOp, Engine};
use crate::error::{Error, Result};
use crate::keys::KeyRange;

/// Opens an engine in a directory.
pub type Opener = dyn Fn(&Path) -> Result<Arc<dyn Engine>>;

fn check(cond: bool, what: &str) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Corruption(format!(
            "conformance check failed: {what}"
        )))
    }
}

/// Runs every check; each gets a fresh subdirectory of `dir`.
pub fn run_all(dir: &Path, open: &Opener) -> Result<()> {
    point_ops(&dir.join("point"), open)?;
    batches_are_atomic_and_ordered(&dir.join("batch"), open)?;
    persist_survives_reopen(&dir.join("reopen"), open)?;
    scans(&dir.join("scan"), open)?;
    for_each_visits_everything(&dir.join("foreach"), open)?;
    Ok(())
}

/// get/put/delete/overwrite of single keys, including empty values and absent keys.
pub fn point_ops(dir: &Path, open: &Opener) -> Result<()> {
    let e = open(dir)?;
    check(e.get(b"a")?.is_none(), "absent key reads as None")?;
    e.write(&[BatchOp::Put(b"a".to_vec(), b"1".to_vec())])?;
    check(e.get(b"a")? == Some(b"1".to_vec()), "put then get")?;
    e.write(&[BatchOp::Put(b"a".to_vec(), b"2".to_vec())])?;
    check(e.get(b"a")? == Some(b"2".to_vec()), "overwrite")?;
    e.write(&[BatchOp::Put(b"empty".to_vec(), Vec::new())])?;
    check(
        e.get(b"empty")? == Some(Vec::new()),
        "empty value is not absence",
    )?;
    e.write(&[BatchOp::Delete(b"a".to_vec())])?;
    check(e.get(b"a")?.is_none(), "delete")?;
    e.write(&[BatchOp::Delete(b"never".to_vec())])?;
    check(e.get(b"never")?.is_none(), "deleting an absent key is fine")?;
    Ok(())
}

/// A batch applies in order (later ops win) and as a whole.
pub fn batches_are_atomic_and_ordered(dir: &Path, open: &Opener) -> Result<()> {
    let e = open(dir)?;
    e.write(&[
        BatchOp::Put(b"k".to_vec(), b"1".to_vec()),
        BatchOp::Put(b"k".to_vec(), b"2".to_vec()),
        BatchOp::Put(b"j".to_vec(), b"x".to_vec()),
        BatchOp::Delete(b"j".to_vec()),
        BatchOp::Put(b"m".to_vec(), b"y".to_vec()),
    ])?;
    check(
        e.get(b"k")? == Some(b"2".to_vec()),
        "later put in a batch wins",
    )?;
    check(e.get(b"j")?.is_none(), "delete after put in a batch wins")?;
    check(
        e.get(b"m")? == Some(b"y".to_vec()),
        "every op of a batch applies",
    )?;
    e.write(&[])?;
    // The same through borrowed operations.
    e.write_refs(&[
        (b"r", Some(b"1")),
        (b"r", Some(b"2")),
        (b"k", None),
        (b"s", Some(b"")),
    ])?;
    check(
        e.get(b"r")? == Some(b"2".to_vec()),
        "write_refs: later put wins",
    )?;
    check(e.get(b"k")?.is_none(), "write_refs: delete applies")?;
    check(e.get(b"s")? == Some(Vec::new()), "write_refs: empty value")?;
    e.write_refs(&[])?;
    Ok(())
}

/// What was persisted is there after the engine is dropped and reopened.
pub fn persist_survives_reopen(dir: &Path, open: &Opener) -> Result<()> {
    {
        let e = open(dir)?;
        for i in 0..1000u32 {
            e.write(&[BatchOp::Put(
                i.to_be_bytes().to_vec(),
                vec![i as u8; (i % 50) as usize],
            )])?;
        }
        e.write(&[BatchOp::Delete(7u32.to_be_bytes().to_vec())])?;
        e.persist()?;
    }
    let e = open(dir)?;
    for i in 0..1000u32 {
        let got = e.get(&i.to_be_bytes())?;
        if i == 7 {
            check(got.is_none(), "deleted key stays deleted after reopen")?;
        } else {
            check(
                got == Some(vec![i as u8; (i % 50) as usize]),
                "value survives reopen",
            )?;
        }
    }
    Ok(())
}

/// Ordered scans with bounds and limits, or a clean `Unsupported` error.
pub fn scans(dir: &Path, open: &Opener) -> Result<()> {
    let e = open(dir)?;
    let keys: Vec<Vec<u8>> = vec![
        b"a".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        b"b\x00".to_vec(),
        b"c".to_vec(),
    ];
    let batch: Vec<BatchOp> = keys
        .iter()
        .map(|k| BatchOp::Put(k.clone(), k.clone()))
        .collect();
    e.write(&batch)?;
    let all = KeyRange::new(Vec::new(), None);
    if !e.supports_scan() {
        return check(
            matches!(e.scan(&all, 10), Err(Error::Unsupported(_))),
            "unsupported scan says so",
        );
    }
    let got: Vec<Vec<u8>> = e.scan(&all, 100)?.into_iter().map(|(k, _)| k).collect();
    check(got == keys, "full scan returns every key in order")?;
    let got: Vec<Vec<u8>> = e
        .scan(&KeyRange::prefix(b"b"), 100)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    check(got == vec![b"b".to_vec(), b"b\x00".to_vec()], "prefix scan")?;
    let got = e.scan(&KeyRange::new(b"ab".to_vec(), Some(b"c".to_vec())), 2)?;
    check(
        got.len() == 2 && got[0].0 == b"ab" && got[1].0 == b"b",
        "bounded scan with limit",
    )?;
    check(e.scan(&all, 0)?.is_empty(), "limit 0 returns nothing")?;
    check(
        e.scan(&KeyRange::new(b"d".to_vec(), None), 10)?.is_empty(),
        "scan past the end",
    )?;
    Ok(())
}

/// `for_each` visits exactly the live entries.
pub fn for_each_visits_everything(dir: &Path, open: &Opener) -> Result<()> {
    let e = open(dir)?;
    let mut model = BTreeMap::new();
    for i in 0..300u32 {
        let k = format!("key{i}").into_bytes();
        e.write(&[BatchOp::Put(k.clone(), i.to_le_bytes().to_vec())])?;
        model.insert(k, i.to_le_bytes().to_vec());
    }
    for i in (0..300u32).step_by(3) {
        let k = format!("key{i}").into_bytes();
        e.write(&[BatchOp::Delete(k.clone())])?;
        model.remove(&k);
    }
    let mut seen = BTreeMap::new();
    e.for_each(&mut |k, v| {
        seen.insert(k.to_vec(), v.to_vec());
        Ok(())
    })?;
    check(seen == model, "for_each sees exactly the live entries")
}

/// One step of the model-based test.
#[derive(Clone, Debug)]
pub enum ModelOp {
    /// Put a key (index into a small key set) with a value.
    Put(u8, Vec<u8>),
    /// Delete a key.
    Delete(u8),
    /// Persist, drop and reopen the engine.
    Reopen,
}

/// Applies `ops` to the engine and to a `BTreeMap`, reopening where asked, and compares them
/// after every step.
pub fn model_check(dir: &Path, open: &Opener, ops: &[ModelOp]) -> Result<()> {
    let key = |i: u8| vec![b'k', i];
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut e = open(dir)?;
    for op in ops {
        match op {
            ModelOp::Put(i, v) => {
                e.write(&[BatchOp::Put(key(*i), v.clone())])?;
                model.insert(key(*i), v.clone());
            }
            ModelOp::Delete(i) => {
                e.write(&[BatchOp::Delete(key(*i))])?;
                model.remove(&key(*i));
            }
            ModelOp::Reopen => {
                e.persist()?;
                drop(e);
                e = open(dir)?;
            }
        }
        for i in 0..16u8 {
            check(
                e.get(&key(i))? == model.get(&key(i)).cloned(),
                "engine agrees with the model",
            )?;
        }
    }
    if e.supports_scan() {
        let got: BTreeMap<_, _> = e
            .scan(&KeyRange::new(Vec::new(), None), usize::MAX)?
            .into_iter()
            .collect();
        check(got == model, "scan agrees with the model")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineKind, HashEngine, LsmEngine};
    use proptest::prelude::*;

    fn opener(kind: EngineKind) -> impl Fn(&Path) -> Result<Arc<dyn Engine>> {
        move |p: &Path| -> Result<Arc<dyn Engine>> {
            Ok(match kind {
                EngineKind::Hash => Arc::new(HashEngine::open(p)?),
                EngineKind::Lsm => Arc::new(LsmEngine::open(p)?),
            })
        }
    }

    #[test]
    fn hash_engine_conforms() {
        let dir = tempfile::tempdir().expect("tempdir");
        run_all(dir.path(), &opener(EngineKind::Hash)).expect("hash engine conformance");
    }

    #[test]
    fn lsm_engine_conforms() {
        let dir = tempfile::tempdir().expect("tempdir");
        run_all(dir.path(), &opener(EngineKind::Lsm)).expect("lsm engine conformance");
    }

    fn op_strategy() -> impl Strategy<Value = ModelOp> {
        prop_oneof![
            6 => (0u8..16, proptest::collection::vec(any::<u8>(), 0..20)).prop_map(|(k, v)| ModelOp::Put(k, v)),
            3 => (0u8..16).prop_map(ModelOp::Delete),
            1 => Just(ModelOp::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn engines_match_a_btreemap_across_restarts(ops in proptest::collection::vec(op_strategy(), 1..60)) {
            for kind in [EngineKind::Hash, EngineKind::Lsm] {
                let dir = tempfile::tempdir().expect("tempdir");
                model_check(dir.path(), &opener(kind), &ops).map_err(|e| TestCaseError::fail(format!("{kind:?}: {e}")))?;
            }
        }
    }

    #[test]
    fn hash_engine_cuts_a_torn_tail_and_rejects_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let put = |k: &[u8]| BatchOp::Put(k.to_vec(), b"v".to_vec());
        {
            let e = HashEngine::open(dir.path()).expect("open");
            e.write(&[put(b"a")]).expect("write");
            e.persist().expect("persist");
            // `b`'s record claims `a`'s durable.
            e.write(&[put(b"b")]).expect("write");
            e.persist().expect("persist");
            // Persisted last: no record names that persist as a checkpoint.
            e.write(&[put(b"c")]).expect("write");
            e.write(&[put(b"d")]).expect("write");
            e.persist().expect("persist");
        }
        let path = dir.path().join("hash.log");
        let full = std::fs::read(&path).expect("read");
        let scan = chunk_backend::frame::scan(&full);
        let at: Vec<usize> = scan.records.iter().map(|r| r.offset as usize).collect();
        assert_eq!(at.len(), 4);
        let reopen = |bytes: &[u8]| {
            std::fs::write(&path, bytes).expect("write");
            HashEngine::open(dir.path())
        };
        let has = |e: &HashEngine, k: &[u8]| e.get(k).expect("get").is_some();
        // A torn tail: the last record is cut in the middle. The others survive.
        let e = reopen(&full[..full.len() - 3]).expect("reopen after torn tail");
        assert!(has(&e, b"a") && has(&e, b"b") && has(&e, b"c") && !has(&e, b"d"));
        drop(e);
        // A flipped byte in `a`'s record, which later records claim was durable: corruption.
        let mut bad = full.clone();
        bad[at[0] + 30] ^= 0x40;
        assert!(matches!(reopen(&bad), Err(Error::Corruption(_))));
        // A flipped byte in `c`'s record, above every checkpoint (`c` and `d` were written
        // after the last persist that any record names): a batch a power loss persisted out of
        // order. Cut there, as a torn tail.
        let mut bad = full.clone();
        bad[at[2] + 30] ^= 0x40;
        let e = reopen(&bad).expect("out-of-order loss above the checkpoint");
        assert!(has(&e, b"a") && has(&e, b"b") && !has(&e, b"c") && !has(&e, b"d"));
        // Writes go on after the cut.
        e.write(&[put(b"e")]).expect("write");
        e.persist().expect("persist");
        drop(e);
        let e = HashEngine::open(dir.path()).expect("reopen");
        assert!(has(&e, b"b") && has(&e, b"e") && !has(&e, b"c"));
    }
}
