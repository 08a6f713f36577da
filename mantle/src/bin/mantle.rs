//! `mantle`: the server and the command-line client.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use coprocessor::FsError;
use indexnode::Cred;
use mantle::client::{Client, SetAttrArgs};
use metastore::{Attr, FileType};

#[derive(Parser)]
#[command(
    name = "mantle",
    version,
    about = "Mantle-rs: a metadata service for hierarchical namespaces"
)]
struct Cli {
    /// The server's address; for a cluster, several comma-separated (the client moves
    /// between them when one fails).
    #[arg(long, global = true, env = "MANTLE_ADDR", default_value = mantle::DEFAULT_ADDR)]
    addr: String,
    /// The namespace.
    #[arg(long, global = true, env = "MANTLE_NS", default_value = mantle::DEFAULT_NAMESPACE)]
    ns: String,
    /// A file holding the access token to present (its first line), for a server started
    /// with --tokens. MANTLE_TOKEN gives the token itself instead.
    #[arg(long, global = true, value_name = "FILE", env = "MANTLE_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Act as this uid (default: the calling user's).
    #[arg(long, global = true)]
    uid: Option<u32>,
    /// Act as this gid (default: the calling user's).
    #[arg(long, global = true)]
    gid: Option<u32>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// `mantle serve`'s flags.
#[derive(clap::Args)]
struct ServeArgs {
    /// The data directory (created if missing).
    #[arg(long)]
    data: std::path::PathBuf,
    /// Where to listen (port 0 picks a free port; the bound address is printed on stdout).
    #[arg(long, default_value = mantle::DEFAULT_ADDR)]
    listen: std::net::SocketAddr,
    /// How long committed versions stay in memory before they are flushed to the engines
    /// (ms). Tiny values make every operation race the flusher, for tests.
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    mvcc_window_ms: u64,
    /// How often the flusher runs (ms).
    #[arg(long, value_name = "MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    flush_interval_ms: u64,
    /// How long the reply of a mutation is kept, so that a client's retry of the same request
    /// gets it instead of running the mutation again (s). Clients must give up before.
    #[arg(long, value_name = "S", default_value_t = 600, value_parser = clap::value_parser!(u64).range(10..))]
    request_retention_s: u64,
    /// Connections open at once; more are accepted and closed at once.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Concurrent requests on one connection (HTTP/2 streams).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: u32,
    /// How long a new connection has to start speaking HTTP/2 (ms).
    #[arg(long, value_name = "MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout_ms: u64,
    /// How long one request may take, reading its body included (ms).
    #[arg(long, value_name = "MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,
    /// Request bytes in flight over all connections (MiB); a request that does not fit is
    /// refused with EAGAIN.
    #[arg(long, value_name = "MIB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..))]
    max_inflight_request_mib: u64,
    /// How often idle connections are pinged; one that does not answer as long is closed (ms).
    #[arg(long, value_name = "MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    keepalive_ms: u64,
    /// Space kept free on the data disk (MiB): below it, writes get ENOSPC while reads and
    /// deletes go on (0: 5% of the disk, between 1 and 256 MiB).
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    disk_reserve_mib: u64,
    /// Accept administrative calls (fsck) from other hosts too (root credentials are always
    /// needed). Without effect with --tokens, where an admin token is what counts.
    #[arg(long)]
    allow_remote_admin: bool,
    /// Require access tokens: FILE lists them, one per line, `NAME ROLE SECRET [uid=N]
    /// [gid=N] [groups=N,..] [squash]`, roles admin, node, trusted, app (see
    /// docs/operations.md). Every node of a cluster needs the same file.
    #[arg(long, value_name = "FILE")]
    tokens: Option<std::path::PathBuf>,
    /// How long a shutdown (SIGTERM, SIGINT) waits for requests in flight before it closes
    /// every connection (ms).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    shutdown_grace_ms: u64,
    /// Start a new cluster with this node as its first member (node 1).
    #[arg(long, conflicts_with = "join")]
    init: bool,
    /// Join the cluster that the node at ADDR belongs to (any live member).
    #[arg(long, value_name = "ADDR")]
    join: Option<String>,
    /// Raft heartbeat interval of a cluster node (ms).
    #[arg(long, value_name = "MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(10..))]
    raft_heartbeat_ms: u64,
    /// Raft election timeout of a cluster node: a random value between this and twice this
    /// (ms; at least three heartbeats). 250 ms halved the median failover of 500 ms on a
    /// 3-node loopback cluster (0.95 s to a new leader instead of 1.9 s, over 20 kills).
    #[arg(long, value_name = "MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(30..))]
    raft_election_ms: u64,
    /// How a new store is cut into tablets: `single` (one tablet, every operation one-phase)
    /// or `tables` (system, Index and Meta tables in tablets of their own, which a cluster
    /// can lead from different nodes). An existing store keeps the layout it was made with.
    #[arg(long, value_name = "LAYOUT", default_value = "single", value_parser = ["single", "tables"])]
    layout: String,
    /// The address the other nodes (and clients told by them) reach this node at, when it is
    /// not the --listen address: a proxy, a NAT, a host name. Recorded in the membership.
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// The local IP address this node's connections to the other nodes start from (a host
    /// with several addresses; the partition tests give each node a loopback address).
    #[arg(long, value_name = "IP")]
    peer_source_ip: Option<std::net::IpAddr>,
    /// Voters per tablet group in a cluster: nodes that join beyond them stay learners of
    /// every group (spares), ready to replace a voter that dies. Give every node the same.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    replicas: u64,
    /// Seconds a voter may not answer before the first tablet's leader replaces it with a
    /// live spare (its replicas are rebuilt there from a snapshot); 0: never.
    #[arg(long, value_name = "S", default_value_t = 30)]
    replace_dead_after_s: u64,
    /// The TopDirPathCache keeps the directories of resolved paths but their last K levels
    /// (those change most); 0 turns the cache off.
    #[arg(long, value_name = "K", default_value_t = 3)]
    path_cache_levels: usize,
    /// The most path prefixes the TopDirPathCache holds (about 200 bytes each).
    #[arg(long, value_name = "N", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    path_cache_entries: u64,
}

impl ServeArgs {
    fn config(&self) -> Result<mantle::server::ServerConfig, String> {
        let mut cfg = mantle::server::ServerConfig::new(self.data.clone(), self.listen);
        if let Some(f) = &self.tokens {
            cfg.tokens = Some(std::sync::Arc::new(mantle::auth::Tokens::load(f)?));
        }
        cfg.mvcc_window_ms = Some(self.mvcc_window_ms);
        cfg.flush_interval_ms = Some(self.flush_interval_ms);
        cfg.request_retention = std::time::Duration::from_secs(self.request_retention_s);
        cfg.disk_reserve_bytes = self.disk_reserve_mib << 20;
        cfg.allow_remote_admin = self.allow_remote_admin;
        cfg.cluster = match (&self.init, &self.join) {
            (true, _) => Some(mantle::cluster::Mode::Init),
            (false, Some(a)) => Some(mantle::cluster::Mode::Join(a.clone())),
            (false, None) => None,
        };
        cfg.layout = match self.layout.as_str() {
            "tables" => mantle::server::Layout::Tables,
            _ => mantle::server::Layout::Single,
        };
        cfg.advertise = self.advertise.clone();
        cfg.replicas = usize::try_from(self.replicas).unwrap_or(usize::MAX);
        cfg.replace_dead_after = (self.replace_dead_after_s > 0)
            .then(|| std::time::Duration::from_secs(self.replace_dead_after_s));
        cfg.peer_source_ip = self.peer_source_ip;
        cfg.path_cache = (self.path_cache_levels > 0).then(|| indexnode::CacheConfig {
            keep_last: self.path_cache_levels,
            capacity: usize::try_from(self.path_cache_entries).unwrap_or(usize::MAX),
        });
        cfg.raft_heartbeat_ms = self.raft_heartbeat_ms;
        cfg.raft_election_ms = self.raft_election_ms.max(3 * self.raft_heartbeat_ms);
        let ms = std::time::Duration::from_millis;
        cfg.limits = mantle::server::Limits {
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            max_streams_per_connection: self.max_streams_per_connection,
            handshake_timeout: ms(self.handshake_timeout_ms),
            request_timeout: ms(self.request_timeout_ms),
            max_inflight_request_bytes: usize::try_from(self.max_inflight_request_mib << 20)
                .unwrap_or(usize::MAX),
            keepalive: ms(self.keepalive_ms),
            shutdown_grace: ms(self.shutdown_grace_ms),
        };
        Ok(cfg)
    }
}

/// `mantle mount`'s flags.
#[derive(clap::Args)]
struct MountArgs {
    /// The data directory of a store run inside the mount (the embedded mode; created if
    /// missing). File data goes to DATA/files.mstore.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Where to mount.
    mountpoint: std::path::PathBuf,
    /// Stay in the foreground (default: detach once mounted, with a pid file and a log).
    #[arg(long, short = 'f')]
    foreground: bool,
    /// Mount options: allow_other, ro (comma-separated or repeated).
    #[arg(short = 'o', value_delimiter = ',')]
    options: Vec<String>,
    /// Refuse every change.
    #[arg(long)]
    read_only: bool,
    /// How long the kernel caches attributes, in ms.
    #[arg(long, default_value_t = 1000)]
    attr_ttl_ms: u64,
    /// How long the kernel caches a name's lookup, in ms.
    #[arg(long, default_value_t = 1000)]
    entry_ttl_ms: u64,
    /// How long the kernel caches that a name does not exist, in ms (0: not at all).
    #[arg(long, default_value_t = 0)]
    negative_ttl_ms: u64,
    /// Threads reading and answering the kernel's requests (a request that waits for the
    /// disk holds its thread).
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// The file store's capacity in MiB, fixed when it is created.
    #[arg(long, default_value_t = 4096)]
    data_capacity_mib: u64,
    /// The store's MVCC window in ms (tests make it tiny).
    #[arg(long)]
    mvcc_window_ms: Option<u64>,
    /// When changes reach the disk: `posix` (as on a local file system: an acknowledged change
    /// survives `kill -9` of the mount at once, and a power cut after `fsync`/`fdatasync`, an
    /// `fsync` of a directory, the unmount or the periodic sync) or `always` (every change on
    /// disk before it is acknowledged).
    #[arg(long, default_value = "posix", value_parser = ["posix", "always"])]
    sync: String,
    /// How often a `--sync posix` mount syncs what nobody synced, in ms.
    #[arg(long, default_value_t = 1000)]
    sync_interval_ms: u64,
    /// The pid file of a detached mount (default: DATA/mount.pid).
    #[arg(long)]
    pid_file: Option<std::path::PathBuf>,
    /// The log of a detached mount (default: DATA/mount.log).
    #[arg(long)]
    log_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the server: one process, one tablet, data under --data.
    Serve(Box<ServeArgs>),
    /// Mounts a namespace as a file system (FUSE); `umount` or SIGTERM unmounts it.
    Mount(Box<MountArgs>),
    /// Makes directories.
    Mkdir {
        /// Make parents as needed; existing directories are fine.
        #[arg(short)]
        p: bool,
        /// Permission bits, in octal.
        #[arg(short, long, default_value = "755", value_parser = octal)]
        mode: u32,
        #[arg(required = true)]
        paths: Vec<OsString>,
    },
    /// Lists a directory.
    Ls {
        /// Long format: type, mode, links, owner, size, inode.
        #[arg(short)]
        l: bool,
        #[arg(default_value = "/")]
        path: OsString,
    },
    /// Shows an inode's attributes.
    Stat { path: OsString },
    /// Resolves a directory in one call to the Index table (DirectStat): id, mode, owner.
    Lookup { path: OsString },
    /// Renames.
    Mv {
        src: OsString,
        dst: OsString,
        /// Fail if the destination exists.
        #[arg(short = 'n', long)]
        no_clobber: bool,
        /// Swap source and destination.
        #[arg(long, conflicts_with = "no_clobber")]
        exchange: bool,
    },
    /// Removes files (and with -r, directories and their contents).
    Rm {
        /// Recursively.
        #[arg(short)]
        r: bool,
        #[arg(required = true)]
        paths: Vec<OsString>,
    },
    /// Creates files, or updates their times.
    Touch {
        #[arg(required = true)]
        paths: Vec<OsString>,
    },
    /// Makes links.
    Ln {
        /// A symbolic link.
        #[arg(short)]
        s: bool,
        target: OsString,
        link: OsString,
    },
    /// Prints a directory tree.
    Tree {
        #[arg(default_value = "/")]
        path: OsString,
    },
    /// Namespaces.
    Ns {
        #[command(subcommand)]
        cmd: NsCmd,
    },
    /// Checks the namespace invariants; exits 1 if any is broken.
    Fsck,
    /// Scripts: Rhai functions that run inside the store, as operations and as hooks of the
    /// built-in operations (docs/dsl.md).
    Script {
        #[command(subcommand)]
        cmd: ScriptCmd,
    },
    /// Cluster administration.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Members, tablets, leaders and applied indexes, as the node at --addr sees them.
    Status,
    /// The members: id, address, voter or learner, and (asked of the leader) how far behind
    /// the leader's log each one is.
    Nodes,
    /// The tablets: range, leader, term, voters, learners, applied index, and each replica's
    /// lag (asked of the leader).
    Tablets,
    /// Takes node N out of every group (its replicas stop receiving the log; stop the process
    /// afterwards). The cluster keeps its other voters: removing one of three leaves two.
    RemoveNode { node: u64 },
    /// A fresh timestamp from the cluster's oracle, with the wall-clock time it stands for.
    Timestamp,
    /// Moves the leadership of tablet TABLET to node NODE (which stands for election; it wins
    /// if its log is up to date). Leaders on different nodes spread the load of a layout of
    /// several tablets; the node that receives a call coordinates it across them.
    MoveLeader { tablet: u64, node: u64 },
}

#[derive(Subcommand)]
enum ScriptCmd {
    /// Pushes FILE as the next version of script NAME, current at once (admin). A script that
    /// does not compile is refused with the compiler's message and line; the previous
    /// version keeps serving.
    Push {
        name: String,
        file: std::path::PathBuf,
        /// Binds a hook in --ns: EVENT or EVENT:PREFIX, e.g. before_mkdir:/warehouse (EVENT is
        /// before_ or after_ one of mkdir, create, symlink, link, unlink, rmdir, rename).
        /// Replaces the script's bindings in the namespace; repeat for several.
        #[arg(long = "hook")]
        hooks: Vec<String>,
        /// Removes the script's hooks in --ns.
        #[arg(long, conflicts_with = "hooks")]
        no_hooks: bool,
    },
    /// Every script: current and latest version, and where its hooks are bound.
    List,
    /// Prints a version's source (default: the current one) to stdout.
    Show {
        name: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Makes version VERSION of script NAME current again (admin).
    Rollback { name: String, version: u64 },
    /// Disables script NAME: its calls fail with ENOSYS and its hooks stop (admin). A
    /// rollback to a version enables it again.
    Disable { name: String },
    /// Calls FUNCTION of script NAME; each ARG is JSON if it parses as JSON, else a string.
    /// Prints the result as JSON.
    Call {
        name: String,
        function: String,
        args: Vec<String>,
    },
    /// Runs every `test*` function of FILE (no parameters, in name order) against a scratch
    /// store, FILE pushed there with the given hooks bound; exits 1 if any fails. No server
    /// needed.
    Test {
        file: std::path::PathBuf,
        /// A hook to bind, as for push.
        #[arg(long = "hook")]
        hooks: Vec<String>,
    },
}

#[derive(Subcommand)]
enum NsCmd {
    /// Creates a namespace owned by the caller.
    Create {
        name: String,
        #[arg(short, long, default_value = "755", value_parser = octal)]
        mode: u32,
    },
    /// Lists the namespaces.
    List,
}

fn octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode (0..7777)"))
}

/// The allocator: mimalloc measured about 12% less CPU per commit than glibc's (see
/// `docs/bench/tafdb.md`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person: a detached mount's log is a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The server hosts a tablet: more workers than cores (see `tafdb::runtime_threads`).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(tafdb::runtime_threads())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mantle: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("signal received, stopping");
}

