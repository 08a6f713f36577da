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
