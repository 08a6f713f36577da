//! Retried mutations answer once: request ids and their durable records.
//!
//! A client that loses the answer to a mutation (the server was killed between the commit and
//! the reply, the connection dropped) cannot tell whether it happened. It sends the request
//! again with the same [`RequestId`]; the first attempt, if it committed, left a record of its
//! reply in the same transaction, and the retry returns that reply instead of running the
//! operation a second time (a retried `mkdir` is not `EEXIST`, a retried `RENAME_EXCHANGE` is
//! not swapped back).
//!
//! The records are bounded by *slots*: a client owns up to [`MAX_SLOTS`] slots, uses one per
//! request in flight, and numbers its requests with one increasing sequence. A slot's record
//! holds the last sequence number that committed in it. A request whose slot holds
//! - its own sequence number committed before: the recorded reply is the answer;
//! - a higher one was superseded (the client gave up on it and reused the slot): its outcome
//!   stays unknown and it does not run;
//! - a lower one, or nothing, has not run: it runs and records itself.
//!
//! Two attempts of one request read and write the same slot key, so the store serializes them:
//! one commits, the other conflicts, runs again and finds the record. Records of clients that
//! went away are deleted by [`expire`] once they are older than the retention, which must be
//! longer than any client retries (the SDK stops well before).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tafdb::{Db, KeyRange, Txn};

use crate::error::{fail, Errno, OpResult};

/// The most slots one client may use.
pub const MAX_SLOTS: u32 = 1 << 16;

/// Names one mutating request, across its retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId {
    /// The client's random identity.
    pub client: [u8; 16],
    /// The slot the request occupies while in flight (below [`MAX_SLOTS`]).
    pub slot: u32,
    /// The client's sequence number; increases across all of its requests, starts at 1.
    pub seq: u64,
}

/// What a slot says about a request.
pub(crate) enum Seen {
    /// It has not committed: run it.
    Fresh,
    /// It committed before and answered this (the encoded reply).
    Done(Vec<u8>),
}

const HEAD: usize = 16;

fn decode(v: &[u8]) -> OpResult<(u64, u64, &[u8])> {
    if v.len() < HEAD {
        return Err(
            tafdb::Error::Corruption(format!("request record of {} bytes", v.len())).into(),
        );
    }
    let seq = u64::from_le_bytes(v[0..8].try_into().unwrap_or_default());
    let at_ms = u64::from_le_bytes(v[8..16].try_into().unwrap_or_default());
    Ok((seq, at_ms, &v[HEAD..]))
}

fn encode(seq: u64, at_ms: u64, reply: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEAD + reply.len());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&at_ms.to_le_bytes());
    v.extend_from_slice(reply);
    v
}

fn key(id: &RequestId) -> Vec<u8> {
    metastore::keys::request_key(&id.client, id.slot)
}

/// Reads the request's slot (a recorded read: a concurrent attempt of the same request
/// conflicts with this one).
pub(crate) async fn check(txn: &mut Txn, id: &RequestId) -> OpResult<Seen> {
    if id.slot >= MAX_SLOTS || id.seq == 0 {
        return fail(
            Errno::EINVAL,
            format!("request id slot {} seq {} is out of range", id.slot, id.seq),
        );
    }
    let Some(v) = txn.get(&key(id)).await? else {
        return Ok(Seen::Fresh);
    };
    let (seq, _, reply) = decode(&v)?;
    if seq == id.seq {
        Ok(Seen::Done(reply.to_vec()))
    } else if seq > id.seq {
        fail(
            Errno::ETIMEDOUT,
            format!(
                "request {} of slot {} was superseded by request {seq}: its outcome is unknown",
                id.seq, id.slot
            ),
        )
    } else {
        Ok(Seen::Fresh)
    }
}

/// Records that the request committed with `reply`, in the operation's own transaction.
pub(crate) fn record(txn: &mut Txn, id: &RequestId, reply: &[u8]) -> OpResult<()> {
    txn.put(&key(id), &encode(id.seq, tafdb::tso::now_ms(), reply))?;
    Ok(())
}

/// Deletes the request records written before `before_ms` (ms since the epoch), a page per
/// transaction. Returns how many went.
pub async fn expire(db: &Arc<Db>, before_ms: u64) -> tafdb::Result<u64> {
    const PAGE: usize = 512;
    let all = metastore::keys::request_range();
    let mut start = all.start.clone();
    let mut removed = 0;
    loop {
        let range = KeyRange::new(start.clone(), all.end.clone());
        let (n, last) = db
            .run_txn(|t| {
                let range = range.clone();
                Box::pin(async move {
                    // Deleting records frees space; it runs on a short disk too.
                    t.frees_space();
                    let rows = t.scan(&range, PAGE).await?;
                    let mut n = 0u64;
                    for (k, v) in &rows {
                        let old = match decode(v) {
                            Ok((_, at_ms, _)) => at_ms < before_ms,
                            // A damaged record protects nothing.
                            Err(_) => true,
                        };
                        if old {
                            t.delete(k)?;
                            n += 1;
                        }
                    }
                    let last = (rows.len() == PAGE).then(|| rows[rows.len() - 1].0.clone());
                    Ok((n, last))
                })
            })
            .await?;
        removed += n;
        match last {
            Some(mut k) => {
                k.push(0);
                start = k;
            }
            None => return Ok(removed),
        }
    }
}

/// Deletes expired request records every `every` until the process ends (records older than
/// `retention`).
pub async fn expire_forever(
    db: Arc<Db>,
    retention: std::time::Duration,
    every: std::time::Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        // A replica that does not lead leaves expiry to its leader.
        if !db.is_serving() {
            continue;
        }
        let before = tafdb::tso::now_ms().saturating_sub(retention.as_millis() as u64);
        match expire(&db, before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(n, "expired request records"),
            Err(tafdb::Error::Shutdown) => return,
            Err(e) => tracing::warn!(error = %e, "expiring request records failed"),
        }
    }
}
