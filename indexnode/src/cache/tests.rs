use tafdb::WriteWatch;

use super::*;

fn dir(id: u64, mode: u32, uid: u32) -> IndexEntry {
    IndexEntry {
        id,
        mode: 0o040_000 | mode,
        uid,
        gid: uid,
        locked: false,
    }
}

const ROOT: u64 = 16;

fn cache(k: usize, capacity: usize) -> Arc<PathCache> {
    PathCache::new(CacheConfig {
        keep_last: k,
        capacity,
    })
}

/// Fills `/a/b/c` (ids 20, 21, 22) from the root at snapshot `ts`.
fn fill_abc(c: &PathCache, ts: u64) -> bool {
    c.fill(
        b"ns",
        Start::Root(dir(ROOT, 0o755, 0)),
        &[b"a", b"b", b"c"],
        &[dir(20, 0o755, 0), dir(21, 0o755, 0), dir(22, 0o755, 0)],
        ts,
        |_| true,
    )
}

fn probe(c: &PathCache, names: &[&[u8]], depth: usize, ts: u64) -> Option<u64> {
    c.probe(b"ns", names, depth, ts, &Cred::root())
        .map(|h| h.entry.id)
}

#[test]
fn a_filled_prefix_answers_later_snapshots_only() {
    let c = cache(3, 100);
    assert!(fill_abc(&c, 10));
    let path: &[&[u8]] = &[b"a", b"b", b"c", b"d", b"e", b"f"];
    assert_eq!(probe(&c, path, 3, 11), Some(22));
    assert_eq!(probe(&c, path, 3, 10), None, "filled at 10: not for 10");
    // One level shallower than asked is tried too.
    assert_eq!(probe(&c, &[b"a", b"b", b"c", b"x"], 4, 11), Some(22));
    assert_eq!(probe(&c, &[b"a", b"b", b"x"], 3, 11), None);
    assert_eq!(
        probe(&c, &[b"a", b"b"], 2, 11),
        None,
        "only /a/b/c is cached"
    );
    let st = c.stats();
    assert_eq!((st.hits, st.fills, st.entries, st.nodes), (2, 1, 1, 4));
    assert!(!fill_abc(&c, 12), "already cached");
}

#[test]
fn a_committed_write_of_a_directory_on_the_path_evicts_its_subtree() {
    let c = cache(3, 100);
    assert!(fill_abc(&c, 10));
    assert!(c.fill(
        b"ns",
        Start::Root(dir(ROOT, 0o755, 0)),
        &[b"a", b"z"],
        &[dir(20, 0o755, 0), dir(30, 0o755, 0)],
        10,
        |_| true,
    ));
    // /a/b is renamed (its Index entry deleted): /a/b/c goes, /a/z stays.
    c.applied(&index_key(20, b"b"));
    assert_eq!(probe(&c, &[b"a", b"b", b"c"], 3, 20), None);
    c.quiesce();
    assert_eq!(probe(&c, &[b"a", b"z"], 2, 20), Some(30));
    let st = c.stats();
    assert_eq!((st.entries, st.nodes, st.invalidations), (1, 3, 1));
    // A write of a directory nobody cached changes nothing.
    c.applied(&index_key(22, b"q"));
    c.applied(&index_key(99, b"b"));
    assert_eq!(c.stats().invalidations, 1);
    // The root's entry (a chmod of the namespace root) takes everything.
    c.applied(&index_key(0, b"ns"));
    c.quiesce();
    let st = c.stats();
    assert_eq!((st.entries, st.nodes), (0, 0));
    assert!(fill_abc(&c, 30), "the tree fills again");
}

