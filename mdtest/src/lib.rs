//! mdtest-rs: an mdtest-compatible metadata benchmark.
//!
//! What it is: the workload and report of the classic `mdtest` from the IOR suite (the same
//! option letters, directory tree, item names, phases and `SUMMARY rate` table), with MPI
//! ranks replaced by `--tasks N` concurrent tasks started together at a barrier, latency
//! percentiles per phase, JSON output, presets for the workloads Mantle was built for
//! (`spark`, `deep`, `mantle`) and `mdtest report`, which plots several runs side by side.
//! Backends: `posix` (any directory: tmpfs, ext4, a FUSE mount), `grpc://HOST:PORT` (a Mantle
//! server) and `embedded:DIR` (a Mantle store in this process).
//!
//! What it is not: a data benchmark. The grpc and embedded backends have no data path (file
//! data reaches a namespace through `mantle mount`), so `-w`, `-e`, `-y` and the read phase are
//! for `posix`, which includes a `mantle mount`.
//!
//! Key types: [`options::Args`], [`options::Plan`], [`backend::Backend`], [`report::RunResult`].

pub mod backend;
pub mod options;
pub mod plot;
pub mod report;
pub mod run;

use std::sync::Arc;

/// Runs `args` and returns the results (printing progress and the summary tables to stdout).
pub async fn execute(args: &options::Args, command: String) -> Result<report::RunResult, String> {
    let plan = Arc::new(options::plan(args)?);
    let backend = backend::open(&args.backend, &args.namespace, args.path_cache_levels).await?;
    if let Some(file) = &args.script {
        let source = std::fs::read_to_string(file)
            .map_err(|e| format!("--script {}: {e}", file.display()))?;
        let hooks = args
            .hooks
            .iter()
            .map(|h| match h.split_once(':') {
                Some((e, p)) => (e.to_string(), p.as_bytes().to_vec()),
                None => (h.clone(), b"/".to_vec()),
            })
            .collect();
        backend.push_script(&source, hooks).await?;
    }
    if !backend.has_data() && (plan.write_bytes > 0 || plan.read_bytes > 0 || plan.sync_write) {
        return Err(format!(
            "-w/-e/-y move file data, and backend {} has none (metadata only); use posix, on a \
             `mantle mount` for a Mantle namespace",
            backend.name()
        ));
    }
    println!("-- started --");
    println!(
        "mdtest-rs was launched with {} total task(s) on 1 node",
        plan.tasks
    );
    println!("Command line used: {command}");
    println!("Backend: {}   Path: {}", backend.name(), plan.dir);
    let mut scenarios = Vec::new();
    for sc in &plan.scenarios {
        println!(
            "\n{}: {} tasks, {} files/directories",
            sc.label,
            plan.tasks,
            u64::from(plan.tasks) * sc.items()
        );
        let mut progress = |line: &str| eprintln!("  {line}");
        let r = run::scenario(&backend, &plan, sc, &mut progress).await?;
        print!("{}", report::summary(&r, plan.iterations));
        scenarios.push(r);
    }
    if args.syscall_baseline {
        if args.backend != "posix" {
            return Err(
                "--syscall-baseline compares against plain syscalls: use --backend posix".into(),
            );
        }
        let n = plan.scenarios.first().map_or(1000, |s| s.items()).max(1);
        let r = run::syscall_loop(&plan.dir, n)?;
        print!("{}", report::summary(&r, 1));
        scenarios.push(r);
    }
    println!("\n-- finished --");
    let result = report::RunResult {
        version: 1,
        command,
        backend: backend.name(),
        label: args.label.clone().unwrap_or_else(|| backend.name()),
        tasks: plan.tasks,
        iterations: plan.iterations,
        scenarios,
    };
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    Ok(result)
}
