//! The host API: what a script can do, over the transaction of the call it runs in.
//!
//! Rhai's registered functions are `'static` and shared by every call, so the call they act
//! for is found on a thread-local stack ([`Call`]): a script runs synchronously on one
//! thread, and a script that runs inside another (a hook of an operation a script called)
//! pushes its own entry. The call owns the transaction while the script runs (moved out of
//! the operation with [`tafdb::Txn::take`] and put back afterwards), so host functions need
//! no borrowed state.
//!
//! Errors a script may handle (`ENOENT` from `mkdir`, say) are thrown as catchable maps
//! `#{errno, name, message}`. Errors it must not swallow stop it: a store error (a conflict
//! must retry the whole transaction, not be caught), a namespace operation that failed after
//! it had written, and every limit.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use coprocessor::api::{Loc, Obj};
use coprocessor::ctx::Ctx;
use coprocessor::ops::{
    mkdir::Mkdir, mknod::Mknod, readdir::Readdir, rename::Rename, rmdir::Rmdir, stat::Stat,
    symlink::Symlink, unlink::Unlink, xattr_get::XattrGet, xattr_set::XattrSet,
};
use coprocessor::service::run_hooked;
use coprocessor::{Errno, FsError, Op, OpError, OpResult};
use indexnode::Cred;
use metastore::{keys, Attr, FileType};
use parking_lot::Mutex;
use rhai::{Array, Blob, Dynamic, Engine, EvalAltResult, ImmutableString, Map};
use std::cell::RefCell;
use tafdb::{DeltaOp, KeyRange, Txn};

use crate::engine::Limits;
pub(crate) use crate::tree::Inode;
use crate::wait::{off_worker, wait};

/// One script call in progress.
pub(crate) struct Call {
    /// "script \"name\" v3", for messages.
    pub(crate) who: String,
    script: String,
    version: u64,
    pub(crate) txn: Mutex<Option<Txn>>,
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) ns: Vec<u8>,
    pub(crate) cred: Cred,
    /// The time every change of the call is stamped with.
    pub(crate) now: u64,
    limits: Arc<Limits>,
    store_ops: AtomicU64,
    bytes_written: AtomicU64,
    deadline: Instant,
    /// Running in place on the caller's thread (perhaps a runtime worker), until this time.
    inline_until: Option<Instant>,
    /// It ran past `inline_until` and was stopped, to run again off the workers.
    too_long: std::sync::atomic::AtomicBool,
    /// An error that ends the call whatever the script does with it.
    fault: Mutex<Option<OpError>>,
}

thread_local! {
    static STACK: RefCell<Vec<Arc<Call>>> = const { RefCell::new(Vec::new()) };
}

fn top() -> Option<Arc<Call>> {
    STACK.with(|s| s.borrow().last().cloned())
}

fn depth() -> usize {
    STACK.with(|s| s.borrow().len())
}

/// Who a script call runs for.
pub(crate) struct Caller<'a> {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) ns: &'a [u8],
    pub(crate) cred: &'a Cred,
}

