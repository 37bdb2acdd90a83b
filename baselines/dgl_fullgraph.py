"""DGL full-graph baseline (``system=dgl``): DGL's GraphConv / SAGEConv / GATConv on the whole graph, one device.

    bash scripts/make_dgl_env.sh                 # once: the pinned DGL environment (about 2.5 min, 5.3 GB)
    python -m harness system=dgl model=gcn

DGL lives in its own environment: DGL 2.1.0 is the newest wheel pip can install here and its C++ libraries exist
only for torch 2.0.0 to 2.2.1, so ``import dgl`` fails on the main environment's torch. This module (main
environment, never imports DGL) writes the graph in our on-disk format, the shared initial parameters and a job spec
to a directory, runs ``baselines/dgl_worker.py`` with the pinned environment's python, and turns the worker's JSON
record and final parameters into a ``RunResult``. Timing, peak memory and accuracy are measured inside the worker,
in the shared timed loop, so they cover DGL's training only; MLflow logging stays in the harness.

Options (``conf/system/dgl.yaml``): ``env_dir`` (default ``$FLEXGNN_DGL_ENV`` or
``~/.cache/flexgnn-bench/dgl-env``), ``graph_dir`` (an on-disk copy of the same graph to reuse instead of writing
one), ``timeout_s`` (worker wall-clock limit, null for none); the harness's ``disk_dir`` holds the job directory.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from flexgnn_core.data.storage import read_meta, save_graph
from flexgnn_core.spec import Graph, ModelSpec, RunResult, SystemUnavailable, TrainSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENV_DIR = Path.home() / ".cache" / "flexgnn-bench" / "dgl-env"
ENV_MARKER = ".flexgnn-dgl-env-ok"  # written by scripts/make_dgl_env.sh after its import check passes
_STDERR_TAIL_CHARS = 4000
DEFAULT_OPTIONS: dict[str, Any] = {"env_dir": None, "graph_dir": None, "timeout_s": None}
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
    return merged


class DGLEnvironmentMissing(SystemUnavailable):
    """The pinned DGL environment is absent or incomplete; the message holds the command that creates it."""


def env_dir(options: Mapping[str, Any]) -> Path:
    chosen = options.get("env_dir") or os.environ.get("FLEXGNN_DGL_ENV") or DEFAULT_ENV_DIR
    return Path(chosen).expanduser()


def create_command(env: Path) -> str:
    """The one command that creates the environment at ``env`` (run from the repository root)."""
    from_env_var = Path(os.environ.get("FLEXGNN_DGL_ENV") or DEFAULT_ENV_DIR).expanduser()
    if env == DEFAULT_ENV_DIR and from_env_var == DEFAULT_ENV_DIR:
        return "bash scripts/make_dgl_env.sh"
    return f"FLEXGNN_DGL_ENV={shlex.quote(str(env))} bash scripts/make_dgl_env.sh"


def env_python(env: Path) -> Path:
    """The environment's python, or ``DGLEnvironmentMissing`` naming the creation command."""
    python = env / "bin" / "python"
    if not (env / ENV_MARKER).is_file() or not python.exists():
        raise DGLEnvironmentMissing(
            f"system=dgl runs in a pinned DGL environment (dgl 2.1.0 needs torch<=2.2.1), which is missing or "
            f"incomplete at {env} (no {ENV_MARKER}). Create it with (from {REPO_ROOT}): {create_command(env)}")
    return python


def preflight(options: Mapping[str, Any]) -> None:
    """Check the options and the environment before any data is loaded (the harness may call it to fail fast)."""
    env_python(env_dir(parse_options(options)))


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
    python = env_python(env_dir(options))
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
        with np.load(job_dir / "final_params.npz") as stored:
            final_params = {name: torch.from_numpy(stored[name].copy()) for name in stored.files}
    record.pop("median_epoch_s")  # derived by RunResult
    record["timings_s"].update(timings_s)
    record["extra"]["env_dir"] = str(python.parent.parent)
    return RunResult(**record, final_params=final_params)
