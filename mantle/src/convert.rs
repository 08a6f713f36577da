//! Protobuf messages are not domain types: every request is converted with `TryFrom`, which
//! validates it (namespace name, credentials, paths and names, required fields), and a
//! malformed request becomes `InvalidArgument` with `EINVAL` before it reaches the store.

use coprocessor::api::{DirEntry, Loc, NsInfo, Obj, StatFs};
use coprocessor::dedup::RequestId;
use coprocessor::fsck::Report;
use coprocessor::ops::setattr::TimeSet;
use indexnode::Cred;
use metastore::{name, Attr};
use tonic::Status;

use crate::proto;
use crate::status::{invalid, to_status};

/// The most supplementary groups a request may carry.
pub const MAX_GROUPS: usize = 256;

/// The namespace and caller of a request.
pub struct Header {
    /// The namespace's name.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The request's id, if it is to be answered once.
    pub request: Option<RequestId>,
}

/// Converts a request id.
pub fn request_id(r: Option<proto::RequestId>) -> Result<Option<RequestId>, Status> {
    let Some(r) = r else {
        return Ok(None);
    };
    let client: [u8; 16] = r.client.as_slice().try_into().map_err(|_| {
        invalid(format!(
            "a request id's client is {} bytes, not 16",
            r.client.len()
        ))
    })?;
    if r.slot >= coprocessor::dedup::MAX_SLOTS || r.seq == 0 {
        return Err(invalid(format!(
            "request id slot {} (at most {}) seq {} (from 1)",
            r.slot,
            coprocessor::dedup::MAX_SLOTS - 1,
            r.seq
        )));
    }
    Ok(Some(RequestId {
        client,
        slot: r.slot,
        seq: r.seq,
    }))
}

fn check_ns(ns: &str) -> Result<Vec<u8>, Status> {
    name::check_name(ns.as_bytes()).map_err(|e| invalid(format!("namespace {ns:?}: {e}")))?;
    Ok(ns.as_bytes().to_vec())
}

impl TryFrom<Option<proto::Cred>> for Cred2 {
    type Error = Status;
    fn try_from(c: Option<proto::Cred>) -> Result<Cred2, Status> {
        let c = c.ok_or_else(|| invalid("the request carries no credentials"))?;
        if c.groups.len() > MAX_GROUPS {
            return Err(invalid(format!(
                "{} supplementary groups (at most {MAX_GROUPS})",
                c.groups.len()
            )));
        }
        Ok(Cred2(Cred {
            uid: c.uid,
            gid: c.gid,
            groups: c.groups,
        }))
    }
}

/// Validated credentials (a newtype so that `TryFrom` can be implemented here).
pub struct Cred2(pub Cred);

impl TryFrom<Option<proto::Header>> for Header {
    type Error = Status;
    fn try_from(h: Option<proto::Header>) -> Result<Header, Status> {
        let h = h.ok_or_else(|| invalid("the request has no header"))?;
        Ok(Header {
            ns: check_ns(&h.namespace)?,
            cred: Cred2::try_from(h.cred)?.0,
            request: request_id(h.request)?,
        })
    }
}

pub(crate) fn check_path(p: &[u8]) -> Result<(), Status> {
    name::split_path(p)
        .map(|_| ())
        .map_err(|e| to_status(&e.into()))
}

fn check_entry(e: &proto::Entry) -> Result<(), Status> {
    name::check_name(&e.name).map_err(|e| to_status(&e.into()))
}

/// Converts a `Loc`.
pub fn loc(l: Option<proto::Loc>) -> Result<Loc, Status> {
    match l.and_then(|l| l.kind) {
        Some(proto::loc::Kind::Path(p)) => {
            check_path(&p)?;
            Ok(Loc::Path(p))
        }
        Some(proto::loc::Kind::Entry(e)) => {
            check_entry(&e)?;
            Ok(Loc::Entry {
                parent: e.parent,
                name: e.name,
            })
        }
        None => Err(invalid("the request names no entry (path or parent+name)")),
    }
}

