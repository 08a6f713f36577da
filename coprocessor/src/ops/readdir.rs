//! `readdir`: one page of a directory, resumable from the last name returned.
//!
//! A page is one range scan of the directory's entries starting after the cursor, so memory
//! and cost per page are bounded by the page size whatever the directory's size.

use indexnode::{Cred, MAY_READ};
use metastore::{keys, Dentry};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::{DirEntry, Obj};
use crate::ctx::Ctx;
use crate::error::{fail, Errno, OpResult};
use crate::resolve::{must_attr, namespace_cached, object, Dir};
use crate::service::Op;

/// The default page size.
pub const DEFAULT_PAGE: u32 = 1024;
/// The largest page size.
pub const MAX_PAGE: u32 = 16_384;

/// Lists up to `limit` entries of directory `dir` after name `after` (empty: from the start).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Readdir {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The directory (a final symlink in a path is followed).
    pub dir: Obj,
    /// The cursor: the last name of the previous page.
    pub after: Vec<u8>,
    /// Page size (0: [`DEFAULT_PAGE`]; at most [`MAX_PAGE`]).
    pub limit: u32,
    /// Return each entry's attributes too.
    pub plus: bool,
}

/// A page of entries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Page {
    /// The entries, in name order.
    pub entries: Vec<DirEntry>,
    /// The cursor of the next page, if there may be one.
    pub next: Option<Vec<u8>>,
}

impl Op for Readdir {
    const NAME: &'static str = "ns.readdir";
    type Reply = Page;
    const MUTATES: bool = false;

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Page>> {
        Box::pin(async move {
            let limit = match self.limit {
                0 => DEFAULT_PAGE,
                n if n > MAX_PAGE => {
                    return fail(Errno::EINVAL, format!("page size {n} exceeds {MAX_PAGE}"))
                }
                n => n,
            } as usize;
            if self.after.len() > metastore::name::NAME_MAX {
                return fail(Errno::EINVAL, "cursor longer than a name");
            }
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let obj = match &self.dir {
                Obj::Path { path, .. } => Obj::Path {
                    path: path.clone(),
                    follow: true,
                },
                o => o.clone(),
            };
            let t = object(txn, &ns, &obj, &self.cred).await?;
            let a = must_attr(txn, t.id).await?;
            if !a.kind().is_dir() {
                return fail(Errno::ENOTDIR, "readdir of a non-directory");
            }
            Dir::from(&a).check(&self.cred, MAY_READ, "list the directory")?;
            let rows = txn
                .scan(&keys::dentry_range(a.id, &self.after), limit)
                .await?;
            let full = rows.len() == limit;
            let mut entries = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let Some(name) = keys::dentry_name(a.id, &k) else {
                    return fail(Errno::EIO, "a scan returned a foreign key");
                };
                let d = Dentry::decode(&v)?;
                let attr = if self.plus {
                    Some(must_attr(txn, d.id).await?)
                } else {
                    None
                };
                entries.push(DirEntry {
                    name: name.to_vec(),
                    id: d.id,
                    kind: d.kind,
                    attr,
                });
            }
            let next = if full {
                entries.last().map(|e| e.name.clone())
            } else {
                None
            };
            Ok(Page { entries, next })
        })
    }
}
