//! The disk engine and LogBlobs against a model, with reopen steps; leases, versions,
//! rollover, reclaim; corruption; and kill -9 during concurrent appends.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chunk_backend::blob::{LogStore, Position};
use chunk_backend::crashload;
use chunk_backend::disk::{Disk, DiskConfig};
use chunk_backend::Error;
use proptest::prelude::*;

fn small() -> DiskConfig {
    DiskConfig {
        block_size: 4096,
        blocks: 512,
        chunk_slots: 64,
        chunk_blocks: 4,
    }
}

fn open(path: &Path) -> LogStore {
    LogStore::open(Arc::new(Disk::open(path, small()).expect("open disk"))).expect("open store")
}

#[test]
fn appends_read_back_across_chunks_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let s = open(&path);
    s.create(7).expect("create");
    let lease = s.lease(7, "w", Duration::from_secs(60)).expect("lease");
    let mut written = Vec::new();
    for i in 0..200u64 {
        let data = vec![(i % 251) as u8; (i as usize * 37) % 3000 + 1];
        let (pos, v) = s.append(&lease, &data).expect("append");
        assert_eq!(v, i + 1);
        written.push((pos, data));
    }
    assert!(
        written.last().expect("some").0.chunk > 3,
        "rolled over several chunks"
    );
    for (pos, data) in &written {
        assert_eq!(&s.read(7, *pos, 0).expect("read").1, data);
    }
    drop(s);
    let s = open(&path);
    assert_eq!(s.version(7).expect("version"), 200);
    let recs = s.records(7).expect("records");
    assert_eq!(recs.len(), 200);
    for ((pos, v, data), (wpos, wdata)) in recs.iter().zip(&written) {
        assert_eq!((pos, data), (wpos, wdata));
        assert!(*v >= 1);
    }
    assert!(matches!(
        s.read(7, written[0].0, 201),
        Err(Error::Stale {
            have: 200,
            want: 201,
            ..
        })
    ));
    // Leases end with a restart; a new writer continues the version sequence.
    let lease = s
        .lease(7, "w2", Duration::from_secs(60))
        .expect("lease after restart");
    assert_eq!(s.append(&lease, b"more").expect("append").1, 201);
    // Reclaim the prefix: whole chunks before the position go, their blocks are reused.
    let cut = written[150].0;
    let n = s.reclaim(&lease, cut).expect("reclaim");
    assert_eq!(n as u32, cut.chunk);
    assert!(matches!(
        s.read(7, written[0].0, 0),
        Err(Error::NotFound(_))
    ));
    assert_eq!(s.read(7, cut, 0).expect("kept").1, written[150].1);
}

#[test]
fn one_writer_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir.path().join("store"));
    s.create(1).expect("create");
    let a = s.lease(1, "a", Duration::from_millis(200)).expect("lease");
    match s.lease(1, "b", Duration::from_secs(1)) {
        Err(Error::LeaseHeld { holder, .. }) => assert_eq!(holder, "a"),
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    s.append(&a, b"x").expect("holder appends");
    let forged = chunk_backend::blob::Lease {
        token: a.token + 100,
        ..a.clone()
    };
    assert!(matches!(s.append(&forged, b"y"), Err(Error::NoLease(1))));
    std::thread::sleep(Duration::from_millis(250));
    let b = s
        .lease(1, "b", Duration::from_secs(1))
        .expect("after expiry");
    assert!(
        matches!(s.append(&a, b"z"), Err(Error::NoLease(1))),
        "the old lease is dead"
    );
    s.append(&b, b"w").expect("new holder appends");
}