/// Starts the mount again in the foreground as a child of its own session, waits until it
/// says it is mounted, and leaves it running.
fn detach(args: &MountArgs, data: &std::path::Path) -> ExitCode {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let log = args
        .log_file
        .clone()
        .unwrap_or_else(|| data.join("mount.log"));
    if let Err(e) = std::fs::create_dir_all(data) {
        eprintln!("mantle mount: {}: {e}", data.display());
        return ExitCode::FAILURE;
    }
    let log_out = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mantle mount: log {}: {e}", log.display());
            return ExitCode::FAILURE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("mantle mount: cannot find my own binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut child = match std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--foreground")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log_out)
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mantle mount: cannot start the mount process: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    if line.starts_with("mantle mount: mounted") {
        print!("{line}");
        return ExitCode::SUCCESS;
    }
    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
    let tail = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(5).collect();
    eprintln!(
        "mantle mount: the mount process ended ({status}); the end of {}:",
        log.display()
    );
    for l in tail.iter().rev() {
        eprintln!("  {l}");
    }
    ExitCode::FAILURE
}

async fn mount(args: &MountArgs, ns: &str) -> ExitCode {
    let Some(data) = args.data.clone() else {
        eprintln!(
            "mantle mount: give --data DIR (a store run inside the mount); mounting a server's \
             namespace (--addr) needs the mount to write file data to the chunk servers, which \
             is not built yet"
        );
        return ExitCode::FAILURE;
    };
    if !args.foreground {
        return detach(args, &data);
    }
    let mut cfg = mantle::mount::MountConfig::new(&data, &args.mountpoint);
    cfg.namespace = ns.to_string();
    for o in &args.options {
        match o.as_str() {
            "allow_other" => cfg.allow_other = true,
            "ro" => cfg.read_only = true,
            "rw" | "" => {}
            other => {
                eprintln!(
                    "mantle mount: unknown mount option {other:?} (known: allow_other, ro, rw)"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    cfg.read_only |= args.read_only;
    cfg.attr_ttl = std::time::Duration::from_millis(args.attr_ttl_ms);
    cfg.entry_ttl = std::time::Duration::from_millis(args.entry_ttl_ms);
    cfg.negative_ttl = std::time::Duration::from_millis(args.negative_ttl_ms);
    cfg.threads = args.threads;
    cfg.data_capacity = args.data_capacity_mib << 20;
    cfg.mvcc_window_ms = args.mvcc_window_ms;
    cfg.sync = match args.sync.as_str() {
        "always" => mantle::mount::SyncMode::Always,
        _ => mantle::mount::SyncMode::Posix,
    };
    cfg.sync_interval = std::time::Duration::from_millis(args.sync_interval_ms);
    let pid_file = args
        .pid_file
        .clone()
        .unwrap_or_else(|| data.join("mount.pid"));
    let ready = |at: &std::path::Path| {
        use std::io::Write;
        if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
            tracing::warn!(error = %e, "pid file {}", pid_file.display());
        }
        // Scripts, tests and the detaching parent read this line.
        println!(
            "mantle mount: mounted {} on {}",
            cfg.namespace,
            at.display()
        );
        let _ = std::io::stdout().flush();
    };
    let r = mantle::mount::run(cfg.clone(), ready, shutdown_signal()).await;
    let _ = std::fs::remove_file(&pid_file);
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mantle mount: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    if let Cmd::Mount(args) = &cli.cmd {
        return mount(args, &cli.ns).await;
    }
    if let Cmd::Serve(args) = &cli.cmd {
        let cfg = match args.config() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mantle serve: {e}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("mantle serve: cannot listen on {}: {e}", cfg.listen);
                return ExitCode::FAILURE;
            }
        };
        // The bound address on stdout (port 0 picks one): scripts and tests read it.
        let ready = |addr| {
            use std::io::Write;
            println!("mantle serve: listening on {addr}");
            let _ = std::io::stdout().flush();
        };
        return match mantle::server::serve(listener, &cfg, ready, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mantle serve: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let token = match (&cli.token_file, std::env::var("MANTLE_TOKEN")) {
        (Some(f), _) => match mantle::auth::read_token_file(f) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("mantle: {e}");
                return ExitCode::FAILURE;
            }
        },
        (None, Ok(t)) if !t.trim().is_empty() => Some(t),
        _ => None,
    };
    if let Cmd::Admin { cmd } = &cli.cmd {
        return admin(&cli.addr, token.as_deref(), cmd).await;
    }
    if let Cmd::Script {
        cmd: ScriptCmd::Test { file, hooks },
    } = &cli.cmd
    {
        return script_test(file, hooks).await;
    }
    let client = match Client::connect_with_token(&cli.addr, token.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mantle: {}", e.message);
            return ExitCode::FAILURE;
        }
    };
    let mut cred: Cred = mantle::server::process_cred();
    if let Some(uid) = cli.uid {
        cred.uid = uid;
    }
    if let Some(gid) = cli.gid {
        cred.gid = gid;
    }
    let client = client.with_namespace(cli.ns).with_cred(cred);
    match command(&client, cli.cmd).await {
        Ok(code) => code,
        Err((what, e)) => {
            eprintln!("mantle: {what}: {:?} ({})", e.errno, e.message);
            ExitCode::FAILURE
        }
    }
}

