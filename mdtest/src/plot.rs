//! `mdtest report RUN.json... --out DIR`: several runs side by side, as a Markdown table and
//! SVG charts (throughput per phase per run; throughput against tasks when the runs differ in
//! task count).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use plotters::prelude::*;

use crate::report::{mantle_name, RunResult};

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Loads runs written by `--json`.
pub fn load(paths: &[impl AsRef<Path>]) -> Result<Vec<RunResult>, String> {
    paths
        .iter()
        .map(|p| {
            let p = p.as_ref();
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("{}: not an mdtest-rs result: {e}", p.display()))
        })
        .collect()
}

fn run_name(r: &RunResult) -> String {
    format!("{} ({} tasks)", r.label, r.tasks)
}

/// Writes `report.md` and the SVG charts into `out`; returns the files written.
pub fn report(runs: &[RunResult], out: &Path) -> Result<Vec<String>, String> {
    if runs.is_empty() {
        return Err("no runs to report".into());
    }
    std::fs::create_dir_all(out).map_err(err("--out"))?;
    // Columns by label, then by task count (not by file name: 8 tasks before 64).
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| (&a.label, a.tasks).cmp(&(&b.label, b.tasks)));
    let runs = &sorted[..];
    let mut written = Vec::new();
    // scenario -> phase order
    let mut scenarios: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in runs {
        for sc in &r.scenarios {
            let phases = scenarios.entry(sc.label.clone()).or_default();
            for p in &sc.phases {
                if !phases.contains(&p.name) {
                    phases.push(p.name.clone());
                }
            }
        }
    }
    let rate = |r: &RunResult, sc: &str, ph: &str| -> Option<(f64, f64)> {
        let s = r.scenarios.iter().find(|s| s.label == sc)?;
        let p = s.phases.iter().find(|p| p.name == ph)?;
        Some((p.stats().2, p.p99_us))
    };
    let mut md = String::from(
        "# mdtest-rs report\n\nMean rate in ops/s over the iterations (p99 latency in µs).\n",
    );
    md.push_str("\nRuns:\n\n");
    for r in runs {
        md.push_str(&format!("- **{}**: `{}`\n", run_name(r), r.command));
    }
    for (sc, phases) in &scenarios {
        md.push_str(&format!("\n## {sc}\n\n| phase |"));
        for r in runs {
            md.push_str(&format!(" {} |", run_name(r)));
        }
        md.push_str("\n|---|");
        for _ in runs {
            md.push_str("---:|");
        }
        md.push('\n');
        for ph in phases {
            let alias = mantle_name(ph)
                .map(|a| format!(" ({a})"))
                .unwrap_or_default();
            md.push_str(&format!("| {ph}{alias} |"));
            for r in runs {
                match rate(r, sc, ph) {
                    Some((m, p99)) => md.push_str(&format!(" {m:.0} ({p99:.0}) |")),
                    None => md.push_str(" - |"),
                }
            }
            md.push('\n');
        }
        let file = format!("throughput-{}.svg", slug(sc));
        bars(&out.join(&file), sc, phases, runs, &rate)?;
        md.push_str(&format!("\n![{sc}]({file})\n"));
        written.push(file);
    }
    // Throughput against tasks, one chart per scenario and phase, one line per label.
    let tasks: BTreeSet<u32> = runs.iter().map(|r| r.tasks).collect();
    if tasks.len() > 1 {
        md.push_str("\n## Throughput against tasks\n");
        for (sc, phases) in &scenarios {
            for ph in phases {
                let file = format!("scaling-{}-{}.svg", slug(sc), slug(ph));
                if scaling(&out.join(&file), sc, ph, runs, &rate)? {
                    md.push_str(&format!("\n![{sc}: {ph}]({file})\n"));
                    written.push(file);
                }
            }
        }
    }
    std::fs::write(out.join("report.md"), md).map_err(err("report.md"))?;
    written.push("report.md".into());
    Ok(written)
}

type RateFn<'a> = dyn Fn(&RunResult, &str, &str) -> Option<(f64, f64)> + 'a;

fn bars(
    path: &Path,
    sc: &str,
    phases: &[String],
    runs: &[RunResult],
    rate: &RateFn<'_>,
) -> Result<(), String> {
    let values: Vec<f64> = runs
        .iter()
        .flat_map(|r| {
            phases
                .iter()
                .filter_map(move |p| rate(r, sc, p).map(|x| x.0))
        })
        .filter(|v| *v > 0.0)
        .collect();
    let max = values.iter().copied().fold(1.0, f64::max) * 2.0;
    let min = values.iter().copied().fold(max, f64::min).max(1.0) / 2.0;
    let root = SVGBackend::new(path, (1500, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err("svg"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("mdtest-rs: {sc} (ops/s, log scale)"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..phases.len() as f64, (min..max).log_scale())
        .map_err(err("chart"))?;
    let names: Vec<String> = phases.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(phases.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("ops/s")
        .draw()
        .map_err(err("mesh"))?;
    let w = 0.8 / runs.len() as f64;
    for (ri, r) in runs.iter().enumerate() {
        let color = Palette99::pick(ri).mix(0.9);
        let rects: Vec<Rectangle<(f64, f64)>> = phases
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let v = rate(r, sc, p)?.0;
                let x0 = i as f64 + 0.1 + ri as f64 * w;
                Some(Rectangle::new(
                    [(x0, min), (x0 + w, v.max(min))],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(err("bars"))?
            .label(run_name(r))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(err("legend"))?;
    root.present().map_err(err("svg"))
}

fn scaling(
    path: &Path,
    sc: &str,
    ph: &str,
    runs: &[RunResult],
    rate: &RateFn<'_>,
) -> Result<bool, String> {
    let mut series: BTreeMap<String, Vec<(u32, f64)>> = BTreeMap::new();
    for r in runs {
        if let Some((v, _)) = rate(r, sc, ph) {
            series
                .entry(r.label.clone())
                .or_default()
                .push((r.tasks, v));
        }
    }
    series.retain(|_, v| v.len() > 1);
    if series.is_empty() {
        return Ok(false);
    }
    let max_tasks = series.values().flatten().map(|p| p.0).max().unwrap_or(1);
    let max_rate = series.values().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err("svg"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{sc}: {ph}"), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(90)
        .build_cartesian_2d(0u32..max_tasks + 1, 0f64..max_rate)
        .map_err(err("chart"))?;
    chart
        .configure_mesh()
        .x_desc("tasks")
        .y_desc("ops/s")
        .draw()
        .map_err(err("mesh"))?;
    for (i, (label, mut pts)) in series.into_iter().enumerate() {
        pts.sort_by_key(|p| p.0);
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err("line"))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(err("points"))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(err("legend"))?;
    root.present().map_err(err("svg"))?;
    Ok(true)
}
