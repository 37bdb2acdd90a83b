"""The end of a sweep in MLflow and on the terminal: comparisons that need every job's record.

A job's own MLflow run is written when the job ends, before the runs it is compared with exist; so when the sweep's
last job ends (``harness.sweep.SweepCallback``), ``log_comparisons`` adds to every ok child run

- ``speedup_vs_pyg`` (PyG's median epoch / this one, same graph, model and device; ``harness.summary``) and, for the
  default flexgnn run of a case, ``speedup_vs/<baseline>`` against each claim's baseline that ran on the same graph
  (``flexgnn_hongtu_like``, ``flexgnn_flexgnn_greedy``, ``ddp_R2``, ``dgl``, ...);
- ``parity/max_rel_loss_diff`` and ``parity/test_acc_diff`` against PyG (``harness.claims.parity_of``), with a
  ``parity`` tag (``ok`` or ``BROKEN``) and ``parity_ref`` (the reference run); the reference run itself (PyG, or
  where PyG ran out of memory the first system that trained the case) gets 0 and the tag ``reference``;
- ``mem/real_peak_bytes``: the kernel's peak of the whole job under ``hardware.memory_cap``, else the process's host
  peak: one comparable number for every system;

and to the parent run the claims as ``claims/...`` metrics (``harness.claims.metrics_of_claims``). It also saves a
shared view of the runs table on the experiment (``VIEW_KEY``: the speed-up, parity and peak columns, sorted by
speed-up, the sweep's children expanded), which ``view_url`` opens in MLflow's model-training view.
``terminal_tables`` is what the terminal shows at the end: a compact summary and the claims table.
"""

from __future__ import annotations

import math
import time
from typing import Any

from harness.claims import claim_rows, label_of, metrics_of_claims, references_of, speedups
from harness.summary import summarize

VIEW_KEY = "comparisons"  # the experiment tag mlflow.sharedViewState.comparisons (MLflow 3's shared views)
VIEW_COLUMNS = ("metrics.`speedup_vs_pyg`", "metrics.`time/epoch_median_s`", "tags.`parity`",
                "metrics.`parity/max_rel_loss_diff`", "metrics.`mem/real_peak_bytes`", "metrics.`test/acc`",
                "attributes.`Source`")


def _metric_name(label: str) -> str:
    return label.replace("[R=", "_R").replace("[", "_").replace("]", "")


def child_metrics(records: list[dict[str, Any]]) -> dict[str, tuple[dict[str, float], dict[str, str]]]:
    """MLflow run id -> (metrics, tags) for every ok record that has a run."""
    rows = {row["index"]: row for row in summarize(records)}
    references = {id(record) for record in references_of(records).values()}
    vs: dict[int, dict[str, float]] = {}
    labels = {label_of(r) for r in records} - {"flexgnn", "pyg"}
    for baseline in sorted(labels):
        for ratio, ours, _ in speedups(records, baseline):
            vs.setdefault(id(ours), {})[f"speedup_vs/{_metric_name(baseline)}"] = ratio
    found = {}
    for index, record in enumerate(records):
        run_id = (record.get("tracking") or {}).get("run_id")
        if record.get("status") != "ok" or not run_id:
            continue
        row = rows[index]
        peak = row["job_peak_bytes"] or row["host_peak_bytes"]
        metrics = {"speedup_vs_pyg": row["speedup_vs_pyg"], "parity/max_rel_loss_diff": row["max_rel_loss_diff"],
                   "parity/test_acc_diff": row["test_acc_diff"], "mem/real_peak_bytes": peak, **vs.get(id(record), {})}
        tags = {"parity": row["parity"], "run": row["run"]}
        if id(record) in references:  # the curve the others are measured against: its own difference is 0
            metrics.update({"parity/max_rel_loss_diff": 0.0, "parity/test_acc_diff": 0.0})
            tags["parity"] = "reference"
        found[run_id] = ({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
                         {k: str(v) for k, v in tags.items() if v is not None})
    return found


def log_comparisons(store: Any, parent_run_id: str | None, records: list[dict[str, Any]]) -> dict[str, float]:
    """Child metrics and tags (module docstring) and the parent's claim metrics; returns the claim metrics."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    for run_id, (metrics, tags) in child_metrics(records).items():
        store.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        for key, value in tags.items():
            store.client.set_tag(run_id, key, value)
    claims = metrics_of_claims(claim_rows(records)) if any(
        (r.get("memory_cap") or {}).get("cap_bytes") for r in records) else {}
    if parent_run_id and claims:
        store.log_summary(parent_run_id, claims)
    share_view(store.client, store.experiment_id, parent_run_id)
    return claims


def share_view(client: Any, experiment_id: str, parent_run_id: str | None) -> None:
    """Save the comparison columns as the experiment's shared view ``VIEW_KEY`` (the runs table shows only
    attribute columns until a user picks metrics)."""
    import json

    state = {"selectedColumns": list(VIEW_COLUMNS), "orderByKey": VIEW_COLUMNS[0], "orderByAsc": False,
             "runsExpanded": {parent_run_id: True} if parent_run_id else {}}
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(state))


def view_url(base: str, experiment_id: str) -> str:
    """The runs table with the comparison columns, in the model-training view (MLflow 3.17 opens an experiment in
    its GenAI view otherwise)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning" \
           f"&viewStateShareKey={VIEW_KEY}"


def terminal_tables(records: list[dict[str, Any]], claims_md: str | None) -> str:
    """A compact summary (one line per job) and the claims table, for the end of a sweep."""
    def cell(value: Any, form: str = "{}") -> str:
        return "" if value is None else form.format(value)

    header = f"{'run':<24} {'model':<5} {'nodes':>8} {'deg':>4} {'cap':>7} {'status':<8} {'epoch s':>8} " \
             f"{'vs pyg':>7} {'parity':<7} {'job peak':>9}"
    lines = [header, "-" * len(header)]
    for row in summarize(records):
        lines.append(f"{cell(row['run']):<24.24} {cell(row['model']):<5} {cell(row['num_nodes']):>8} "
                     f"{cell(row['avg_degree'], '{:g}'):>4} {cell(row['memory_cap']):>7} {cell(row['status']):<8} "
                     f"{cell(row['median_epoch_s'], '{:.3f}'):>8} "
                     f"{cell(row['speedup_vs_pyg'], '{:.2f}x'):>7} {cell(row['parity']):<7} "
                     f"{cell(row['job_peak_bytes'] and row['job_peak_bytes'] / 2**20, '{:.0f}MiB'):>9}")
    return "\n".join(lines) + ("\n\n" + claims_md if claims_md else "") + "\n"


def end_of_sweep(store: Any, parent_run_id: str | None, sweep_dir: Any) -> None:
    """After ``harness.report.write_reports``: the comparisons into MLflow, the final tables onto stderr."""
    import json
    import sys
    from pathlib import Path

    records = []
    for path in sorted(Path(sweep_dir).glob("*/record.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # the summary step counts an unreadable record; nothing to compare here
    if store is not None:
        log_comparisons(store, parent_run_id, records)
    claims = Path(sweep_dir) / "claims.md"
    print("\n" + terminal_tables(records, claims.read_text() if claims.exists() else None), file=sys.stderr,
          flush=True)
    if store is not None:
        print(f"MLflow (after `mlflow ui --backend-store-uri {store.uri}`): "
              f"{view_url('http://127.0.0.1:5000', store.experiment_id)}", file=sys.stderr, flush=True)
