//! The operation trait, its coprocessor adapter, and [`Service`]: the typed front door.
//!
//! Each operation is a request type implementing [`Op`]: `run` is the whole operation as one
//! closure over a transaction (resolve, check, write), free of side effects outside it, so
//! TafDB may run it again on a conflict. [`Service::open`] registers every operation as a TafDB
//! coprocessor named `ns.<op>` (what a call by name runs: [`Service::call_by_name`], a remote
//! node). [`Service::call`] runs the same body, `run_op`, directly in one transaction retried
//! on conflicts (a snapshot reader for an op that does not mutate), with nothing encoded but a
//! recorded reply, and turns a failure into the operation's errno.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tafdb::{BoxFuture, Coprocessor, Db, Txn};

use crate::ctx::Ctx;
use crate::dedup::{self, RequestId, Seen};
use crate::error::{Errno, FsError, OpResult};
use crate::hooks::{Event, HookCall, Ran, When};

/// A namespace operation.
pub trait Op: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The coprocessor name.
    const NAME: &'static str;
    /// What it returns.
    type Reply: Serialize + DeserializeOwned + Send + 'static;
    /// Whether it may write. A mutation called with a [`RequestId`] records its reply, so that
    /// a retry of the same request answers the same (see [`crate::dedup`]).
    const MUTATES: bool = true;
    /// Whether it frees space (a delete): it still runs when the disk is short of space and
    /// other writes are refused with `ENOSPC`.
    const FREES_SPACE: bool = false;
    /// Runs the operation in `txn`. Must not have effects outside the transaction.
    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Self::Reply>>;

    /// What the operation tells [`crate::hooks`], if it is one they watch.
    fn hook(&self) -> Option<HookCall<'_>> {
        None
    }

    /// The inode an after-hook is told of.
    fn hook_result(_reply: &Self::Reply) -> Option<&metastore::Attr> {
        None
    }

    /// The reply of this operation when a replacement did it (see [`crate::hooks::Ran`]),
    /// having made inode `made`.
    fn replaced(_txn: &mut Txn, _made: Option<u64>) -> BoxFuture<'_, OpResult<Self::Reply>> {
        Box::pin(async {
            Err(FsError::new(Errno::ENOSYS, format!("{} cannot be replaced", Self::NAME)).into())
        })
    }
}

/// Runs `req` in `txn` with the hooks of the [`Ctx`] around it (no request-id bookkeeping):
/// what every caller of an operation inside a transaction uses, the service and scripts alike.
pub async fn run_hooked<R: Op>(ctx: &Ctx, txn: &mut Txn, req: &R) -> OpResult<R::Reply> {
    let (Some(hooks), Some(call)) = (ctx.hooks(), req.hook()) else {
        return req.run(ctx, txn).await;
    };
    let Some(plan) = hooks.plan(ctx, txn, &call).await? else {
        return req.run(ctx, txn).await;
    };
    let at = |when, result| Event {
        call: &call,
        when,
        result,
    };
    hooks.run(ctx, txn, &plan, at(When::Before, None)).await?;
    let reply = match hooks.run(ctx, txn, &plan, at(When::Instead, None)).await? {
        Ran::Builtin => req.run(ctx, txn).await?,
        Ran::Instead(made) => R::replaced(txn, made).await?,
    };
    hooks
        .run(ctx, txn, &plan, at(When::After, R::hook_result(&reply)))
        .await?;
    Ok(reply)
}

struct Cop<R: Op> {
    ctx: Arc<Ctx>,
    _op: std::marker::PhantomData<fn() -> R>,
}

impl<R: Op> Coprocessor for Cop<R> {
    fn name(&self) -> &str {
        R::NAME
    }

    fn read_only(&self) -> bool {
        !R::MUTATES
    }

    fn call<'a>(
        &'a self,
        txn: &'a mut Txn,
        input: &'a [u8],
    ) -> BoxFuture<'a, tafdb::Result<Vec<u8>>> {
        Box::pin(async move {
            let (id, req): (Option<RequestId>, R) = bincode::deserialize(input).map_err(|e| {
                tafdb::Error::InvalidArgument(format!("{}: undecodable request: {e}", R::NAME))
            })?;
            let reply = run_op(&self.ctx, txn, &req, id.as_ref()).await?;
            encode_reply::<R>(&reply)
        })
    }
}

fn encode_reply<R: Op>(reply: &R::Reply) -> tafdb::Result<Vec<u8>> {
    bincode::serialize(reply).map_err(|e| tafdb::Error::Coprocessor {
        name: R::NAME.into(),
        message: format!("cannot encode the reply: {e}"),
    })
}

