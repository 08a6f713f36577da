//! Scripts at the hook points of the built-in operations.
//!
//! A namespace's bindings are one record (`00 "hooks/" root`); an operation reads it in its
//! own transaction, so a binding pushed while operations run takes effect for the ones that
//! commit after it, on every replica alike. A hook's function gets one map:
//! `#{op, when, path, name, parent_path, to, mode, uid, gid, id, attr}` (`to` for renames;
//! `id` and `attr` after operations that make an inode). It refuses the operation by throwing
//! (`fail("EACCES", "...")`) and may add writes; a disabled script's hooks do not run.

use std::any::Any;

use coprocessor::api::Loc;
use coprocessor::ctx::Ctx;
use coprocessor::hooks::{Event, Hooks};
use coprocessor::resolve::{attr_stable, namespace_cached};
use coprocessor::{Errno, FsError, OpResult};
use rhai::{Dynamic, Map};
use tafdb::{BoxFuture, Txn};

use crate::host::{self, attr_map, Caller};
use crate::registry::{bindings, under, Scripts};

impl Hooks for Scripts {
    fn run<'a>(
        &'a self,
        ctx: &'a Ctx,
        txn: &'a mut Txn,
        event: Event<'a>,
    ) -> BoxFuture<'a, OpResult<()>> {
        Box::pin(self.fire(ctx, txn, event))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Scripts {
    async fn fire(&self, ctx: &Ctx, txn: &mut Txn, event: Event<'_>) -> OpResult<()> {
        let call = event.call;
        let root = namespace_cached(ctx, txn, call.ns).await?.root.id;
        let all = bindings(txn, root).await?;
        if all.is_empty() {
            return Ok(());
        }
        let (when, op) = (event.when.name(), call.op.name());
        let matches = |ev: &str| {
            ev.len() == when.len() + 1 + op.len()
                && ev.starts_with(when)
                && ev.ends_with(op)
                && ev.as_bytes()[when.len()] == b'_'
        };
        let hooked: Vec<_> = all.iter().filter(|b| matches(&b.event)).collect();
        if hooked.is_empty() {
            return Ok(());
        }
        let path = path_of_loc(txn, root, call.at).await?;
        let to = match call.to {
            Some(l) => Some(path_of_loc(txn, root, l).await?),
            None => None,
        };
        for b in hooked {
            let hit = under(&b.prefix, &path) || to.as_deref().is_some_and(|t| under(&b.prefix, t));
            if !hit {
                continue;
            }
            let Some((version, compiled)) = self.current(txn, &b.script).await? else {
                continue;
            };
            let args = hook_args(&event, &path, to.as_deref());
            let caller = Caller {
                ctx: self.ctx()?,
                ns: call.ns,
                cred: call.cred,
            };
            // A hook's return value means nothing; it refuses by throwing.
            let _ = host::run(
                &self.engine,
                &self.limits,
                &compiled.ast,
                (&b.script, version),
                caller,
                txn,
                &b.event,
                vec![args],
            )?;
        }
        Ok(())
    }
}

fn text(b: &[u8]) -> Dynamic {
    Dynamic::from(String::from_utf8_lossy(b).into_owned())
}

fn hook_args(event: &Event<'_>, path: &[u8], to: Option<&[u8]>) -> Dynamic {
    let call = event.call;
    let mut m = Map::new();
    m.insert("op".into(), Dynamic::from(call.op.name().to_string()));
    m.insert("when".into(), Dynamic::from(event.when.name().to_string()));
    m.insert("path".into(), text(path));
    let cut = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
    m.insert("name".into(), text(&path[(cut + 1).min(path.len())..]));
    let parent: &[u8] = if cut == 0 { b"/" } else { &path[..cut] };
    m.insert("parent_path".into(), text(parent));
    if let Some(t) = to {
        m.insert("to".into(), text(t));
    }
    m.insert("mode".into(), Dynamic::from_int(i64::from(call.mode)));
    m.insert("uid".into(), Dynamic::from_int(i64::from(call.cred.uid)));
    m.insert("gid".into(), Dynamic::from_int(i64::from(call.cred.gid)));
    if let Some(a) = event.result {
        m.insert(
            "id".into(),
            Dynamic::from_int(i64::try_from(a.id).unwrap_or(i64::MAX)),
        );
        m.insert("attr".into(), attr_map(a));
    }
    Dynamic::from_map(m)
}

/// The path of an entry: as given, or (the inode form) its parent's path walked up through
/// the directories' own records, read stably (creates inside them do not conflict).
async fn path_of_loc(txn: &mut Txn, root: u64, loc: &Loc) -> OpResult<Vec<u8>> {
    let (parent, name) = match loc {
        Loc::Path(p) => return Ok(p.clone()),
        Loc::Entry { parent, name } => (*parent, name),
    };
    let mut names: Vec<Vec<u8>> = vec![name.clone()];
    let mut cur = parent;
    // Parent pointers end at the namespace root; the bound guards against a damaged loop.
    for _ in 0..10_000 {
        if cur == root {
            let mut out = Vec::new();
            for n in names.iter().rev() {
                out.push(b'/');
                out.extend_from_slice(n);
            }
            return Ok(out);
        }
        let Some(a) = attr_stable(txn, cur).await? else {
            return Err(
                FsError::new(Errno::ENOENT, format!("directory {cur} does not exist")).into(),
            );
        };
        if a.parent == a.id {
            return Err(FsError::new(
                Errno::EXDEV,
                format!("directory {cur} is not in this namespace"),
            )
            .into());
        }
        names.push(a.target.clone());
        cur = a.parent;
    }
    Err(FsError::new(Errno::EIO, format!("the parents of {parent} form a loop")).into())
}