#[test]
fn a_write_in_flight_lists_the_prefix_until_it_settles() {
    let c = cache(3, 100);
    assert!(fill_abc(&c, 10));
    let k = index_key(ROOT, b"a");
    c.pending(&k);
    c.pending(&k);
    assert_eq!(probe(&c, &[b"a", b"b", b"c"], 3, 20), None, "bypassed");
    assert_eq!(c.stats().bypasses, 1);
    c.settled(&k);
    assert_eq!(probe(&c, &[b"a", b"b", b"c"], 3, 20), None, "one mark left");
    c.settled(&k);
    assert_eq!(
        probe(&c, &[b"a", b"b", b"c"], 3, 20),
        Some(22),
        "the write gave up: the entry stands"
    );
    // A 2PC lock does the same.
    c.locked(&index_key(21, b"c"), true);
    assert_eq!(probe(&c, &[b"a", b"b", b"c"], 3, 20), None);
    assert!(!c.fill(
        b"ns",
        Start::Root(dir(ROOT, 0o755, 0)),
        &[b"a", b"b", b"c", b"d"],
        &[
            dir(20, 0o755, 0),
            dir(21, 0o755, 0),
            dir(22, 0o755, 0),
            dir(23, 0o755, 0)
        ],
        20,
        |_| true,
    ));
    c.locked(&index_key(21, b"c"), false);
    assert_eq!(probe(&c, &[b"a", b"b", b"c"], 3, 20), Some(22));
    // Settling a key that was never listed is harmless.
    c.settled(&index_key(5, b"x"));
    c.locked(&index_key(5, b"x"), false);
    assert_eq!(c.stats().refused, 1);
}

#[test]
fn a_fill_is_refused_when_the_store_says_the_reads_are_stale_or_the_tree_disagrees() {
    let c = cache(3, 100);
    let mut asked = Vec::new();
    assert!(!c.fill(
        b"ns",
        Start::Root(dir(ROOT, 0o755, 0)),
        &[b"a", b"b"],
        &[dir(20, 0o755, 0), dir(21, 0o755, 0)],
        10,
        |keys| {
            asked = keys.to_vec();
            false
        },
    ));
    assert_eq!(
        asked,
        vec![
            index_key(0, b"ns"),
            index_key(ROOT, b"a"),
            index_key(20, b"b")
        ],
        "the root's entry and every component are validated"
    );
    assert!(fill_abc(&c, 10));
    // /a was replaced by another directory (id 40) while the old node waits for eviction.
    assert!(!c.fill(
        b"ns",
        Start::Root(dir(ROOT, 0o755, 0)),
        &[b"a", b"y"],
        &[dir(40, 0o755, 0), dir(41, 0o755, 0)],
        20,
        |_| true,
    ));
    assert_eq!(c.stats().refused, 2);
}

#[test]
fn a_fill_extends_a_hit_one_level() {
    let c = cache(3, 100);
    assert!(fill_abc(&c, 10));
    let names: &[&[u8]] = &[b"a", b"b", b"c", b"d"];
    let hit = c
        .probe(b"ns", names, 4, 11, &Cred::root())
        .expect("hit at 3");
    assert_eq!(hit.depth, 3);
    let mut asked = Vec::new();
    assert!(c.fill(
        b"ns",
        Start::Hit(hit),
        names,
        &[dir(23, 0o700, 5)],
        11,
        |keys| {
            asked = keys.to_vec();
            true
        }
    ));
    assert_eq!(
        asked,
        vec![index_key(22, b"d")],
        "only the new level is read"
    );
    assert_eq!(probe(&c, names, 4, 12), Some(23));
    // Evicting /a/b/c takes /a/b/c/d with it.
    c.applied(&index_key(21, b"c"));
    c.quiesce();
    assert_eq!(probe(&c, names, 4, 13), None);
    assert_eq!(c.stats().entries, 0);
}

