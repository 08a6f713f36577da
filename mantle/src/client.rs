//! The async client SDK.
//!
//! A [`Client`] talks to one server, in one namespace, as one identity (by default the uid and
//! gid of the calling process). Every call is one RPC. A call that fails with `EAGAIN` (the
//! store gave up on a contended transaction, which therefore did not commit) is retried with
//! backoff a bounded number of times. A call whose answer was lost (the connection broke, the
//! server restarted) is sent again for up to [`DEFAULT_RETRY_FOR`]: every mutation carries a
//! request id, and the server answers a retry of a committed mutation with its first reply, so
//! a retried `mkdir` is never `EEXIST` because of itself. When the budget runs out a mutation
//! fails with `ETIMEDOUT`: its outcome is unknown. Every other error is returned as a typed
//! [`FsError`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use coprocessor::api::DirEntry;
use coprocessor::fsck::Report;
/// A directory as [`Client::lookup_dir`] finds it: its id, mode and owner.
pub use coprocessor::resolve::Dir;
use coprocessor::{Errno, FsError};
use indexnode::Cred;
use metastore::{Attr, FileType};
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::proto::{self, mantle_client::MantleClient};
use crate::status::{from_status, has_errno};

/// A connection to a Mantle server.
#[derive(Clone)]
pub struct Client {
    grpc: MantleClient<crate::auth::Authed>,
    ns: String,
    cred: Cred,
    retries: u32,
    retry_for: Duration,
    session: Arc<Session>,
}

/// How long a client resends a request whose answer was lost, by default. It must stay well
/// below the server's request-record retention (`mantle serve --request-retention-s`, 600 s by
/// default), after which a retry is no longer recognised.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(60);

/// Whether a status without an errno is the transport's (the request may or may not have
/// reached the server) rather than a definite refusal such as an oversized message.
fn transport_failure(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
    )
}

/// A client's identity for request ids, shared by its clones: a random id, the next sequence
/// number and the slots of requests in flight.
struct Session {
    client: [u8; 16],
    seq: AtomicU64,
    free: Mutex<Vec<u32>>,
    next_slot: AtomicU32,
    /// One permit per slot, so that no more than `MAX_SLOTS` requests are in flight.
    slots: Arc<Semaphore>,
}

/// A slot held by a request in flight.
struct Slot {
    slot: u32,
    seq: u64,
    session: Arc<Session>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Slot {
    /// The slot goes back however the request ended, a dropped (cancelled) call included.
    /// Reusing it while an old attempt may still be in flight is safe: the old attempt finds
    /// a higher sequence number in the slot and does not run.
    fn drop(&mut self) {
        self.session.free.lock().push(self.slot);
    }
}

impl Session {
    fn new() -> Arc<Session> {
        Arc::new(Session {
            client: rand::random::<u128>().to_le_bytes(),
            seq: AtomicU64::new(1),
            free: Mutex::new(Vec::new()),
            next_slot: AtomicU32::new(0),
            slots: Arc::new(Semaphore::new(coprocessor::dedup::MAX_SLOTS as usize)),
        })
    }