/// Converts an `Obj`.
pub fn obj(o: Option<proto::Obj>) -> Result<Obj, Status> {
    let o = o.ok_or_else(|| invalid("the request names no inode"))?;
    match o.kind {
        Some(proto::obj::Kind::Path(p)) => {
            check_path(&p)?;
            Ok(Obj::Path {
                path: p,
                follow: o.follow,
            })
        }
        Some(proto::obj::Kind::Inode(id)) => Ok(Obj::Inode(id)),
        Some(proto::obj::Kind::Entry(e)) => {
            check_entry(&e)?;
            Ok(Obj::Entry {
                parent: e.parent,
                name: e.name,
            })
        }
        None => Err(invalid("the request names no inode (path, inode or entry)")),
    }
}

/// Converts a `TimeSet`.
pub fn time_set(t: Option<proto::TimeSet>) -> Result<Option<TimeSet>, Status> {
    match t.and_then(|t| t.kind) {
        None => Ok(None),
        Some(proto::time_set::Kind::Now(true)) => Ok(Some(TimeSet::Now)),
        Some(proto::time_set::Kind::Now(false)) => Err(invalid("TimeSet.now must be true")),
        Some(proto::time_set::Kind::AtNs(ns)) => Ok(Some(TimeSet::At(ns))),
    }
}

impl From<Attr> for proto::Attr {
    fn from(a: Attr) -> proto::Attr {
        proto::Attr {
            id: a.id,
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            nlink: a.nlink,
            entries: a.entries,
            size: a.size,
            atime_ns: a.atime,
            mtime_ns: a.mtime,
            ctime_ns: a.ctime,
            rdev: a.rdev,
            parent: a.parent,
            target: a.target,
        }
    }
}

impl TryFrom<proto::Attr> for Attr {
    type Error = Status;
    fn try_from(a: proto::Attr) -> Result<Attr, Status> {
        if metastore::FileType::from_mode(a.mode).is_none() {
            return Err(invalid(format!(
                "attribute mode {:o} has no file type",
                a.mode
            )));
        }
        Ok(Attr {
            id: a.id,
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            nlink: a.nlink,
            entries: a.entries,
            size: a.size,
            atime: a.atime_ns,
            mtime: a.mtime_ns,
            ctime: a.ctime_ns,
            rdev: a.rdev,
            parent: a.parent,
            // The wire form does not carry the namespace: the caller knows which one it asked.
            ns: 0,
            target: a.target,
        })
    }
}

impl From<DirEntry> for proto::DirEntry {
    fn from(e: DirEntry) -> proto::DirEntry {
        proto::DirEntry {
            name: e.name,
            id: e.id,
            r#type: e.kind.bits() >> 12,
            attr: e.attr.map(Into::into),
        }
    }
}

impl From<NsInfo> for proto::NsInfo {
    fn from(n: NsInfo) -> proto::NsInfo {
        proto::NsInfo {
            name: String::from_utf8_lossy(&n.name).into_owned(),
            root: n.root,
        }
    }
}

impl From<StatFs> for proto::StatFsReply {
    fn from(s: StatFs) -> proto::StatFsReply {
        proto::StatFsReply {
            inodes: s.inodes,
            bytes: s.bytes,
            name_max: s.name_max,
            block_size: s.block_size,
        }
    }
}

impl From<Report> for proto::FsckReport {
    fn from(r: Report) -> proto::FsckReport {
        proto::FsckReport {
            namespaces: r.namespaces,
            directories: r.directories,
            files: r.files,
            entries: r.entries,
            problems: r.problems,
            omitted: r.omitted,
        }
    }
}

/// Converts an `NsCreate` request.
pub fn ns_create(
    r: proto::NsCreateRequest,
) -> Result<coprocessor::ops::ns_create::NsCreate, Status> {
    if r.mode & !0o7777 != 0 {
        return Err(invalid(format!(
            "mode {:o} has more than permission bits",
            r.mode
        )));
    }
    Ok(coprocessor::ops::ns_create::NsCreate {
        name: check_ns(&r.name)?,
        cred: Cred2::try_from(r.cred)?.0,
        mode: r.mode,
    })
}
