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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on sys.path
from bench import common  # noqa: E402

MODELS = ("gcn", "sage", "gat")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_graph_model_args(parser, epochs=4)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--paths", default="csr,edge_index")
    return parser.parse_args(argv)


def run_one(args: argparse.Namespace, job: dict) -> dict:
    """One training run (``job``: model, path) in this process; returns its numbers as a JSON-ready dict."""
    from baselines import pyg_fullgraph

    run, result = common.train_measured(args, job["model"], pyg_fullgraph.train, {"path": job["path"]})
    return {**job, **run, "preprocess_s": result.timings_s["preprocess"]}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(args, json.loads(args.worker))))
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
            run = common.run_worker(__file__, argv, {"model": kind, "path": path})
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
    print(json.dumps({"bench": "pyg_paths", "args": common.recorded_args(args),
                      "summary": summary, "runs": runs}, separators=(",", ":")))


if __name__ == "__main__":
    main()