#[test]
fn restricting_directories_are_checked_for_each_caller() {
    let c = cache(3, 100);
    let alice = Cred {
        uid: 1000,
        gid: 1000,
        groups: vec![],
    };
    let bob = Cred {
        uid: 2000,
        gid: 2000,
        groups: vec![1000],
    };
    // /home (0755) / alice (0750, alice's) / work: bob is in alice's group, eve is not.
    assert!(c.fill(
        b"ns",
        Start::Root(dir(ROOT, 0o755, 0)),
        &[b"home", b"alice", b"work"],
        &[
            dir(20, 0o755, 0),
            dir(21, 0o750, 1000),
            dir(22, 0o700, 1000)
        ],
        10,
        |_| true,
    ));
    let eve = Cred {
        uid: 3000,
        gid: 3000,
        groups: vec![],
    };
    let names: &[&[u8]] = &[b"home", b"alice", b"work", b"x"];
    let hit = |cred: &Cred| c.probe(b"ns", names, 3, 11, cred).map(|h| h.entry.id);
    assert_eq!(hit(&alice), Some(22));
    assert_eq!(hit(&bob), Some(22), "group search on alice's home");
    assert_eq!(hit(&eve), None, "no search permission on alice's home");
    assert_eq!(hit(&Cred::root()), Some(22));
    // The last directory's own mode is the caller's walk to check (it is returned).
    assert_eq!(
        c.probe(b"ns", names, 3, 11, &bob)
            .map(|h| h.entry.mode & 0o777),
        Some(0o700)
    );
}

#[test]
fn capacity_is_kept_and_the_tree_shrinks_with_the_entries() {
    let c = cache(3, 64);
    for i in 0..1000u64 {
        let name = format!("d{i}");
        assert!(c.fill(
            b"ns",
            Start::Root(dir(ROOT, 0o755, 0)),
            &[b"top", name.as_bytes()],
            &[dir(20, 0o755, 0), dir(100 + i, 0o755, 0)],
            10,
            |_| true,
        ));
        // Keep one prefix in use: the sweep spares it.
        assert_eq!(probe(&c, &[b"top", b"d0"], 2, 11), Some(100));
    }
    let st = c.stats();
    assert!(st.entries <= 64, "{st:?}");
    assert_eq!(st.nodes, st.entries + 2, "root + /top + one node per entry");
    assert!(st.evicted >= 1000 - 64);
    assert!(st.bytes > 0);
    assert_eq!(
        probe(&c, &[b"top", b"d0"], 2, 11),
        Some(100),
        "hot entry kept"
    );
}

#[test]
fn a_reset_forgets_everything() {
    let c = cache(3, 100);
    assert!(fill_abc(&c, 10));
    c.locked(&index_key(ROOT, b"a"), true);
    c.reset();
    let st = c.stats();
    assert_eq!((st.entries, st.nodes), (0, 0));
    assert!(fill_abc(&c, 20), "nothing stays listed");
}

#[test]
fn depth_leaves_the_last_levels() {
    let c = cache(3, 10);
    assert_eq!(c.depth_for(10), 7);
    assert_eq!(c.depth_for(2), 0);
    assert_eq!(cache(0, 10).depth_for(4), 3, "k is at least 1");
}

#[test]
fn a_fill_through_a_node_left_under_an_old_path_is_refused() {
    let c = cache(3, 100);
    assert!(c.fill(
        b"ns",
        Start::Root(dir(ROOT, 0o755, 0)),
        &[b"a", b"x"],
        &[dir(20, 0o755, 0), dir(30, 0o755, 0)],
        10,
        |_| true,
    ));
    // /a was renamed to /z (same id): until /a's eviction is done, the node of x (20, "x")
    // still names /a/x. Linking /z/x/y through it would cache /z/x/y under a node that an
    // invalidation of x lists and evicts as /a/x.
    assert!(!c.fill(
        b"ns",
        Start::Root(dir(ROOT, 0o755, 0)),
        &[b"z", b"x", b"y"],
        &[dir(20, 0o755, 0), dir(30, 0o755, 0), dir(31, 0o755, 0)],
        20,
        |_| true,
    ));
    c.applied(&index_key(ROOT, b"a"));
    c.quiesce();
    assert!(c.fill(
        b"ns",
        Start::Root(dir(ROOT, 0o755, 0)),
        &[b"z", b"x", b"y"],
        &[dir(20, 0o755, 0), dir(30, 0o755, 0), dir(31, 0o755, 0)],
        20,
        |_| true,
    ));
    // Now a chmod of x lists /z/x, and lookups under it bypass the cache at once.
    c.applied(&index_key(20, b"x"));
    assert_eq!(probe(&c, &[b"z", b"x", b"y"], 3, 30), None);
    c.quiesce();
    assert_eq!(c.stats().entries, 0);
}