/// One attempt of operation `req` in `txn`, with its request id's bookkeeping: the body of
/// both the coprocessor (a call by name, its request encoded) and [`Service::call_once`]'s
/// direct path (typed, nothing encoded but a recorded reply).
async fn run_op<R: Op>(
    ctx: &Ctx,
    txn: &mut Txn,
    req: &R,
    id: Option<&RequestId>,
) -> tafdb::Result<R::Reply> {
    let id = id.filter(|_| R::MUTATES);
    if R::FREES_SPACE {
        txn.frees_space();
    }
    if let Some(id) = id {
        match dedup::check(txn, id).await.map_err(|e| e.into_store())? {
            Seen::Done(reply) => {
                return bincode::deserialize(&reply).map_err(|e| {
                    tafdb::Error::Corruption(format!(
                        "{}: the recorded reply of a request is undecodable: {e}",
                        R::NAME
                    ))
                })
            }
            Seen::Fresh => {}
        }
    }
    let reply = run_hooked(ctx, txn, req)
        .await
        .map_err(|e| e.into_store())?;
    if let Some(id) = id {
        dedup::record(txn, id, &encode_reply::<R>(&reply)?).map_err(|e| e.into_store())?;
    }
    Ok(reply)
}

/// The caller's error for a failed run of `R`: the operation's own (carried through the store
/// as `Refused`), or the store's mapped to an errno.
fn fs_error<R: Op>(e: tafdb::Error) -> FsError {
    match e {
        tafdb::Error::Refused(payload) => bincode::deserialize(&payload).unwrap_or_else(|e| {
            FsError::new(Errno::EIO, format!("{}: undecodable error: {e}", R::NAME))
        }),
        e => FsError::from_store(&e),
    }
}

/// How a [`Service`] is set up.
#[derive(Clone, Debug)]
pub struct Options {
    /// The TopDirPathCache's configuration, or `None` for no cache.
    pub path_cache: Option<indexnode::CacheConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            path_cache: Some(indexnode::CacheConfig::default()),
        }
    }
}

/// The namespace service over one store.
pub struct Service {
    ctx: Arc<Ctx>,
}

impl Service {
    /// Registers every namespace operation with `db`.
    pub fn open(db: Arc<Db>) -> Service {
        Service::open_with(db, &Options::default())
    }

    /// [`Service::open`] with `options`.
    pub fn open_with(db: Arc<Db>, options: &Options) -> Service {
        let ctx = Arc::new(match options.path_cache {
            Some(cfg) => Ctx::with_cache(db, cfg),
            None => Ctx::new(db),
        });
        let s = Service { ctx };
        crate::ops::register_all(&s);
        s
    }

    /// The path cache's counters and size, if there is a cache.
    pub fn path_cache_stats(&self) -> Option<indexnode::CacheStats> {
        self.ctx.path_cache().map(|c| c.stats())
    }

    /// Registers one operation type.
    pub fn register<R: Op>(&self) {
        self.ctx.db().register_coprocessor(Arc::new(Cop::<R> {
            ctx: self.ctx.clone(),
            _op: std::marker::PhantomData,
        }));
    }

    /// The store.
    pub fn db(&self) -> &Arc<Db> {
        self.ctx.db()
    }

    /// The shared context.
    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// Runs `req` as a coprocessor in the store.
    pub async fn call<R: Op>(&self, req: &R) -> Result<R::Reply, FsError> {
        self.call_once(req, None).await
    }

    /// Runs `req` as a coprocessor in the store; a mutation with request id `id` that committed
    /// before answers what it answered then, without running again (see [`crate::dedup`]).
    pub async fn call_once<R: Op>(
        &self,
        req: &R,
        id: Option<RequestId>,
    ) -> Result<R::Reply, FsError> {
        // The same transaction the coprocessor would run, called directly: in this process a
        // call by name would only encode the request and the reply to decode them again.
        let done = self
            .ctx
            .db()
            .run_with(
                &(&*self.ctx, req, id.as_ref()),
                |txn, (ctx, req, id)| Box::pin(run_op(ctx, txn, *req, *id)),
                !R::MUTATES,
            )
            .await;
        done.map_err(fs_error::<R>)
    }

    /// Runs `req` through the store's coprocessor registry, by name with its request encoded,
    /// as a remote caller would. [`Service::call`] runs the same transaction without the
    /// encoding; this is for tests and benchmarks of the coprocessor path itself.
    pub async fn call_by_name<R: Op>(
        &self,
        req: &R,
        id: Option<RequestId>,
    ) -> Result<R::Reply, FsError> {
        let input = bincode::serialize(&(id, req))
            .map_err(|e| FsError::new(Errno::EINVAL, format!("cannot encode {}: {e}", R::NAME)))?;
        let out = self
            .ctx
            .db()
            .call_coprocessor(R::NAME, &input)
            .await
            .map_err(fs_error::<R>)?;
        bincode::deserialize(&out)
            .map_err(|e| FsError::new(Errno::EIO, format!("{}: undecodable reply: {e}", R::NAME)))
    }
}
