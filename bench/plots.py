#!/usr/bin/env python3
"""Plots of a `pipeinfer bench --scenario` run (called by the runner; can be rerun by hand).

Reads results.csv (one line per row x mode x repeat) and itl.csv (one line per inter-token
latency sample), writes PNGs into --out-dir and prints the name of each file it wrote:

  speedup_<axis>.png  speedup vs plain against each axis that varies (agreement, stages,
                      link, concurrency), one line per mode; dotted: the planner's prediction
  throughput.png      tokens/s per mode and row, with the speedup vs plain on each bar (up to
                      12 rows, e.g. the paper's three pairs)
  ttft.png            time to first token (p50, with p99 whiskers) per mode and row
  itl_cdf.png         cumulative distribution of the inter-token latency per mode

Needs python3-matplotlib (Debian), listed in scripts/setup.sh.
"""

import argparse
import csv
import math
import os
import statistics
import sys
from collections import defaultdict

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
except ImportError:
    sys.exit("error: bench/plots.py needs matplotlib (apt-get install python3-matplotlib)")

AXES = {
    # axis: (title, key of a results.csv line, log x axis)
    "agreement": ("draft agreement", lambda r: float(r["agreement"]), False),
    "stages": ("pipeline stages", lambda r: int(r["stages"]), False),
    "link": ("link rate (Mbit/s)", lambda r: float(r["link_mbps"]), True),
    "concurrency": ("concurrent requests N", lambda r: int(r["concurrency"]), True),
}
OTHER = ["agreement", "stages", "stage_us", "token_us", "draft_us", "link_mbps", "link_us",
         "concurrency"]
AXIS_FIELDS = {"agreement": ["agreement"], "stages": ["stages"],
               "link": ["link_mbps", "link_us"], "concurrency": ["concurrency"]}
STYLE = {"plain": ("#555555", "o"), "sync": ("#1f77b4", "s"), "pipeinfer": ("#d62728", "^"),
         "pipeinfer --no-cancel": ("#ff7f0e", "v"),
         "pipeinfer --no-continuous": ("#2ca02c", "D"),
         "sync --paper-tree": ("#9ecae1", "P"), "pipeinfer --paper-tree": ("#9467bd", "X")}


def num(s):
    try:
        v = float(s)
        return v if math.isfinite(v) else None
    except (TypeError, ValueError):
        return None


