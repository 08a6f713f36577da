//! The file store against a model: a map of byte vectors, through writes at any offset,
//! truncates up and down, removes, reopens (replay) and chunk reclamation.

use std::collections::HashMap;
use std::sync::Arc;

use chunk_backend::disk::{Disk, DiskConfig};
use chunk_backend::files::FileStore;
use proptest::prelude::*;

/// Chunks of 16 KiB, so that a run rolls over, seals and reclaims many of them.
fn small() -> DiskConfig {
    DiskConfig {
        block_size: 4096,
        blocks: 512,
        chunk_slots: 128,
        chunk_blocks: 4,
    }
}

#[derive(Clone, Debug)]
enum Step {
    Write {
        file: u64,
        offset: u64,
        len: usize,
        byte: u8,
    },
    Truncate {
        file: u64,
        size: u64,
    },
    Remove {
        file: u64,
    },
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u64..4, 0u64..40_000, 1usize..20_000, any::<u8>())
            .prop_map(|(file, offset, len, byte)| Step::Write { file, offset, len, byte }),
        2 => (0u64..4, 0u64..50_000).prop_map(|(file, size)| Step::Truncate { file, size }),
        1 => (0u64..4).prop_map(|file| Step::Remove { file }),
        1 => Just(Step::Reopen),
    ]
}

fn open(path: &std::path::Path) -> FileStore {
    let disk = Arc::new(Disk::open(path, small()).expect("disk"));
    FileStore::open(disk, 7).expect("file store")
}

fn check(store: &FileStore, model: &HashMap<u64, Vec<u8>>) {
    for file in 0..4u64 {
        let want = model.get(&file).cloned().unwrap_or_default();
        let got = store.read(file, 0, want.len()).expect("read");
        assert!(
            got == want,
            "contents of file {file}: {} vs {} bytes",
            got.len(),
            want.len()
        );
        // A read in the middle, across pieces.
        if want.len() > 10 {
            let (a, b) = (want.len() / 3, want.len() / 3 + 7_000);
            let got = store.read(file, a as u64, b - a).expect("read");
            let mut padded = want[a..b.min(want.len())].to_vec();
            padded.resize(b - a, 0);
            assert!(got == padded, "a read in the middle of file {file}");
        }
    }
    // The store lists files with data: every file with a non-zero byte, and none removed.
    let listed = store.files();
    for (file, bytes) in model {
        if bytes.iter().any(|b| *b != 0) {
            assert!(
                listed.contains(file),
                "file {file} has data but is not listed"
            );
        }
    }
    assert!(listed.iter().all(|f| model.contains_key(f)), "{listed:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_store_is_a_map_of_byte_vectors(steps in prop::collection::vec(step(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("files.mstore");
        let mut store = open(&path);
        let mut model: HashMap<u64, Vec<u8>> = HashMap::new();
        for s in steps {
            match s {
                Step::Write { file, offset, len, byte } => {
                    let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                    store.write(file, offset, &data).expect("write");
                    let f = model.entry(file).or_default();
                    let end = offset as usize + len;
                    if f.len() < end {
                        f.resize(end, 0);
                    }
                    f[offset as usize..end].copy_from_slice(&data);
                }
                Step::Truncate { file, size } => {
                    store.truncate(file, size).expect("truncate");
                    model.entry(file).or_default().resize(size as usize, 0);
                }
                Step::Remove { file } => {
                    store.remove(file).expect("remove");
                    model.remove(&file);
                }
                Step::Reopen => {
                    drop(store);
                    store = open(&path);
                }
            }
            check(&store, &model);
        }
        // Space: what is live is bounded by the model's bytes; a reopen agrees.
        let live: u64 = model.values().map(|v| v.len() as u64).sum();
        prop_assert!(store.stats().live_bytes <= live);
        drop(store);
        let store = open(&path);
        check(&store, &model);
    }
}

#[test]
fn removed_files_give_their_chunks_back_and_stay_removed_after_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("files.mstore");
    let store = open(&path);
    // 4 MiB through 16 KiB chunks: about 270 chunks, twice the disk's slots, so the run only
    // fits if removed files' chunks come back.
    for round in 0..8u64 {
        for f in 0..4u64 {
            let file = round * 4 + f;
            for i in 0..8u64 {
                store
                    .write(file, i * 16_000, &vec![file as u8; 16_000])
                    .expect("write");
            }
        }
        for f in 0..4u64 {
            store.remove(round * 4 + f).expect("remove");
        }
    }
    store.write(99, 0, b"kept").expect("write");
    let stats = store.stats();
    assert!(stats.reclaimed_chunks > 200, "{stats:?}");
    assert!(stats.chunks <= 3, "{stats:?}");
    drop(store);
    let store = open(&path);
    assert_eq!(store.files(), vec![99]);
    assert_eq!(store.read(99, 0, 4).expect("read"), b"kept");
}

#[test]
fn concurrent_writers_of_many_files_share_fsyncs_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("files.mstore");
    let store = Arc::new(open(&path));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    store.write(t, i * 100, &[t as u8 + 1; 100]).expect("write");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    drop(store);
    let store = open(&path);
    for t in 0..8u64 {
        assert_eq!(
            store.read(t, 0, 5000).expect("read"),
            vec![t as u8 + 1; 5000]
        );
        assert_eq!(store.read(t, 5000, 10).expect("read"), vec![0; 10]);
    }
}
