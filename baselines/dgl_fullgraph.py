"""DGL full-graph baseline (``system=dgl``): DGL's GraphConv / SAGEConv / GATConv on the whole graph, one device.

    python -m harness system=dgl model=gcn       # makes the pinned DGL environment on first use (a few min, 5.3 GB)
    bash scripts/make_dgl_env.sh                 # or make it beforehand

DGL lives in its own environment: DGL 2.1.0 is the newest Linux wheel pip can install here and its C++ libraries exist
only for torch 2.0.0 to 2.2.1, so ``import dgl`` fails on the main environment's torch. This module (main
environment, never imports DGL) writes the graph in our on-disk format, the shared initial parameters and a job spec
to a directory, runs ``baselines/dgl_worker.py`` with the pinned environment's python (``baselines/dgl_env.py``
finds it, or creates it on first use), and turns the worker's JSON record and final parameters into a
``RunResult``. Timing, peak memory and accuracy are measured inside the worker, in the shared timed loop, so they
cover DGL's training only; MLflow logging stays in the harness. On an OGB graph the worker (whose environment has no
``ogb``) scores with plain accuracy, OGB's formula; its last and best-validation predictions are then scored again
here with OGB's ``Evaluator`` (``flexgnn_core.evaluate``), which the record's ``accuracy``, ``best_val`` and
``evaluator`` report.

Options (``conf/system/dgl.yaml``): ``env_dir`` (default ``$FLEXGNN_DGL_ENV`` or
``~/.cache/flexgnn-bench/dgl-env``), ``auto_install`` (create a missing environment; null =
``$FLEXGNN_DGL_AUTO_INSTALL``, default on), ``graph_dir`` (an on-disk copy of the same graph to reuse instead of
writing one), ``timeout_s`` (worker wall-clock limit, null for none); the harness's ``disk_dir`` holds the job
directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from baselines import dgl_env
from baselines.dgl_env import REPO_ROOT, DGLEnvironmentMissing
from flexgnn_core.data.storage import read_meta, save_graph
from flexgnn_core.evaluate import Evaluation
from flexgnn_core.spec import Graph, ModelSpec, RunResult, TrainSpec

__all__ = ["DGLEnvironmentMissing", "parse_options", "preflight", "train"]

_STDERR_TAIL_CHARS = 4000
DEFAULT_OPTIONS: dict[str, Any] = {"env_dir": None, "auto_install": None, "graph_dir": None, "timeout_s": None}
# The hardware-group keys this system takes (harness/systems.py). A whole-graph baseline has no budgets to honour;
# ``disk_dir`` (null = the system's choice) is where the job directory goes, so a large graph's copy lands on the
# disk the user chose.
HARDWARE_KEYS = ("disk_dir",)


def parse_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``options`` over the defaults; unknown keys raise ``ValueError`` naming the valid ones."""
    options = dict(options or {})
    disk_dir = options.get("disk_dir")
    options = {key: value for key, value in options.items() if key not in HARDWARE_KEYS}
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"system 'dgl': unknown option(s) {unknown}; valid options: "
                         f"{', '.join(f'{k} (default {v!r})' for k, v in DEFAULT_OPTIONS.items())}")
    merged = {**DEFAULT_OPTIONS, **options, "disk_dir": disk_dir}
    timeout_s = merged["timeout_s"]
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                                  or timeout_s <= 0):
        raise ValueError(f"system 'dgl': option timeout_s={timeout_s!r} must be a positive number of seconds or null")
    if merged["auto_install"] is not None and not isinstance(merged["auto_install"], bool):
        raise ValueError(f"system 'dgl': option auto_install={merged['auto_install']!r} must be true, false or null "
                         f"(null = ${dgl_env.AUTO_INSTALL_VAR}, default true)")
    return merged


def env_python(options: Mapping[str, Any]) -> Path:
    """The pinned environment's python for parsed ``options``, made first when missing and auto-install is on;
    ``DGLEnvironmentMissing`` (a ``SystemUnavailable``: a sweep skips the job) names the command otherwise."""
    return dgl_env.ensure_python(dgl_env.env_dir(options["env_dir"]),
                                 auto_install=dgl_env.auto_install_enabled(options["auto_install"]))


