//! The star-writing client: a LogBlob whose records go to three chunk servers at once.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use super::proto::{
    self, chunk_server_client::ChunkServerClient, master_client::MasterClient, Placement,
};
use crate::blob::Position;
use crate::error::{Error, Result};
use crate::frame::HEADER;

fn remote(what: &str, s: &tonic::Status) -> Error {
    Error::Remote(format!("{what}: {} ({:?})", s.message(), s.code()))
}

fn endpoint(addr: &str) -> Result<Endpoint> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(url)
        .map_err(|e| Error::InvalidArgument(format!("address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true))
}

struct Open {
    placement: Placement,
    end: u64,
}

struct Writer {
    open: Option<Open>,
    version: u64,
    next_seq: u32,
    /// Servers that failed this writer; new chunks avoid them.
    dead: Vec<String>,
    /// The blob's last chunk when the writer opened an existing blob, to be sealed before the
    /// first append.
    tail: Option<Placement>,
    /// The lease token the state above was read under.
    loaded_with: Option<u64>,
}

/// A replicated LogBlob. One writer at a time (the caller's responsibility, as with leases);
/// any number of readers.
pub struct ReplicatedLog {
    master: MasterClient<Channel>,
    blob: u64,
    writer: tokio::sync::Mutex<Writer>,
    conns: Mutex<HashMap<String, ChunkServerClient<Channel>>>,
    holder: String,
    ttl: Duration,
    /// The write lease: token and when to renew it.
    lease: Mutex<Option<(u64, std::time::Instant)>>,
}

impl std::fmt::Debug for ReplicatedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedLog")
            .field("blob", &self.blob)
            .finish()
    }
}

impl ReplicatedLog {
    /// Opens blob `blob` through the master at `master` (a new blob is created by its first
    /// append), writing (if it writes) under a lease named after this process with a 10 s
    /// lifetime, renewed as it appends. A writer continuing an existing blob first seals its
    /// last chunk at the length every replica has, which also fences off a previous writer.
    pub async fn open(master: &str, blob: u64) -> Result<ReplicatedLog> {
        let holder = format!("pid{}-{:p}", std::process::id(), &blob);
        Self::open_as(master, blob, &holder, Duration::from_secs(10)).await
    }

    /// Like [`ReplicatedLog::open`], with the lease holder's name and lifetime given.
    pub async fn open_as(
        master: &str,
        blob: u64,
        holder: &str,
        ttl: Duration,
    ) -> Result<ReplicatedLog> {
        let channel = endpoint(master)?
            .connect()
            .await
            .map_err(|e| Error::Remote(format!("cannot reach the master at {master}: {e}")))?;
        let mut m = MasterClient::new(channel);
        let chunks = m
            .blob(proto::BlobRequest { blob })
            .await
            .map_err(|s| remote("blob placements", &s))?
            .into_inner()
            .chunks;
        let next_seq = chunks.iter().map(|p| p.seq + 1).max().unwrap_or(0);
        let tail = chunks
            .iter()
            .max_by_key(|p| p.seq)
            .filter(|p| p.sealed_len.is_none())
            .cloned();
        let log = ReplicatedLog {
            master: m,
            blob,
            writer: tokio::sync::Mutex::new(Writer {
                open: None,
                version: 0,
                next_seq,
                dead: Vec::new(),
                tail,
                loaded_with: None,
            }),
            conns: Mutex::new(HashMap::new()),
            holder: holder.to_string(),
            ttl,
            lease: Mutex::new(None),
        };
        if !chunks.is_empty() {
            let last = log.records().await?;
            log.writer.lock().await.version = last.last().map_or(0, |r| r.1);
        }
        Ok(log)
    }