    async fn take(self: &Arc<Self>) -> Slot {
        // The semaphore is never closed, so the permit always comes.
        let permit = self.slots.clone().acquire_owned().await.ok();
        // Reused slots first (the most recent), so a client with few requests in flight keeps
        // few records on the server.
        let reused = self.free.lock().pop();
        let slot = reused.unwrap_or_else(|| self.next_slot.fetch_add(1, Ordering::Relaxed));
        Slot {
            slot,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            session: self.clone(),
            _permit: permit,
        }
    }
}

/// A request that can carry a request id.
trait Identified {
    fn set_request(&mut self, id: proto::RequestId);
}

macro_rules! identified {
    ($($t:ident),*) => {$(
        impl Identified for proto::$t {
            fn set_request(&mut self, id: proto::RequestId) {
                if let Some(h) = self.header.as_mut() {
                    h.request = Some(id);
                }
            }
        }
    )*};
}

identified!(
    MkdirRequest,
    MknodRequest,
    SymlinkRequest,
    LinkRequest,
    UnlinkRequest,
    RmdirRequest,
    RenameRequest,
    SetAttrRequest,
    XattrSetRequest,
    XattrRemoveRequest,
    ScriptCallRequest,
    ScriptPushRequest,
    ScriptSetRequest
);

impl Identified for proto::NsCreateRequest {
    fn set_request(&mut self, id: proto::RequestId) {
        self.request = Some(id);
    }
}

type Result<T> = std::result::Result<T, FsError>;

fn path_loc(p: impl AsRef<[u8]>) -> Option<proto::Loc> {
    Some(proto::Loc {
        kind: Some(proto::loc::Kind::Path(p.as_ref().to_vec())),
    })
}

fn path_obj(p: impl AsRef<[u8]>, follow: bool) -> Option<proto::Obj> {
    Some(proto::Obj {
        kind: Some(proto::obj::Kind::Path(p.as_ref().to_vec())),
        follow,
    })
}

fn inode_obj(id: u64) -> Option<proto::Obj> {
    Some(proto::Obj {
        kind: Some(proto::obj::Kind::Inode(id)),
        follow: false,
    })
}

fn entry_loc(parent: u64, name: impl AsRef<[u8]>) -> Option<proto::Loc> {
    Some(proto::Loc {
        kind: Some(proto::loc::Kind::Entry(proto::Entry {
            parent,
            name: name.as_ref().to_vec(),
        })),
    })
}

fn attr(reply: proto::AttrReply) -> Result<Attr> {
    let a = reply
        .attr
        .ok_or_else(|| FsError::new(Errno::EIO, "the server sent no attributes"))?;
    Attr::try_from(a).map_err(|s| from_status(&s))
}

/// A directory's parent and name, for a removal by inode.
type NamedBy = (u64, Vec<u8>);

/// Attribute changes for [`Client::setattr`].
#[derive(Clone, Debug, Default)]
pub struct SetAttrArgs {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time: `Some(None)` is "now", `Some(Some(ns))` a given time.
    pub atime: Option<Option<u64>>,
    /// New modification time, likewise.
    pub mtime: Option<Option<u64>>,
}

fn time_set(t: Option<Option<u64>>) -> Option<proto::TimeSet> {
    t.map(|t| proto::TimeSet {
        kind: Some(match t {
            None => proto::time_set::Kind::Now(true),
            Some(ns) => proto::time_set::Kind::AtNs(ns),
        }),
    })
}

impl Client {
    /// Connects to `addr` (`host:port` or a URL), in namespace [`crate::DEFAULT_NAMESPACE`], as
    /// the calling process's user. Several addresses, comma-separated (the nodes of a
    /// cluster), make one client that spreads its calls over the nodes that answer: a node
    /// that fails is left out until it is back, and a call it failed is resent elsewhere under
    /// the same request id.
    pub async fn connect(addr: &str) -> Result<Client> {
        Client::connect_with_token(addr, None).await
    }

    /// Like [`Client::connect`], presenting the access token `token` with every call (a
    /// server with `--tokens` refuses calls without one; see [`crate::auth`]).
    pub async fn connect_with_token(addr: &str, token: Option<&str>) -> Result<Client> {
        let list: Vec<&str> = addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        let endpoint = |a: &str| -> Result<tonic::transport::Endpoint> {
            let url = if a.contains("://") {
                a.to_string()
            } else {
                format!("http://{a}")
            };
            Ok(Channel::from_shared(url)
                .map_err(|e| FsError::new(Errno::EINVAL, format!("address {a:?}: {e}")))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true))
        };
        let channel = match list.as_slice() {
            [] => return Err(FsError::new(Errno::EINVAL, "no server address")),
            [one] => endpoint(one)?
                .connect()
                .await
                .map_err(|e| FsError::new(Errno::EIO, format!("cannot connect to {one}: {e}")))?,
            many => Channel::balance_list(
                many.iter()
                    .map(|a| endpoint(a))
                    .collect::<Result<Vec<_>>>()?
                    .into_iter(),
            ),
        };
        let channel =
            crate::auth::Authed::new(channel, token).map_err(|e| FsError::new(Errno::EINVAL, e))?;
        Ok(Client {
            grpc: MantleClient::new(channel).max_decoding_message_size(64 << 20),
            ns: crate::DEFAULT_NAMESPACE.to_string(),
            cred: crate::server::process_cred(),
            retries: 8,
            retry_for: DEFAULT_RETRY_FOR,
            session: Session::new(),
        })
    }

