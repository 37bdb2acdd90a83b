"""Plots of the claims (records under ``hardware.memory_cap``): a pure step over run records, PNG files.

- ``epoch_vs_size.png``: median epoch time against graph size per system, log-log, with an x where a system ran out
  of memory (its line stops there);
- ``claims.png``: the measured speed-up of each claim beside the paper's, log scale (``harness.claims``);
- ``memory_vs_cap.png``: the kernel's peak of each job against the cap per device (DDP's R ranks hold R x the cap:
  its peak is shown per rank), out-of-memory jobs hatched at the cap.

Every title names the hardware, the threads, the graph sizes and the cap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.claims import cap_per_device, claim_rows, label_of

ORDER = ("pyg", "dgl", "flexgnn", "flexgnn[flexgnn_greedy]", "flexgnn[hongtu_like]", "ddp[R=2]", "ddp[R=4]")


def new_figure(width: float = 8.0, height: float = 4.5):
    # A Figure on an Agg canvas, not pyplot: no global state, no display backend, safe inside a sweep's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _capped(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if (r.get("memory_cap") or {}).get("cap_bytes") and r.get("status") in ("ok", "oom")]


def _nodes(record: dict[str, Any]) -> int:
    return int(((record.get("config") or {}).get("dataset") or {}).get("num_nodes") or 0)


def hardware_line(records: list[dict[str, Any]]) -> str:
    """``AMD EPYC, 2 cores, 2 threads, CPU; cap 1 GiB per device; synthetic, avg degree 20, 128 features``."""
    machine = (records[0].get("machine") or {}) if records else {}
    gpus = ", ".join(g.get("name", "?") for g in machine.get("gpus") or [])
    threads = machine.get("torch_threads")
    hardware = gpus or f"{machine.get('cpu_model')}, {machine.get('cpu_logical_cores')} cores" + (
        f", {threads} threads" if threads else "") + ", CPU"
    caps = sorted({cap_per_device(r) for r in records} - {None})
    dataset = ((records[0].get("config") or {}).get("dataset") or {}) if records else {}
    graph = f"{records[0].get('dataset')}, avg degree {dataset.get('avg_degree')}, {dataset.get('num_features')} " \
            "features" if records else ""
    return f"{hardware}; cap {', '.join(f'{c / 2**20:.0f} MiB' for c in caps)} per device; {graph}"


def _series(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        found.setdefault(label_of(record), []).append(record)
    return {label: sorted(found[label], key=_nodes) for label in sorted(found, key=lambda l: (
        ORDER.index(l) if l in ORDER else len(ORDER), l))}


def epoch_vs_size_plot(records: list[dict[str, Any]], path: Path) -> Path | None:
    """One panel per model (GCN and SAGE curves differ; one line through both would zigzag), shared axes."""
    capped = _capped(records)
    if not any(r.get("status") == "ok" for r in capped):
        return None
    models = sorted({str(r.get("model")) for r in capped})
    colours = {label: f"C{i % 10}" for i, label in enumerate(_series(capped))}
    figure = new_figure(max(8.0, 5.0 * len(models)), 5.0)
    panels = figure.subplots(1, len(models), sharex=True, sharey=True, squeeze=False)[0]
    sizes = sorted({_nodes(r) for r in capped})
    floor = min(r["result"]["median_epoch_s"] for r in capped if r.get("status") == "ok")
    for axes, model in zip(panels, models):
        for label, runs in _series([r for r in capped if str(r.get("model")) == model]).items():
            ok = [(_nodes(r), r["result"]["median_epoch_s"]) for r in runs if r.get("status") == "ok"]
            oom = [_nodes(r) for r in runs if r.get("status") == "oom"]
            if ok:
                axes.plot(*zip(*ok), marker="o", color=colours[label], label=label)
            if oom:  # out of memory: an x at the size, on the line's last height (or the figure's fastest epoch)
                axes.scatter(oom, [ok[-1][1] if ok else floor] * len(oom), marker="x", s=80, color=colours[label],
                             label=f"{label}: out of memory" if not ok else None)
        axes.set(xscale="log", yscale="log", xlabel="graph size (nodes)", title=model)
        axes.set_xticks(sizes, [f"{n / 1e3:g}k" for n in sizes])
        axes.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)  # the sizes alone
    panels[0].set_ylabel("median epoch time (s)")
    panels[-1].legend(fontsize="small")
    figure.suptitle("Epoch time vs graph size under the memory cap (x: out of memory)\n" + hardware_line(capped),
                    fontsize="medium")
    figure.savefig(path, dpi=120)
    return path


def claims_plot(records: list[dict[str, Any]], path: Path) -> Path | None:
    rows = [row for row in claim_rows(records) if row["measured"] is not None and row["unit"] == "x"]
    if not rows:
        return None
    figure = new_figure(max(6.0, 1.3 * len(rows) + 2), 4.8)
    axes = figure.add_subplot()
    positions = range(len(rows))
    axes.bar([p - 0.2 for p in positions], [row["measured"] for row in rows], 0.4, label="measured here")
    reported = [(p, row["reported"]) for p, row in zip(positions, rows) if row["reported"]]
    if reported:
        axes.bar([p + 0.2 for p, _ in reported], [v for _, v in reported], 0.4, label="paper (up to)", color="grey")
    for p, row in zip(positions, rows):
        axes.annotate(f"{row['measured']:.2f}x", (p - 0.2, row["measured"]), ha="center", va="bottom",
                      fontsize="small")
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_xticks(list(positions), [row["claim"].replace(" vs ", "\nvs ").replace(" (", "\n(") for row in rows],
                    fontsize="small")
    axes.set_ylabel("speed-up of flexgnn (best case over graphs)")
    capped = _capped(records)
    axes.set_title("FlexGNN's claims: measured analogue vs paper\n" + hardware_line(capped), fontsize="medium")
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120)
    return path


def memory_vs_cap_plot(records: list[dict[str, Any]], path: Path) -> Path | None:
    capped = _capped(records)
    if not capped:
        return None
    series = _series(capped)
    sizes = sorted({_nodes(r) for r in capped})
    figure = new_figure(max(7.0, 1.1 * len(sizes) * len(series) ** 0.6 + 3), 5.0)
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    for i, (label, runs) in enumerate(series.items()):
        for record in runs:
            meters = record.get("memory_cap") or {}
            ranks = int(meters.get("cap_bytes") or 1) / max(1, cap_per_device(record) or 1)
            x = sizes.index(_nodes(record)) + (i - (len(series) - 1) / 2) * width
            if record.get("status") == "oom":
                axes.bar(x, (cap_per_device(record) or 0) / 2**20, width, color=f"C{i % 10}", hatch="xx",
                         alpha=0.4, edgecolor="black")
            else:
                axes.bar(x, (meters.get("peak_bytes") or 0) / ranks / 2**20, width, color=f"C{i % 10}")
    from matplotlib.patches import Patch

    handles = [Patch(color=f"C{i % 10}", label=label) for i, label in enumerate(series)]
    for cap in sorted({cap_per_device(r) for r in capped} - {None}):
        handles.append(axes.axhline(cap / 2**20, color="red", linewidth=1.0, linestyle="--",
                                    label=f"cap {cap / 2**20:.0f} MiB"))
    axes.set_xticks(range(len(sizes)), [f"{n / 1e3:g}k nodes" for n in sizes])
    axes.set_ylabel("job peak per device (MiB; kernel meter)")
    axes.set_title("Peak memory vs the cap (hatched: out of memory)\n" + hardware_line(capped), fontsize="medium")
    axes.legend(handles=handles, fontsize="small", ncol=2)
    figure.savefig(path, dpi=120)
    return path


def write_claim_plots(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    drawn = [epoch_vs_size_plot(records, out_dir / "epoch_vs_size.png"), claims_plot(records, out_dir / "claims.png"),
             memory_vs_cap_plot(records, out_dir / "memory_vs_cap.png")]
    return [path for path in drawn if path is not None]