#[test]
fn concurrent_appends_share_syncs_and_keep_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = DiskConfig {
        block_size: 64 << 10,
        blocks: 2048,
        chunk_slots: 128,
        chunk_blocks: 16,
    };
    let s = Arc::new(
        LogStore::open(Arc::new(
            Disk::open(&dir.path().join("s"), cfg).expect("disk"),
        ))
        .expect("store"),
    );
    s.create(1).expect("create");
    let lease = s.lease(1, "w", Duration::from_secs(60)).expect("lease");
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let (s, lease) = (s.clone(), lease.clone());
            std::thread::spawn(move || {
                (0..200u64)
                    .map(|i| {
                        s.append(&lease, &crashload::payload(t, i))
                            .expect("append")
                            .1
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut versions: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=1600).collect::<Vec<_>>());
    let recs = s.records(1).expect("records");
    // On disk the records are in version order.
    assert!(recs.windows(2).all(|w| w[0].1 + 1 == w[1].1));
}

#[test]
fn corruption_is_reported_never_returned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let mut written = HashMap::new();
    {
        let s = open(&path);
        s.create(1).expect("create");
        let lease = s.lease(1, "w", Duration::from_secs(60)).expect("lease");
        for i in 0..120u64 {
            let data = crashload::payload(0, i);
            let (pos, _) = s.append(&lease, &data).expect("append");
            written.insert(pos, data);
        }
    }
    let data_start =
        small().file_size() - u64::from(small().blocks) * u64::from(small().block_size);
    let len = std::fs::metadata(&path).expect("meta").len();
    let mut rng_state = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..20 {
        // Flip a few random bytes in the data area.
        let mut bytes = std::fs::read(&path).expect("read");
        for _ in 0..3 {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            let at = data_start + rng_state % (len - data_start);
            bytes[at as usize] ^= 1 << (rng_state % 8);
        }
        std::fs::write(&path, &bytes).expect("write");
        let s = open(&path);
        // Every record the store returns is one that was written, byte for byte.
        for (pos, data) in &written {
            match s.read(1, *pos, 0) {
                Ok((_, got)) => assert_eq!(&got, data, "round {round}: wrong data at {pos:?}"),
                Err(Error::Checksum(_) | Error::NotFound(_)) => {}
                Err(e) => panic!("round {round}: unexpected {e}"),
            }
        }
        if let Ok(recs) = s.records(1) {
            for (pos, _, data) in recs {
                assert_eq!(Some(&data), written.get(&pos), "round {round}");
            }
        }
    }
    // A damaged superblock or a short file is a clear error.
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[3] ^= 0xFF;
    std::fs::write(&path, &bytes).expect("write");
    assert!(matches!(Disk::open(&path, small()), Err(Error::Corrupt(_))));
    bytes[3] ^= 0xFF;
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&path, &bytes).expect("write");
    assert!(matches!(Disk::open(&path, small()), Err(Error::Corrupt(_))));
}

#[test]
fn a_torn_tail_is_cut_at_every_truncation_point() {
    // Write records, then cut the last record short at every offset by zeroing its tail
    // bytes on disk: reopening finds exactly the complete records.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let (last_pos, total) = {
        let s = open(&path);
        s.create(1).expect("create");
        let lease = s.lease(1, "w", Duration::from_secs(60)).expect("lease");
        let mut last = Position {
            chunk: 0,
            offset: 0,
        };
        for i in 0..5u64 {
            last = s.append(&lease, &vec![i as u8 + 1; 300]).expect("append").0;
        }
        (last, 5)
    };
    let original = std::fs::read(&path).expect("read");
    let data_start =
        small().file_size() - u64::from(small().blocks) * u64::from(small().block_size);
    // The blob's first chunk starts at its first block; find the last record's bytes by
    // searching for its payload.
    let needle = vec![5u8; 300];
    let at = original[data_start as usize..]
        .windows(300)
        .position(|w| w == needle.as_slice())
        .expect("last record on disk") as u64
        + data_start;
    let record_start = at - 24 - 8;
    for cut in (record_start..at + 300).step_by(37) {
        let mut b = original.clone();
        for x in &mut b[cut as usize..(at + 300) as usize] {
            *x = 0;
        }
        std::fs::write(&path, &b).expect("write");
        let s = open(&path);
        let recs = s.records(1).expect("records");
        assert_eq!(recs.len(), total - 1, "cut at {cut}");
        assert!(matches!(s.read(1, last_pos, 0), Err(Error::NotFound(_))));
        // And the store takes new appends after the cut.
        let lease = s.lease(1, "w", Duration::from_secs(1)).expect("lease");
        s.append(&lease, b"after")
            .expect("append after a torn tail");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn matches_a_model_with_reopens(ops in prop::collection::vec(prop_oneof![
        8 => (0u64..3, prop::collection::vec(any::<u8>(), 0..2500)).prop_map(|(b, d)| (0u8, b, d)),
        1 => Just((1u8, 0, vec![])),
    ], 1..80)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let mut s = open(&path);
        let mut model: HashMap<u64, Vec<(Position, Vec<u8>)>> = HashMap::new();
        for b in 0..3 {
            s.create(b).expect("create");
            model.insert(b, Vec::new());
        }
        for (kind, blob, data) in ops {
            if kind == 1 {
                drop(s);
                s = open(&path);
                continue;
            }
            let lease = s.lease(blob, "w", Duration::from_secs(60)).expect("lease");
            let (pos, v) = s.append(&lease, &data).expect("append");
            let m = model.get_mut(&blob).expect("blob");
            m.push((pos, data));
            prop_assert_eq!(v, m.len() as u64);
        }
        for (blob, recs) in &model {
            let got: Vec<(Position, Vec<u8>)> = s.records(*blob).expect("records").into_iter().map(|(p, _, d)| (p, d)).collect();
            prop_assert_eq!(&got, recs);
            prop_assert_eq!(s.version(*blob).expect("version"), recs.len() as u64);
        }
    }
}