    /// The write lease's token, taken or renewed when half its lifetime has passed. Another
    /// holder's unexpired lease is an error.
    async fn token(&self) -> Result<u64> {
        if let Some((token, renew)) = *self.lease.lock() {
            if std::time::Instant::now() < renew {
                return Ok(token);
            }
        }
        let mut m = self.master.clone();
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let token = m
            .lease(proto::LeaseRequest {
                blob: self.blob,
                holder: self.holder.clone(),
                ttl_ms,
            })
            .await
            .map_err(|s| remote("write lease", &s))?
            .into_inner()
            .token;
        *self.lease.lock() = Some((token, std::time::Instant::now() + self.ttl / 2));
        Ok(token)
    }

    fn conn(&self, addr: &str) -> Result<ChunkServerClient<Channel>> {
        let mut conns = self.conns.lock();
        if let Some(c) = conns.get(addr) {
            return Ok(c.clone());
        }
        let c = ChunkServerClient::new(endpoint(addr)?.connect_lazy())
            .max_decoding_message_size(super::server::MAX_REQUEST)
            .max_encoding_message_size(super::server::MAX_REQUEST);
        conns.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// The chunk placements of the blob, from the master.
    pub async fn placements(&self) -> Result<Vec<Placement>> {
        let mut m = self.master.clone();
        let mut v = m
            .blob(proto::BlobRequest { blob: self.blob })
            .await
            .map_err(|s| remote("blob placements", &s))?
            .into_inner()
            .chunks;
        v.sort_by_key(|p| p.seq);
        Ok(v)
    }

    /// Seals `p` on the replicas of `servers` at `len`; returns the ones that did it.
    async fn seal_replicas(
        &self,
        p: &Placement,
        servers: &[String],
        len: u64,
        freeze: bool,
    ) -> Vec<String> {
        let mut set = tokio::task::JoinSet::new();
        for addr in servers {
            let (addr, conn) = (addr.clone(), self.conn(addr));
            let chunk = p.chunk;
            set.spawn(async move {
                let ok = match conn {
                    Ok(mut c) => c
                        .seal(proto::SealRequest {
                            chunk,
                            length: len,
                            freeze,
                        })
                        .await
                        .is_ok(),
                    Err(_) => false,
                };
                (addr, ok)
            });
        }
        let mut ok = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok((addr, true)) = r {
                ok.push(addr);
            }
        }
        ok.sort();
        ok
    }

    /// Seals the writer's open chunk at the length all replicas acknowledged, on the replicas
    /// that are still up, and records that with the master.
    async fn seal_open(&self, w: &mut Writer, failed: &[String]) -> Result<()> {
        let Some(open) = w.open.take() else {
            return Ok(());
        };
        let survivors: Vec<String> = open
            .placement
            .servers
            .iter()
            .filter(|s| !failed.contains(s))
            .cloned()
            .collect();
        let sealed = self
            .seal_replicas(&open.placement, &survivors, open.end, false)
            .await;
        w.dead.extend(failed.iter().cloned());
        w.dead
            .extend(survivors.iter().filter(|s| !sealed.contains(s)).cloned());
        if sealed.is_empty() {
            return Err(Error::Remote(format!(
                "chunk {} of blob {} has no replica left to seal",
                open.placement.seq, self.blob
            )));
        }
        let mut m = self.master.clone();
        let token = self.token().await?;
        m.seal_chunk(proto::SealChunkRequest {
            token,
            blob: self.blob,
            chunk: open.placement.chunk,
            length: open.end,
            servers: sealed,
        })
        .await
        .map_err(|s| remote("seal with the master", &s))?;
        Ok(())
    }