/// Calls `function` of a compiled script with `args`, in `txn`. The transaction comes back
/// with whatever the script wrote; on an error it must be dropped.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    engine: &Engine,
    limits: &Arc<Limits>,
    compiled: &crate::registry::Compiled,
    (script, version): (&str, u64),
    caller: Caller<'_>,
    txn: &mut Txn,
    function: &str,
    args: Vec<Dynamic>,
) -> OpResult<Dynamic> {
    let who = format!("script {script:?} v{version}");
    let nested = depth();
    if nested >= limits.max_nesting {
        return Err(FsError::new(
            Errno::ECANCELED,
            format!(
                "{who}: scripts nested {nested} deep (max_nesting): a hook calls what it hooks?"
            ),
        )
        .into());
    }
    let ast = &compiled.ast;
    // A top-level call runs in place first (no thread hand-off: most calls take microseconds);
    // one that runs past the budget is stopped and its transaction retried with the version
    // marked slow, whose calls then run off the workers (`block_in_place`) from the start.
    let inline = nested == 0 && !compiled.slow.load(Ordering::Relaxed);
    let now = Instant::now();
    let call = Arc::new(Call {
        inline_until: inline.then(|| now + INLINE_BUDGET),
        too_long: std::sync::atomic::AtomicBool::new(false),
        who: who.clone(),
        script: script.to_string(),
        version,
        txn: Mutex::new(Some(txn.take())),
        ctx: caller.ctx,
        ns: caller.ns.to_vec(),
        cred: caller.cred.clone(),
        now: coprocessor::ctx::now_ns(),
        limits: limits.clone(),
        store_ops: AtomicU64::new(0),
        bytes_written: AtomicU64::new(0),
        deadline: now + limits.deadline,
        fault: Mutex::new(None),
    });
    STACK.with(|s| s.borrow_mut().push(call.clone()));
    let go = || {
        catch_unwind(AssertUnwindSafe(|| {
            let opts = rhai::CallFnOptions::new().eval_ast(false);
            engine.call_fn_with_options::<Dynamic>(
                opts,
                &mut rhai::Scope::new(),
                ast,
                function,
                args,
            )
        }))
    };
    let result = if nested == 0 && !inline {
        off_worker(go)
    } else {
        go()
    };
    STACK.with(|s| s.borrow_mut().pop());
    let back = call.txn.lock().take();
    let had_txn = back.is_some();
    if let Some(t) = back {
        *txn = t;
    }
    let result = match result {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            return Err(FsError::new(
                Errno::ECANCELED,
                format!("{who}: a host function panicked in {function}: {what}"),
            )
            .into());
        }
    };
    if call.too_long.load(Ordering::Relaxed) {
        compiled.slow.store(true, Ordering::Relaxed);
        tracing::info!(script = %who, "ran past the inline budget; its calls now run off the request threads");
        return Err(tafdb::Error::Conflict {
            key: who,
            reason: "the script ran long in place; retrying it off the request threads".into(),
        }
        .into());
    }
    if let Some(fault) = call.fault.lock().take() {
        return Err(fault);
    }
    if !had_txn {
        return Err(FsError::new(Errno::EIO, format!("{who} lost its transaction")).into());
    }
    result.map_err(|e| crate::engine::call_error(&who, function, &e).into())
}

/// How long a call runs in place on the caller's thread before it is moved off the runtime's
/// workers (most take microseconds; a worker held longer delays every task queued behind it).
const INLINE_BUDGET: std::time::Duration = std::time::Duration::from_millis(2);

/// Rhai's progress callback: stops the call at its deadline, or an in-place call at its
/// inline budget.
pub(crate) fn progress(ops: u64) -> Option<Dynamic> {
    if ops & 255 != 0 {
        return None;
    }
    let c = top()?;
    let now = Instant::now();
    if c.inline_until.is_some_and(|t| now >= t) {
        c.too_long.store(true, Ordering::Relaxed);
        return Some(Dynamic::from("the inline budget passed"));
    }
    (now >= c.deadline)
        .then(|| Dynamic::from(format!("the deadline ({:?}) passed", c.limits.deadline)))
}

/// Whether the call on this thread runs in place (its waits must not park a worker).
pub(crate) fn inline() -> bool {
    STACK.with(|s| s.borrow().first().is_some_and(|c| c.inline_until.is_some()))
}

/// Where `print` and `debug` go.
pub(crate) fn log(s: &str) {
    match top() {
        Some(c) => tracing::info!(script = %c.who, "{s}"),
        None => tracing::info!("script: {s}"),
    }
}

pub(crate) type Res<T> = Result<T, Box<EvalAltResult>>;
type RhaiResult = Res<Dynamic>;

/// Stops the call: an uncatchable error carrying `why`.
fn stop<T>(why: String) -> Res<T> {
    Err(Box::new(EvalAltResult::ErrorTerminated(
        why.into(),
        rhai::Position::NONE,
    )))
}

/// A catchable error: `#{errno, name, message}`.
pub(crate) fn throw<T>(e: &FsError) -> Res<T> {
    Err(Box::new(EvalAltResult::ErrorRuntime(
        errno_map(e.errno, &e.message),
        rhai::Position::NONE,
    )))
}

fn errno_map(errno: Errno, message: &str) -> Dynamic {
    let mut m = Map::new();
    m.insert("errno".into(), Dynamic::from_int(i64::from(errno.code())));
    m.insert("name".into(), Dynamic::from(format!("{errno:?}")));
    m.insert("message".into(), Dynamic::from(message.to_string()));
    Dynamic::from_map(m)
}