#[test]
fn kill_9_during_concurrent_appends_keeps_every_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let mut acked: HashMap<(u64, u64), u64> = HashMap::new();
    for round in 0..3u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chunk-crashload"))
            .arg(&path)
            .arg("8")
            .arg((round * 100).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(300 + round * 170));
        child.kill().expect("kill -9");
        child.wait().expect("wait");
        for l in reader.join().expect("reader") {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 4 && f[0] == "ack" {
                let (v, t, i) = (
                    f[1].parse().expect("v"),
                    f[2].parse().expect("t"),
                    f[3].parse().expect("i"),
                );
                acked.insert((t, i), v);
            }
        }
        let s = LogStore::open(Arc::new(
            Disk::open(&path, crashload::config()).expect("reopen"),
        ))
        .expect("store");
        let recs = s.records(1).expect("no damage after kill -9");
        let mut found = HashMap::new();
        for (_, v, data) in &recs {
            let (t, i) = crashload::parse(data).expect("a record names its writer");
            assert_eq!(
                data,
                &crashload::payload(t, i),
                "round {round}: the record is what was written"
            );
            assert!(
                found.insert((t, i), *v).is_none(),
                "round {round}: ({t},{i}) twice"
            );
        }
        for (k, v) in &acked {
            assert_eq!(
                found.get(k),
                Some(v),
                "round {round}: acknowledged {k:?} v{v} is lost"
            );
        }
        assert!(
            acked.len() > 50 * (round as usize + 1),
            "the load made progress: {}",
            acked.len()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    /// Random writes, reads and reopens of an ExtentBlob against a byte vector.
    #[test]
    fn extent_blobs_match_a_byte_vector(ops in prop::collection::vec(prop_oneof![
        6 => (0u64..12_000, prop::collection::vec(any::<u8>(), 0..2_000)).prop_map(|(o, d)| (0u8, o, d, 0usize)),
        3 => (0u64..14_000, 0usize..3_000).prop_map(|(o, l)| (1u8, o, vec![], l)),
        1 => Just((2u8, 0, vec![], 0)),
    ], 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let mut s = open(&path);
        s.create_extent(9).expect("create");
        let mut model: Vec<u8> = Vec::new();
        for (kind, off, data, len) in ops {
            match kind {
                0 => {
                    let lease = s.lease(9, "w", Duration::from_secs(60)).expect("lease");
                    s.write_at(&lease, off, &data).expect("write_at");
                    let end = off as usize + data.len();
                    if model.len() < end && !data.is_empty() {
                        model.resize(end, 0);
                    }
                    if !data.is_empty() {
                        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
                    }
                }
                1 => {
                    let got = s.read_at(9, off, len, 0).expect("read_at");
                    let mut want = vec![0u8; len];
                    for (i, w) in want.iter_mut().enumerate() {
                        *w = model.get(off as usize + i).copied().unwrap_or(0);
                    }
                    prop_assert_eq!(got, want);
                }
                _ => {
                    drop(s);
                    s = open(&path);
                }
            }
        }
        prop_assert_eq!(s.size(9).expect("size"), model.len() as u64);
        prop_assert_eq!(s.read_at(9, 0, model.len(), 0).expect("read all"), model);
    }
}

#[test]
fn blob_kinds_do_not_mix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir.path().join("store"));
    s.create(1).expect("log");
    s.create_extent(2).expect("extent");
    let l1 = s.lease(1, "w", Duration::from_secs(9)).expect("lease");
    let l2 = s.lease(2, "w", Duration::from_secs(9)).expect("lease");
    assert!(matches!(
        s.write_at(&l1, 0, b"x"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.append(&l2, b"x"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.read_at(1, 0, 1, 0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(s.create(2), Err(Error::InvalidArgument(_))));
    // A write that would overflow the address space is refused.
    assert!(matches!(
        s.write_at(&l2, u64::MAX, b"xy"),
        Err(Error::InvalidArgument(_))
    ));
    // Holes read as zeros; a stale demand is refused.
    s.write_at(&l2, 10_000, b"end").expect("write");
    assert_eq!(s.read_at(2, 9_998, 5, 0).expect("read"), b"\0\0end");
    assert!(matches!(s.read_at(2, 0, 1, 5), Err(Error::Stale { .. })));
}

#[test]
fn sealing_at_a_length_cuts_the_chunk_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let (chunk, ends) = {
        let disk = Disk::open(&path, small()).expect("open");
        let c = disk.create_chunk_with_id(42, 7, 0, 0).expect("create");
        assert_eq!(c, 42);
        assert!(
            disk.create_chunk_with_id(42, 7, 0, 0).is_err(),
            "ids are unique"
        );
        let mut ends = Vec::new();
        for i in 0..5u8 {
            let off = disk.append(c, vec![i; 100]).expect("append");
            ends.push(off + 24 + 100);
        }
        assert!(matches!(
            disk.seal_at(c, ends[2] - 1),
            Err(Error::InvalidArgument(_))
        ));
        disk.seal_at(c, ends[2])
            .expect("seal at the end of the third record");
        assert!(
            disk.append(c, vec![9; 10]).is_err(),
            "a sealed chunk takes no appends"
        );
        assert!(matches!(disk.read(c, ends[2]), Err(Error::NotFound(_))));
        assert_eq!(disk.read(c, ends[1]).expect("kept"), vec![2u8; 100]);
        (c, ends)
    };
    let disk = Disk::open(&path, small()).expect("reopen");
    assert_eq!(disk.len(chunk).expect("len"), ends[2]);
    assert!(matches!(disk.read(chunk, ends[2]), Err(Error::NotFound(_))));
    let info = &disk.opened()[0];
    assert_eq!(
        (info.entry.sealed_len, info.records.len()),
        (Some(ends[2]), 3)
    );
    // Sealing an empty chunk at 0 works too.
    let e = disk.create_chunk_with_id(43, 7, 1, 0).expect("create");
    disk.seal_at(e, 0).expect("seal at 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_local() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = DiskConfig {
        block_size: 64 << 10,
        blocks: 512,
        chunk_slots: 64,
        chunk_blocks: 4,
    };
    let store = Arc::new(
        LogStore::open(Arc::new(
            Disk::open(&dir.path().join("s"), cfg).expect("disk"),
        ))
        .expect("store"),
    );
    chunk_backend::conformance::run(&chunk_backend::conformance::Local::new(store)).await;
}

/// Blocks freed by a reclaim keep a deleted chunk's records; a new chunk that reuses them
/// must not take those records for its own, and a stale block link must not lead anywhere.
#[test]
fn reused_blocks_do_not_leak_old_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    {
        let s = open(&path);
        s.create(1).expect("create");
        let lease = s.lease(1, "w", Duration::from_secs(60)).expect("lease");
        let mut last = Position {
            chunk: 0,
            offset: 0,
        };
        for i in 0..60u64 {
            last = s
                .append(&lease, &crashload::payload(9, i))
                .expect("append")
                .0;
        }
        assert!(last.chunk >= 3);
        s.reclaim(&lease, last).expect("reclaim");
        // A reclaim of an extent blob is refused (its early chunks may hold live extents).
        s.create_extent(3).expect("extent");
        let l3 = s.lease(3, "w", Duration::from_secs(60)).expect("lease");
        assert!(matches!(
            s.reclaim(
                &l3,
                Position {
                    chunk: 9,
                    offset: 0
                }
            ),
            Err(Error::InvalidArgument(_))
        ));
    }
    for round in 0..3u64 {
        let s = open(&path);
        let blob = 100 + round;
        s.create(blob).expect("create a blob on reused blocks");
        drop(s);
        let s = open(&path);
        assert_eq!(
            s.records(blob).expect("records"),
            vec![],
            "round {round}: a new blob is empty"
        );
        assert_eq!(s.version(blob).expect("version"), 0);
        let lease = s.lease(blob, "w", Duration::from_secs(60)).expect("lease");
        for i in 0..30u64 {
            s.append(&lease, &crashload::payload(blob, i))
                .expect("append");
        }
        drop(s);
        let s = open(&path);
        let recs = s.records(blob).expect("records");
        assert_eq!(recs.len(), 30);
        for (k, (_, v, data)) in recs.iter().enumerate() {
            assert_eq!(
                (*v, data),
                (k as u64 + 1, &crashload::payload(blob, k as u64))
            );
        }
    }
}

#[test]
fn the_durable_checkpoint_is_recorded_with_the_next_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let mut offsets = Vec::new();
    {
        let disk = Disk::open(&path, small()).expect("open");
        let c = disk.create_chunk(1, 0, 0).expect("create");
        for i in 0..10u8 {
            offsets.push(disk.append(c, vec![i; 40]).expect("append"));
        }
    }
    let disk = Disk::open(&path, small()).expect("reopen");
    let info = &disk.opened()[0];
    // Each append was its own commit: the last one carried the length before it.
    assert_eq!(info.entry.checkpoint, offsets[9]);
    assert_eq!(info.records.len(), 10);
}

