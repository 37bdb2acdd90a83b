"""Plots from run records: a pure step over record files (STYLE.md #11), PNG files, matplotlib's Agg renderer.

- ``speedup.png`` (``+sweep=speedup``): speedup over pyg per model x graph density, grouped bars per system;
- ``prediction.png`` (``+sweep=planner``): predicted vs measured median epoch of flexgnn plans, log-log, y = x,
  one colour per planner;
- ``epoch_vs_size.png``, ``claims.png``, ``memory_vs_cap.png`` (records under ``hardware.memory_cap``):
  ``harness/plots_claims.py``.

``write_plots(records, out_dir)`` draws the plots whose records are present and skips the others silently;
``python -m harness.report ... --out DIR`` and the end of every sweep call it.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from harness.summary import BASELINE, summarize
from harness.plots_claims import hardware_line, new_figure, write_claim_plots
from harness.report_planner import PLANNERS, planner_of


def speedup_plot(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Grouped bars: one group per (model, avg_degree), one bar per system (median when repeated); None when
    no system other than pyg has a speedup."""
    rows = [row for row in summarize(records) if row["speedup_vs_pyg"] is not None and row["system"] != BASELINE
            and not row["memory_cap"]]  # pyg against itself is always 1.0: the line at 1 stands for it
    if not rows:
        return None
    groups = sorted({(str(row["model"]), row["avg_degree"] or 0) for row in rows}, key=lambda g: (g[0], g[1]))
    systems = sorted({str(row["run"]) for row in rows})
    figure = new_figure(max(6.0, 0.9 * len(groups) * len(systems) ** 0.5 + 3))
    axes = figure.add_subplot()
    width = 0.8 / len(systems)
    for i, system in enumerate(systems):
        heights = [statistics.median([row["speedup_vs_pyg"] for row in rows if row["run"] == system
                                      and (str(row["model"]), row["avg_degree"] or 0) == group] or [0.0])
                   for group in groups]
        axes.bar([g + (i - (len(systems) - 1) / 2) * width for g in range(len(groups))], heights, width,
                 label=system)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(groups)), [f"{model}\ndeg {degree:g}" for model, degree in groups])
    axes.set_ylabel(f"speedup over {BASELINE} (median epoch)")
    sizes = sorted({f"{row['num_nodes'] / 1e3:g}k nodes" for row in rows if row["num_nodes"]})
    machine = hardware_line([r for r in records if r.get("status") == "ok" and not (r.get("memory_cap") or {})])
    axes.set_title(f"Epoch-time speedup over {BASELINE} (line at 1 = {BASELINE}), everything in memory\n"
                   f"{', '.join(sizes)}; {machine.split('; cap')[0]}", fontsize="medium")
    axes.legend(title="system")
    figure.savefig(path, dpi=120)
    return path


def prediction_plot(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Scatter of the cost model's prediction against the measured median epoch per flexgnn run; None when no
    flexgnn record has both."""
    points: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        result = record.get("result") or {}
        measured, predicted = result.get("median_epoch_s"), (result.get("extra") or {}).get("predicted_epoch_s")
        if record.get("system") == "flexgnn" and record.get("status") == "ok" and measured and predicted:
            points.setdefault(str(planner_of(record)), []).append((measured, predicted))
    if not points:
        return None
    figure = new_figure(6.5, 5.5)
    axes = figure.add_subplot()
    order = {name: i for i, name in enumerate(PLANNERS)}
    for i, name in enumerate(sorted(points, key=lambda n: (order.get(n, 99), n))):
        colour = f"C{order.get(name, len(PLANNERS) + i) % 10}"  # one colour per planner in every plot
        axes.scatter(*zip(*points[name]), label=name, s=22, alpha=0.8, color=colour)
    values = [v for pairs in points.values() for pair in pairs for v in pair]
    low, high = min(values) / 1.5, max(values) * 1.5
    axes.plot([low, high], [low, high], color="black", linewidth=0.8, label="y = x")
    for factor in (0.75, 1.25):  # the +-25% error goal of issue 4
        axes.plot([low, high], [low * factor, high * factor], color="grey", linewidth=0.6, linestyle="--")
    axes.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high), xlabel="measured median epoch (s)",
             ylabel="predicted epoch (s)", title="Cost model: predicted vs measured (dashed: +-25%)")
    from matplotlib.ticker import FuncFormatter, LogLocator

    for axis in (axes.xaxis, axes.yaxis):  # plain seconds at 1, 2 and 5 per decade: scientific labels collide
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    axes.legend(title="planner", fontsize="small")
    figure.savefig(path, dpi=120)
    return path


def write_plots(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """The plots these records support, as PNG files in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = [speedup_plot(records, out_dir / "speedup.png"), prediction_plot(records, out_dir / "prediction.png")]
    return [path for path in drawn if path is not None] + write_claim_plots(records, out_dir)
