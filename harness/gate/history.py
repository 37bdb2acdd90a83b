"""The gate's history: one JSON line per gate run in ``results/bench/history.jsonl``, and its plot over commits.

Each line: ``{"utc", "commit", "dirty", "verdict", "layers": {layer: status}, "figures": {name: number}}``; figure
names are ``case/figure`` (``gcn-budget/io_bytes_per_epoch/h2d``, ``gat-memory/instructions``) or
``wallclock/model/...``. ``python -m harness.gate --plot`` draws every figure over the runs (asv publish's idea),
each as a share of its first value, one panel per kind of figure, into one PNG.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.record import git_info, utc_iso, utc_now

# Panels of the plot: a title and the figure-name fragment that selects its lines.
PANELS = (
    ("bytes per link per epoch", "/io_bytes_per_epoch/"), ("accounted peak per tier", "/tier_peak_bytes/"),
    ("predicted epoch time", "/predicted_epoch_s"), ("aten calls per epoch", "/kernel_calls_per_epoch"),
    ("final loss", "/final_loss"), ("instructions per epoch", "/instructions"),
    ("throughput, edges x layers / s", "/edge_layers_per_s"), ("epoch-time ratios (A/B)", "_over_"),
)


def append(path: Path, verdict: str, layers: dict[str, str], figures: dict[str, float]) -> dict[str, Any]:
    git = git_info()
    line = {"utc": utc_iso(utc_now()), "commit": git["commit"], "dirty": git["dirty"], "verdict": verdict,
            "layers": layers, "figures": dict(sorted(figures.items()))}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    return line


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no gate history yet; every python -m harness.gate run appends a line")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(path: Path, out: Path) -> Path:
    """Every figure of the history over runs, relative to its first value, one panel per kind; one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = read(path)
    labels = [f"{(run['commit'] or '?')[:7]}{'+' if run['dirty'] else ''}" for run in runs]
    names = sorted({name for run in runs for name in run["figures"]})
    figure, axes = plt.subplots(len(PANELS), 1, figsize=(max(8, 0.5 * len(runs) + 4), 3 * len(PANELS)),
                                squeeze=False)
    for (title, fragment), axis in zip(PANELS, axes[:, 0]):
        for name in (n for n in names if fragment in n):
            points = [(i, run["figures"][name]) for i, run in enumerate(runs) if run["figures"].get(name)]
            if not points:
                continue
            first = points[0][1]
            axis.plot([i for i, _ in points], [v / first for _, v in points], marker="o", label=name, lw=1)
        axis.set_title(f"{title} (relative to its first run)")
        axis.set_xticks(range(len(runs)), labels, rotation=60, fontsize=7)
        if axis.lines:
            axis.legend(fontsize=5, ncol=3, loc="upper left")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
