//! How much memory the TopDirPathCache takes for a tree, by `k` (levels left uncached), against
//! caching every directory's path.
//!
//! ```sh
//! cargo run --release -p indexnode --example cache_memory -- [FANOUT] [DEPTH]
//! ```
//!
//! The tree is complete: FANOUT subdirectories per directory down to DEPTH levels (default
//! 4 and 9: 349,525 directories, about the 11 levels of an average production path once the
//! file and the namespace root are counted). Every leaf directory holds files, and one lookup
//! of a file in each leaf fills the cache with that path's prefix of `depth + 1 - k` levels
//! (the file is the last level), as the resolver does. "every path" caches each directory
//! prefix of every path.

use indexnode::cache::Start;
use indexnode::{CacheConfig, IndexEntry, PathCache};

fn dir(id: u64) -> IndexEntry {
    IndexEntry {
        id,
        mode: 0o040_755,
        uid: 0,
        gid: 0,
        locked: false,
    }
}

/// Every leaf path of the complete tree: names and ids per level.
fn leaves(fanout: u64, depth: usize) -> Vec<(Vec<Vec<u8>>, Vec<u64>)> {
    let mut out = Vec::new();
    let mut next_id = 17u64;
    let mut level: Vec<(Vec<Vec<u8>>, Vec<u64>)> = vec![(Vec::new(), Vec::new())];
    for _ in 0..depth {
        let mut deeper = Vec::with_capacity(level.len() * fanout as usize);
        for (names, ids) in &level {
            for f in 0..fanout {
                let mut n = names.clone();
                // 16-byte names, as the issue's sizing assumes.
                n.push(format!("dir-{f:012}").into_bytes());
                let mut i = ids.clone();
                i.push(next_id);
                next_id += 1;
                deeper.push((n, i));
            }
        }
        level = deeper;
    }
    out.append(&mut level);
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let fanout: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let depth: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(9);
    let paths = leaves(fanout, depth);
    let dirs: u64 = (1..=depth as u32).map(|l| fanout.pow(l)).sum();
    println!(
        "tree: fanout {fanout}, depth {depth}: {dirs} directories, {} leaf directories",
        paths.len()
    );
    println!(
        "{:>12} {:>10} {:>10} {:>12} {:>10}",
        "cached", "prefixes", "nodes", "bytes", "share"
    );
    let root = dir(16);
    let mut every = 0u64;
    let mut rows = Vec::new();
    for k in [0usize, 1, 2, 3, 4] {
        let cache = PathCache::new(CacheConfig {
            keep_last: k.max(1),
            capacity: usize::MAX / 2,
        });
        for (names, ids) in &paths {
            let names: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
            let entries: Vec<IndexEntry> = ids.iter().map(|&i| dir(i)).collect();
            // A file in the leaf: depth + 1 components.
            let depths: Vec<usize> = if k == 0 {
                (1..=depth).collect()
            } else {
                (depth + 1)
                    .checked_sub(k)
                    .filter(|&d| d > 0)
                    .into_iter()
                    .collect()
            };
            for d in depths {
                cache.fill(
                    b"ns",
                    Start::Root(root),
                    &names[..d],
                    &entries[..d],
                    1,
                    |_| true,
                );
            }
        }
        let st = cache.stats();
        if k == 0 {
            every = st.bytes;
        }
        rows.push((k, st));
    }
    for (k, st) in rows {
        let label = if k == 0 {
            "every path".to_string()
        } else {
            format!("k = {k}")
        };
        println!(
            "{label:>12} {:>10} {:>10} {:>12} {:>9.1}%",
            st.entries,
            st.nodes,
            st.bytes,
            100.0 * st.bytes as f64 / every.max(1) as f64
        );
    }
}