def load(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def modes_of(lines):
    out = []
    for r in lines:
        if r["mode"] not in out:
            out.append(r["mode"])
    return out


def per_row(lines):
    """{row id: {"line": first line, "tok": {mode: mean tokens/s}, "pred": {mode: predicted}}}"""
    rows = {}
    acc = defaultdict(list)
    for r in lines:
        rid = int(r["row"])
        rows.setdefault(rid, {"line": r, "tok": {}, "pred": {}})
        v = num(r["tokens_per_s"])
        if v is not None:
            acc[(rid, r["mode"])].append(v)
        p = num(r["predicted_tokens_per_s"])
        if p is not None:
            rows[rid]["pred"][r["mode"]] = p
    for (rid, mode), vals in acc.items():
        rows[rid]["tok"][mode] = statistics.mean(vals)
    return rows


def axis_series(rows, axis):
    """The rows to plot against `axis`: those whose other settings are one combination, the
    combination with the most distinct values of the axis (ties: the first in row order)."""
    key = AXES[axis][1]
    fields = AXIS_FIELDS[axis]
    groups = defaultdict(list)
    for rid in sorted(rows):
        line = rows[rid]["line"]
        other = tuple((f, line[f]) for f in OTHER if f not in fields) + (("group", line["group"]),)
        groups[other].append(rid)
    best = max(groups.values(), key=lambda ids: len({key(rows[i]["line"]) for i in ids}))
    return sorted(best, key=lambda i: key(rows[i]["line"]))


def varied(rows, axis):
    key = AXES[axis][1]
    return len({key(r["line"]) for r in rows.values()}) > 1


def style(mode):
    return STYLE.get(mode, ("#9467bd", "x"))


def speedup_plot(rows, modes, axis, out_dir, scenario):
    ids = axis_series(rows, axis)
    if len(ids) < 2:
        return None
    title, key, logx = AXES[axis]
    xs_all = [key(rows[i]["line"]) for i in ids]
    if axis == "link":  # 0 = no emulated link: drawn at 10x the fastest emulated rate
        finite = [x for x in xs_all if x > 0]
        top = max(finite) * 10 if finite else 1.0
        xs_all = [x if x > 0 else top for x in xs_all]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    ax.axhline(1.0, color=style("plain")[0], linewidth=1, linestyle="--", label="plain (1.0x)")
    for mode in modes:
        if mode == "plain":
            continue
        pts = [(x, rows[i]["tok"][mode] / rows[i]["tok"]["plain"])
               for x, i in zip(xs_all, ids)
               if rows[i]["tok"].get(mode) and rows[i]["tok"].get("plain")]
        if not pts:
            continue
        color, marker = style(mode)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                linewidth=2, label=mode)
        pred = [(x, rows[i]["pred"][mode] / rows[i]["pred"]["plain"])
                for x, i in zip(xs_all, ids)
                if rows[i]["pred"].get(mode) and rows[i]["pred"].get("plain")]
        if pred:
            ax.plot([p[0] for p in pred], [p[1] for p in pred], linestyle=":", color=color,
                    linewidth=1.5, label=mode + " (predicted)")
    if logx:
        ax.set_xscale("log")
    ax.set_xticks(sorted(set(xs_all)))
    labels = []
    for x in sorted(set(xs_all)):
        if axis == "link" and x not in [key(rows[i]["line"]) for i in ids]:
            labels.append("none")
        elif axis == "agreement":
            labels.append(f"{x:.2f}")
        else:
            labels.append(f"{x:g}")
    ax.set_xticklabels(labels)
    ax.minorticks_off()
    ax.set_xlabel(title)
    ax.set_ylabel("speedup vs plain (tokens/s ratio)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{scenario}: speedup vs {title}")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    name = f"speedup_{axis}.png"
    fig.savefig(os.path.join(out_dir, name))
    plt.close(fig)
    return name


def throughput_plot(rows, modes, out_dir, scenario):
    ids = sorted(rows)
    if len(ids) > 12:
        return None
    fig, ax = plt.subplots(figsize=(max(6.5, min(12, 1.0 + 1.2 * len(ids))), 4.8), dpi=120)
    width = 0.8 / max(1, len(modes))
    for k, m in enumerate(modes):
        xs, ys, notes = [], [], []
        for j, i in enumerate(ids):
            v = rows[i]["tok"].get(m)
            if v is None:
                continue
            xs.append(j + (k - (len(modes) - 1) / 2) * width)
            ys.append(v)
            plain = rows[i]["tok"].get("plain")
            notes.append(f"{v / plain:.2f}x" if plain and m != "plain" else "")
        color, _ = style(m)
        bars = ax.bar(xs, ys, width=width, color=color, label=m)
        for b, note in zip(bars, notes):
            if note:
                ax.annotate(note, (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                            textcoords="offset points")
    ax.set_xticks(range(len(ids)))
    ax.set_xticklabels([row_label(rows[i]["line"]) for i in ids], fontsize=8,
                       rotation=30 if len(ids) > 4 else 0,
                       ha="right" if len(ids) > 4 else "center")
    ax.set_ylabel("tokens/s (label: speedup vs plain)")
    ax.set_xlabel("row")
    ax.margins(y=0.12)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"{scenario}: tokens/s per mode")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "throughput.png"))
    plt.close(fig)
    return "throughput.png"


