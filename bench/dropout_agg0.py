"""Input dropout and the layer-0 aggregate: the planner's plan against recomputing that aggregate every epoch.

Without input dropout FlexGNN aggregates the fixed features once and reuses ``agg0``; with it the features change
every epoch, so ``agg0`` must be made again each epoch (``Problem.input_dropout``). What is left to choose is
whether to keep the epoch's ``agg0`` for the backward pass or to aggregate (and mask the halo rows) again there.
This script checks, per model, on one synthetic graph with ``dropout=0.5`` (input and hidden) and weight decay:

1. exactness: the planner's plan, the recomputing plan and PyG give the same losses (max relative difference);
2. speed: the planner's plan (``optimal`` on this machine's calibrated rates, or ``--profile``: the plan
   ``system=flexgnn`` runs by default at this P) against the same orders and placement with ``agg0=recompute``:
   median epoch time of each run (``engine.execute``, the shared timed loop), runs interleaved and repeated
   (``--repeats``), with the spread over repeats and the paired ratio recompute / planner per repeat;
3. what the cost model predicted for both plans.

The machine this was written on is shared and noisy (2 cores, other jobs running): read the spread, not one
number. One torch thread by default (``--threads``), as the planner sweep: two threads on a loaded 2-core machine
stall on small kernels.

Command (about 2-4 min on 2 shared cores):
    python bench/dropout_agg0.py --nodes 20000 --avg-degree 10 --features 64 --hidden 128 --epochs 6 --repeats 5
The last stdout line is one compact JSON record.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on sys.path
from bench import common  # noqa: E402

MODELS = ("gcn", "sage", "gin")  # layer 0 aggregates first (a GAT layer transforms first: no agg0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_graph_model_args(parser, nodes=20_000, avg_degree=10.0, features=64, hidden=128, epochs=6)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--dropout", type=float, default=0.5, help="input and hidden dropout")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--chunks", type=common.positive_int, default=4, help="P of both plans")
    parser.add_argument("--repeats", type=common.positive_int, default=5)
    parser.add_argument("--threads", type=common.positive_int, default=1)
    parser.add_argument("--profile", default=None, help="plan on a datasheet profile instead of measured rates")
    return parser.parse_args(argv)


def _rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def bench_model(args: argparse.Namespace, kind: str) -> dict:
    import torch

    from baselines import pyg_fullgraph
    from flexgnn_core.engine import execute, prepare
    from flexgnn_core.plan import cost, make_plan
    from flexgnn_core.plan.solvers import solve
    from flexgnn_core.system import hardware_for

    graph, model, params, train = common.setup_run(args, kind)
    model = dataclasses.replace(model, dropout=args.dropout, weight_decay=args.weight_decay)
    prepared = prepare(graph, model, params, args.chunks)
    problem = prepared.problem
    hw = hardware_for(args.profile, torch.device("cpu"))
    planned = solve(problem, "optimal", hw)  # what `system=flexgnn` runs by default at this P
    placement = dict(planned.placement)
    if "agg0" not in placement:
        return {"model": kind, "skipped": f"layer 0 transforms first here (orders {planned.orders}): no agg0"}
    plans = {"planner": planned,  # the same orders and placement, but agg0 made again in backward
             "recompute_agg0": make_plan("recompute_agg0", problem, planned.orders, {**placement, "agg0": "recompute"})}
    runs: dict[str, list] = {name: [] for name in plans}
    for _ in range(args.repeats):  # interleaved: both plans see the same slice of the machine's noise
        for name, plan in plans.items():
            runs[name].append(execute(prepared, plan, params, train))
    reference = pyg_fullgraph.train(graph, model, params, train, {})
    medians = {name: [r.median_epoch_s for r in results] for name, results in runs.items()}
    ratios = [slow / fast for slow, fast in zip(medians["recompute_agg0"], medians["planner"])]
    return {
        "model": kind, "problem_input_dropout": problem.input_dropout, "orders": list(planned.orders),
        "placement_agg0": placement["agg0"], "hardware": hw.name,
        "predicted_epoch_s": {name: cost.predict(plan, problem, hw).epoch_s for name, plan in plans.items()},
        "median_epoch_s": {name: statistics.median(values) for name, values in medians.items()},
        "spread_epoch_s": {name: [min(values), max(values)] for name, values in medians.items()},
        "per_repeat_median_s": medians,
        "ratio_recompute_over_planner": {"median": statistics.median(ratios), "min": min(ratios),
                                         "max": max(ratios)},
        "loss_rel_diff_vs_pyg": {name: max(_rel_diff(r.epoch_losses, reference.epoch_losses) for r in results)
                                 for name, results in runs.items()},
        "pyg_median_epoch_s": reference.median_epoch_s,
    }


def main(argv: list[str] | None = None) -> dict:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for kind in args.models.split(","):
        result = bench_model(args, kind)
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)  # progress; the record is the last stdout line
    record = {"bench": "dropout_agg0", "args": common.recorded_args(args), "results": results}
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