type CmdResult = Result<ExitCode, (String, FsError)>;

fn ctx<T>(what: &str, r: Result<T, FsError>) -> Result<T, (String, FsError)> {
    r.map_err(|e| (what.to_string(), e))
}

fn type_char(k: FileType) -> char {
    match k {
        FileType::Directory => 'd',
        FileType::Symlink => 'l',
        FileType::Fifo => 'p',
        FileType::Socket => 's',
        FileType::CharDevice => 'c',
        FileType::BlockDevice => 'b',
        FileType::Regular => '-',
    }
}

fn mode_string(a: &Attr) -> String {
    let mut s = String::new();
    s.push(type_char(a.kind()));
    for shift in [6, 3, 0] {
        let bits = (a.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// Writes a line to stdout. A closed pipe (`mantle ls | head -1`) ends the program quietly, as
/// it ends any Unix tool; another write error is reported once.
macro_rules! out {
    ($($t:tt)*) => { emit(format_args!($($t)*)) };
}

fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|()| o.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("mantle: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// A name or path as printable text: UTF-8 as it is, other bytes, control characters and
/// backslashes as `\xNN`, so every printed name can be typed back (`$'\xNN'` in a shell).
fn esc(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    s.push_str(&format!("\\x{byte:02x}"));
                }
            } else {
                s.push(c);
            }
        }
        for byte in chunk.invalid() {
            s.push_str(&format!("\\x{byte:02x}"));
        }
    }
    s
}

