//! DirectStat throughput in one process: `tasks` tasks each look up the deepest directory of
//! their own `depth`-level chain, `n` times, against an embedded store. A profiling aid for
//! the lookup path (mdtest's `--preset deep` "Directory lookup" phase is the benchmark).
//!
//! `cargo run --release -p coprocessor --example lookup_rate -- [depth] [tasks] [n] [k]`

use std::sync::Arc;
use std::time::Instant;

use coprocessor::api::Loc;
use coprocessor::ops::{lookup::Lookup, mkdir::Mkdir, ns_create::NsCreate};
use coprocessor::service::{Options, Service};
use indexnode::{CacheConfig, Cred};

/// The binaries' allocator (mdtest's and mantle's).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |i: usize, d: usize| -> usize {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (depth, tasks, n, k) = (arg(1, 10), arg(2, 64), arg(3, 200_000), arg(4, 3));
    let dir = tempfile::tempdir()?;
    let db = tafdb::Db::open(tafdb::DbConfig::new(dir.path())).await?;
    let svc = Arc::new(Service::open_with(
        db,
        &Options {
            path_cache: (k > 0).then(|| CacheConfig {
                keep_last: k,
                ..Default::default()
            }),
        },
    ));
    let ns = b"bench".to_vec();
    svc.call(&NsCreate {
        name: ns.clone(),
        cred: Cred::root(),
        mode: 0o755,
    })
    .await?;
    let mut paths = Vec::new();
    for t in 0..tasks {
        let mut p = format!("/t{t}");
        for l in 1..=depth {
            if l > 1 {
                p.push_str(&format!("/level-{l:08}"));
            }
            svc.call(&Mkdir {
                ns: ns.clone(),
                cred: Cred::root(),
                at: Loc::Path(p.as_bytes().to_vec()),
                mode: 0o755,
            })
            .await?;
        }
        paths.push(p);
    }
    if std::env::var_os("FUTURE_SIZES").is_some() {
        let op = Lookup {
            ns: ns.clone(),
            cred: Cred::root(),
            path: b"/t0".to_vec(),
        };
        let fut = svc.call(&op);
        println!(
            "Service::call(Lookup) future: {} bytes",
            std::mem::size_of_val(&fut)
        );
    }
    let began = Instant::now();
    let mut handles = Vec::new();
    for p in paths {
        let (svc, ns) = (svc.clone(), ns.clone());
        handles.push(tokio::spawn(async move {
            let op = Lookup {
                ns,
                cred: Cred::root(),
                path: p.into_bytes(),
            };
            for _ in 0..n {
                svc.call(&op).await.map(|_| ())?;
            }
            Ok::<(), coprocessor::FsError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let secs = began.elapsed().as_secs_f64();
    let ops = (tasks * n) as f64;
    println!(
        "depth {depth}, {tasks} tasks, k={k}: {:.0} lookups/s ({ops} in {secs:.2} s)",
        ops / secs
    );
    Ok(())
}