    /// Places the blob's next chunk on three healthy servers and creates its replicas.
    async fn open_next(&self, w: &mut Writer) -> Result<()> {
        if let Some(tail) = w.tail.take() {
            // A previous writer's last chunk. Freeze every replica first (no more appends, the
            // ones in flight finished), so no record can be acknowledged after the lengths are
            // read. Every acknowledged record is then on every replica, and the shortest
            // replica holds them all.
            self.seal_replicas(&tail, &tail.servers, 0, true).await;
            let mut lens = Vec::new();
            for addr in &tail.servers {
                if let Ok(mut c) = self.conn(addr) {
                    if let Ok(r) = c.stat(proto::StatRequest { chunk: tail.chunk }).await {
                        lens.push(r.into_inner().length);
                    }
                }
            }
            let len = lens.into_iter().min().unwrap_or(0);
            w.open = Some(Open {
                placement: tail.clone(),
                end: len,
            });
            let failed: Vec<String> = Vec::new();
            self.seal_open(w, &failed).await?;
        }
        for _ in 0..8 {
            let mut m = self.master.clone();
            let p = m
                .allocate(proto::AllocateRequest {
                    token: self.token().await?,
                    blob: self.blob,
                    seq: w.next_seq,
                    exclude: w.dead.clone(),
                })
                .await
                .map_err(|s| remote("allocate a chunk", &s))?
                .into_inner();
            let mut set = tokio::task::JoinSet::new();
            for addr in &p.servers {
                let (addr, conn) = (addr.clone(), self.conn(addr));
                let req = proto::CreateChunkRequest {
                    chunk: p.chunk,
                    blob: self.blob,
                    seq: p.seq,
                };
                set.spawn(async move {
                    let ok = match conn {
                        Ok(mut c) => c.create(req).await.is_ok(),
                        Err(_) => false,
                    };
                    (addr, ok)
                });
            }
            let mut bad = Vec::new();
            while let Some(r) = set.join_next().await {
                match r {
                    Ok((_, true)) => {}
                    Ok((addr, false)) => bad.push(addr),
                    Err(e) => return Err(Error::Remote(format!("a create task failed: {e}"))),
                }
            }
            w.next_seq = p.seq + 1;
            if bad.is_empty() {
                w.open = Some(Open {
                    placement: p,
                    end: 0,
                });
                return Ok(());
            }
            // Placements are never replaced: this one is sealed empty and the blob moves on.
            w.open = Some(Open {
                placement: p,
                end: 0,
            });
            self.seal_open(w, &bad).await?;
        }
        Err(Error::Remote(format!(
            "could not place chunk {} of blob {}",
            w.next_seq, self.blob
        )))
    }

    /// Appends `data`; returns its position and version once all three replicas have it
    /// durable. A failed replica makes the writer seal the chunk and continue on a new one.
    pub async fn append(&self, data: &[u8]) -> Result<(Position, u64)> {
        let mut w = self.writer.lock().await;
        let token = self.token().await?;
        if w.loaded_with != Some(token) {
            // The blob may have changed before this lease was granted (another writer): read
            // its placements and version again, and treat its last chunk as a tail to seal.
            let chunks = self.placements().await?;
            w.next_seq = chunks.iter().map(|p| p.seq + 1).max().unwrap_or(0);
            w.tail = chunks
                .iter()
                .max_by_key(|p| p.seq)
                .filter(|p| p.sealed_len.is_none())
                .cloned();
            w.open = None;
            // Freeze and seal the previous writer's last chunk before reading the version: an
            // append it still makes until then would otherwise carry the number ours gets.
            if w.tail.is_some() {
                self.open_next(&mut w).await?;
            }
            w.version = self.records().await?.last().map_or(0, |r| r.1);
            w.loaded_with = Some(token);
        }
        let version = w.version + 1;
        let mut payload = Vec::with_capacity(8 + data.len());
        payload.extend_from_slice(&version.to_le_bytes());
        payload.extend_from_slice(data);
        for _ in 0..8 {
            if w.open.is_none() {
                self.open_next(&mut w).await?;
            }
            let Some(open) = w.open.as_ref() else {
                continue;
            };
            let (chunk, seq, expected) = (open.placement.chunk, open.placement.seq, open.end);
            let mut set = tokio::task::JoinSet::new();
            for addr in &open.placement.servers {
                let (addr, conn) = (addr.clone(), self.conn(addr));
                let req = proto::AppendRequest {
                    chunk,
                    expected_end: expected,
                    records: vec![payload.clone()],
                };
                set.spawn(async move {
                    let r = match conn {
                        Ok(mut c) => c
                            .append(req)
                            .await
                            .map(|r| r.into_inner())
                            .map_err(|s| s.code()),
                        Err(_) => Err(tonic::Code::Unavailable),
                    };
                    (addr, r)
                });
            }
            let mut ends = Vec::new();
            let mut failed = Vec::new();
            let mut full = 0;
            while let Some(r) = set.join_next().await {
                match r {
                    Ok((_, Ok(reply))) if reply.offsets == [expected] => ends.push(reply.end),
                    Ok((_, Err(tonic::Code::ResourceExhausted))) => full += 1,
                    Ok((addr, _)) => failed.push(addr),
                    Err(e) => return Err(Error::Remote(format!("an append task failed: {e}"))),
                }
            }
            if failed.is_empty() && full == 0 && ends.windows(2).all(|x| x[0] == x[1]) {
                let end = ends
                    .first()
                    .copied()
                    .unwrap_or(expected + (HEADER + payload.len()) as u64);
                if let Some(open) = w.open.as_mut() {
                    open.end = end;
                }
                w.version = version;
                return Ok((
                    Position {
                        chunk: seq,
                        offset: expected,
                    },
                    version,
                ));
            }
            if failed.is_empty() && ends.is_empty() {
                // Every replica is full: seal the chunk where it ends and go on to the next.
                if expected == 0 {
                    return Err(Error::InvalidArgument(format!(
                        "a record of {} bytes does not fit an empty chunk",
                        data.len()
                    )));
                }
                self.seal_open(&mut w, &[]).await?;
                continue;
            }
            tracing::warn!(
                blob = self.blob,
                chunk,
                ?failed,
                "a replica failed; sealing the chunk and moving on"
            );
            self.seal_open(&mut w, &failed).await?;
        }
        Err(Error::Remote(format!(
            "append to blob {} failed on every attempt",
            self.blob
        )))
    }