fn errno_named(name: &str) -> Option<Errno> {
    (1..=200)
        .filter_map(Errno::from_code)
        .find(|e| format!("{e:?}") == name)
}

pub(crate) fn with_call<T>(f: impl FnOnce(&Call) -> Res<T>) -> Res<T> {
    match top() {
        Some(c) => f(&c),
        None => stop("a host function was called outside a script call".into()),
    }
}

impl Call {
    /// Counts one store operation (and `bytes` written), stopping the call at a limit or
    /// past its deadline.
    pub(crate) fn count(&self, ops: u64, bytes: u64) -> Res<()> {
        let n = self.store_ops.fetch_add(ops, Ordering::Relaxed) + ops;
        if n > self.limits.max_store_ops {
            return stop(format!(
                "the store operation limit (max_store_ops = {}) was reached",
                self.limits.max_store_ops
            ));
        }
        let b = self.bytes_written.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if b > self.limits.max_bytes_written {
            return stop(format!(
                "the written bytes limit (max_bytes_written = {}) was reached",
                self.limits.max_bytes_written
            ));
        }
        let now = Instant::now();
        if self.inline_until.is_some_and(|t| now >= t) {
            if let Some(c) = STACK.with(|s| s.borrow().first().cloned()) {
                c.too_long.store(true, Ordering::Relaxed);
            }
            return stop("the inline budget passed".into());
        }
        if now >= self.deadline {
            return stop(format!("the deadline ({:?}) passed", self.limits.deadline));
        }
        Ok(())
    }

    /// Records `e` as the call's outcome and stops the script.
    pub(crate) fn fail<T>(&self, e: OpError) -> Res<T> {
        let why = e.to_string();
        let mut f = self.fault.lock();
        if f.is_none() {
            *f = Some(e);
        }
        stop(why)
    }

    /// A store step on the call's transaction. An invalid argument (a bad key) is the
    /// script's error to handle; every other store error ends the call.
    fn store<T>(&self, f: impl FnOnce(&mut Txn) -> tafdb::Result<T>) -> Res<T> {
        let mut g = self.txn.lock();
        let Some(txn) = g.as_mut() else {
            return stop("the call's transaction is in use".into());
        };
        match f(txn) {
            Ok(v) => Ok(v),
            Err(tafdb::Error::InvalidArgument(m)) => {
                drop(g);
                throw(&FsError::new(Errno::EINVAL, m))
            }
            Err(e) => {
                drop(g);
                self.fail(e.into())
            }
        }
    }

    /// Runs namespace operation `req` in the call's transaction, hooks included. A refusal
    /// that wrote nothing is the script's to handle; one that did (its writes cannot be taken
    /// back one by one) ends the call.
    fn native<R: Op>(&self, req: R) -> Res<R::Reply> {
        self.count(1, 0)?;
        let Some(mut txn) = self.txn.lock().take() else {
            return stop("the call's transaction is in use".into());
        };
        let before = txn.writes_made();
        let r = wait(run_hooked(&self.ctx, &mut txn, &req));
        let wrote = txn.writes_made() - before;
        *self.txn.lock() = Some(txn);
        self.count(wrote, 0)?;
        match r {
            Ok(v) => Ok(v),
            Err(OpError::Fs(e)) if wrote == 0 => throw(&e),
            Err(e) => self.fail(e),
        }
    }

    fn loc(&self, path: &Dynamic) -> Res<Loc> {
        Ok(Loc::Path(bytes(path, "a path")?))
    }

    fn obj(&self, path: &Dynamic, follow: bool) -> Res<Obj> {
        Ok(Obj::Path {
            path: bytes(path, "a path")?,
            follow,
        })
    }

    fn writable(&self, key: &[u8]) -> Res<()> {
        let reserved: [&[u8]; 2] = [b"\x00script", b"\x00hooks/"];
        if reserved.iter().any(|p| key.starts_with(p)) {
            return throw(&FsError::new(
                Errno::EPERM,
                "the script registry changes only through `mantle script` commands",
            ));
        }
        Ok(())
    }
}

