//! The `mdtest` binary: `mdtest [options]` runs a benchmark; `mdtest report RUN.json...
//! --out DIR` draws the comparison.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// `mdtest report`: plots and a Markdown table from JSON results.
#[derive(Parser, Debug)]
#[command(name = "mdtest report")]
struct ReportArgs {
    /// Result files written by `mdtest --json`.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Where to write report.md and the SVG charts.
    #[arg(long)]
    out: PathBuf,
}

/// The allocator: mimalloc measured about 12% less CPU per commit than glibc's (see
/// `docs/bench/tafdb.md`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("report") {
        let args = ReportArgs::parse_from(argv.iter().skip(1));
        let outcome =
            mdtest::plot::load(&args.runs).and_then(|runs| mdtest::plot::report(&runs, &args.out));
        return match outcome {
            Ok(files) => {
                for f in files {
                    println!("{}", args.out.join(f).display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mdtest report: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = mdtest::options::Args::parse();
    let command = argv.join(" ");
    // The embedded backend hosts a tablet in this process (see `tafdb::runtime_threads`).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(tafdb::runtime_threads())
        .enable_all()
        .max_blocking_threads((args.tasks as usize).max(1) + 8)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mdtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(mdtest::execute(&args, command)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mdtest: {e}");
            ExitCode::FAILURE
        }
    }
}