def preflight(options: Mapping[str, Any]) -> None:
    """Check the options and make sure the environment exists before any data is loaded (the harness calls it, so
    an unavailable DGL fails, or is skipped in a sweep, at once)."""
    env_python(parse_options(options))


def _check_graph_dir(graph_dir: str, graph: Graph) -> None:
    meta = read_meta(graph_dir)
    stored = (meta.get("num_nodes"), meta.get("num_edges"), meta.get("num_features"), meta["num_classes"])
    expected = (graph.num_nodes, graph.num_edges, graph.num_features, graph.num_classes)
    if stored != expected:
        raise ValueError(f"system 'dgl': option graph_dir={graph_dir} holds a graph with (nodes, edges, features, "
                         f"classes) = {stored}, the graph to train has {expected}; point graph_dir at a copy of the "
                         "same graph or leave it null")


def _run_worker(python: Path, job_dir: Path, timeout_s: float | None) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["DGLBACKEND"] = "pytorch"  # otherwise DGL writes ~/.dgl/config.json and prints a notice on first import
    try:
        proc = subprocess.run([str(python), "-m", "baselines.dgl_worker", str(job_dir)], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"DGL worker exceeded options.timeout_s={timeout_s} s; raise it or set it to null") from err
    if proc.returncode != 0:
        raise RuntimeError(f"DGL worker ({python}) failed with exit code {proc.returncode}:\n"
                           f"{proc.stderr[-_STDERR_TAIL_CHARS:]}")


def train(graph: Graph, model: ModelSpec, params: Mapping[str, Tensor], train: TrainSpec,
          options: Mapping[str, Any]) -> RunResult:
    """Full-graph training with DGL in the pinned environment's worker (the ``TrainFn`` of ``flexgnn_core.spec``)."""
    options = parse_options(options)
    if options["graph_dir"]:
        _check_graph_dir(options["graph_dir"], graph)
    python = env_python(options)
    timings_s: dict[str, float] = {}
    if options["disk_dir"]:
        Path(options["disk_dir"]).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flexgnn-dgl-", dir=options["disk_dir"]) as tmp:
        job_dir = Path(tmp)
        graph_dir = options.get("graph_dir")
        if not graph_dir:
            start = time.perf_counter()
            graph_dir = job_dir / "graph"
            save_graph(graph, graph_dir)
            timings_s["graph_write"] = time.perf_counter() - start
        np.savez(job_dir / "params.npz", **{name: value.detach().cpu().numpy() for name, value in params.items()})
        job = {"model": asdict(model), "train": asdict(train), "graph_dir": str(graph_dir)}
        (job_dir / "job.json").write_text(json.dumps(job))

        start = time.perf_counter()
        _run_worker(python, job_dir, options.get("timeout_s"))
        timings_s["worker_total"] = time.perf_counter() - start  # interpreter start, imports, load, train, eval

        record = json.loads((job_dir / "result.json").read_text())
        final_params = _load_params(job_dir / "final_params.npz")
        best_params = _load_params(job_dir / "best_params.npz")
        preds = {which: torch.from_numpy(np.load(job_dir / f"pred_{which}.npy")) for which in ("final", "best_val")
                 if (job_dir / f"pred_{which}.npy").is_file()}
    evaluation = Evaluation.of(graph)
    if evaluation.ogb is not None:  # the worker had no ogb: OGB's Evaluator scores its predictions here
        record["accuracy"] = evaluation(preds["final"])
        if record["best_val"] is not None:
            record["best_val"] = {"epoch": record["best_val"]["epoch"], **evaluation(preds["best_val"])}
        record["extra"]["worker_evaluator"] = record["evaluator"]
        record["evaluator"] = evaluation.name
    record.pop("median_epoch_s")  # derived by RunResult
    record["timings_s"].update(timings_s)
    record["extra"]["env_dir"] = str(python.parent.parent)
    if record["extra"].get("device_fallback"):
        print(f"warning: system=dgl: {record['extra']['device_fallback']}", file=sys.stderr, flush=True)
    return RunResult(**record, final_params=final_params, best_params=best_params, predictions=preds)


def _load_params(path: Path) -> dict[str, Tensor] | None:
    if not path.is_file():
        return None
    with np.load(path) as stored:
        return {name: torch.from_numpy(stored[name].copy()) for name in stored.files}