/// The bytes of a string or blob argument.
pub(crate) fn bytes(d: &Dynamic, what: &str) -> Res<Vec<u8>> {
    if let Some(s) = d.read_lock::<ImmutableString>() {
        return Ok(s.as_bytes().to_vec());
    }
    if let Some(b) = d.read_lock::<Blob>() {
        return Ok(b.clone());
    }
    throw(&FsError::new(
        Errno::EINVAL,
        format!("{what} must be a string or a blob, not {}", d.type_name()),
    ))
}

pub(crate) fn uint(i: i64, what: &str) -> Res<u64> {
    u64::try_from(i).or_else(|_| {
        throw(&FsError::new(
            Errno::EINVAL,
            format!("{what} must not be negative ({i})"),
        ))
    })
}

pub(crate) fn small(i: i64, what: &str) -> Res<u32> {
    u32::try_from(i).or_else(|_| {
        throw(&FsError::new(
            Errno::EINVAL,
            format!("{what} {i} is out of range"),
        ))
    })
}

/// A string of bytes: as text when they are UTF-8, else as a blob.
pub(crate) fn text(b: &[u8]) -> Dynamic {
    match std::str::from_utf8(b) {
        Ok(s) => Dynamic::from(s.to_string()),
        Err(_) => Dynamic::from_blob(b.to_vec()),
    }
}

pub(crate) fn kind_name(k: FileType) -> &'static str {
    match k {
        FileType::Regular => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharDevice => "char",
        FileType::BlockDevice => "block",
    }
}

pub(crate) fn int(v: u64) -> Dynamic {
    // Rhai integers are i64; u64 values past i64::MAX (none in practice) saturate.
    Dynamic::from_int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// An inode's attributes as a script sees them.
pub(crate) fn attr_map(a: &Attr) -> Dynamic {
    let mut m = Map::new();
    m.insert("id".into(), int(a.id));
    m.insert(
        "kind".into(),
        Dynamic::from(kind_name(a.kind()).to_string()),
    );
    m.insert("mode".into(), int(u64::from(a.mode)));
    m.insert("perm".into(), int(u64::from(a.perm())));
    m.insert("uid".into(), int(u64::from(a.uid)));
    m.insert("gid".into(), int(u64::from(a.gid)));
    m.insert("nlink".into(), int(a.nlink));
    m.insert("entries".into(), int(a.entries));
    m.insert("size".into(), int(a.size));
    m.insert("atime_ns".into(), int(a.atime));
    m.insert("mtime_ns".into(), int(a.mtime));
    m.insert("ctime_ns".into(), int(a.ctime));
    m.insert("parent".into(), int(a.parent));
    // A directory's record keeps its own name there; only a symlink's is a target.
    if a.kind() == FileType::Symlink {
        m.insert("target".into(), text(&a.target));
    }
    Dynamic::from_map(m)
}

/// `r`'s value through `f`, or `()` when it failed with `absent` (no such entry).
fn or_unit<T>(r: Res<T>, absent: Errno, f: impl FnOnce(T) -> Dynamic) -> RhaiResult {
    match r {
        Ok(v) => Ok(f(v)),
        Err(e) => match &*e {
            EvalAltResult::ErrorRuntime(v, _)
                if v.read_lock::<Map>().is_some_and(|m| {
                    m.get("errno").and_then(|e| e.as_int().ok()) == Some(i64::from(absent.code()))
                }) =>
            {
                Ok(Dynamic::UNIT)
            }
            _ => Err(e),
        },
    }
}

fn rows(rows: Vec<(Vec<u8>, Vec<u8>)>) -> Dynamic {
    let a: Array = rows
        .into_iter()
        .map(|(k, v)| {
            let mut m = Map::new();
            m.insert("key".into(), Dynamic::from_blob(k));
            m.insert("value".into(), Dynamic::from_blob(v));
            Dynamic::from_map(m)
        })
        .collect();
    Dynamic::from_array(a)
}

fn le_u64(b: Blob, offset: i64) -> Res<i64> {
    let o = usize::try_from(offset).unwrap_or(usize::MAX);
    match b.get(o..o.saturating_add(8)) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            Ok(i64::from_le_bytes(a))
        }
        None => throw(&FsError::new(
            Errno::EINVAL,
            format!("no 8 bytes at offset {offset} of a {}-byte blob", b.len()),
        )),
    }
}

