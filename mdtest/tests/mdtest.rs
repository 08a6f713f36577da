//! Phase accounting, tree shape, option errors, and a report, on real directories and a real
//! embedded Mantle store.

use std::path::Path;

use clap::Parser;
use mdtest::options::{plan, Args};

fn args(line: &str) -> Args {
    Args::try_parse_from(std::iter::once("mdtest").chain(line.split_whitespace())).expect("parse")
}

fn count(dir: &Path) -> (u64, u64) {
    let (mut dirs, mut files) = (0, 0);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            if e.file_type().expect("type").is_dir() {
                dirs += 1;
                todo.push(e.path());
            } else {
                files += 1;
            }
        }
    }
    (dirs, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_shape_and_phase_accounting_on_posix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("t");
    let d = d.to_str().expect("utf8");
    // Create only: 3 tasks, unique trees of depth 2, branching 3 (13 nodes), 4 items per node.
    let a = args(&format!("-z 2 -b 3 -I 4 -u -C --tasks 3 -d {d}"));
    let r = mdtest::execute(&a, "test".into())
        .await
        .expect("create run");
    let sc = &r.scenarios[0];
    assert_eq!(sc.tree_nodes, 13);
    assert_eq!(sc.items_per_task, 52);
    let ops = |name: &str| sc.phases.iter().find(|p| p.name == name).map(|p| p.ops[0]);
    assert_eq!(ops("Tree creation"), Some(3 * 13));
    assert_eq!(ops("Directory creation"), Some(3 * 52));
    assert_eq!(ops("File creation"), Some(3 * 52));
    assert_eq!(ops("Directory removal"), None, "-C creates only");
    // On disk: the iteration directory holds 3 trees of 13 directories, each node 4 dirs and
    // 4 files named the way mdtest names them.
    let iter_dir = Path::new(d).join("test-dir.0-0");
    assert_eq!(count(&iter_dir), (3 * 13 + 3 * 52, 3 * 52));
    let deepest = iter_dir.join("mdtest_tree.2.0/mdtest_tree.2.3/mdtest_tree.2.12");
    assert!(
        deepest.join("dir.mdtest.2.3").is_dir(),
        "{}",
        deepest.display()
    );
    assert!(deepest.join("file.mdtest.2.0").is_file());
    // Stat only, with a stride: every task stats its neighbour's items.
    let a = args(&format!("-z 2 -b 3 -I 4 -u -T -N 1 --tasks 3 -d {d}"));
    let r = mdtest::execute(&a, "test".into()).await.expect("stat run");
    let names: Vec<&str> = r.scenarios[0]
        .phases
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["Directory stat", "File stat", "File read"]);
    assert!(r.scenarios[0].phases.iter().all(|p| p.ops[0] == 3 * 52));
    // Remove only: everything goes.
    let a = args(&format!("-z 2 -b 3 -I 4 -u -r --tasks 3 -d {d}"));
    mdtest::execute(&a, "test".into())
        .await
        .expect("remove run");
    assert!(!iter_dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_directory_with_iterations_and_json_report() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("t");
    let json = tmp.path().join("run.json");
    let a = args(&format!(
        "-n 50 -i 3 --tasks 4 -w 100 -e 100 -d {} --json {}",
        d.display(),
        json.display()
    ));
    let r = mdtest::execute(&a, "test".into()).await.expect("run");
    let sc = &r.scenarios[0];
    for p in &sc.phases {
        assert_eq!(p.rates.len(), 3, "{}", p.name);
        let expect = if p.name.starts_with("Tree") { 1 } else { 200 };
        assert!(
            p.ops.iter().all(|o| *o == expect),
            "{}: {:?}",
            p.name,
            p.ops
        );
        let (max, min, mean, _) = p.stats();
        assert!(min <= mean && mean <= max && min > 0.0, "{}", p.name);
    }
    assert_eq!(count(&d), (0, 0), "all iterations cleaned up");
    let runs = mdtest::plot::load(&[&json]).expect("load");
    let out = tmp.path().join("report");
    let mut second = runs[0].clone();
    second.tasks = 8;
    let files = mdtest::plot::report(&[runs[0].clone(), second], &out).expect("report");
    assert!(files.iter().any(|f| f.ends_with(".svg")));
    let md = std::fs::read_to_string(out.join("report.md")).expect("md");
    assert!(md.contains("| Directory creation (mkdir) |"), "{md}");
    let svg = std::fs::read_to_string(out.join("throughput-mdtest.svg")).expect("svg");
    assert!(svg.contains("<svg") && svg.contains("Directory creation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_on_the_embedded_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let a = args(&format!(
        "--preset spark -n 30 --tasks 8 -d /bench --backend embedded:{}",
        store.display()
    ));
    let r = mdtest::execute(&a, "test".into()).await.expect("spark");
    let labels: Vec<&str> = r.scenarios.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["shared", "unique"]);
    for sc in &r.scenarios {
        let names: Vec<&str> = sc.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Tree creation",
                "Directory creation",
                "Directory stat",
                "Directory rename",
                "Directory removal",
                "Tree removal"
            ]
        );
        assert!(sc.phases[1..5].iter().all(|p| p.ops[0] == 240));
    }
    let a = args(&format!(
        "--preset deep --depth 6 -n 20 --tasks 2 -d /deep --backend embedded:{}",
        tmp.path().join("store2").display()
    ));
    let r = mdtest::execute(&a, "test".into()).await.expect("deep");
    assert_eq!(r.scenarios[1].label, "depth 6");
    assert_eq!(r.scenarios[1].tree_nodes, 6);
    assert!(r.scenarios[1]
        .phases
        .iter()
        .any(|p| p.name == "File stat" && p.ops[0] == 40));
}

#[test]
fn option_errors_explain_themselves() {
    let cases = [
        ("-n 10 -D -F", "exclude each other"),
        ("-n 10 --tasks 2 -N 2", "smaller than --tasks"),
        ("-D", "-n"),
        ("-n 10 -L", "needs a tree"),
        ("-n 10 -I 3 -z 1 -b 2", "disagree"),
        ("-n 2 -z 2 -b 2", "fewer than one item"),
        ("-n 10 --tasks 0", "--tasks"),
        ("-n 10 -i 0", "iterations"),
    ];
    for (line, needle) in cases {
        let e = plan(&args(line)).expect_err(line);
        assert!(e.contains(needle), "{line}: {e}");
    }
    assert!(Args::try_parse_from(["mdtest", "-n", "ten"]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_explain_themselves() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let e = mdtest::execute(&args("-n 1 --backend ftp://x"), "t".into())
        .await
        .expect_err("bad backend");
    assert!(e.contains("unknown backend"), "{e}");
    let line = format!(
        "-n 1 -w 10 -d /x --backend embedded:{}",
        tmp.path().display()
    );
    let e = mdtest::execute(&args(&line), "t".into())
        .await
        .expect_err("-w");
    assert!(e.contains("has none (metadata only)"), "{e}");
}
