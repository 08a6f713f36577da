//! Running a plan: trees, items, phases, barriers, timing.
//!
//! Every phase starts with all tasks at a barrier, as mdtest's MPI ranks do; its rate is the
//! phase's operations divided by the time from the earliest task start to the latest task end.
//! Every operation's latency goes into an HDR histogram. Tasks of a blocking backend (POSIX)
//! each get an OS thread; the others are async tasks.

use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::sync::Barrier;

use crate::backend::Backend;
use crate::options::{Plan, Scenario};
use crate::report::{PhaseResult, ScenarioResult};

/// What one task does in one phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    TreeCreate,
    TreeRemove,
    DirCreate,
    DirStat,
    DirLookup,
    DirRename,
    DirRemove,
    FileCreate,
    FileStat,
    FileRead,
    FileRemove,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::DirCreate => "Directory creation",
            Kind::DirStat => "Directory stat",
            Kind::DirLookup => "Directory lookup",
            Kind::DirRename => "Directory rename",
            Kind::DirRemove => "Directory removal",
            Kind::FileCreate => "File creation",
            Kind::FileStat => "File stat",
            Kind::FileRead => "File read",
            Kind::FileRemove => "File removal",
            Kind::TreeCreate => "Tree creation",
            Kind::TreeRemove => "Tree removal",
        }
    }
}

/// The shape of one iteration's directories.
struct Layout {
    /// `base/test-dir.0-<iter>`.
    base: String,
    sc: Scenario,
}

impl Layout {
    /// The tree of task `t` (in shared mode, every task uses tree 0), parents first.
    fn tree(&self, t: u32) -> Vec<String> {
        let owner = if self.sc.unique { t } else { 0 };
        let root = if self.sc.unique {
            format!("{}/mdtest_tree.{owner}.0", self.base)
        } else {
            format!("{}/mdtest_tree.0", self.base)
        };
        let n = self.sc.nodes() as usize;
        let b = self.sc.branch.max(1) as usize;
        let mut paths: Vec<String> = Vec::with_capacity(n);
        paths.push(root);
        for k in 1..n {
            let parent = (k - 1) / b;
            let p = format!("{}/mdtest_tree.{owner}.{k}", paths[parent]);
            paths.push(p);
        }
        paths
    }

    /// The tree nodes of task `t` that hold items.
    fn item_nodes(&self, t: u32) -> Vec<String> {
        let tree = self.tree(t);
        if self.sc.leaf_only {
            let leaves = self.sc.item_nodes() as usize;
            tree[tree.len() - leaves..].to_vec()
        } else {
            tree
        }
    }

    /// Whether task `t` builds (and removes) a tree in this layout.
    fn builds_tree(&self, t: u32) -> bool {
        self.sc.unique || t == 0
    }
}

fn item(node: &str, kind: &str, t: u32, j: u64, renamed: bool) -> String {
    if renamed {
        format!("{node}/{kind}.mdtest.{t}.{j}.renamed")
    } else {
        format!("{node}/{kind}.mdtest.{t}.{j}")
    }
}

struct TaskOutcome {
    start: Instant,
    end: Instant,
    ops: u64,
    hist: Histogram<u64>,
}

