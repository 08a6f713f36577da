//! The `LogBlob` interface every implementation offers, and the conformance suite they all
//! pass: the local store ([`crate::blob::LogStore`]) and the replicated one
//! ([`crate::replica::client::ReplicatedLog`]).
//!
//! The suite appends sequences of records of many sizes (empty included) to several blobs,
//! interleaved, and checks that each blob reads back exactly what was acknowledged, in order,
//! with versions 1, 2, 3, ... and positions that match what the appends returned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::blob::{Lease, LogStore, Position};
use crate::error::Result;
use crate::replica::client::ReplicatedLog;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A blob's records: position, version, data.
pub type Records = Vec<(Position, u64, Vec<u8>)>;

/// What a `LogBlob` store offers, whatever is underneath.
pub trait LogBlobStore: Send + Sync {
    /// Appends to `blob` (created on first use); returns the record's position and version
    /// once it is durable.
    fn append<'a>(&'a self, blob: u64, data: &'a [u8]) -> BoxFuture<'a, Result<(Position, u64)>>;
    /// Every durable record of `blob`, in order, with its version.
    fn records(&self, blob: u64) -> BoxFuture<'_, Result<Records>>;
}

/// The local store behind the interface: one writer (this adapter) holding every blob's lease.
pub struct Local {
    store: Arc<LogStore>,
    leases: Mutex<HashMap<u64, Lease>>,
}

impl Local {
    /// Wraps `store`.
    pub fn new(store: Arc<LogStore>) -> Local {
        Local {
            store,
            leases: Mutex::new(HashMap::new()),
        }
    }

    fn lease(&self, blob: u64) -> Result<Lease> {
        if let Some(l) = self.leases.lock().get(&blob) {
            return Ok(l.clone());
        }
        if !self.store.blobs().contains(&blob) {
            self.store.create(blob)?;
        }
        let l = self
            .store
            .lease(blob, "conformance", Duration::from_secs(3600))?;
        self.leases.lock().insert(blob, l.clone());
        Ok(l)
    }
}

impl LogBlobStore for Local {
    fn append<'a>(&'a self, blob: u64, data: &'a [u8]) -> BoxFuture<'a, Result<(Position, u64)>> {
        Box::pin(async move {
            let lease = self.lease(blob)?;
            let store = self.store.clone();
            let data = data.to_vec();
            tokio::task::spawn_blocking(move || store.append(&lease, &data))
                .await
                .map_err(|e| crate::Error::Remote(format!("append task: {e}")))?
        })
    }

    fn records(&self, blob: u64) -> BoxFuture<'_, Result<Records>> {
        Box::pin(async move { self.store.records(blob) })
    }
}

/// The replicated store behind the interface: one [`ReplicatedLog`] per blob.
pub struct Replicated {
    master: String,
    logs: tokio::sync::Mutex<HashMap<u64, Arc<ReplicatedLog>>>,
}

impl Replicated {
    /// Talks to the master at `master`.
    pub fn new(master: &str) -> Replicated {
        Replicated {
            master: master.to_string(),
            logs: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn log(&self, blob: u64) -> Result<Arc<ReplicatedLog>> {
        let mut logs = self.logs.lock().await;
        if let Some(l) = logs.get(&blob) {
            return Ok(l.clone());
        }
        let l = Arc::new(ReplicatedLog::open(&self.master, blob).await?);
        logs.insert(blob, l.clone());
        Ok(l)
    }
}

impl LogBlobStore for Replicated {
    fn append<'a>(&'a self, blob: u64, data: &'a [u8]) -> BoxFuture<'a, Result<(Position, u64)>> {
        Box::pin(async move { self.log(blob).await?.append(data).await })
    }

    fn records(&self, blob: u64) -> BoxFuture<'_, Result<Records>> {
        Box::pin(async move { self.log(blob).await?.records().await })
    }
}

/// Runs the suite against `store`. Panics (with the case) on a violation.
pub async fn run(store: &dyn LogBlobStore) {
    let sizes = [0usize, 1, 7, 100, 4096, 10_000, 3, 65_000, 12];
    let blobs = [101u64, 102, 103];
    let mut written: HashMap<u64, Records> = HashMap::new();
    for round in 0..4 {
        for (bi, blob) in blobs.iter().enumerate() {
            for (si, size) in sizes.iter().enumerate() {
                let data: Vec<u8> = (0..*size).map(|k| (k + si + bi + round) as u8).collect();
                let (pos, v) = store.append(*blob, &data).await.expect("append");
                let w = written.entry(*blob).or_default();
                assert_eq!(v, w.len() as u64 + 1, "blob {blob}: versions count appends");
                if let Some((last, _, _)) = w.last() {
                    assert!(pos > *last, "blob {blob}: positions grow");
                }
                w.push((pos, v, data));
            }
        }
    }
    for blob in blobs {
        let got = store.records(blob).await.expect("records");
        let want = &written[&blob];
        assert_eq!(got.len(), want.len(), "blob {blob}: record count");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g, w, "blob {blob}");
        }
    }
    assert!(
        store
            .records(999)
            .await
            .map(|r| r.is_empty())
            .unwrap_or(true),
        "an unknown blob has no records"
    );
}
