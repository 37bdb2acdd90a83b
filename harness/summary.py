"""The summary table of run records: one row per record with its median epoch, speedup over PyG, accuracy, peaks.

A pure function of records (STYLE #11); ``harness.report`` writes it with the other tables, ``harness.plots``
draws from its rows. ``run`` names the variant (``flexgnn[hongtu_like]``, ``ddp[R=4]``), ``memory_cap`` the job's
hard cap, ``job_peak_bytes`` the kernel's peak of the whole job under it (comparable across systems: every process
of the job is charged); parity (``harness.claims.parity_of``): the largest relative loss difference from PyG's
curve over the first 10 epochs, the test accuracy difference, and ``BROKEN`` where either is out of tolerance.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from harness.claims import label_of, parity_of, references_of

COLUMNS = ("system", "run", "model", "dataset", "num_nodes", "num_edges", "avg_degree", "memory_cap", "status",
           "epochs", "median_epoch_s", "speedup_vs_pyg", "val_acc", "test_acc", "test_acc_at_best_val",
           "max_rel_loss_diff", "test_acc_diff", "parity", "job_peak_bytes", "host_peak_bytes", "device_peak_bytes",
           "note")
BASELINE = "pyg"


def row_of(record: dict[str, Any]) -> dict[str, Any]:
    result = record.get("result") or {}
    graph = record.get("graph") or {}
    dataset_cfg = (record.get("config") or {}).get("dataset") or {}
    hardware_cfg = (record.get("config") or {}).get("hardware") or {}
    peak = result.get("peak_bytes") or {}
    accuracy = result.get("accuracy") or {}
    best = result.get("best_val") or {}
    row = {
        "system": record.get("system"), "run": label_of(record), "model": record.get("model"),
        "dataset": record.get("dataset"), "memory_cap": hardware_cfg.get("memory_cap"),
        "job_peak_bytes": (record.get("memory_cap") or {}).get("peak_bytes"),
        "num_nodes": graph.get("num_nodes") or dataset_cfg.get("num_nodes"), "num_edges": graph.get("num_edges"),
        "avg_degree": dataset_cfg.get("avg_degree"), "status": record.get("status"),
        "epochs": len(result.get("epoch_times_s") or []) or None, "median_epoch_s": result.get("median_epoch_s"),
        "speedup_vs_pyg": None, "val_acc": accuracy.get("val"), "test_acc": accuracy.get("test"),
        "test_acc_at_best_val": best.get("test"),
        "host_peak_bytes": peak.get("host"), "device_peak_bytes": peak.get("device"),
        "note": record.get("error"),  # why a job failed or was skipped (e.g. DGL's environment is missing)
        # not a column: speed-ups compare runs on the same kind of device only (DDP's "2xcpu" is R of "cpu")
        "device": re.sub(r"^\d+x", "", str(result.get("device"))) if result.get("device") else None,
    }
    fallback = (result.get("extra") or {}).get("device_fallback")
    if fallback:  # e.g. DGL on a CUDA machine: a CPU time in a GPU sweep, marked so
        row["note"] = f"ran on {result.get('device')}, not the requested device: {fallback}"
    slot = (record.get("machine") or {}).get("sweep_slot") or {}
    if slot.get("comparable") is False:  # jobs of a parallel sweep shared cores (harness/cores.py)
        shared = (f"timing not comparable: {slot.get('parallel_jobs')} jobs at once shared the cores "
                  f"(this one ran on {slot.get('cores')})")
        row["note"] = f"{shared}; {row['note']}" if row["note"] else shared
    return row


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows sorted by graph, model, system; speedup = pyg's median epoch / this median on the same graph+model and
    the same device (a row that ran elsewhere, e.g. DGL's CPU fallback in a GPU sweep, gets none)."""
    rows = [row_of(record) for record in records]
    references = references_of(records)
    for index, (row, record) in enumerate(zip(rows, records)):
        parity = parity_of(record, references)
        row.update({key: parity[key] for key in ("max_rel_loss_diff", "test_acc_diff", "parity")})
        row["index"] = index  # not a column: which record the row came from (rows are sorted)

    def key(row: dict[str, Any]) -> tuple:
        return (str(row["dataset"]), row["num_nodes"] or 0, row["num_edges"] or 0, str(row["model"]))

    baseline = {key(row): (row["median_epoch_s"], row["device"]) for row in rows
                if row["system"] == BASELINE and row["status"] == "ok" and row["median_epoch_s"]}
    for row in rows:
        reference, device = baseline.get(key(row), (None, None))
        if reference and row["median_epoch_s"] and row["status"] == "ok" and row["device"] == device:
            row["speedup_vs_pyg"] = reference / row["median_epoch_s"]
    return sorted(rows, key=lambda row: (*key(row), str(row["system"])))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", "<br>")  # a multi-line note (pip's error) stays in its cell


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[column]) for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_summary(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write ``summary.csv`` and ``summary.md`` for these records into ``out_dir``; return the two paths."""
    rows = summarize(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({column: ("" if row[column] is None else row[column]) for column in COLUMNS}
                         for row in rows)
    md_path.write_text(markdown(rows))
    return [csv_path, md_path]
