"""FlexGNN engine vs PyG full-graph training, side by side in one run, plus offload costs and SpMM efficiency.

What it measures, per model (GCN, GraphSAGE, GAT) on one synthetic graph:
1. PyG baseline (``baselines/pyg_fullgraph.py``, sparse CSR path) vs FlexGNN ``all_device`` (P=1): median epoch
   time (warm-up excluded, the shared timed loop) and their ratio. Goals: <= 1.0 GAT/SAGE, <= 0.75 2-layer GCN.
2. FlexGNN under a device budget of 1/``--budget-fraction`` of its own all_device accounted device peak, with
   each ``--offload`` policy at the smallest P of ``--chunks`` whose plan fits: epoch time ratio vs all_device
   (goals: <= 2x host offload, <= 3x disk), also vs all_device at the same P and reordering (which separates
   the cost of offloading from the effect of chunking), accounted device peak vs budget, bytes per link.
3. Aggregation throughput (GCN-normalised CSR @ [N, F]): ``torch.sparse.mm`` and the engine's kernel
   (``flexgnn_core.native.csr_mm``: whole graph, 8 chunks, and after ``system.reorder=metis``), each as a fraction
   of measured memory-copy bandwidth (minimum traffic: CSR + read X + write Y; the copy, like each product,
   writes a freshly allocated output, so both pay first-touch page faults, which bound that copy at ~4-5 GB/s on
   the 2-core box); and against the copy into a reused buffer (~35 GB/s there) with every gathered row counted.

Why: the engine's speedups only mean something if training is exact (tests/test_engine_exact.py) and timed like
every other system. Each run is its own subprocess so that no run inherits another's memory or warm caches.
On CPU "device" and "host" are both CPU memory: tiers are accounted apart and host/disk reads are real copies.

On CUDA, ``$FLEXGNN_DEVICE_CAP_BYTES`` makes a hard allocator limit of every run (``bench/gpu_check.py`` sets it).

Command (moderate size, some minutes on 2 shared cores):
    python bench/flexgnn_vs_pyg.py --nodes 50000 --avg-degree 20 --features 128 --hidden 128 --epochs 3
The last stdout line is one compact JSON record of all runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on sys.path
from bench import common  # noqa: E402

MODELS = ("gcn", "sage", "gat")
OFFLOAD = ("flexgnn_greedy", "all_host", "all_disk")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_graph_model_args(parser, epochs=3)
    parser.add_argument("--models", default=",".join(MODELS), help="models to train ('' = none: aggregation only)")
    parser.add_argument("--offload", default=",".join(OFFLOAD), help="policies run under the budget ('' = none)")
    parser.add_argument("--budget-fraction", type=float, default=8.0)
    parser.add_argument("--chunks", default="4,8,16,32,64,128,256", help="P candidates under the budget")
    parser.add_argument("--reorder", default="metis", help="reordering for the budgeted runs")
    return parser.parse_args(argv)


def run_training(args, job: dict) -> dict:
    """One training run (``job``: model, system, options; ``budget`` runs also search P)."""
    import torch

    from baselines import pyg_fullgraph
    from flexgnn_core import system
    from flexgnn_core.engine import prepare
    from flexgnn_core.plan import Budgets
    from flexgnn_core.plan.solvers import NEEDS_HARDWARE, solve

    from flexgnn_core.memory import cap_device_memory
    from flexgnn_core.spec import resolve_device

    graph, model, params, train = common.setup_run(args, job["model"], device="auto")
    cap_fraction = cap_device_memory(resolve_device(train.device))  # $FLEXGNN_DEVICE_CAP_BYTES on CUDA, else None
    options = dict(job.get("options", {}))
    if job["system"] == "pyg":
        result = pyg_fullgraph.train(graph, model, params, train, {"path": "csr"})
    else:
        if "chunk_candidates" in job:  # smallest P whose plan fits the budget
            policy = options["policy"]
            hw = system.hardware_for(None, torch.device("cpu")) if policy in NEEDS_HARDWARE else None
            budgets = Budgets(options.get("device_budget_bytes"), options.get("host_budget_bytes"))
            for num_chunks in job["chunk_candidates"]:
                prepared = prepare(graph, model, params, num_chunks, options.get("reorder", "none"), budgets=budgets)
                if solve(prepared.problem, policy, hw).feasible:
                    break
            options["num_chunks"] = num_chunks
        result = system.train(graph, model, params, train, {**options, "print_plan": True})
    return {"model": job["model"], "system": job["system"], "label": job["label"], "options": options,
            "median_epoch_s": result.median_epoch_s, "epoch_times_s": result.epoch_times_s,
            "epoch_losses": result.epoch_losses, "tier_peak_bytes": result.tier_peak_bytes,
            "io_bytes": result.io_bytes, "peak_bytes": result.peak_bytes, "extra": result.extra,
            "plan": result.plan, "num_nodes": graph.num_nodes, "num_edges": graph.num_edges,
            "device": result.device, "device_cap_fraction": cap_fraction,
            "threads": torch.get_num_threads()}


def _median_time(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_aggregation(args) -> dict:
    """CSR product throughput vs memory-copy bandwidth (GCN normalisation): torch.sparse.mm, the engine's kernel
    (``flexgnn_core.native.csr_mm``) whole and in 8 chunks, and the engine's kernel after ``system.reorder=metis``."""
    import torch

    from flexgnn_core.engine.chunks import build_chunks, locality_parts, relabel_csr, reorder
    from flexgnn_core.native import csr_mm, describe
    from flexgnn_core.norm import gcn_norm_csr

    graph = common.make_graph(args)
    big = torch.empty(64 * 2**20, dtype=torch.float32)  # 256 MiB
    copy_s = _median_time(lambda: big.clone())  # a fresh output, like the products below: page faults included
    bandwidth = 2 * big.numel() * 4 / copy_s  # read + write
    reused = torch.empty_like(big)
    reused_s = _median_time(lambda: reused.copy_(big))  # into a buffer already touched: the memory's own rate
    rowptr, col, values = gcn_norm_csr(graph.rowptr, graph.col)
    n, e, f = graph.num_nodes, int(col.numel()), graph.num_features
    x = graph.x.contiguous()
    adj = torch.sparse_csr_tensor(rowptr, col, values, (n, n), check_invariants=False)
    torch_s = _median_time(lambda: torch.sparse.mm(adj, x))
    torch.testing.assert_close(csr_mm(rowptr, col, values, x), torch.sparse.mm(adj, x), rtol=1e-5, atol=1e-5)
    whole_s = _median_time(lambda: csr_mm(rowptr, col, values, x))
    chunks = build_chunks(rowptr, col, values, 8, self_loops=False)
    chunked_s = _median_time(lambda: [csr_mm(c.crow, c.src_global, c.values, x, n) for c in chunks])
    parts = locality_parts(n, f * x.element_size())
    order = reorder(graph.rowptr, graph.col, "metis", 1, row_bytes=f * x.element_size())  # as prepare() does
    m_rowptr, m_col, m_values = gcn_norm_csr(*relabel_csr(graph.rowptr, graph.col, order))
    m_x = x[order.perm].contiguous()
    metis_s = _median_time(lambda: csr_mm(m_rowptr, m_col, m_values, m_x))
    traffic = e * (8 + 4) + (n + 1) * 8 + 2 * n * f * 4  # CSR (int64 col, fp32 value) + read X + write Y
    gathered = traffic - n * f * 4 + e * f * 4  # X's row read once per entry instead of once: what the loop moves
    reused_bandwidth = 2 * big.numel() * 4 / reused_s
    return {"label": "aggregation", "copy_bandwidth_Bps": bandwidth, "kernel": describe(),
            "spmm_torch_s": torch_s, "spmm_whole_s": whole_s, "spmm_chunked8_s": chunked_s,
            "spmm_metis_s": metis_s, "metis_parts": parts, "min_traffic_bytes": traffic,
            "torch_fraction_of_bandwidth": traffic / torch_s / bandwidth,
            "whole_fraction_of_bandwidth": traffic / whole_s / bandwidth,
            "chunked_fraction_of_bandwidth": traffic / chunked_s / bandwidth,
            "metis_fraction_of_bandwidth": traffic / metis_s / bandwidth, "threads": torch.get_num_threads(),
            # the same products against the copy into a reused buffer (no page faults), counting every gathered row
            "copy_reused_bandwidth_Bps": reused_bandwidth, "gathered_traffic_bytes": gathered,
            "whole_gathered_fraction_of_reused": gathered / whole_s / reused_bandwidth,
            "metis_gathered_fraction_of_reused": gathered / metis_s / reused_bandwidth}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(run_aggregation(args) if job["label"] == "aggregation" else run_training(args, job)))
        return
    print(f"graph: synthetic {args.nodes} nodes, avg degree {args.avg_degree}, {args.features} features; "
          f"{args.layers} layers, hidden {args.hidden}; epochs {args.epochs} (1 warm-up)", flush=True)
    runs = [common.run_worker(__file__, argv, {"label": "aggregation"})]
    agg = runs[0]
    if "error" not in agg:
        print(f"aggregation: copy bandwidth {agg['copy_bandwidth_Bps'] / 1e9:.1f} GB/s; torch.sparse.mm "
              f"{agg['spmm_torch_s']:.3f} s = {agg['torch_fraction_of_bandwidth']:.1%}; engine kernel "
              f"({agg['kernel']}) whole {agg['spmm_whole_s']:.3f} s = {agg['whole_fraction_of_bandwidth']:.1%}, "
              f"8 chunks {agg['spmm_chunked8_s']:.3f} s = {agg['chunked_fraction_of_bandwidth']:.1%}, after "
              f"system.reorder=metis ({agg['metis_parts']} parts) {agg['spmm_metis_s']:.3f} s = "
              f"{agg['metis_fraction_of_bandwidth']:.1%} of bandwidth", flush=True)
        print(f"aggregation, every gathered row counted against the copy into a reused buffer "
              f"({agg['copy_reused_bandwidth_Bps'] / 1e9:.1f} GB/s, no page faults): engine kernel whole "
              f"{agg['whole_gathered_fraction_of_reused']:.1%}, after system.reorder=metis "
              f"{agg['metis_gathered_fraction_of_reused']:.1%}", flush=True)
    summary = {}
    for kind in [k.strip() for k in args.models.split(",") if k.strip()]:  # '' = the aggregation alone
        pyg = common.run_worker(__file__, argv, {"label": "pyg", "model": kind, "system": "pyg"})
        own = common.run_worker(__file__, argv, {"label": "all_device", "model": kind, "system": "flexgnn",
                                                  "options": {"policy": "all_device", "num_chunks": 1}})
        runs += [pyg, own]
        row = {"pyg_s": pyg.get("median_epoch_s"), "all_device_s": own.get("median_epoch_s")}
        if row["pyg_s"] and row["all_device_s"]:
            row["ratio_vs_pyg"] = row["all_device_s"] / row["pyg_s"]
        print(f"{kind}: pyg {row['pyg_s']} s, flexgnn all_device {row['all_device_s']} s, ratio "
              f"{row.get('ratio_vs_pyg')}", flush=True)
        if "error" in own:
            print(f"  all_device failed: {own['error']}", flush=True)
            summary[kind] = row
            continue
        budget = int(own["tier_peak_bytes"]["device"] / args.budget_fraction)
        for policy in [p for p in args.offload.split(",") if p]:
            job = {"label": f"{policy}@1/{args.budget_fraction:g}", "model": kind, "system": "flexgnn",
                   "options": {"policy": policy, "reorder": args.reorder, "device_budget_bytes": budget},
                   "chunk_candidates": [int(c) for c in args.chunks.split(",")]}
            run = common.run_worker(__file__, argv, job)
            runs.append(run)
            if "error" in run:
                print(f"  {policy}: failed {run['error']}", flush=True)
                continue
            if "all_device_same_p_s" not in row:  # separates the cost of offload from that of chunking
                num_chunks = run["options"]["num_chunks"]
                same = common.run_worker(__file__, argv, {
                    "label": f"all_device@P={num_chunks}", "model": kind, "system": "flexgnn",
                    "options": {"policy": "all_device", "reorder": args.reorder, "num_chunks": num_chunks}})
                runs.append(same)
                row["all_device_same_p_s"] = same.get("median_epoch_s")
                print(f"  all_device at P={run['options']['num_chunks']} ({args.reorder}): "
                      f"{row['all_device_same_p_s']} s", flush=True)
            ratio = run["median_epoch_s"] / row["all_device_s"]
            row[f"{policy}_ratio_vs_all_device"] = ratio
            if row.get("all_device_same_p_s"):
                row[f"{policy}_ratio_vs_all_device_same_p"] = run["median_epoch_s"] / row["all_device_same_p_s"]
            print(f"  {policy} budget {budget / 2**20:.1f} MiB, P={run['options']['num_chunks']}: "
                  f"{run['median_epoch_s']:.3f} s = {ratio:.2f}x all_device; device peak "
                  f"{run['tier_peak_bytes']['device'] / 2**20:.1f} MiB; io "
                  f"{ {k: round(v / 2**20, 1) for k, v in run['io_bytes'].items()} } MiB; prefetch hidden "
                  f"{run['extra']['prefetch_hidden_s']:.2f} s of {run['extra']['prefetch_fetch_s']:.2f} s",
                  flush=True)
        summary[kind] = row
    print(json.dumps({"bench": "flexgnn_vs_pyg", "args": common.recorded_args(args),
                      "summary": summary, "runs": runs}, separators=(",", ":")))


if __name__ == "__main__":
    main()