def ttft_plot(lines, rows, modes, out_dir, scenario):
    # p50 per row and mode (mean over repeats), p99 as the whisker top.
    p50 = defaultdict(list)
    p99 = defaultdict(list)
    for r in lines:
        a, b = num(r["ttft_p50_ms"]), num(r["ttft_p99_ms"])
        if a is not None:
            p50[(int(r["row"]), r["mode"])].append(a)
        if b is not None:
            p99[(int(r["row"]), r["mode"])].append(b)
    ids = sorted(rows)
    many = len(ids) > 12
    fig, ax = plt.subplots(figsize=(max(6.5, min(12, 1.0 + 0.9 * len(ids))), 5.4 if many else 4.8),
                           dpi=120)
    if many:  # markers per mode and row: bars would be too thin
        for m in modes:
            pts = [(j, statistics.mean(p50[(i, m)])) for j, i in enumerate(ids) if p50.get((i, m))]
            color, marker = style(m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                    linestyle="-", linewidth=1, label=m)
        ax.set_xticks(range(len(ids)))
        ax.set_xticklabels([row_label(rows[i]["line"]) for i in ids], fontsize=7, rotation=50,
                           ha="right")
        ax.set_xlabel("row")
        ax.set_ylabel("time to first token p50, ms")
        ax.legend(fontsize=8)
    else:
        width = 0.8 / max(1, len(modes))
        for k, m in enumerate(modes):
            xs, ys, err = [], [], []
            for j, i in enumerate(ids):
                if not p50.get((i, m)):
                    continue
                y = statistics.mean(p50[(i, m)])
                top = statistics.mean(p99[(i, m)]) if p99.get((i, m)) else y
                xs.append(j + (k - (len(modes) - 1) / 2) * width)
                ys.append(y)
                err.append(max(0.0, top - y))
            color, _ = style(m)
            ax.bar(xs, ys, width=width, color=color, label=m,
                   yerr=[[0] * len(err), err], capsize=2, ecolor="#333333")
        ax.set_xticks(range(len(ids)))
        ax.set_xticklabels([row_label(rows[i]["line"]) for i in ids], fontsize=8,
                           rotation=30 if len(ids) > 4 else 0, ha="right" if len(ids) > 4 else "center")
        ax.set_xlabel("row")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if not many:
        ax.set_ylabel("time to first token, ms (bar p50, whisker p99)")
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"{scenario}: time to first token per mode")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "ttft.png"))
    plt.close(fig)
    return "ttft.png"


def row_label(line):
    if line.get("label"):
        return line["label"]
    parts = [f"#{line['row']}"]
    if line.get("group"):
        parts.append(line["group"])
    parts.append(f"a={float(line['agreement']):.2f} s={line['stages']} N={line['concurrency']}")
    return " ".join(parts)


def itl_plot(itl_path, modes, out_dir, scenario):
    samples = defaultdict(list)
    with open(itl_path, newline="") as f:
        for r in csv.DictReader(f):
            v = num(r["itl_ms"])
            if v is not None:
                samples[r["mode"]].append(max(v, 1e-3))
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for m in modes:
        vals = sorted(samples.get(m, []))
        if not vals:
            continue
        n = len(vals)
        color, _ = style(m)
        ax.step(vals, [(k + 1) / n for k in range(n)], where="post", color=color, linewidth=2,
                label=f"{m} (p50 {vals[n // 2]:.1f} ms, n={n})")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("inter-token latency, ms (log scale; all rows)")
    ax.set_ylabel("fraction of tokens")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{scenario}: inter-token latency CDF per mode")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "itl_cdf.png"))
    plt.close(fig)
    return "itl_cdf.png"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", required=True, help="results.csv")
    ap.add_argument("--itl", required=True, help="itl.csv")
    ap.add_argument("--out-dir", required=True)
    a = ap.parse_args()
    lines = load(a.csv)
    if not lines:
        sys.exit("error: " + a.csv + " has no results")
    scenario = lines[0]["scenario"]
    modes = modes_of(lines)
    rows = per_row(lines)
    written = []
    for axis in AXES:
        if varied(rows, axis) and "plain" in modes:
            name = speedup_plot(rows, modes, axis, a.out_dir, scenario)
            if name:
                written.append(name)
    name = throughput_plot(rows, modes, a.out_dir, scenario)
    if name:
        written.append(name)
    written.append(ttft_plot(lines, rows, modes, a.out_dir, scenario))
    written.append(itl_plot(a.itl, modes, a.out_dir, scenario))
    for name in written:
        print(name)


if __name__ == "__main__":
    main()