/// Registers the host API on `e`.
pub(crate) fn register(e: &mut Engine) {
    crate::tree::register(e);
    // ------------------------------------------------------------- the call
    e.register_fn("ns_name", || with_call(|c| Ok(text(&c.ns))));
    e.register_fn("script_name", || with_call(|c| Ok(c.script.clone())));
    e.register_fn("script_version", || with_call(|c| Ok(int(c.version))));
    e.register_fn("caller", || {
        with_call(|c| {
            let mut m = Map::new();
            m.insert("uid".into(), int(u64::from(c.cred.uid)));
            m.insert("gid".into(), int(u64::from(c.cred.gid)));
            let g: Array = c.cred.groups.iter().map(|g| int(u64::from(*g))).collect();
            m.insert("groups".into(), Dynamic::from_array(g));
            Ok(Dynamic::from_map(m))
        })
    });
    e.register_fn("snapshot_ts", || {
        with_call(|c| c.store(|t| Ok(int(t.start_ts()))))
    });

    // ------------------------------------------------------------- errors
    e.register_fn("errno", |name: ImmutableString| -> Res<i64> {
        match errno_named(&name) {
            Some(e) => Ok(i64::from(e.code())),
            None => throw(&FsError::new(
                Errno::EINVAL,
                format!("no errno named {name:?}"),
            )),
        }
    });
    e.register_fn(
        "fail",
        |name: ImmutableString, message: ImmutableString| -> RhaiResult {
            match errno_named(&name) {
                Some(e) => throw(&FsError::new(e, message.to_string())),
                None => throw(&FsError::new(
                    Errno::EINVAL,
                    format!("fail: no errno named {name:?} (message: {message})"),
                )),
            }
        },
    );

    // ------------------------------------------------------------- namespace
    let stat = |follow: bool| {
        move |p: Dynamic| -> RhaiResult {
            with_call(|c| {
                let obj = c.obj(&p, follow)?;
                or_unit(
                    c.native(Stat {
                        ns: c.ns.clone(),
                        cred: c.cred.clone(),
                        obj,
                    }),
                    Errno::ENOENT,
                    |a| attr_map(&a),
                )
            })
        }
    };
    e.register_fn("stat", stat(true));
    e.register_fn("lstat", stat(false));
    e.register_fn("exists", |p: Dynamic| -> Res<bool> {
        with_call(|c| {
            let obj = c.obj(&p, false)?;
            let r = or_unit(
                c.native(Stat {
                    ns: c.ns.clone(),
                    cred: c.cred.clone(),
                    obj,
                }),
                Errno::ENOENT,
                |_| Dynamic::TRUE,
            )?;
            Ok(!r.is_unit())
        })
    });
    let page = |p: Dynamic, after: Dynamic, limit: i64| -> RhaiResult {
        with_call(|c| {
            let dir = c.obj(&p, true)?;
            let after = if after.is_unit() {
                Vec::new()
            } else {
                bytes(&after, "a cursor")?
            };
            let pg = c.native(Readdir {
                ns: c.ns.clone(),
                cred: c.cred.clone(),
                dir,
                after,
                limit: small(limit, "a page size")?,
                plus: false,
            })?;
            let entries: Array = pg
                .entries
                .into_iter()
                .map(|d| {
                    let mut m = Map::new();
                    m.insert("name".into(), text(&d.name));
                    m.insert("id".into(), int(d.id));
                    m.insert("kind".into(), Dynamic::from(kind_name(d.kind).to_string()));
                    Dynamic::from_map(m)
                })
                .collect();
            let mut m = Map::new();
            m.insert("entries".into(), Dynamic::from_array(entries));
            m.insert("next".into(), pg.next.map_or(Dynamic::UNIT, |n| text(&n)));
            Ok(Dynamic::from_map(m))
        })
    };
    e.register_fn("readdir", page);
    e.register_fn("readdir", move |p: Dynamic| -> RhaiResult {
        // Every entry, page by page (bounded by the array size limit).
        let mut all = Array::new();
        let mut after = Dynamic::UNIT;
        loop {
            let pg = page(p.clone(), after, 0)?;
            let m = pg.cast::<Map>();
            if let Some(es) = m.get("entries") {
                all.extend(es.clone().cast::<Array>());
            }
            match m.get("next") {
                Some(n) if !n.is_unit() => after = n.clone(),
                _ => return Ok(Dynamic::from_array(all)),
            }
        }
    });
    let mkdir = |p: Dynamic, mode: i64| -> RhaiResult {
        with_call(|c| {
            let at = c.loc(&p)?;
            let a = c.native(Mkdir {
                ns: c.ns.clone(),
                cred: c.cred.clone(),
                at,
                mode: small(mode, "a mode")?,
            })?;
            Ok(attr_map(&a))
        })
    };
    e.register_fn("mkdir", mkdir);
    e.register_fn("mkdir", move |p: Dynamic| mkdir(p, 0o755));
    let create = |p: Dynamic, mode: i64| -> RhaiResult {
        with_call(|c| {
            let at = c.loc(&p)?;
            let a = c.native(Mknod {
                ns: c.ns.clone(),
                cred: c.cred.clone(),
                at,
                mode: small(mode, "a mode")? & 0o7777,
                rdev: 0,
            })?;
            Ok(attr_map(&a))
        })
    };
    e.register_fn("create", create);
    e.register_fn("create", move |p: Dynamic| create(p, 0o644));
    e.register_fn("symlink", |target: Dynamic, p: Dynamic| -> RhaiResult {
        with_call(|c| {
            let at = c.loc(&p)?;
            let a = c.native(Symlink {
                ns: c.ns.clone(),
                cred: c.cred.clone(),
                at,
                target: bytes(&target, "a symlink target")?,
            })?;
            Ok(attr_map(&a))
        })
    });
    e.register_fn("unlink", |p: Dynamic| -> Res<()> {
        with_call(|c| {
            let at = c.loc(&p)?;
            c.native(Unlink {
                ns: c.ns.clone(),
                cred: c.cred.clone(),
                at,
            })
        })
    });
    e.register_fn("rmdir", |p: Dynamic| -> Res<()> {
        with_call(|c| {
            let at = c.loc(&p)?;
            c.native(Rmdir {
                ns: c.ns.clone(),
                cred: c.cred.clone(),
                at,
            })
        })
    });
    let rename = |from: Dynamic, to: Dynamic, flags: i64| -> Res<()> {
        with_call(|c| {
            let (from, to) = (c.loc(&from)?, c.loc(&to)?);
            c.native(Rename {
                ns: c.ns.clone(),
                cred: c.cred.clone(),
                from,
                to,
                flags: small(flags, "rename flags")?,
            })
        })
    };
    e.register_fn("rename", rename);
    e.register_fn("rename", move |from: Dynamic, to: Dynamic| {
        rename(from, to, 0)
    });
    e.register_fn("getxattr", |p: Dynamic, name: Dynamic| -> RhaiResult {
        with_call(|c| {
            let obj = c.obj(&p, true)?;
            let r = c.native(XattrGet {
                ns: c.ns.clone(),
                cred: c.cred.clone(),
                obj,
                name: bytes(&name, "an attribute name")?,
            });
            or_unit(r, Errno::ENODATA, |v| text(&v))
        })
    });
    e.register_fn(
        "setxattr",
        |p: Dynamic, name: Dynamic, value: Dynamic| -> Res<()> {
            with_call(|c| {
                let obj = c.obj(&p, true)?;
                c.native(XattrSet {
                    ns: c.ns.clone(),
                    cred: c.cred.clone(),
                    obj,
                    name: bytes(&name, "an attribute name")?,
                    value: bytes(&value, "an attribute value")?,
                    flags: 0,
                })
            })
        },
    );

    // ------------------------------------------------------------- keys
    e.register_fn("key_inode", |id: i64| -> Res<Blob> {
        Ok(keys::attr_key(uint(id, "an inode id")?))
    });
    e.register_fn("key_entry", |pid: i64, name: Dynamic| -> Res<Blob> {
        Ok(keys::dentry_key(
            uint(pid, "a directory id")?,
            &bytes(&name, "a name")?,
        ))
    });
    e.register_fn("key_xattr", |id: i64, name: Dynamic| -> Res<Blob> {
        Ok(keys::xattr_key(
            uint(id, "an inode id")?,
            &bytes(&name, "a name")?,
        ))
    });
    e.register_fn("key_index", |pid: i64, name: Dynamic| -> Res<Blob> {
        Ok(indexnode::index_key(
            uint(pid, "a directory id")?,
            &bytes(&name, "a name")?,
        ))
    });
    e.register_fn("data_key", |k: Dynamic| -> Res<Blob> {
        with_call(|c| {
            let mut key = keys::script_data_prefix(c.script.as_bytes());
            key.extend_from_slice(&bytes(&k, "a key")?);
            Ok(key)
        })
    });
    e.register_fn("data_prefix", || -> Res<Blob> {
        with_call(|c| Ok(keys::script_data_prefix(c.script.as_bytes())))
    });
    e.register_fn("u64_le", le_u64);
    e.register_fn("dirname", |p: ImmutableString| -> String {
        match p.rfind('/') {
            Some(0) | None => "/".to_string(),
            Some(i) => p[..i].to_string(),
        }
    });
    e.register_fn("basename", |p: ImmutableString| -> String {
        p.rsplit('/').next().unwrap_or_default().to_string()
    });
    e.register_fn(
        "join_path",
        |dir: ImmutableString, name: ImmutableString| -> String {
            if dir.as_str() == "/" {
                format!("/{name}")
            } else {
                format!("{dir}/{name}")
            }
        },
    );
    e.register_fn("utf8", |b: Blob| -> String {
        String::from_utf8_lossy(&b).into_owned()
    });

    // ------------------------------------------------------------- raw store
    let get = |stable: bool| {
        move |key: Dynamic| -> RhaiResult {
            with_call(|c| {
                let key = bytes(&key, "a key")?;
                c.count(1, 0)?;
                let v = c.store(|t| {
                    if stable {
                        wait(t.get_stable(&key))
                    } else {
                        wait(t.get(&key))
                    }
                })?;
                Ok(v.map_or(Dynamic::UNIT, Dynamic::from_blob))
            })
        }
    };
    e.register_fn("get", get(false));
    e.register_fn("get_stable", get(true));
    e.register_fn("put", |key: Dynamic, value: Dynamic| -> Res<()> {
        with_call(|c| {
            let (key, value) = (bytes(&key, "a key")?, bytes(&value, "a value")?);
            c.writable(&key)?;
            c.count(1, (key.len() + value.len()) as u64)?;
            c.store(|t| t.put(&key, &value))
        })
    });
    e.register_fn("delete", |key: Dynamic| -> Res<()> {
        with_call(|c| {
            let key = bytes(&key, "a key")?;
            c.writable(&key)?;
            c.count(1, key.len() as u64)?;
            c.store(|t| t.delete(&key))
        })
    });
    let delta = |max: bool| {
        move |key: Dynamic, offset: i64, v: i64| -> Res<()> {
            with_call(|c| {
                let key = bytes(&key, "a key")?;
                c.writable(&key)?;
                let offset = small(offset, "a delta offset")?;
                let op = if max {
                    DeltaOp::Max {
                        offset,
                        value: uint(v, "a maximum")?,
                    }
                } else {
                    DeltaOp::Add { offset, by: v }
                };
                c.count(1, key.len() as u64 + 16)?;
                c.store(|t| t.delta(&key, op))
            })
        }
    };
    e.register_fn("delta_add", delta(false));
    e.register_fn("delta_max", delta(true));
    e.register_fn(
        "scan",
        |start: Dynamic, end: Dynamic, limit: i64| -> RhaiResult {
            with_call(|c| {
                let range = KeyRange {
                    start: bytes(&start, "a start key")?,
                    end: if end.is_unit() {
                        None
                    } else {
                        Some(bytes(&end, "an end key")?)
                    },
                };
                let limit = usize::try_from(limit)
                    .unwrap_or(0)
                    .min(c.limits.max_array_len);
                c.count(1, 0)?;
                let r = c.store(|t| wait(t.scan(&range, limit)))?;
                c.count(r.len() as u64 / 64, 0)?;
                Ok(rows(r))
            })
        },
    );
    e.register_fn("scan_prefix", |prefix: Dynamic, limit: i64| -> RhaiResult {
        with_call(|c| {
            let range = KeyRange::prefix(&bytes(&prefix, "a prefix")?);
            let limit = usize::try_from(limit)
                .unwrap_or(0)
                .min(c.limits.max_array_len);
            c.count(1, 0)?;
            let r = c.store(|t| wait(t.scan(&range, limit)))?;
            c.count(r.len() as u64 / 64, 0)?;
            Ok(rows(r))
        })
    });
}