async fn task_phase(
    backend: Arc<dyn Backend>,
    layout: Arc<Layout>,
    plan: Arc<Plan>,
    kind: Kind,
    t: u32,
    barrier: Arc<Barrier>,
    renamed: bool,
) -> Result<TaskOutcome, String> {
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    // Stat and read act on the items of the neighbour `stride` tasks away.
    let target = match kind {
        Kind::DirStat | Kind::DirLookup | Kind::FileStat | Kind::FileRead => {
            (t + plan.stride) % plan.tasks
        }
        _ => t,
    };
    let ipd = layout.sc.items_per_dir;
    let nodes = match kind {
        Kind::TreeCreate | Kind::TreeRemove => Vec::new(),
        _ => layout.item_nodes(target),
    };
    let tree = match kind {
        Kind::TreeCreate if layout.builds_tree(t) => layout.tree(t),
        Kind::TreeRemove if layout.builds_tree(t) => {
            let mut v = layout.tree(t);
            v.reverse();
            v
        }
        _ => Vec::new(),
    };
    barrier.wait().await;
    let start = Instant::now();
    let mut ops = 0u64;
    let timed = |hist: &mut Histogram<u64>, began: Instant| {
        let ns = u64::try_from(began.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = hist.record(ns);
    };
    for p in &tree {
        let began = Instant::now();
        match kind {
            Kind::TreeCreate => backend.mkdir(p).await?,
            _ => backend.rmdir(p).await?,
        }
        timed(&mut hist, began);
        ops += 1;
    }
    for node in &nodes {
        for j in 0..ipd {
            let began = Instant::now();
            match kind {
                Kind::DirCreate => backend.mkdir(&item(node, "dir", t, j, false)).await?,
                Kind::DirStat => backend.stat(&item(node, "dir", target, j, renamed)).await?,
                // The item-holding directory itself, once per item: the path without the
                // harness formatting a new one per call.
                Kind::DirLookup => backend.lookup(node).await?,
                Kind::DirRename => {
                    let from = item(node, "dir", t, j, false);
                    let to = item(node, "dir", t, j, true);
                    backend.rename(&from, &to).await?
                }
                Kind::DirRemove => backend.rmdir(&item(node, "dir", t, j, renamed)).await?,
                Kind::FileCreate => {
                    backend
                        .create(
                            &item(node, "file", t, j, false),
                            plan.write_bytes,
                            plan.sync_write,
                        )
                        .await?
                }
                Kind::FileStat => backend.stat(&item(node, "file", target, j, false)).await?,
                Kind::FileRead => {
                    backend
                        .read(&item(node, "file", target, j, false), plan.read_bytes)
                        .await?
                }
                Kind::FileRemove => backend.unlink(&item(node, "file", t, j, false)).await?,
                Kind::TreeCreate | Kind::TreeRemove => {}
            }
            timed(&mut hist, began);
            ops += 1;
        }
    }
    Ok(TaskOutcome {
        start,
        end: Instant::now(),
        ops,
        hist,
    })
}

/// Runs one phase with every task; returns (ops, seconds, merged histogram).
async fn phase(
    backend: &Arc<dyn Backend>,
    layout: &Arc<Layout>,
    plan: &Arc<Plan>,
    kind: Kind,
    renamed: bool,
) -> Result<(u64, f64, Histogram<u64>), String> {
    let barrier = Arc::new(Barrier::new(plan.tasks as usize));
    let mut handles = Vec::with_capacity(plan.tasks as usize);
    for t in 0..plan.tasks {
        let fut = task_phase(
            backend.clone(),
            layout.clone(),
            plan.clone(),
            kind,
            t,
            barrier.clone(),
            renamed,
        );
        if backend.blocking() {
            let rt = tokio::runtime::Handle::current();
            handles.push(tokio::task::spawn_blocking(move || rt.block_on(fut)));
        } else {
            handles.push(tokio::spawn(fut));
        }
    }
    let mut outcomes = Vec::with_capacity(handles.len());
    let mut failure = None;
    for h in handles {
        match h.await {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(format!("a task panicked: {e}"))),
        }
    }
    if let Some(e) = failure {
        return Err(format!("{}: {e}", kind.name()));
    }
    let start = outcomes.iter().map(|o| o.start).min();
    let end = outcomes.iter().map(|o| o.end).max();
    let secs = match (start, end) {
        (Some(s), Some(e)) => e.duration_since(s).as_secs_f64(),
        _ => 0.0,
    };
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut ops = 0;
    for o in outcomes {
        ops += o.ops;
        hist.add(&o.hist).map_err(|e| e.to_string())?;
    }
    Ok((ops, secs, hist))
}

