"""What the worker-based benchmark scripts share: options, graph, model, timed run and the worker subprocess.

``pyg_paths``, ``flexgnn_vs_pyg`` and ``ddp_vs_single`` compare systems on one synthetic graph and one model, each
run in its own subprocess so that no run inherits another's peak RSS or warm caches. Building the options, the
graph, the model and the training setup here makes the runs the same by construction: a fair comparison.

Worker protocol: a script runs itself with its own arguments plus ``--worker JOB`` (JOB: a JSON dict naming the
run) and prints the run's JSON record as its last stdout line; ``run_worker`` starts it and reads that line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

GRAPH_MODEL_DEFAULTS = {"nodes": 50_000, "avg_degree": 20.0, "features": 128, "classes": 16, "hidden": 128,
                        "layers": 2, "heads": 4, "epochs": 4, "seed": 0}


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def timed_epochs(text: str) -> int:
    """An argparse ``type``: an epoch count that leaves at least one epoch after the warm-up."""
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (one warm-up epoch is excluded from the median), got {value}")
    return value


def add_graph_model_args(parser: argparse.ArgumentParser, **defaults) -> None:
    """Add the synthetic graph and model options, ``--seed`` and the hidden ``--worker JOB``.

    Keyword arguments override ``GRAPH_MODEL_DEFAULTS`` for this script (e.g. ``epochs=3``).
    """
    unknown = set(defaults) - set(GRAPH_MODEL_DEFAULTS)
    if unknown:
        raise TypeError(f"no shared option(s) {sorted(unknown)}; known: {sorted(GRAPH_MODEL_DEFAULTS)}")
    d = {**GRAPH_MODEL_DEFAULTS, **defaults}
    parser.add_argument("--nodes", type=positive_int, default=d["nodes"])
    parser.add_argument("--avg-degree", type=float, default=d["avg_degree"], help="edges = nodes * avg_degree")
    parser.add_argument("--features", type=positive_int, default=d["features"])
    parser.add_argument("--classes", type=positive_int, default=d["classes"])
    parser.add_argument("--hidden", type=positive_int, default=d["hidden"])
    parser.add_argument("--layers", type=positive_int, default=d["layers"])
    parser.add_argument("--heads", type=positive_int, default=d["heads"])
    parser.add_argument("--epochs", type=timed_epochs, default=d["epochs"], help="including one warm-up epoch")
    parser.add_argument("--seed", type=int, default=d["seed"])
    parser.add_argument("--worker", metavar="JOB", help=argparse.SUPPRESS)


def recorded_args(args: argparse.Namespace) -> dict:
    """The arguments as recorded in a script's final JSON line (without the internal ``--worker``)."""
    return {k: v for k, v in vars(args).items() if k != "worker"}


def make_graph(args: argparse.Namespace):
    """The synthetic graph every run of one invocation trains on."""
    from flexgnn_core.data.synthetic import make_synthetic

    return make_synthetic(num_nodes=args.nodes, avg_degree=args.avg_degree, num_features=args.features,
                          num_classes=args.classes, seed=args.seed)


def model_spec(args: argparse.Namespace, kind: str):
    """The model (``kind``: gcn, sage or gat) with the shared layer count, width and heads."""
    from flexgnn_core.spec import ModelSpec

    return ModelSpec(kind=kind, num_layers=args.layers, hidden=args.hidden, heads=args.heads)


def setup_run(args: argparse.Namespace, kind: str, device: str = "cpu"):
    """``(graph, model, params, train)`` for one run: same graph, same initial weights, one warm-up epoch."""
    from flexgnn_core.models import init_params
    from flexgnn_core.spec import TrainSpec

    graph, model = make_graph(args), model_spec(args, kind)
    params = init_params(model, graph.num_features, graph.num_classes, seed=args.seed)
    train = TrainSpec(epochs=args.epochs, warmup_epochs=1, seed=args.seed, device=device, progress=False)
    return graph, model, params, train


def train_measured(args: argparse.Namespace, kind: str, train_fn, options: dict) -> tuple[dict, object]:
    """Train ``train_fn`` (a system's ``train``) once on CPU inside a ``PeakMemoryMeter``.

    Returns the JSON-ready summary (sizes, median and per-epoch times, losses, this process's peak host bytes and
    whether that peak was reset at the start) and the ``RunResult`` for the caller's system-specific fields.
    """
    import torch

    from flexgnn_core.memory import PeakMemoryMeter

    graph, model, params, train = setup_run(args, kind, device="cpu")
    with PeakMemoryMeter(torch.device("cpu")) as meter:
        result = train_fn(graph, model, params, train, options)
    summary = {"num_nodes": graph.num_nodes, "num_edges": graph.num_edges, "median_epoch_s": result.median_epoch_s,
               "epoch_times_s": result.epoch_times_s, "epoch_losses": result.epoch_losses,
               "host_peak_bytes": meter.peak_bytes["host"], "host_peak_reset": meter.host_reset,
               "torch_threads": torch.get_num_threads()}
    return summary, result


def run_worker(script_path: str, argv: list[str], job: dict) -> dict:
    """Run ``job`` in a fresh ``python script_path *argv --worker JOB`` and return the JSON it prints last.

    A failed run is a value, not an exception (the other runs still go ahead): ``{**job, "error": [...]}`` with the
    worker's last three stderr lines, or its exit status when it wrote none.
    """
    cmd = [sys.executable, script_path, *argv, "--worker", json.dumps(job)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:] or [f"worker exited with status {done.returncode}"]
        return {**job, "error": tail}
    return json.loads(done.stdout.strip().splitlines()[-1])
