//! Command-line options with mdtest's letters and meanings, and their validation into a
//! [`Plan`]: the scenarios one run measures.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// A workload preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// Spark's commit pattern: every task makes, renames and removes directories under ONE
    /// parent, measured against every task in its own parent in the same run.
    Spark,
    /// Create and stat files at the end of deep paths, and look up (DirectStat) their
    /// directories: depth 1 against `--depth D`.
    Deep,
    /// The seven operations of the Mantle paper (create, delete, objstat, dirstat, mkdir,
    /// rmdir, dirrename), each in a shared and in per-task directories.
    Mantle,
}

/// `mdtest [options]`: the classic options, plus tasks, backend, presets and JSON output.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mdtest",
    version,
    about = "mdtest-rs: an mdtest-compatible metadata benchmark",
    after_help = "Backends: posix (plain syscalls in -d), grpc://HOST:PORT (a Mantle server), \
                  embedded:DIR (an in-process Mantle store in DIR).\n\
                  Plots: mdtest report RUN.json... --out DIR"
)]
pub struct Args {
    /// Items (files and/or directories) per task.
    #[arg(short = 'n', default_value_t = 0)]
    pub items: u64,
    /// The directory the test runs in (for Mantle backends: a path in the namespace).
    #[arg(short = 'd', default_value = "./mdtest-dir")]
    pub dir: String,
    /// Directories only.
    #[arg(short = 'D')]
    pub dirs_only: bool,
    /// Files only.
    #[arg(short = 'F')]
    pub files_only: bool,
    /// A unique working directory per task (default: all tasks share one).
    #[arg(short = 'u')]
    pub unique: bool,
    /// Iterations.
    #[arg(short = 'i', default_value_t = 1)]
    pub iterations: u32,
    /// Depth of the directory tree.
    #[arg(short = 'z', default_value_t = 0)]
    pub depth: u32,
    /// Branching factor of the tree.
    #[arg(short = 'b', default_value_t = 1)]
    pub branch: u32,
    /// Items per tree node.
    #[arg(short = 'I', default_value_t = 0)]
    pub items_per_dir: u64,
    /// Items at the leaf level only.
    #[arg(short = 'L')]
    pub leaf_only: bool,
    /// Only the create phases.
    #[arg(short = 'C')]
    pub create_only: bool,
    /// Only the stat phases.
    #[arg(short = 'T')]
    pub stat_only: bool,
    /// Only the remove phases.
    #[arg(short = 'r')]
    pub remove_only: bool,
    /// Bytes to write to each file.
    #[arg(short = 'w', default_value_t = 0)]
    pub write_bytes: u64,
    /// Bytes to read from each file.
    #[arg(short = 'e', default_value_t = 0)]
    pub read_bytes: u64,
    /// fsync each file after writing it (mdtest's -y): a create then costs a durable write.
    #[arg(short = 'y')]
    pub sync_write: bool,
    /// Stride between neighbour tasks for stat and read (0: each task its own items).
    #[arg(short = 'N', default_value_t = 0)]
    pub stride: u32,
    /// Concurrent tasks (mdtest's MPI ranks), started together at a barrier.
    #[arg(long, default_value_t = 1)]
    pub tasks: u32,
    /// posix, grpc://HOST:PORT or embedded:DIR.
    #[arg(long, default_value = "posix")]
    pub backend: String,
    /// The Mantle namespace (grpc and embedded backends).
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// A workload preset.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Path depth of `--preset deep`.
    #[arg(long = "depth", default_value_t = 10)]
    pub deep_depth: u32,
    /// The embedded backend's TopDirPathCache keeps resolved paths but their last K levels;
    /// 0 turns it off (for comparison). A server has its own `--path-cache-levels`.
    #[arg(long, value_name = "K", default_value_t = 3)]
    pub path_cache_levels: usize,
    /// Pushes this Rhai script into the namespace before the run (embedded and grpc
    /// backends), as script `mdtest`, with the hooks of --hook bound: e.g.
    /// `--script dsl/examples/native_ops.rhai --hook instead_mkdir --hook instead_create` runs
    /// the script versions of the operations (docs/dsl.md).
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// A hook of --script: EVENT or EVENT:PREFIX (e.g. before_create:/). Repeat for several.
    #[arg(long = "hook", requires = "script")]
    pub hooks: Vec<String>,
    /// Also time a straight loop of syscalls (posix backend), to show what the harness costs.
    #[arg(long)]
    pub syscall_baseline: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A label for this run in reports (default: the backend).
    #[arg(long)]
    pub label: Option<String>,
}

/// Which phases run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phases {
    /// Directories.
    pub dirs: bool,
    /// Files.
    pub files: bool,
    /// Create phases.
    pub create: bool,
    /// Stat (and read) phases.
    pub stat: bool,
    /// Rename phase (directories).
    pub rename: bool,
    /// Directory lookup (DirectStat) of each item's directory, after the stat phases.
    pub lookup: bool,
    /// Remove phases.
    pub remove: bool,
}

/// One measured configuration.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its label ("mdtest", "shared", "unique", "depth 10", ...).
    pub label: String,
    /// Per-task working directories.
    pub unique: bool,
    /// Tree depth.
    pub depth: u32,
    /// Branching factor.
    pub branch: u32,
    /// Items per item-holding node.
    pub items_per_dir: u64,
    /// Items only in leaves.
    pub leaf_only: bool,
    /// The phases.
    pub phases: Phases,
}

