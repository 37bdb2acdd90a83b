"""Which PyG input path is fastest for full-graph training: a sparse CSR ``adj_t`` or a plain ``edge_index``?

What it measures: for GCN, GraphSAGE and GAT, the PyG baseline (``baselines/pyg_fullgraph.py``) trained on one
synthetic graph with each adjacency path, side by side: median epoch time (warm-up excluded, shared timed loop),
peak host RSS of the run, preprocessing time and the loss curve (the paths must agree: same model, same start).
Why: the baseline must get PyG's best practice; the issue measured CSR 3x faster and 3.6x leaner than
edge_index for a 2-layer GCN, and this script checks it per model on the machine at hand.

Each (model, path) runs in its own subprocess so that no run inherits another's peak RSS.

Command (moderate size, a few minutes on 2 cores):
    python bench/pyg_paths.py --nodes 50000 --avg-degree 20 --features 128 --hidden 128 --epochs 4
The last stdout line is one compact JSON record of all runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

MODELS = ("gcn", "sage", "gat")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=50_000)
    parser.add_argument("--avg-degree", type=float, default=20.0, help="edges = nodes * avg_degree")
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4, help="including one warm-up epoch")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--paths", default="csr,edge_index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("nodes", "features", "classes", "hidden", "layers", "heads", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (one warm-up epoch is excluded from the median)")
    return args


def run_one(args: argparse.Namespace, kind: str, path: str) -> dict:
    """One training run in this process; returns its numbers as a JSON-ready dict."""
    import torch

    from baselines import pyg_fullgraph
    from flexgnn_core.data.synthetic import make_synthetic
    from flexgnn_core.memory import PeakMemoryMeter
    from flexgnn_core.models import init_params
    from flexgnn_core.spec import ModelSpec, TrainSpec

    graph = make_synthetic(num_nodes=args.nodes, avg_degree=args.avg_degree, num_features=args.features,
                           num_classes=args.classes, seed=args.seed)
    model = ModelSpec(kind=kind, num_layers=args.layers, hidden=args.hidden, heads=args.heads)
    params = init_params(model, graph.num_features, graph.num_classes, seed=args.seed)
    train = TrainSpec(epochs=args.epochs, warmup_epochs=1, seed=args.seed, device="cpu", progress=False)
    with PeakMemoryMeter(torch.device("cpu")) as meter:
        result = pyg_fullgraph.train(graph, model, params, train, {"path": path})
    return {"model": kind, "path": path, "num_nodes": graph.num_nodes, "num_edges": graph.num_edges,
            "median_epoch_s": result.median_epoch_s, "epoch_times_s": result.epoch_times_s,
            "preprocess_s": result.timings_s["preprocess"], "host_peak_bytes": meter.peak_bytes["host"],
            "host_peak_reset": meter.host_reset, "epoch_losses": result.epoch_losses,
            "torch_threads": torch.get_num_threads()}


def run_in_subprocess(argv: list[str], kind: str, path: str) -> dict:
    cmd = [sys.executable, __file__, *argv, "--worker", kind, path]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"model": kind, "path": path, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(args, *args.worker)))
        return
    models, paths = args.models.split(","), args.paths.split(",")
    print(f"plan: synthetic graph {args.nodes} nodes x avg in-degree {args.avg_degree:g} "
          f"(~{int(args.nodes * args.avg_degree):,} edges), {args.features} features, {args.layers} layers x "
          f"{args.hidden} hidden; {args.epochs} epochs (1 warm-up); models {models}; paths {paths}; "
          "one subprocess per run", flush=True)
    runs = []
    for kind in models:
        for path in paths:
            start = time.perf_counter()
            run = run_in_subprocess(argv, kind, path)
            runs.append(run)
            if "error" in run:
                print(f"{kind:5s} {path:11s} FAILED: {run['error']}", flush=True)
                continue
            print(f"{kind:5s} {path:11s} median epoch {run['median_epoch_s']:8.3f} s   peak RSS "
                  f"{run['host_peak_bytes'] / 2**20:8.0f} MiB   preprocess {run['preprocess_s']:6.2f} s   "
                  f"final loss {run['epoch_losses'][-1]:.6f}   ({time.perf_counter() - start:.0f} s wall)", flush=True)
    summary = {}
    for kind in models:
        ok = {r["path"]: r for r in runs if r["model"] == kind and "error" not in r}
        if not ok:
            continue
        fastest = min(ok, key=lambda p: ok[p]["median_epoch_s"])
        base = next(iter(ok.values()))["epoch_losses"]
        max_rel = max(abs(a - b) / abs(b) for r in ok.values() for a, b in zip(r["epoch_losses"], base))
        summary[kind] = {"fastest": fastest, "loss_max_rel_diff_between_paths": max_rel,
                         "median_epoch_s": {p: r["median_epoch_s"] for p, r in ok.items()},
                         "host_peak_mib": {p: round(r["host_peak_bytes"] / 2**20) for p, r in ok.items()}}
        print(f"{kind:5s} fastest: {fastest}; losses of the paths agree to {max_rel:.1e} (relative)")
    print(json.dumps({"bench": "pyg_paths", "args": {k: v for k, v in vars(args).items() if k != "worker"},
                      "summary": summary, "runs": runs}, separators=(",", ":")))


if __name__ == "__main__":
    main()
