//! Results: mdtest's SUMMARY table, latency percentiles, and the JSON file `mdtest report`
//! reads.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// One phase over all iterations.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseResult {
    /// mdtest's name for it ("Directory creation", ...).
    pub name: String,
    /// Operations per iteration.
    pub ops: Vec<u64>,
    /// Seconds per iteration.
    pub seconds: Vec<f64>,
    /// Rate per iteration, ops/s.
    pub rates: Vec<f64>,
    /// Latency percentiles over all iterations, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    #[serde(skip)]
    hist: Option<Histogram<u64>>,
}

impl PhaseResult {
    /// An empty result.
    pub fn new(name: &str) -> Result<PhaseResult, String> {
        Ok(PhaseResult {
            name: name.to_string(),
            ops: Vec::new(),
            seconds: Vec::new(),
            rates: Vec::new(),
            p50_us: 0.0,
            p99_us: 0.0,
            p999_us: 0.0,
            hist: Some(Histogram::new(3).map_err(|e| e.to_string())?),
        })
    }

    /// Adds one iteration.
    pub fn push(&mut self, ops: u64, secs: f64, hist: &Histogram<u64>) -> Result<(), String> {
        self.ops.push(ops);
        self.seconds.push(secs);
        self.rates
            .push(if secs > 0.0 { ops as f64 / secs } else { 0.0 });
        if let Some(h) = &mut self.hist {
            h.add(hist).map_err(|e| e.to_string())?;
            if !h.is_empty() {
                self.p50_us = h.value_at_quantile(0.50) as f64 / 1e3;
                self.p99_us = h.value_at_quantile(0.99) as f64 / 1e3;
                self.p999_us = h.value_at_quantile(0.999) as f64 / 1e3;
            }
        }
        Ok(())
    }

    /// Max, min, mean and standard deviation of the rates.
    pub fn stats(&self) -> (f64, f64, f64, f64) {
        let n = self.rates.len().max(1) as f64;
        let max = self.rates.iter().copied().fold(0.0, f64::max);
        let min = self.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = self.rates.iter().sum::<f64>() / n;
        let var = self.rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
        (
            max,
            if min.is_finite() { min } else { 0.0 },
            mean,
            var.sqrt(),
        )
    }
}

/// One scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// Its label.
    pub label: String,
    /// Items per task.
    pub items_per_task: u64,
    /// Directories in each tree.
    pub tree_nodes: u64,
    /// Whether tasks had their own directories.
    pub unique: bool,
    /// The phases, in the order they ran.
    pub phases: Vec<PhaseResult>,
}

/// A whole run, as written by `--json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// Format version.
    pub version: u32,
    /// The command line.
    pub command: String,
    /// The backend.
    pub backend: String,
    /// The run's label.
    pub label: String,
    /// Tasks.
    pub tasks: u32,
    /// Iterations.
    pub iterations: u32,
    /// The scenarios.
    pub scenarios: Vec<ScenarioResult>,
}

/// The Mantle paper's name of an mdtest phase, for the mantle preset.
pub fn mantle_name(phase: &str) -> Option<&'static str> {
    Some(match phase {
        "File creation" => "create",
        "File removal" => "delete",
        "File stat" => "objstat",
        "Directory stat" => "dirstat",
        "Directory creation" => "mkdir",
        "Directory removal" => "rmdir",
        "Directory rename" => "dirrename",
        _ => return None,
    })
}

/// mdtest's SUMMARY table for one scenario, with latency percentiles.
pub fn summary(sc: &ScenarioResult, iterations: u32) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "\n[{}] {} items per task, {} tree director{} per task tree\n",
        sc.label,
        sc.items_per_task,
        sc.tree_nodes,
        if sc.tree_nodes == 1 { "y" } else { "ies" }
    ));
    s.push_str(&format!("SUMMARY rate: (of {iterations} iterations)\n"));
    s.push_str(
        "   Operation                      Max            Min           Mean        Std Dev      p50 us      p99 us     p999 us\n",
    );
    s.push_str(
        "   ---------                      ---            ---           ----        -------      ------      ------     -------\n",
    );
    for p in &sc.phases {
        let (max, min, mean, sd) = p.stats();
        let lat = if p.p50_us > 0.0 {
            format!("{:>11.1} {:>11.1} {:>11.1}", p.p50_us, p.p99_us, p.p999_us)
        } else {
            // An untimed loop (the syscall baseline) has no per-operation latencies.
            format!("{:>11} {:>11} {:>11}", "-", "-", "-")
        };
        s.push_str(&format!(
            "   {:<22}: {:>14.3} {:>14.3} {:>14.3} {:>14.3} {lat}\n",
            p.name, max, min, mean, sd
        ));
    }
    s
}
