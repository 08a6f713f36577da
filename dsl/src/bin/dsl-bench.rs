//! `dsl-bench`: what a script costs, measured in process on a scratch store, side by side with
//! the built-in code in one run. One task, one call at a time; CPU is this process's user and
//! system time per call (`/proc/self/stat`).
//!
//! - compiling `native_ops.rhai` (what the registry does once per version);
//! - a call of a trivial function (one transaction that reads the script's head) against a
//!   `stat` of the root, the cheapest built-in operation;
//! - mkdir built in; through a script function that calls the built-in mkdir; as the script
//!   version (`native_ops.rhai`, bound `instead_mkdir`); built in with one `before_mkdir` hook.
//!
//!   cargo run --release -p dsl --bin dsl-bench -- [CALLS] [EXAMPLES_DIR]

use std::time::Instant;

use coprocessor::api::{Loc, Obj};
use coprocessor::ops::{mkdir::Mkdir, ns_create::NsCreate, stat::Stat};
use coprocessor::{FsError, Service};
use dsl::ops::call::ScriptCall;
use dsl::ops::push::{HookSpec, ScriptPush};
use dsl::ops::set::ScriptSet;
use indexnode::Cred;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NS: &[u8] = b"bench";

struct Row {
    what: String,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
}

/// Runs `f(i)` for `i` in `0..n`, one at a time.
async fn measure<F, Fut>(what: &str, n: u64, mut f: F) -> Result<Row, FsError>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), FsError>>,
{
    let mut h = hdrhistogram::Histogram::<u64>::new(3).map_err(|e| io(e.to_string()))?;
    let cpu0 = tafdb::cpu::process_cpu_secs().unwrap_or(0.0);
    for i in 0..n {
        let t = Instant::now();
        f(i).await?;
        h.record(t.elapsed().as_nanos() as u64)
            .map_err(|e| io(e.to_string()))?;
    }
    let cpu = tafdb::cpu::process_cpu_secs().unwrap_or(0.0) - cpu0;
    Ok(Row {
        what: what.to_string(),
        p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
        cpu_us: cpu * 1e6 / n as f64,
    })
}

fn io(m: String) -> FsError {
    FsError::new(coprocessor::Errno::EIO, m)
}

fn push(name: &str, source: String, events: &[&str]) -> ScriptPush {
    ScriptPush {
        cred: Cred::root(),
        name: name.into(),
        source,
        hooks: (!events.is_empty()).then(|| HookSpec {
            ns: NS.to_vec(),
            events: events
                .iter()
                .map(|e| (e.to_string(), b"/".to_vec()))
                .collect(),
        }),
    }
}

fn mkdir(path: String) -> Mkdir {
    Mkdir {
        ns: NS.to_vec(),
        cred: Cred::root(),
        at: Loc::Path(path.into_bytes()),
        mode: 0o755,
    }
}