/// An argument's bytes: names need not be UTF-8.
fn raw(p: &OsStr) -> &[u8] {
    p.as_bytes()
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn spinner(msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

async fn command(c: &Client, cmd: Cmd) -> CmdResult {
    match cmd {
        Cmd::Serve { .. } | Cmd::Mount { .. } | Cmd::Admin { .. } => Ok(ExitCode::SUCCESS),
        Cmd::Mkdir { p, mode, paths } => {
            for path in paths {
                let (b, what) = (raw(&path), esc(raw(&path)));
                if p {
                    ctx(&what, c.mkdir_p(b, mode).await)?;
                } else {
                    ctx(&what, c.mkdir(b, mode).await)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ls { l, path } => {
            let (path, what) = (raw(&path), esc(raw(&path)));
            let a = ctx(&what, c.stat(path).await)?;
            if !a.kind().is_dir() {
                out!("{what}");
                return Ok(ExitCode::SUCCESS);
            }
            let mut after = Vec::new();
            loop {
                // By inode: a listing needs no path resolution per page.
                let (page, next) = ctx(&what, c.readdir_inode(a.id, &after, 0, l).await)?;
                for e in page {
                    let name = esc(&e.name);
                    match (&e.attr, l) {
                        (Some(a), true) => {
                            let link = if a.kind() == FileType::Symlink {
                                format!(" -> {}", esc(&a.target))
                            } else {
                                String::new()
                            };
                            out!(
                                "{} {:>3} {:>5} {:>5} {:>10} {:>10} {name}{link}",
                                mode_string(a),
                                a.nlink,
                                a.uid,
                                a.gid,
                                a.size,
                                a.id
                            );
                        }
                        _ => out!("{name}"),
                    }
                }
                match next {
                    Some(n) => after = n,
                    None => return Ok(ExitCode::SUCCESS),
                }
            }
        }
        Cmd::Lookup { path } => {
            let (path, what) = (raw(&path), esc(raw(&path)));
            let d = ctx(&what, c.lookup_dir(path).await)?;
            out!(
                "{what}: directory {}, mode {:04o}, uid {}, gid {}",
                d.id,
                d.mode & 0o7777,
                d.uid,
                d.gid
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stat { path } => {
            let (path, what) = (raw(&path), esc(raw(&path)));
            let a = ctx(&what, c.lstat(path).await)?;
            out!("  Path: {what}");
            out!(
                "  Type: {:?}    Inode: {}    Links: {}",
                a.kind(),
                a.id,
                a.nlink
            );
            out!(
                "  Mode: {:04o} ({})    Uid: {}    Gid: {}",
                a.perm(),
                mode_string(&a),
                a.uid,
                a.gid
            );
            out!("  Size: {}    Entries: {}", a.size, a.entries);
            out!("Access: {}", a.atime);
            out!("Modify: {}", a.mtime);
            out!("Change: {}", a.ctime);
            if a.kind() == FileType::Symlink {
                out!("Target: {}", esc(&a.target));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Mv {
            src,
            dst,
            no_clobber,
            exchange,
        } => {
            let (src, dst) = (raw(&src), raw(&dst));
            let flags = if no_clobber {
                1
            } else if exchange {
                2
            } else {
                0
            };
            // Like mv(1): moving onto an existing directory moves into it.
            let mut target = dst.to_vec();
            if flags == 0 {
                if let Ok(a) = c.stat(dst).await {
                    if a.kind().is_dir() {
                        let name = src.rsplit(|&b| b == b'/').next().unwrap_or_default();
                        target = join(dst, name);
                    }
                }
            }
            ctx(
                &format!("{} -> {}", esc(src), esc(&target)),
                c.rename(src, &target, flags).await,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rm { r, paths } => {
            for path in paths {
                let (path, what) = (raw(&path), esc(raw(&path)));
                if r {
                    let pb = spinner(&format!("removing {what}"));
                    let n = ctx(
                        &what,
                        c.remove_all(path, |n| {
                            pb.set_message(format!("removing {what}: {n} entries"))
                        })
                        .await,
                    );
                    pb.finish_and_clear();
                    let n = n?;
                    eprintln!("removed {n} entries under {what}");
                } else {
                    ctx(&what, c.unlink(path).await)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Touch { paths } => {
            for path in paths {
                let (path, what) = (raw(&path), esc(raw(&path)));
                match c.create(path, 0o644).await {
                    Ok(_) => {}
                    Err(e) if e.errno == coprocessor::Errno::EEXIST => {
                        let now = SetAttrArgs {
                            atime: Some(None),
                            mtime: Some(None),
                            ..Default::default()
                        };
                        ctx(&what, c.setattr(path, now).await)?;
                    }
                    Err(e) => return Err((what, e)),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ln { s, target, link } => {
            let (target, link) = (raw(&target), raw(&link));
            if s {
                ctx(&esc(link), c.symlink(target, link).await)?;
            } else {
                ctx(&esc(link), c.link(target, link).await)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Tree { path } => {
            let (path, what) = (raw(&path), esc(raw(&path)));
            out!("{what}");
            let (dirs, files) = tree(c, path, &what).await?;
            out!("\n{dirs} directories, {files} files");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ns { cmd } => {
            match cmd {
                NsCmd::Create { name, mode } => {
                    let info = ctx(&name, c.ns_create(&name, mode).await)?;
                    out!("created namespace {} (root inode {})", info.name, info.root);
                }
                NsCmd::List => {
                    for n in ctx("ns list", c.ns_list().await)? {
                        out!("{}\t{}", n.name, n.root);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Script { cmd } => script(c, cmd).await,
        Cmd::Fsck => {
            let pb = indicatif::ProgressBar::new(0);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "fsck: {msg} [{bar:30}] {human_pos}/~{human_len} ({per_sec}, {elapsed})",
                )
                .map_err(|e| {
                    (
                        "fsck".to_string(),
                        FsError::new(coprocessor::Errno::EIO, e.to_string()),
                    )
                })?
                .progress_chars("=> "),
            );
            pb.enable_steady_tick(Duration::from_millis(200));
            let report = c
                .fsck(|p| {
                    if pb.message() != p.phase {
                        pb.set_message(p.phase.clone());
                        pb.reset();
                    }
                    pb.set_length(p.total.max(p.done));
                    pb.set_position(p.done);
                })
                .await;
            pb.finish_and_clear();
            let report = ctx("fsck", report)?;
            out!("{}", report.to_string().trim_end());
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// `EVENT[:PREFIX]` as a hook binding.
fn hook_arg(h: &str) -> (String, Vec<u8>) {
    match h.split_once(':') {
        Some((e, p)) => (e.to_string(), p.as_bytes().to_vec()),
        None => (h.to_string(), b"/".to_vec()),
    }
}

fn read_source(file: &std::path::Path) -> Result<String, (String, FsError)> {
    std::fs::read_to_string(file).map_err(|e| {
        (
            file.display().to_string(),
            FsError::new(coprocessor::Errno::EIO, e.to_string()),
        )
    })
}

fn print_script(i: &mantle::proto::ScriptInfo) {
    let state = match i.current {
        0 => "disabled".to_string(),
        v => format!("v{v}"),
    };
    let hooks: Vec<String> = i
        .hooks
        .iter()
        .map(|h| format!("{}:{}@{}", h.event, esc(&h.prefix), h.namespace))
        .collect();
    out!(
        "{}\t{state}\tlatest v{}\t{}",
        i.name,
        i.latest,
        hooks.join(" ")
    );
}

async fn script(c: &Client, cmd: ScriptCmd) -> CmdResult {
    match cmd {
        ScriptCmd::Push {
            name,
            file,
            hooks,
            no_hooks,
        } => {
            let source = read_source(&file)?;
            let hooks = (no_hooks || !hooks.is_empty())
                .then(|| hooks.iter().map(|h| hook_arg(h)).collect());
            let info = ctx(&name, c.script_push(&name, &source, hooks).await)?;
            print_script(&info);
        }
        ScriptCmd::List => {
            for i in ctx("script list", c.script_list().await)? {
                print_script(&i);
            }
        }
        ScriptCmd::Show { name, version } => {
            let s = ctx(&name, c.script_show(&name, version).await)?;
            eprintln!(
                "# {} v{} (current: {}, latest: v{}), pushed at {} ms by uid {}",
                s.name,
                s.version,
                match s.current {
                    0 => "disabled".to_string(),
                    v => format!("v{v}"),
                },
                s.latest,
                s.pushed_ms,
                s.by_uid
            );
            out!("{}", s.source.trim_end());
        }
        ScriptCmd::Rollback { name, version } => {
            print_script(&ctx(&name, c.script_set(&name, Some(version)).await)?);
        }
        ScriptCmd::Disable { name } => {
            print_script(&ctx(&name, c.script_set(&name, None).await)?);
        }
        ScriptCmd::Call {
            name,
            function,
            args,
        } => {
            let args: Vec<serde_json::Value> = args
                .iter()
                .map(|a| {
                    serde_json::from_str(a).unwrap_or_else(|_| serde_json::Value::String(a.clone()))
                })
                .collect();
            let json = serde_json::Value::Array(args).to_string();
            let what = format!("{name} {function}");
            out!(
                "{}",
                ctx(&what, c.script_call(&name, &function, &json).await)?
            );
        }
        ScriptCmd::Test { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn script_test(file: &std::path::Path, hooks: &[String]) -> ExitCode {
    let source = match read_source(file) {
        Ok(s) => s,
        Err((what, e)) => {
            eprintln!("mantle script test: {what}: {}", e.message);
            return ExitCode::FAILURE;
        }
    };
    let hooks = hooks.iter().map(|h| hook_arg(h)).collect();
    let outcomes = match mantle::scripts::test_source(&source, hooks).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "mantle script test: {}: {:?} ({})",
                file.display(),
                e.errno,
                e.message
            );
            return ExitCode::FAILURE;
        }
    };
    if outcomes.is_empty() {
        eprintln!(
            "mantle script test: {} defines no test function (fn test_...())",
            file.display()
        );
        return ExitCode::FAILURE;
    }
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    for o in &outcomes {
        match &o.result {
            Ok(v) if v == "null" => out!("ok      {} ({:?})", o.function, o.elapsed),
            Ok(v) => {
                let v: String = match v.char_indices().nth(100) {
                    Some((i, _)) => format!("{}...", &v[..i]),
                    None => v.clone(),
                };
                out!("ok      {} ({:?}) -> {v}", o.function, o.elapsed)
            }
            Err(e) => out!(
                "FAILED  {} ({:?}): {:?} {}",
                o.function,
                o.elapsed,
                e.errno,
                e.message
            ),
        }
    }
    out!("{} passed, {failed} failed", outcomes.len() - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A tablet's key range, `[start, end)`, escaped.
fn range(t: &mantle::proto::TabletInfo) -> String {
    let end = match t.end.is_empty() {
        true => "end".to_string(),
        false => tafdb::error::escape(&t.end),
    };
    format!("[{}, {end})", tafdb::error::escape(&t.start))
}

async fn admin(addr: &str, token: Option<&str>, cmd: &AdminCmd) -> ExitCode {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let client = match tonic::transport::Endpoint::from_shared(url) {
        Ok(e) => e.connect_timeout(Duration::from_secs(5)).connect().await,
        Err(e) => {
            eprintln!("mantle admin: address {addr:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = client
        .map_err(|e| e.to_string())
        .and_then(|c| mantle::auth::Authed::new(c, token));
    let mut client = match client {
        Ok(c) => mantle::proto::cluster_client::ClusterClient::new(c),
        Err(e) => {
            eprintln!("mantle admin: {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cmd {
        AdminCmd::RemoveNode { node } => {
            match client
                .remove_node(mantle::proto::RemoveNodeRequest { node: *node })
                .await
            {
                Ok(_) => {
                    out!("node {node} removed");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mantle admin remove-node: {}", e.message());
                    ExitCode::FAILURE
                }
            }
        }
        AdminCmd::MoveLeader { tablet, node } => {
            match client
                .move_leader(mantle::proto::MoveLeaderRequest {
                    tablet: *tablet,
                    node: *node,
                })
                .await
            {
                Ok(r) => {
                    out!("tablet {tablet} is led by node {}", r.into_inner().leader);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mantle admin move-leader: {}", e.message());
                    ExitCode::FAILURE
                }
            }
        }
        AdminCmd::Timestamp => match client.timestamp(mantle::proto::TimestampRequest {}).await {
            Ok(r) => {
                let ts = r.into_inner().ts;
                let ms = tafdb::tso::physical_ms(ts);
                out!(
                    "{ts}\t{}.{:03} s since the epoch, logical {}",
                    ms / 1000,
                    ms % 1000,
                    ts & ((1 << tafdb::tso::LOGICAL_BITS) - 1)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mantle admin timestamp: {}", e.message());
                ExitCode::FAILURE
            }
        },
        AdminCmd::Status | AdminCmd::Nodes | AdminCmd::Tablets => {
            let s = match client.status(mantle::proto::ClusterStatusRequest {}).await {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    eprintln!("mantle admin: {}", e.message());
                    return ExitCode::FAILURE;
                }
            };
            // Lag per node: how many entries of the leader's log it does not have yet.
            let lag = |node: u64| -> String {
                let Some(t) = s.tablets.first() else {
                    return String::new();
                };
                if t.leader == node {
                    return "\tleader".into();
                }
                match t.progress.iter().find(|p| p.node == node) {
                    Some(p) => format!("\t{} entries behind", t.last_log.saturating_sub(p.matched)),
                    None => String::new(),
                }
            };
            if matches!(cmd, AdminCmd::Nodes) {
                for n in &s.nodes {
                    out!(
                        "{}\t{}\t{}{}",
                        n.id,
                        n.addr,
                        if n.voter { "voter" } else { "learner" },
                        lag(n.id)
                    );
                }
                return ExitCode::SUCCESS;
            }
            if matches!(cmd, AdminCmd::Tablets) {
                for t in &s.tablets {
                    let behind: Vec<String> = t
                        .progress
                        .iter()
                        .map(|p| format!("{}:{}", p.node, t.last_log.saturating_sub(p.matched)))
                        .collect();
                    out!(
                        "{}\t{}\tleader {}\tterm {}\tapplied {}\tvoters {:?}\tlearners {:?}\tbehind {}",
                        t.id,
                        range(t),
                        t.leader,
                        t.term,
                        t.applied,
                        t.voters,
                        t.learners,
                        if behind.is_empty() {
                            "(ask the leader)".to_string()
                        } else {
                            behind.join(",")
                        }
                    );
                }
                return ExitCode::SUCCESS;
            }
            if s.node == 0 {
                out!("node at {addr}: embedded (not a cluster node)");
            } else {
                out!("node at {addr}: node {}", s.node);
            }
            out!("nodes:");
            for n in &s.nodes {
                out!(
                    "  {}\t{}\t{}",
                    n.id,
                    n.addr,
                    if n.voter { "voter" } else { "learner" }
                );
            }
            out!("tablets:");
            for t in &s.tablets {
                out!(
                    "  {}\t{}\tleader {}\tterm {}\tapplied {}\tvoters {:?}\tlearners {:?}{}",
                    t.id,
                    range(t),
                    if t.leader == 0 {
                        "none".to_string()
                    } else {
                        t.leader.to_string()
                    },
                    t.term,
                    t.applied,
                    t.voters,
                    t.learners,
                    if t.serving { "\tserved here" } else { "" }
                );
            }
            match &s.path_cache {
                Some(c) => {
                    let looked = c.hits + c.misses + c.bypasses;
                    out!(
                        "path cache: {} prefixes, {} KiB; {} hits of {} lookups ({:.1}%), {} \
                         bypassed, {} filled, {} fills refused, {} invalidations, {} evicted",
                        c.entries,
                        c.bytes >> 10,
                        c.hits,
                        looked,
                        100.0 * c.hits as f64 / looked.max(1) as f64,
                        c.bypasses,
                        c.fills,
                        c.refused,
                        c.invalidations,
                        c.evicted
                    );
                }
                None => out!("path cache: off"),
            }
            ExitCode::SUCCESS
        }
    }
}

/// Prints the tree under `path` iteratively, walking by inode (an explicit stack, so depth
/// costs no recursion and no path grows past PATH_MAX).
async fn tree(c: &Client, path: &[u8], what: &str) -> Result<(u64, u64), (String, FsError)> {
    let (mut dirs, mut files) = (0u64, 0u64);
    let top = ctx(what, c.stat(path).await)?;
    let first = ctx(what, c.list_inode(top.id, false).await)?;
    // (prefix for a directory's children, its remaining entries in reverse order)
    let mut stack: Vec<(String, Vec<coprocessor::api::DirEntry>)> =
        vec![(String::new(), first.into_iter().rev().collect())];
    while let Some((prefix, mut rest)) = stack.pop() {
        let Some(e) = rest.pop() else { continue };
        let last = rest.is_empty();
        out!(
            "{prefix}{}{}",
            if last { "└── " } else { "├── " },
            esc(&e.name)
        );
        let child_prefix = format!("{prefix}{}", if last { "    " } else { "│   " });
        stack.push((prefix, rest));
        if e.kind.is_dir() {
            dirs += 1;
            let entries = ctx(&esc(&e.name), c.list_inode(e.id, false).await)?;
            stack.push((child_prefix, entries.into_iter().rev().collect()));
        } else {
            files += 1;
        }
    }
    Ok((dirs, files))
}