/// Runs every iteration of `sc`; `progress` hears each finished phase.
pub async fn scenario(
    backend: &Arc<dyn Backend>,
    plan: &Arc<Plan>,
    sc: &Scenario,
    progress: &mut dyn FnMut(&str),
) -> Result<ScenarioResult, String> {
    let mut order = Vec::new();
    let p = sc.phases;
    if p.create {
        order.push(Kind::TreeCreate);
    }
    if p.dirs {
        if p.create {
            order.push(Kind::DirCreate);
        }
        if p.stat {
            order.push(Kind::DirStat);
        }
        if p.rename {
            order.push(Kind::DirRename);
        }
        if p.remove {
            order.push(Kind::DirRemove);
        }
    }
    if p.files {
        if p.create {
            order.push(Kind::FileCreate);
        }
        if p.stat {
            order.push(Kind::FileStat);
            if backend.has_data() {
                order.push(Kind::FileRead);
            }
            if p.lookup {
                order.push(Kind::DirLookup);
            }
        }
        if p.remove {
            order.push(Kind::FileRemove);
        }
    }
    if p.remove {
        order.push(Kind::TreeRemove);
    }
    let mut results: Vec<PhaseResult> = order
        .iter()
        .map(|k| PhaseResult::new(k.name()))
        .collect::<Result<_, _>>()?;
    for iter in 0..plan.iterations {
        let base = format!("{}/test-dir.0-{iter}", plan.dir);
        backend.mkdir_all(&base).await?;
        let layout = Arc::new(Layout {
            base: base.clone(),
            sc: sc.clone(),
        });
        let mut renamed = false;
        for (i, kind) in order.iter().enumerate() {
            let (ops, secs, hist) = phase(backend, &layout, plan, *kind, renamed).await?;
            if *kind == Kind::DirRename {
                renamed = true;
            }
            results[i].push(ops, secs, &hist)?;
            progress(&format!(
                "{} iteration {}: {:<20} {:>10} ops in {:.3} s",
                sc.label,
                iter + 1,
                kind.name(),
                ops,
                secs
            ));
        }
        if p.remove {
            // The tree is gone; the iteration directory goes too.
            let _ = backend.rmdir(&base).await;
        }
    }
    Ok(ScenarioResult {
        label: sc.label.clone(),
        items_per_task: sc.items(),
        tree_nodes: sc.nodes(),
        unique: sc.unique,
        phases: results,
    })
}

type Syscall = fn(&str) -> std::io::Result<()>;

/// A straight single-threaded loop of syscalls, no harness: mkdir, stat, rmdir, create, stat,
/// unlink of `n` items in `dir`. The yardstick for what the harness itself costs.
pub fn syscall_loop(dir: &str, n: u64) -> Result<ScenarioResult, String> {
    let base = format!("{dir}/syscall-loop");
    std::fs::create_dir_all(&base).map_err(|e| format!("mkdir -p {base}: {e}"))?;
    let mut phases = Vec::new();
    let names: Vec<String> = (0..n).map(|j| format!("{base}/item.{j}")).collect();
    let steps: [(&str, Syscall); 6] = [
        ("Directory creation", |p| std::fs::create_dir(p)),
        ("Directory stat", |p| {
            std::fs::symlink_metadata(p).map(|_| ())
        }),
        ("Directory removal", |p| std::fs::remove_dir(p)),
        ("File creation", |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .map(|_| ())
        }),
        ("File stat", |p| std::fs::symlink_metadata(p).map(|_| ())),
        ("File removal", |p| std::fs::remove_file(p)),
    ];
    for (name, f) in steps {
        let mut r = PhaseResult::new(name)?;
        let hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
        let start = Instant::now();
        for p in &names {
            f(p).map_err(|e| format!("{name} {p}: {e}"))?;
        }
        let secs = start.elapsed().as_secs_f64();
        r.push(n, secs, &hist)?;
        phases.push(r);
    }
    let _ = std::fs::remove_dir(&base);
    Ok(ScenarioResult {
        label: "syscall loop".into(),
        items_per_task: n,
        tree_nodes: 1,
        unique: true,
        phases,
    })
}