async fn run(calls: u64, examples: &str) -> Result<Vec<Row>, FsError> {
    let dir = std::env::temp_dir().join(format!("dsl-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| io(e.to_string()))?;
    let mut rows = Vec::new();
    // The baseline: a store whose service has no scripts installed (no hook slot to ask).
    {
        let plain_dir = dir.join("plain");
        let db = tafdb::Db::open(tafdb::DbConfig::new(&plain_dir))
            .await
            .map_err(|e| FsError::from_store(&e))?;
        let svc = Service::open(db.clone());
        svc.call(&NsCreate {
            name: NS.to_vec(),
            cred: Cred::root(),
            mode: 0o755,
        })
        .await?;
        svc.call(&mkdir("/plain".into())).await?;
        rows.push(
            measure("mkdir (built in, scripts not installed)", calls, |i| {
                let op = mkdir(format!("/plain/d{i}"));
                let svc = &svc;
                async move { svc.call(&op).await.map(|_| ()) }
            })
            .await?,
        );
        db.shutdown().await;
    }
    let dir = dir.join("scripts");
    let db = tafdb::Db::open(tafdb::DbConfig::new(&dir))
        .await
        .map_err(|e| FsError::from_store(&e))?;
    let svc = Service::open(db.clone());
    let scripts = dsl::install(&svc, dsl::Limits::default())?;
    svc.call(&NsCreate {
        name: NS.to_vec(),
        cred: Cred::root(),
        mode: 0o755,
    })
    .await?;
    let read = |f: &str| {
        std::fs::read_to_string(format!("{examples}/{f}")).map_err(|e| io(format!("{f}: {e}")))
    };
    let native_ops = read("native_ops.rhai")?;
    let policy = read("name_policy.rhai")?;

    let src = native_ops.clone();
    rows.push(
        measure("compile native_ops.rhai (once per version)", 200, |_| {
            let r = scripts.functions(&src).map(|_| ());
            async move { r }
        })
        .await?,
    );
    svc.call(&push(
        "calls",
        "fn nothing() { () } fn mk(p) { mkdir(p) }".into(),
        &[],
    ))
    .await?;
    let stat = Stat {
        ns: NS.to_vec(),
        cred: Cred::root(),
        obj: Obj::path(b"/".to_vec()),
    };
    rows.push(
        measure("stat / (built in)", calls, |_| async {
            svc.call(&stat).await.map(|_| ())
        })
        .await?,
    );
    let call = |function: &str, args| ScriptCall {
        ns: NS.to_vec(),
        cred: Cred::root(),
        script: "calls".into(),
        function: function.into(),
        args,
    };
    let nothing = call("nothing", vec![]);
    rows.push(
        measure(
            "script call of fn nothing() (compiled once)",
            calls,
            |_| async { svc.call(&nothing).await.map(|_| ()) },
        )
        .await?,
    );
    for d in ["/native", "/wrapped", "/scripted", "/hooked"] {
        svc.call(&mkdir(d.into())).await?;
    }
    rows.push(
        measure(
            "mkdir (built in, scripts installed, no hooks bound)",
            calls,
            |i| {
                let op = mkdir(format!("/native/d{i}"));
                let svc = &svc;
                async move { svc.call(&op).await.map(|_| ()) }
            },
        )
        .await?,
    );
    rows.push(
        measure("mkdir through a script call of mkdir()", calls, |i| {
            let op = call("mk", vec![dsl::Value::Str(format!("/wrapped/d{i}"))]);
            let svc = &svc;
            async move { svc.call(&op).await.map(|_| ()) }
        })
        .await?,
    );
    svc.call(&push("native-ops", native_ops, &["instead_mkdir"]))
        .await?;
    rows.push(
        measure("mkdir, script version (instead_mkdir)", calls, |i| {
            let op = mkdir(format!("/scripted/d{i}"));
            let svc = &svc;
            async move { svc.call(&op).await.map(|_| ()) }
        })
        .await?,
    );
    svc.call(&ScriptSet {
        cred: Cred::root(),
        name: "native-ops".into(),
        version: None,
    })
    .await?;
    svc.call(&push("name-policy", policy, &["before_mkdir"]))
        .await?;
    rows.push(
        measure("mkdir (built in) + one before_mkdir hook", calls, |i| {
            let op = mkdir(format!("/hooked/d{i}"));
            let svc = &svc;
            async move { svc.call(&op).await.map(|_| ()) }
        })
        .await?,
    );
    db.shutdown().await;
    let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
    Ok(rows)
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let calls = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000u64);
    let examples = args
        .next()
        .unwrap_or_else(|| format!("{}/examples", env!("CARGO_MANIFEST_DIR")));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dsl-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(calls, &examples)) {
        Ok(rows) => {
            println!("| what | p50 us | p99 us | CPU us/call |");
            println!("|---|---:|---:|---:|");
            for r in rows {
                println!(
                    "| {} | {:.1} | {:.1} | {:.1} |",
                    r.what, r.p50_us, r.p99_us, r.cpu_us
                );
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dsl-bench: {:?} {}", e.errno, e.message);
            std::process::ExitCode::FAILURE
        }
    }
}