#[test]
fn deferred_syncs_acknowledge_at_once_and_checkpoint_only_synced_lengths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    {
        let disk = Disk::open(&path, small()).expect("open");
        disk.set_deferred_sync(true).expect("defer");
        let c = disk.create_chunk(1, 0, 0).expect("create");
        for i in 0..5u8 {
            disk.append(c, vec![i; 40]).expect("append");
        }
        // Acknowledged and readable, but no sync covered them: no checkpoint may name them
        // (after a power cut they may be torn, which must read as a torn tail).
        let written = disk.len(c).expect("len");
        assert!(written > 0);
        assert_eq!(disk.chunks()[0].0.checkpoint, 0);
        disk.sync().expect("sync");
        disk.append(c, vec![9; 40]).expect("append after the sync");
        assert_eq!(
            disk.chunks()[0].0.checkpoint,
            written,
            "the commit after a sync records the synced length"
        );
        // Nothing new to sync: no fdatasync, no error.
        disk.sync().expect("sync");
        disk.sync().expect("sync again");
    }
    // Closed (which syncs) and reopened: every acknowledged record is there.
    let disk = Disk::open(&path, small()).expect("reopen");
    assert_eq!(disk.opened()[0].records.len(), 6);
}

#[test]
fn a_sync_first_syncs_the_store_it_depends_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = Arc::new(Disk::open(&dir.path().join("data"), small()).expect("open"));
    let meta = Disk::open(&dir.path().join("meta"), small()).expect("open");
    for d in [&*data, &meta] {
        d.set_deferred_sync(true).expect("defer");
    }
    let d = data.clone();
    meta.set_before_sync(Box::new(move || d.sync()));
    let (dc, mc) = (
        data.create_chunk(1, 0, 0).expect("create"),
        meta.create_chunk(1, 0, 0).expect("create"),
    );
    data.append(dc, vec![1; 100]).expect("append");
    let written = data.len(dc).expect("len");
    meta.append(mc, vec![2; 10]).expect("append");
    meta.sync().expect("sync");
    // The data store's next commit records what the meta store's sync made durable first.
    data.append(dc, vec![3; 100]).expect("append");
    assert_eq!(data.chunks()[0].0.checkpoint, written);
}
