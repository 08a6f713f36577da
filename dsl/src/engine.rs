//! The sandboxed Rhai engine: which parts of the language a script gets, its limits, and how
//! its failures become errors that name the script, its version and the limit.
//!
//! One engine serves every call (built once per [`crate::Scripts`]); the limits that Rhai
//! counts itself (operations, call depth, expression depth, string/array/map sizes) are set
//! on it, and the ones it cannot count (store operations, bytes written, the wall-clock
//! deadline) are kept per call by [`crate::host`]. The engine has no file, network, time or
//! randomness access: it is built raw, with the arithmetic, string, array, blob, map, math and
//! logic packages only (no `sleep`, no `timestamp`, no `eval`, no module imports).

use std::time::Duration;

use coprocessor::{Errno, FsError};
use rhai::packages::{
    ArithmeticPackage, BasicArrayPackage, BasicBlobPackage, BasicFnPackage, BasicIteratorPackage,
    BasicMapPackage, BasicMathPackage, BasicStringPackage, BitFieldPackage, LogicPackage,
    MoreStringPackage, Package,
};
use rhai::{Engine, EvalAltResult, Position, AST};

/// The limits of one script call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Rhai operations (roughly: expressions evaluated).
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_levels: usize,
    /// Nesting of expressions at the top level and inside functions (checked at compile).
    pub max_expr_depth: usize,
    /// Nesting of expressions inside functions.
    pub max_fn_expr_depth: usize,
    /// Bytes of one string.
    pub max_string_bytes: usize,
    /// Elements of one array (and bytes of one blob).
    pub max_array_len: usize,
    /// Entries of one map.
    pub max_map_len: usize,
    /// Store operations (reads, writes, namespace operations) of one call.
    pub max_store_ops: u64,
    /// Bytes written (keys and values) by one call.
    pub max_bytes_written: u64,
    /// Wall-clock time of one call, its store operations included.
    pub deadline: Duration,
    /// Bytes of a script's source.
    pub max_source_bytes: usize,
    /// Scripts running inside scripts: a hook of an operation a script called, and so on.
    pub max_nesting: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_fn_expr_depth: 32,
            max_string_bytes: 1 << 20,
            max_array_len: 100_000,
            max_map_len: 10_000,
            max_store_ops: 100_000,
            max_bytes_written: 16 << 20,
            deadline: Duration::from_secs(2),
            max_source_bytes: 1 << 20,
            max_nesting: 4,
        }
    }
}

/// The engine every script of a [`crate::Scripts`] runs on.
pub(crate) fn build(limits: &Limits) -> Engine {
    let mut e = Engine::new_raw();
    e.register_global_module(ArithmeticPackage::new().as_shared_module());
    e.register_global_module(LogicPackage::new().as_shared_module());
    e.register_global_module(BasicStringPackage::new().as_shared_module());
    e.register_global_module(MoreStringPackage::new().as_shared_module());
    e.register_global_module(BasicIteratorPackage::new().as_shared_module());
    e.register_global_module(BasicFnPackage::new().as_shared_module());
    e.register_global_module(BitFieldPackage::new().as_shared_module());
    e.register_global_module(BasicMathPackage::new().as_shared_module());
    e.register_global_module(BasicArrayPackage::new().as_shared_module());
    e.register_global_module(BasicBlobPackage::new().as_shared_module());
    e.register_global_module(BasicMapPackage::new().as_shared_module());
    e.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    e.disable_symbol("eval");
    e.set_max_operations(limits.max_operations);
    e.set_max_call_levels(limits.max_call_levels);
    e.set_max_expr_depths(limits.max_expr_depth, limits.max_fn_expr_depth);
    e.set_max_string_size(limits.max_string_bytes);
    e.set_max_array_size(limits.max_array_len);
    e.set_max_map_size(limits.max_map_len);
    e.set_max_modules(0);
    e.set_max_variables(10_000);
    e.set_max_functions(1_000);
    e.on_progress(crate::host::progress);
    e.on_print(crate::host::log);
    e.on_debug(|s, _src, pos| crate::host::log(&format!("{s} ({})", at(pos))));
    crate::host::register(&mut e);
    e
}

/// A script compiled, or the compiler's message with its line.
pub(crate) fn compile(engine: &Engine, name: &str, source: &str) -> Result<AST, FsError> {
    engine.compile(source).map_err(|e| {
        FsError::new(
            Errno::EINVAL,
            format!("script {name:?} does not compile: {e}"),
        )
    })
}

/// Where a position is, for messages.
pub(crate) fn at(pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("line {l}, column {c}"),
        (Some(l), None) => format!("line {l}"),
        _ => "no position".into(),
    }
}

/// The error a failed script call gives its caller. `who` names the script and version.
pub(crate) fn call_error(who: &str, function: &str, err: &EvalAltResult) -> FsError {
    // The innermost error says what happened; the outer ones only which function it was in.
    let mut e = err;
    let mut inside = Vec::new();
    while let EvalAltResult::ErrorInFunctionCall(f, _, inner, _) = e {
        inside.push(f.clone());
        e = inner;
    }
    let within = inside.last().map_or(function, String::as_str);
    let pos = at(e.position());
    let limit = |what: String| {
        FsError::new(
            Errno::ECANCELED,
            format!("{who}: {what} in {within} ({pos}); the call was stopped"),
        )
    };
    match e {
        EvalAltResult::ErrorRuntime(v, _) => thrown(who, within, &pos, v),
        EvalAltResult::ErrorTooManyOperations(_) => {
            limit("the operation limit (max_operations) was reached".into())
        }
        EvalAltResult::ErrorStackOverflow(_) => {
            limit("the call depth limit (max_call_levels) was reached".into())
        }
        EvalAltResult::ErrorDataTooLarge(what, _) => limit(format!(
            "a size limit (max_string_bytes, max_array_len or max_map_len) was reached: {what}"
        )),
        EvalAltResult::ErrorTooManyVariables(_) => limit("the variable limit was reached".into()),
        EvalAltResult::ErrorTerminated(why, _) => limit(why.to_string()),
        EvalAltResult::ErrorFunctionNotFound(f, _)
            if inside.is_empty() && f.starts_with(function) =>
        {
            FsError::new(Errno::ENOSYS, format!("{who} has no function {f}"))
        }
        other => FsError::new(
            Errno::ECANCELED,
            format!("{who}: error in {within} ({pos}): {other}"),
        ),
    }
}

/// A value a script threw: an errno map (`fail(...)`, or `#{errno: 13, message: ".."}`), or
/// anything else, which refuses with `EPERM` and the value as the message.
fn thrown(who: &str, within: &str, pos: &str, v: &rhai::Dynamic) -> FsError {
    if let Some(m) = v.clone().try_cast::<rhai::Map>() {
        let errno = m
            .get("errno")
            .and_then(|e| e.as_int().ok())
            .and_then(|c| i32::try_from(c).ok())
            .and_then(Errno::from_code);
        if let Some(errno) = errno {
            let message = m.get("message").map(|m| m.to_string()).unwrap_or_default();
            return FsError::new(errno, format!("{who}: {message}"));
        }
    }
    FsError::new(
        Errno::EPERM,
        format!("{who}: {v} (thrown in {within}, {pos})"),
    )
}
