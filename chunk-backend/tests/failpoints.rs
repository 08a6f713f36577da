//! Injected I/O errors in the chunk store's writer (`cargo test -p chunk-backend --features
//! failpoints`): the caller gets a clear error, nothing acknowledged is lost, a version is
//! never reported before its record is durable, and the store refuses writes until reopened.

#![cfg(feature = "failpoints")]

use std::sync::Arc;
use std::time::Duration;

use chunk_backend::blob::LogStore;
use chunk_backend::disk::{Disk, DiskConfig};
use fail::FailScenario;

fn small() -> DiskConfig {
    DiskConfig {
        block_size: 64 << 10,
        blocks: 64,
        chunk_slots: 16,
        chunk_blocks: 4,
    }
}

#[test]
fn a_failed_write_reports_an_error_and_takes_no_version() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    {
        let s = LogStore::open(Arc::new(Disk::open(&path, small()).expect("disk"))).expect("store");
        s.create(1).expect("create");
        let lease = s.lease(1, "w", Duration::from_secs(60)).expect("lease");
        for i in 0..5u8 {
            s.append(&lease, &[i; 100]).expect("append");
        }
        assert_eq!(s.version(1).expect("version"), 5);
        fail::cfg("chunk::write", "1*return").expect("failpoint");
        let err = s.append(&lease, b"lost").expect_err("the write fails");
        assert!(err.to_string().contains("failpoint"), "{err}");
        assert_eq!(
            s.version(1).expect("version"),
            5,
            "a version was reported for a record that never became durable"
        );
        // The store refuses further writes rather than writing after a failure it cannot see.
        let again = s.append(&lease, b"after").expect_err("latched");
        assert!(again.to_string().contains("reopen"), "{again}");
    }
    // Reopened: every acknowledged record is there, the failed one is not, and writes go on
    // with the next number.
    let s = LogStore::open(Arc::new(Disk::open(&path, small()).expect("reopen"))).expect("store");
    let recs = s.records(1).expect("records");
    assert_eq!(recs.len(), 5);
    assert_eq!(s.version(1).expect("version"), 5);
    let lease = s.lease(1, "w", Duration::from_secs(60)).expect("lease");
    assert_eq!(s.append(&lease, b"next").expect("append").1, 6);
    scenario.teardown();
}

/// A power cut in the middle of a group write, simulated sector by sector (each unsynced
/// 512-byte sector of the group persisted or not, in any order), for many cut patterns: after
/// the reboot every acknowledged record is there with its bytes, nothing acknowledged is
/// reported damaged, what survives of the interrupted group is a prefix of it, and the store
/// takes appends again.
#[test]
fn a_power_cut_in_a_group_write_keeps_every_acknowledged_record() {
    let record = |i: u64, len: usize| -> Vec<u8> {
        let mut v = vec![(i % 251) as u8; len];
        v[..8].copy_from_slice(&i.to_le_bytes());
        v
    };
    for seed in 1..=40u64 {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let mut acked: Vec<Vec<u8>> = Vec::new();
        let mut inflight: Vec<Vec<u8>> = Vec::new();
        {
            let s =
                LogStore::open(Arc::new(Disk::open(&path, small()).expect("disk"))).expect("store");
            s.create(1).expect("create");
            let lease = s.lease(1, "w", Duration::from_secs(60)).expect("lease");
            // Acknowledged records of assorted sizes, across chunk boundaries (256 KiB chunks).
            for i in 0..(5 + seed % 20) {
                let r = record(i, 100 + ((seed * 7919 + i * 104_729) % 30_000) as usize);
                s.append(&lease, &r).expect("append");
                acked.push(r);
            }
            fail::cfg("chunk::power-loss", &format!("1*return({seed})")).expect("failpoint");
            for j in 0..(1 + seed % 6) {
                let i = 1000 + j;
                inflight.push(record(i, 50 + ((seed * 31 + j * 977) % 20_000) as usize));
            }
            let refs: Vec<&[u8]> = inflight.iter().map(Vec::as_slice).collect();
            assert!(
                s.append_batch(&lease, &refs).is_err(),
                "seed {seed}: the cut fails the group"
            );
        }
        // The reboot.
        let s = LogStore::open(Arc::new(Disk::open(&path, small()).expect("reopen")))
            .unwrap_or_else(|e| panic!("seed {seed}: the store must open after a power cut: {e}"));
        let got: Vec<Vec<u8>> = s
            .records(1)
            .unwrap_or_else(|e| panic!("seed {seed}: acknowledged records reported damaged: {e}"))
            .into_iter()
            .map(|(_, _, d)| d)
            .collect();
        assert!(
            got.len() >= acked.len(),
            "seed {seed}: lost acknowledged records"
        );
        assert_eq!(&got[..acked.len()], &acked[..], "seed {seed}");
        assert!(
            got.len() <= acked.len() + inflight.len()
                && got[acked.len()..] == inflight[..got.len() - acked.len()],
            "seed {seed}: what survives of the cut group must be a prefix of it"
        );
        let lease = s.lease(1, "w", Duration::from_secs(60)).expect("lease");
        s.append(&lease, b"after the reboot")
            .expect("appends resume");
        drop(s);
        let s =
            LogStore::open(Arc::new(Disk::open(&path, small()).expect("reopen"))).expect("store");
        let last = s.records(1).expect("records").pop().expect("a record").2;
        assert_eq!(last, b"after the reboot");
        scenario.teardown();
    }
}

/// The atomic-file helper failing at each of its steps (sync, rename, directory sync): the
/// caller gets the error, the file holds the old contents or (after the rename) the new ones,
/// whole, and the next write succeeds.
#[test]
fn an_atomic_write_failing_at_any_step_leaves_old_or_new_contents_whole() {
    use chunk_backend::atomic;
    for point in [
        "atomic::before-sync",
        "atomic::before-rename",
        "atomic::before-dir-sync",
    ] {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        atomic::write(&path, b"old").expect("write");
        fail::cfg(point, "1*return").expect("failpoint");
        let err = atomic::write(&path, b"new").expect_err("the step fails");
        assert!(err.to_string().contains(point), "{point}: {err}");
        let now = atomic::read(&path).expect("read").expect("a file");
        let expected: &[u8] = if point == "atomic::before-dir-sync" {
            b"new"
        } else {
            b"old"
        };
        assert_eq!(now, expected, "{point}");
        atomic::write(&path, b"next").expect("the next write");
        assert_eq!(atomic::read(&path).expect("read"), Some(b"next".to_vec()));
        scenario.teardown();
    }
}