    /// Seals the open chunk (a clean end for this writer).
    pub async fn close(&self) -> Result<()> {
        let mut w = self.writer.lock().await;
        self.seal_open(&mut w, &[]).await
    }

    /// Every record of the blob in order, with its version. Sealed chunks are read up to their
    /// seal length; the open chunk up to the length every reachable replica has.
    pub async fn records(&self) -> Result<Vec<(Position, u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for p in self.placements().await? {
            let len = match p.sealed_len {
                Some(l) => l,
                None => {
                    let mut lens = Vec::new();
                    for addr in &p.servers {
                        if let Ok(mut c) = self.conn(addr) {
                            if let Ok(r) = c.stat(proto::StatRequest { chunk: p.chunk }).await {
                                lens.push(r.into_inner().length);
                            }
                        }
                    }
                    lens.into_iter().min().unwrap_or(0)
                }
            };
            let mut off = 0u64;
            while off < len {
                let payload = self.read_any(&p, off).await?;
                if payload.len() < 8 {
                    return Err(Error::Corrupt(format!(
                        "record at {off} of chunk {} has no version",
                        p.seq
                    )));
                }
                let mut v = [0u8; 8];
                v.copy_from_slice(&payload[..8]);
                out.push((
                    Position {
                        chunk: p.seq,
                        offset: off,
                    },
                    u64::from_le_bytes(v),
                    payload[8..].to_vec(),
                ));
                off += (HEADER + payload.len()) as u64;
            }
        }
        Ok(out)
    }

    async fn read_any(&self, p: &Placement, offset: u64) -> Result<Vec<u8>> {
        let mut last = None;
        for addr in &p.servers {
            let mut c = self.conn(addr)?;
            match c
                .read(proto::ReadRequest {
                    chunk: p.chunk,
                    offset,
                })
                .await
            {
                Ok(r) => return Ok(r.into_inner().payload),
                Err(s) => last = Some(remote(&format!("read from {addr}"), &s)),
            }
        }
        Err(last.unwrap_or_else(|| Error::NotFound(format!("chunk {} has no replica", p.seq))))
    }
}
