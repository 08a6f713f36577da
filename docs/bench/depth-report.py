#!/usr/bin/env python3
"""Summarizes `run-indexnode.sh` results: per set-up and depth D, the objstat and create rates
at depth D and at depth 1 (from the same run) and their ratio, as a Markdown table on stdout and
`ratio-stat.svg` / `ratio-create.svg` (ratio against depth) in the output directory.

    python3 docs/bench/depth-report.py DIR N TASKS ITER > DIR/report.md
"""

import glob
import json
import os
import re
import sys

SETUPS = ["embedded cache", "embedded no cache", "grpc cache", "grpc no cache"]
COLORS = ["#1f77b4", "#9ecae1", "#d62728", "#fc9272"]


def rate(scenario, phase):
    for p in scenario["phases"]:
        if p["name"] == phase:
            r = sorted(p["rates"])
            return r[len(r) // 2]
    return None


def load(out):
    rows = {}
    for f in glob.glob(os.path.join(out, "*.json")):
        m = re.search(r"-(\d+)\.json$", f)
        if not m:
            continue
        depth = int(m.group(1))
        run = json.load(open(f))
        sc = run["scenarios"]
        one, deep = sc[0], sc[-1]
        rows[(run["label"], depth)] = {
            phase: (rate(one, phase), rate(deep, phase))
            for phase in ("File stat", "File creation")
        }
    return rows


def svg(rows, phase, path):
    depths = sorted({d for (_, d) in rows})
    w, h, left, bottom, top, right = 560, 320, 50, 40, 20, 150
    ratios = [
        rows[k][phase][1] / rows[k][phase][0]
        for k in rows
        if rows[k][phase][0] and rows[k][phase][1]
    ]
    ymax = max([1.2] + ratios)
    xs = {d: left + i * (w - left - right) / max(1, len(depths) - 1) for i, d in enumerate(depths)}

    def y(v):
        return top + (h - top - bottom) * (1 - v / ymax)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="14">{phase}: rate at depth D / rate at depth 1</text>',
        f'<line x1="{left}" y1="{y(0)}" x2="{w - right}" y2="{y(0)}" stroke="black"/>',
        f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{top}" stroke="black"/>',
        f'<line x1="{left}" y1="{y(1)}" x2="{w - right}" y2="{y(1)}" stroke="#999" stroke-dasharray="4"/>',
    ]
    for v in [0.25 * i for i in range(int(ymax / 0.25) + 1)]:
        parts.append(f'<text x="{left - 30}" y="{y(v) + 4}">{v:.2f}</text>')
    for d, x in xs.items():
        parts.append(f'<text x="{x - 6}" y="{h - bottom + 16}">{d}</text>')
    parts.append(f'<text x="{(w - right) / 2}" y="{h - 6}">depth D</text>')
    for i, s in enumerate(SETUPS):
        pts = []
        for d in depths:
            r = rows.get((s, d), {}).get(phase)
            if r and r[0] and r[1]:
                pts.append(f"{xs[d]:.1f},{y(r[1] / r[0]):.1f}")
        if pts:
            parts.append(
                f'<polyline fill="none" stroke="{COLORS[i]}" stroke-width="2" points="{" ".join(pts)}"/>'
            )
        parts.append(f'<rect x="{w - right + 10}" y="{top + 16 * i}" width="10" height="10" fill="{COLORS[i]}"/>')
        parts.append(f'<text x="{w - right + 24}" y="{top + 16 * i + 9}">{s}</text>')
    parts.append("</svg>")
    open(path, "w").write("\n".join(parts))


def main():
    out, n, tasks = sys.argv[1], sys.argv[2], sys.argv[3]
    iters = sys.argv[4] if len(sys.argv) > 4 else "1"
    rows = load(out)
    depths = sorted({d for (_, d) in rows})
    print("# Path depth and the TopDirPathCache\n")
    print(
        f"`bash docs/bench/run-indexnode.sh`: `mdtest --preset deep --depth D -n {n} --tasks {tasks}"
        f" -i {iters}`, depth 1 and depth D in the same run; rates are ops/s, medians of the"
        " iterations; ratio = depth D / depth 1.\n"
    )
    for phase in ("File stat", "File creation"):
        print(f"## {phase}\n")
        print("| set-up | " + " | ".join(f"D={d}" for d in depths) + " |")
        print("|---|" + "---|" * len(depths))
        for s in SETUPS:
            cells = []
            for d in depths:
                r = rows.get((s, d), {}).get(phase)
                if r and r[0] and r[1]:
                    cells.append(f"{r[1]:,.0f} ({r[1] / r[0]:.2f})")
                else:
                    cells.append("-")
            print(f"| {s} | " + " | ".join(cells) + " |")
        name = "ratio-stat.svg" if phase == "File stat" else "ratio-create.svg"
        svg(rows, phase, os.path.join(out, name))
        print(f"\n![{phase} ratio]({name})\n")


main()