impl Scenario {
    /// Nodes in the tree.
    pub fn nodes(&self) -> u64 {
        (0..=self.depth)
            .map(|l| u64::from(self.branch).pow(l))
            .sum()
    }

    /// Nodes that hold items.
    pub fn item_nodes(&self) -> u64 {
        if self.leaf_only {
            u64::from(self.branch).pow(self.depth)
        } else {
            self.nodes()
        }
    }

    /// Items per task.
    pub fn items(&self) -> u64 {
        self.items_per_dir * self.item_nodes()
    }
}

/// Everything a run does.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Tasks.
    pub tasks: u32,
    /// Iterations per scenario.
    pub iterations: u32,
    /// Stride for stat and read.
    pub stride: u32,
    /// Bytes written per file.
    pub write_bytes: u64,
    /// Bytes read per file.
    pub read_bytes: u64,
    /// fsync each file after writing it.
    pub sync_write: bool,
    /// The test directory.
    pub dir: String,
}

/// Validates the options into a plan; the error explains what to change.
pub fn plan(a: &Args) -> Result<Plan, String> {
    if a.tasks == 0 {
        return Err("--tasks must be at least 1".into());
    }
    if a.tasks > 100_000 {
        return Err(format!("--tasks {} is more than 100000", a.tasks));
    }
    if a.iterations == 0 {
        return Err("-i (iterations) must be at least 1".into());
    }
    if a.dirs_only && a.files_only {
        return Err("-D (directories only) and -F (files only) exclude each other".into());
    }
    if a.stride != 0 && a.stride >= a.tasks {
        return Err(format!(
            "-N {} must be smaller than --tasks {} (it picks the neighbour task whose items to stat)",
            a.stride, a.tasks
        ));
    }
    if a.branch == 0 && a.depth > 0 {
        return Err("-z > 0 needs a branching factor -b of at least 1".into());
    }
    if a.leaf_only && a.depth == 0 {
        return Err("-L (items at the leaf level only) needs a tree: give -z > 0".into());
    }
    let nodes: u64 = (0..=a.depth)
        .map(|l| u64::from(a.branch.max(1)).saturating_pow(l))
        .fold(0u64, u64::saturating_add);
    if nodes > 10_000_000 {
        return Err(format!(
            "-z {} -b {} makes a tree of {nodes} directories; that is too many",
            a.depth, a.branch
        ));
    }
    let item_nodes = if a.leaf_only {
        u64::from(a.branch).saturating_pow(a.depth)
    } else {
        nodes
    };
    let only = a.create_only || a.stat_only || a.remove_only;
    let phases = Phases {
        dirs: !a.files_only,
        files: !a.dirs_only,
        create: !only || a.create_only,
        stat: !only || a.stat_only,
        rename: !only,
        lookup: false,
        remove: !only || a.remove_only,
    };
    let base = |label: &str,
                unique: bool,
                phases: Phases,
                depth: u32,
                branch: u32,
                ipd: u64,
                leaf: bool| Scenario {
        label: label.to_string(),
        unique,
        depth,
        branch,
        items_per_dir: ipd,
        leaf_only: leaf,
        phases,
    };
    let preset_items = if a.items == 0 { 1000 } else { a.items };
    let scenarios = match a.preset {
        None => {
            let ipd = match (a.items, a.items_per_dir) {
                (0, 0) => {
                    return Err(
                        "give the number of items per task with -n, or per tree node with -I"
                            .into(),
                    )
                }
                (n, 0) => {
                    if n < item_nodes {
                        return Err(format!(
                            "-n {n} spreads fewer than one item over each of the {item_nodes} tree nodes; raise -n or lower -z/-b"
                        ));
                    }
                    n / item_nodes
                }
                (0, i) => i,
                (n, i) => {
                    if n != i * item_nodes {
                        return Err(format!(
                            "-n {n} and -I {i} disagree: -I {i} over {item_nodes} tree nodes is {} items per task; give one of them",
                            i * item_nodes
                        ));
                    }
                    i
                }
            };
            vec![base(
                "mdtest",
                a.unique,
                phases,
                a.depth,
                a.branch,
                ipd,
                a.leaf_only,
            )]
        }
        Some(Preset::Spark) => {
            let p = Phases {
                dirs: true,
                files: false,
                ..phases
            };
            vec![
                base("shared", false, p, 0, 1, preset_items, false),
                base("unique", true, p, 0, 1, preset_items, false),
            ]
        }
        Some(Preset::Deep) => {
            if a.deep_depth == 0 || a.deep_depth > 200 {
                return Err(format!("--depth {} must be 1..=200", a.deep_depth));
            }
            let p = Phases {
                dirs: false,
                files: true,
                rename: false,
                lookup: phases.stat,
                ..phases
            };
            let d = a.deep_depth;
            vec![
                base("depth 1", true, p, 0, 1, preset_items, false),
                base(
                    &format!("depth {d}"),
                    true,
                    p,
                    d - 1,
                    1,
                    preset_items,
                    d > 1,
                ),
            ]
        }
        Some(Preset::Mantle) => vec![
            base("shared", false, phases, 0, 1, preset_items, false),
            base("unique", true, phases, 0, 1, preset_items, false),
        ],
    };
    Ok(Plan {
        scenarios,
        tasks: a.tasks,
        iterations: a.iterations,
        stride: a.stride,
        write_bytes: a.write_bytes,
        read_bytes: a.read_bytes,
        sync_write: a.sync_write,
        dir: a.dir.trim_end_matches('/').to_string(),
    })
}