    /// The same connection in namespace `ns`.
    pub fn with_namespace(mut self, ns: impl Into<String>) -> Client {
        self.ns = ns.into();
        self
    }

    /// The same connection as `cred`.
    pub fn with_cred(mut self, cred: Cred) -> Client {
        self.cred = cred;
        self
    }

    /// How many times a call that failed with `EAGAIN` is retried.
    pub fn with_retries(mut self, retries: u32) -> Client {
        self.retries = retries;
        self
    }

    /// How long a call whose answer was lost (transport failure, server restart) is sent
    /// again; see [`DEFAULT_RETRY_FOR`].
    pub fn with_retry_for(mut self, d: Duration) -> Client {
        self.retry_for = d;
        self
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn header(&self) -> Option<proto::Header> {
        Some(proto::Header {
            namespace: self.ns.clone(),
            cred: Some(proto::Cred {
                uid: self.cred.uid,
                gid: self.cred.gid,
                groups: self.cred.groups.clone(),
            }),
            request: None,
        })
    }

    async fn call<T, F, Fut>(&self, mut f: F) -> Result<T>
    where
        F: FnMut(MantleClient<crate::auth::Authed>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<Response<T>, Status>>,
    {
        self.retry(false, || f(self.grpc.clone())).await
    }

    /// Sends mutation `req` under a fresh request id, and every retry under the same id: the
    /// server answers a retry of a committed mutation with its first reply.
    async fn mutate<Q, T, F, Fut>(&self, mut req: Q, mut f: F) -> Result<T>
    where
        Q: Identified + Clone,
        F: FnMut(MantleClient<crate::auth::Authed>, Q) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<Response<T>, Status>>,
    {
        let slot = self.session.take().await;
        req.set_request(proto::RequestId {
            client: self.session.client.to_vec(),
            slot: slot.slot,
            seq: slot.seq,
        });
        let out = self.retry(true, || f(self.grpc.clone(), req.clone())).await;
        drop(slot);
        out
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry budget runs out.
    ///
    /// `EAGAIN` from the server means "did not happen, try again": retried `retries` times.
    /// A transport failure (no errno) or `ETIMEDOUT` may have happened: a read or a mutation
    /// under a request id is safe to send again, until `retry_for` has passed since the first
    /// attempt; then a mutation fails with `ETIMEDOUT` (outcome unknown), a read with `EIO`.
    async fn retry<T, A, Fut>(&self, mutates: bool, mut attempt: A) -> Result<T>
    where
        A: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<Response<T>, Status>>,
    {
        let started = tokio::time::Instant::now();
        let mut busy = 0u32;
        let mut lost = 0u32;
        loop {
            let s = match attempt().await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => s,
            };
            let e = from_status(&s);
            let pause = if has_errno(&s) && e.errno == Errno::EAGAIN {
                if busy >= self.retries {
                    if mutates && lost > 0 {
                        // This attempt did not happen, but an earlier one may have: giving
                        // up must not claim the mutation did not commit.
                        return Err(FsError::new(
                            Errno::ETIMEDOUT,
                            format!(
                                "the outcome is unknown: an earlier attempt's answer was lost, \
                                 and the retries gave up: {}",
                                e.message
                            ),
                        ));
                    }
                    return Err(e);
                }
                busy += 1;
                Duration::from_millis(5 << busy.min(8))
            } else if (!has_errno(&s) && transport_failure(&s)) || e.errno == Errno::ETIMEDOUT {
                if started.elapsed() >= self.retry_for {
                    let errno = if mutates {
                        Errno::ETIMEDOUT
                    } else {
                        Errno::EIO
                    };
                    let what = if mutates {
                        "the outcome is unknown"
                    } else {
                        "no answer"
                    };
                    return Err(FsError::new(
                        errno,
                        format!(
                            "{what} after retrying for {:?}: {}",
                            self.retry_for, e.message
                        ),
                    ));
                }
                lost += 1;
                Duration::from_millis((10u64 << lost.min(7)).min(1000))
            } else {
                return Err(e);
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// The attributes of `path`, following a final symlink.
    pub async fn stat(&self, path: impl AsRef<[u8]>) -> Result<Attr> {
        self.stat_obj(path_obj(path, true)).await
    }

    /// The attributes of `path` itself.
    pub async fn lstat(&self, path: impl AsRef<[u8]>) -> Result<Attr> {
        self.stat_obj(path_obj(path, false)).await
    }

    /// The attributes of inode `id`.
    pub async fn stat_inode(&self, id: u64) -> Result<Attr> {
        self.stat_obj(Some(proto::Obj {
            kind: Some(proto::obj::Kind::Inode(id)),
            follow: false,
        }))
        .await
    }

    /// The attributes of entry `name` of directory `parent` (a FUSE lookup).
    pub async fn lookup(&self, parent: u64, name: impl AsRef<[u8]>) -> Result<Attr> {
        self.stat_obj(Some(proto::Obj {
            kind: Some(proto::obj::Kind::Entry(proto::Entry {
                parent,
                name: name.as_ref().to_vec(),
            })),
            follow: false,
        }))
        .await
    }

    async fn stat_obj(&self, obj: Option<proto::Obj>) -> Result<Attr> {
        let req = proto::StatRequest {
            header: self.header(),
            obj,
        };
        attr(
            self.call(|mut c| {
                let r = req.clone();
                async move { c.stat(r).await }
            })
            .await?,
        )
    }

    /// Makes directory `path`.
    pub async fn mkdir(&self, path: impl AsRef<[u8]>, mode: u32) -> Result<Attr> {
        let req = proto::MkdirRequest {
            header: self.header(),
            at: path_loc(path),
            mode,
        };
        attr(
            self.mutate(req, |mut c, r| async move { c.mkdir(r).await })
                .await?,
        )
    }

    /// Makes `path` and any missing parents; an existing directory is fine.
    pub async fn mkdir_p(&self, path: impl AsRef<[u8]>, mode: u32) -> Result<Attr> {
        let names = metastore::name::split_path(path.as_ref())?;
        let mut cur: Vec<u8> = Vec::new();
        let mut last = self.stat("/").await?;
        for n in names {
            cur.push(b'/');
            cur.extend_from_slice(n);
            last = match self.mkdir(&cur, mode).await {
                Ok(a) => a,
                Err(e) if e.errno == Errno::EEXIST => {
                    let a = self.stat(&cur).await?;
                    if !a.kind().is_dir() {
                        return Err(FsError::new(
                            Errno::ENOTDIR,
                            format!("{} is not a directory", String::from_utf8_lossy(&cur)),
                        ));
                    }
                    a
                }
                Err(e) => return Err(e),
            };
        }
        Ok(last)
    }

    /// Makes regular file `path`; `EEXIST` if it exists.
    pub async fn create(&self, path: impl AsRef<[u8]>, mode: u32) -> Result<Attr> {
        self.mknod(path, FileType::Regular.bits() | (mode & 0o7777), 0)
            .await
    }

    /// Makes a node of any non-directory type (`mode` carries the type bits).
    pub async fn mknod(&self, path: impl AsRef<[u8]>, mode: u32, rdev: u32) -> Result<Attr> {
        let req = proto::MknodRequest {
            header: self.header(),
            at: path_loc(path),
            mode,
            rdev,
        };
        attr(
            self.mutate(req, |mut c, r| async move { c.mknod(r).await })
                .await?,
        )
    }

    /// Makes symlink `path` pointing to `target`.
    pub async fn symlink(&self, target: impl AsRef<[u8]>, path: impl AsRef<[u8]>) -> Result<Attr> {
        let req = proto::SymlinkRequest {
            header: self.header(),
            at: path_loc(path),
            target: target.as_ref().to_vec(),
        };
        attr(
            self.mutate(req, |mut c, r| async move { c.symlink(r).await })
                .await?,
        )
    }

    /// Makes `path` another name of `existing`.
    pub async fn link(&self, existing: impl AsRef<[u8]>, path: impl AsRef<[u8]>) -> Result<Attr> {
        let req = proto::LinkRequest {
            header: self.header(),
            target: path_obj(existing, false),
            at: path_loc(path),
        };
        attr(
            self.mutate(req, |mut c, r| async move { c.link(r).await })
                .await?,
        )
    }

    /// The target of symlink `path`.
    pub async fn readlink(&self, path: impl AsRef<[u8]>) -> Result<Vec<u8>> {
        let req = proto::ReadlinkRequest {
            header: self.header(),
            obj: path_obj(path, false),
        };
        Ok(self
            .call(|mut c| {
                let r = req.clone();
                async move { c.readlink(r).await }
            })
            .await?
            .target)
    }

    /// Directory `path`'s id and permission attributes, resolved in one call against the
    /// Index table (DirectStat): cheaper than [`Client::stat`], which also reads the inode
    /// record. `ENOTDIR` if `path` is not a directory.
    pub async fn lookup_dir(&self, path: impl AsRef<[u8]>) -> Result<Dir> {
        let req = proto::LookupRequest {
            header: self.header(),
            path: path.as_ref().to_vec(),
        };
        let r = self
            .call(|mut c| {
                let r = req.clone();
                async move { c.lookup(r).await }
            })
            .await?;
        Ok(Dir {
            id: r.id,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
        })
    }

    /// Removes non-directory `path`.
    pub async fn unlink(&self, path: impl AsRef<[u8]>) -> Result<()> {
        let req = proto::UnlinkRequest {
            header: self.header(),
            at: path_loc(path),
        };
        self.mutate(req, |mut c, r| async move { c.unlink(r).await })
            .await?;
        Ok(())
    }

    /// Removes empty directory `path`.
    pub async fn rmdir(&self, path: impl AsRef<[u8]>) -> Result<()> {
        self.rmdir_loc(path_loc(path)).await
    }

    /// Removes empty directory `name` of directory inode `parent`.
    pub async fn rmdir_at(&self, parent: u64, name: impl AsRef<[u8]>) -> Result<()> {
        self.rmdir_loc(entry_loc(parent, name)).await
    }

    async fn rmdir_loc(&self, at: Option<proto::Loc>) -> Result<()> {
        let req = proto::RmdirRequest {
            header: self.header(),
            at,
        };
        self.mutate(req, |mut c, r| async move { c.rmdir(r).await })
            .await?;
        Ok(())
    }

    /// Removes non-directory `name` of directory inode `parent`.
    pub async fn unlink_at(&self, parent: u64, name: impl AsRef<[u8]>) -> Result<()> {
        let req = proto::UnlinkRequest {
            header: self.header(),
            at: entry_loc(parent, name),
        };
        self.mutate(req, |mut c, r| async move { c.unlink(r).await })
            .await?;
        Ok(())
    }

    /// Renames `from` to `to` (`flags`: 1 = no replace, 2 = exchange).
    pub async fn rename(
        &self,
        from: impl AsRef<[u8]>,
        to: impl AsRef<[u8]>,
        flags: u32,
    ) -> Result<()> {
        let req = proto::RenameRequest {
            header: self.header(),
            from: path_loc(from),
            to: path_loc(to),
            flags,
        };
        self.mutate(req, |mut c, r| async move { c.rename(r).await })
            .await?;
        Ok(())
    }

    /// One page of directory `path` after `after`, and the next page's cursor.
    pub async fn readdir(
        &self,
        path: impl AsRef<[u8]>,
        after: &[u8],
        limit: u32,
        plus: bool,
    ) -> Result<(Vec<DirEntry>, Option<Vec<u8>>)> {
        self.readdir_obj(path_obj(path, true), after, limit, plus)
            .await
    }

    /// A page of directory inode `dir` (see [`Client::readdir`]): walks by inode need no path,
    /// so they work at any depth and with any names.
    pub async fn readdir_inode(
        &self,
        dir: u64,
        after: &[u8],
        limit: u32,
        plus: bool,
    ) -> Result<(Vec<DirEntry>, Option<Vec<u8>>)> {
        self.readdir_obj(inode_obj(dir), after, limit, plus).await
    }

    async fn readdir_obj(
        &self,
        dir: Option<proto::Obj>,
        after: &[u8],
        limit: u32,
        plus: bool,
    ) -> Result<(Vec<DirEntry>, Option<Vec<u8>>)> {
        let req = proto::ReaddirRequest {
            header: self.header(),
            dir,
            after: after.to_vec(),
            limit,
            plus,
        };
        let reply = self
            .call(|mut c| {
                let r = req.clone();
                async move { c.readdir(r).await }
            })
            .await?;
        let mut out = Vec::with_capacity(reply.entries.len());
        for e in reply.entries {
            let kind = FileType::from_code(e.r#type as u8).ok_or_else(|| {
                FsError::new(
                    Errno::EIO,
                    format!("entry type {} from the server", e.r#type),
                )
            })?;
            let attr = e
                .attr
                .map(Attr::try_from)
                .transpose()
                .map_err(|s| from_status(&s))?;
            out.push(DirEntry {
                name: e.name,
                id: e.id,
                kind,
                attr,
            });
        }
        Ok((out, reply.next))
    }

    /// Every entry of directory `path`, page by page.
    pub async fn list(&self, path: impl AsRef<[u8]>, plus: bool) -> Result<Vec<DirEntry>> {
        self.list_obj(path_obj(path, true), plus).await
    }

    /// Every entry of directory inode `dir`, page by page.
    pub async fn list_inode(&self, dir: u64, plus: bool) -> Result<Vec<DirEntry>> {
        self.list_obj(inode_obj(dir), plus).await
    }

    async fn list_obj(&self, dir: Option<proto::Obj>, plus: bool) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        let mut after = Vec::new();
        loop {
            let (page, next) = self.readdir_obj(dir.clone(), &after, 0, plus).await?;
            out.extend(page);
            match next {
                Some(n) => after = n,
                None => return Ok(out),
            }
        }
    }

    /// Changes attributes of `path` (following a final symlink).
    pub async fn setattr(&self, path: impl AsRef<[u8]>, args: SetAttrArgs) -> Result<Attr> {
        let req = proto::SetAttrRequest {
            header: self.header(),
            obj: path_obj(path, true),
            mode: args.mode,
            uid: args.uid,
            gid: args.gid,
            size: args.size,
            atime: time_set(args.atime),
            mtime: time_set(args.mtime),
        };
        attr(
            self.mutate(req, |mut c, r| async move { c.set_attr(r).await })
                .await?,
        )
    }

    /// The namespace's usage.
    pub async fn statfs(&self) -> Result<proto::StatFsReply> {
        let req = proto::StatFsRequest {
            header: self.header(),
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.stat_fs(r).await }
        })
        .await
    }

    /// Sets extended attribute `name` of `path`.
    pub async fn xattr_set(&self, path: &str, name: &str, value: &[u8], flags: u32) -> Result<()> {
        let req = proto::XattrSetRequest {
            header: self.header(),
            obj: path_obj(path, true),
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
            flags,
        };
        self.mutate(req, |mut c, r| async move { c.xattr_set(r).await })
            .await?;
        Ok(())
    }

    /// Reads extended attribute `name` of `path`.
    pub async fn xattr_get(&self, path: &str, name: &str) -> Result<Vec<u8>> {
        let req = proto::XattrGetRequest {
            header: self.header(),
            obj: path_obj(path, true),
            name: name.as_bytes().to_vec(),
        };
        Ok(self
            .call(|mut c| {
                let r = req.clone();
                async move { c.xattr_get(r).await }
            })
            .await?
            .value)
    }

    /// Lists the extended attributes of `path`.
    pub async fn xattr_list(&self, path: &str) -> Result<Vec<Vec<u8>>> {
        let req = proto::XattrListRequest {
            header: self.header(),
            obj: path_obj(path, true),
        };
        Ok(self
            .call(|mut c| {
                let r = req.clone();
                async move { c.xattr_list(r).await }
            })
            .await?
            .names)
    }

    /// Removes extended attribute `name` of `path`.
    pub async fn xattr_remove(&self, path: &str, name: &str) -> Result<()> {
        let req = proto::XattrRemoveRequest {
            header: self.header(),
            obj: path_obj(path, true),
            name: name.as_bytes().to_vec(),
        };
        self.mutate(req, |mut c, r| async move { c.xattr_remove(r).await })
            .await?;
        Ok(())
    }

    /// Creates namespace `name`, its root owned by this client's identity.
    pub async fn ns_create(&self, name: &str, mode: u32) -> Result<proto::NsInfo> {
        let req = proto::NsCreateRequest {
            name: name.to_string(),
            cred: self.header().and_then(|h| h.cred),
            mode,
            request: None,
        };
        self.mutate(req, |mut c, r| async move { c.ns_create(r).await })
            .await
    }

    /// Calls `function` of script `script` with `args` (a JSON array, or "" for none) in this
    /// client's namespace, as its identity; returns the result as JSON. A call is a mutation
    /// (it may write): a retry under its request id answers what the first attempt answered.
    pub async fn script_call(
        &self,
        script: &str,
        function: &str,
        args_json: &str,
    ) -> Result<String> {
        let req = proto::ScriptCallRequest {
            header: self.header(),
            script: script.to_string(),
            function: function.to_string(),
            args_json: args_json.to_string(),
        };
        Ok(self
            .mutate(req, |mut c, r| async move { c.script_call(r).await })
            .await?
            .json)
    }

    /// Pushes `source` as the next version of script `name`. With `hooks`, the script's hook
    /// bindings in this client's namespace become them (`(event, prefix)`; empty: none).
    pub async fn script_push(
        &self,
        name: &str,
        source: &str,
        hooks: Option<Vec<(String, Vec<u8>)>>,
    ) -> Result<proto::ScriptInfo> {
        let req = proto::ScriptPushRequest {
            header: self.header(),
            name: name.to_string(),
            source: source.to_string(),
            set_hooks: hooks.is_some(),
            hooks: hooks
                .unwrap_or_default()
                .into_iter()
                .map(|(event, prefix)| proto::ScriptHook {
                    event,
                    prefix,
                    namespace: String::new(),
                })
                .collect(),
        };
        self.mutate(req, |mut c, r| async move { c.script_push(r).await })
            .await
    }

    /// Makes version `version` of script `name` current, or disables it with `None`.
    pub async fn script_set(&self, name: &str, version: Option<u64>) -> Result<proto::ScriptInfo> {
        let req = proto::ScriptSetRequest {
            header: self.header(),
            name: name.to_string(),
            version: version.unwrap_or(0),
        };
        self.mutate(req, |mut c, r| async move { c.script_set(r).await })
            .await
    }

    /// Every script.
    pub async fn script_list(&self) -> Result<Vec<proto::ScriptInfo>> {
        Ok(self
            .call(|mut c| async move { c.script_list(proto::ScriptListRequest {}).await })
            .await?
            .scripts)
    }

    /// Version `version` of script `name` (`None`: the current one).
    pub async fn script_show(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<proto::ScriptShowReply> {
        let req = proto::ScriptShowRequest {
            name: name.to_string(),
            version: version.unwrap_or(0),
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.script_show(r).await }
        })
        .await
    }

    /// Every namespace.
    pub async fn ns_list(&self) -> Result<Vec<proto::NsInfo>> {
        Ok(self
            .call(|mut c| async move { c.ns_list(proto::NsListRequest {}).await })
            .await?
            .namespaces)
    }

    /// Runs the namespace checker on the server; `progress` hears where it is.
    pub async fn fsck(&self, mut progress: impl FnMut(&proto::FsckProgress)) -> Result<Report> {
        // A check cut off by a leader change (EAGAIN in the middle of the stream, or before
        // it starts while the tablets have no serving leader) runs again from the start: it
        // only reads. An election after a partition heals can take seconds, so it keeps
        // trying for the client's whole retry budget, not for a few quick attempts.
        let started = tokio::time::Instant::now();
        let mut again = 0u32;
        loop {
            match self.fsck_once(&mut progress).await {
                Err(e) if e.errno == Errno::EAGAIN && started.elapsed() < self.retry_for => {
                    again += 1;
                    let pause = Duration::from_millis((5u64 << again.min(8)).min(1000));
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    async fn fsck_once(&self, progress: &mut impl FnMut(&proto::FsckProgress)) -> Result<Report> {
        let mut stream = self
            .call(|mut c| {
                let req = proto::FsckRequest {
                    cred: self.header().and_then(|h| h.cred),
                };
                async move { c.fsck(req).await }
            })
            .await?;
        loop {
            match stream.message().await {
                Ok(Some(ev)) => match ev.kind {
                    Some(proto::fsck_event::Kind::Progress(p)) => progress(&p),
                    Some(proto::fsck_event::Kind::Report(r)) => {
                        return Ok(Report {
                            namespaces: r.namespaces,
                            directories: r.directories,
                            files: r.files,
                            entries: r.entries,
                            problems: r.problems,
                            omitted: r.omitted,
                        })
                    }
                    None => {}
                },
                Ok(None) => return Err(FsError::new(Errno::EIO, "fsck ended without a report")),
                Err(s) => return Err(from_status(&s)),
            }
        }
    }

    /// Removes `path` and everything below it, depth first, page by page (memory stays
    /// bounded by the tree's depth times a page). `progress` hears the running count of
    /// removed entries. Returns how many were removed.
    pub async fn remove_all(
        &self,
        path: impl AsRef<[u8]>,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        let path = path.as_ref();
        let a = self.lstat(path).await?;
        if !a.kind().is_dir() {
            self.unlink(path).await?;
            progress(1);
            return Ok(1);
        }
        let mut removed = 0u64;
        // A stack of directories still to empty, by inode: (its id, its parent and name; none
        // for the starting directory, which is removed by path). Walking by inode works at any
        // depth (past PATH_MAX) and with any names.
        let mut stack: Vec<(u64, Option<NamedBy>)> = vec![(a.id, None)];
        while let Some((dir, at)) = stack.last().cloned() {
            let (page, _) = self.readdir_inode(dir, b"", 0, false).await?;
            if page.is_empty() {
                stack.pop();
                match at {
                    Some((parent, name)) => self.rmdir_at(parent, &name).await?,
                    // The root stays; only its contents go.
                    None if a.parent == a.id => continue,
                    None => self.rmdir(path).await?,
                }
                removed += 1;
                progress(removed);
                continue;
            }
            for e in page {
                if e.kind.is_dir() {
                    stack.push((e.id, Some((dir, e.name))));
                    break;
                }
                self.unlink_at(dir, &e.name).await?;
                removed += 1;
                progress(removed);
            }
        }
        Ok(removed)
    }
}
