//! Scripts at the hook points of the built-in operations.
//!
//! A namespace's bindings are one record (`00 "hooks/" root`); an operation reads it in its
//! own transaction, once per attempt ([`Hooks::plan`]), so a binding pushed while operations
//! run takes effect for the ones that commit after it, on every replica alike. A binding is
//! `before_<op>`, `after_<op>`, or `instead_<op>`: a replacement that does the operation's
//! whole work (a script version of a built-in operation; one per operation and subtree). A
//! hook's function gets one map:
//! `#{op, when, path, name, parent_path, to, mode, uid, gid, id, attr}` (`to` for renames;
//! `id` and `attr` after operations that make an inode). It refuses the operation by throwing
//! (`fail("EACCES", "...")`) and may add writes; a disabled script's hooks do not run.

use std::any::Any;

use coprocessor::api::Loc;
use coprocessor::ctx::Ctx;
use coprocessor::hooks::{Event, HookCall, Hooks, Plan, Ran, When};
use coprocessor::resolve::{attr_stable, namespace_cached};
use coprocessor::{Errno, FsError, OpResult};
use rhai::{Dynamic, Map};
use tafdb::{BoxFuture, Txn};

use crate::host::{self, attr_map, Caller};
use std::sync::Arc;

use crate::registry::{bindings, under, Binding, Compiled, Scripts};

impl Hooks for Scripts {
    fn plan<'a>(
        &'a self,
        ctx: &'a Ctx,
        txn: &'a mut Txn,
        call: &'a HookCall<'a>,
    ) -> BoxFuture<'a, OpResult<Option<Plan>>> {
        Box::pin(self.plan(ctx, txn, call))
    }

    fn run<'a>(
        &'a self,
        _ctx: &'a Ctx,
        txn: &'a mut Txn,
        plan: &'a Plan,
        event: Event<'a>,
    ) -> BoxFuture<'a, OpResult<Ran>> {
        Box::pin(async move {
            let Some(p) = plan.0.downcast_ref::<Planned>() else {
                return Err(FsError::new(Errno::EIO, "a hook plan of another extension").into());
            };
            self.fire(txn, p, event).await
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The bindings that apply to one attempt of one operation, each with its script's current
/// version (looked up once, not at each of the three hook points), and the paths.
struct Planned {
    bindings: Vec<(Binding, u64, Arc<Compiled>)>,
    path: Vec<u8>,
    to: Option<Vec<u8>>,
}

/// Whether `event` is `<when>_<op>`.
fn is_event(event: &str, when: &str, op: &str) -> bool {
    event.len() == when.len() + 1 + op.len()
        && event.starts_with(when)
        && event.ends_with(op)
        && event.as_bytes()[when.len()] == b'_'
}

impl Scripts {
    async fn plan(&self, ctx: &Ctx, txn: &mut Txn, call: &HookCall<'_>) -> OpResult<Option<Plan>> {
        let root = namespace_cached(ctx, txn, call.ns).await?.root.id;
        let op = call.op.name();
        let mut all = bindings(txn, root).await?;
        all.retain(|b| {
            [When::Before, When::Instead, When::After]
                .iter()
                .any(|w| is_event(&b.event, w.name(), op))
        });
        if all.is_empty() {
            return Ok(None);
        }
        let path = path_of_loc(txn, root, call.at).await?;
        let to = match call.to {
            Some(l) => Some(path_of_loc(txn, root, l).await?),
            None => None,
        };
        all.retain(|b| {
            under(&b.prefix, &path) || to.as_deref().is_some_and(|t| under(&b.prefix, t))
        });
        let mut bound = Vec::with_capacity(all.len());
        for b in all {
            // A disabled script's hooks do not run.
            if let Some((version, compiled)) = self.current(txn, &b.script).await? {
                bound.push((b, version, compiled));
            }
        }
        if bound.is_empty() {
            return Ok(None);
        }
        Ok(Some(Plan(Box::new(Planned {
            bindings: bound,
            path,
            to,
        }))))
    }

    async fn fire(&self, txn: &mut Txn, p: &Planned, event: Event<'_>) -> OpResult<Ran> {
        let call = event.call;
        let (when, op) = (event.when.name(), call.op.name());
        let mut ran = Ran::Builtin;
        for (b, version, compiled) in p
            .bindings
            .iter()
            .filter(|(b, ..)| is_event(&b.event, when, op))
        {
            if ran != Ran::Builtin {
                return Err(FsError::new(
                    Errno::EINVAL,
                    format!(
                        "two scripts replace {op} here (the second: {:?}); unbind one",
                        b.script
                    ),
                )
                .into());
            }
            let args = hook_args(&event, &p.path, p.to.as_deref());
            let caller = Caller {
                ctx: self.ctx()?,
                ns: call.ns,
                cred: call.cred,
            };
            let out = host::run(
                &self.engine,
                &self.limits,
                compiled,
                (&b.script, *version),
                caller,
                txn,
                &b.event,
                vec![args],
            )?;
            // Before and after hooks refuse by throwing; what they return means nothing. A
            // replacement returns the inode it made (its id, or its attributes), if any.
            if event.when == When::Instead {
                ran = Ran::Instead(made_id(&out));
            }
        }
        Ok(ran)
    }
}

/// The inode id a replacement returned: an integer, or a map (or inode) with an `id`.
fn made_id(out: &Dynamic) -> Option<u64> {
    if let Ok(i) = out.as_int() {
        return u64::try_from(i).ok();
    }
    if let Some(m) = out.read_lock::<Map>() {
        return m
            .get("id")
            .and_then(|i| i.as_int().ok())
            .and_then(|i| u64::try_from(i).ok());
    }
    out.read_lock::<crate::host::Inode>().map(|a| a.id())
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
