"""What partition-parallel training costs next to one process: DDP (R ranks, gloo) vs PyG vs FlexGNN, one graph.

What it measures: on one synthetic graph and one model, side by side, each system in its own subprocess (no run
inherits another's peak RSS): median epoch time (warm-up excluded, the shared timed loop; DDP = slowest rank),
DDP's communication (halo bytes per epoch per rank, all-reduce payload, share of the epoch spent in collectives),
peak host memory (per rank for DDP, plus the launching process that partitions the graph) and the loss curves
(all systems must agree: same model, same initial weights).

Why: the claims we reproduce compare one device against a multi-device cluster; this shows what the cluster side
pays for partitioning and halo exchange. On a 2-core machine this is not scaling: the R ranks share the same cores
(each rank gets cores / R torch threads) where a single process uses all cores as threads (or ``--threads``), so
the comparison is two ways of using the same cores, and DDP's costs (halo rows replicated on each rank, exchange
and all-reduce time) show up directly. The machine may be shared with other work: wall-clock numbers are noisy
(the load average is printed and recorded); compare runs made back to back, and repeat.

Command (moderate size, a few minutes on 2 cores):
    python bench/ddp_vs_single.py --nodes 50000 --avg-degree 20 --features 128 --hidden 128 --epochs 5
The last stdout line is one compact JSON record of all runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on sys.path
from bench import common  # noqa: E402
from flexgnn_core import models  # noqa: E402

SYSTEMS = ("ddp", "pyg", "flexgnn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_graph_model_args(parser, epochs=5)
    parser.add_argument("--model", default="gcn", choices=list(models.names()))
    parser.add_argument("--world-size", type=common.positive_int, default=2, help="DDP ranks")
    parser.add_argument("--partition", default="metis", choices=["metis", "contiguous"])
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--no-input-cache", action="store_true",
                        help="DDP recomputes layer 0's aggregation (and fetches its halo) every epoch")
    parser.add_argument("--threads", type=common.positive_int, default=None,
                        help="torch threads of the single-process systems (default: torch's, one per core); DDP "
                             "ranks always get cores / ranks each")
    return parser.parse_args(argv)


def run_one(args: argparse.Namespace, job: dict) -> dict:
    """One training run (``job``: system) in this process; returns its numbers as a JSON-ready dict."""
    import torch

    from harness.systems import get_train_fn

    system = job["system"]
    if args.threads and system != "ddp":
        torch.set_num_threads(args.threads)
    options = {"world_size": args.world_size, "partition": args.partition,
               "cache_input_aggregation": not args.no_input_cache} if system == "ddp" else {}
    measured, result = common.train_measured(args, args.model, get_train_fn(system), options)
    run = {"system": system, "num_nodes": measured["num_nodes"], "num_edges": measured["num_edges"],
           "median_epoch_s": measured["median_epoch_s"], "epoch_times_s": measured["epoch_times_s"],
           "epoch_losses": measured["epoch_losses"], "accuracy": result.accuracy, "timings_s": result.timings_s,
           # the system's own measure (DDP: the largest rank), else this process's peak
           "host_peak_bytes": result.peak_bytes.get("host") or measured["host_peak_bytes"],
           "process_host_peak_bytes": measured["host_peak_bytes"],
           "io_bytes": result.io_bytes, "torch_threads": measured["torch_threads"]}
    if system == "ddp":
        timed = slice(result.warmup_epochs, None)
        run["ranks"] = [{
            "rank": r["rank"], "num_owned": r["num_owned"], "num_halo": r["num_halo"],
            "median_epoch_s": statistics.median(r["epoch_times_s"][timed]),
            "median_comm_s": statistics.median(r["comm_s"][timed]),
            "halo_sent_bytes_per_epoch": r["halo_sent_bytes"][-1],
            "halo_recv_bytes_per_epoch": r["halo_recv_bytes"][-1],
            "allreduce_bytes_per_epoch": r["allreduce_bytes"][-1], "host_peak_bytes": r["peak_bytes"]["host"],
        } for r in result.extra["ranks"]]
        run["comm_share_median"] = result.extra["comm_share_median"]
        run["replication_factor"] = result.extra["replication_factor"]
    return run


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(args, json.loads(args.worker))))
        return
    systems = args.systems.split(",")
    load_start = os.getloadavg()[0]
    print(f"plan: synthetic graph {args.nodes} nodes x avg in-degree {args.avg_degree:g} "
          f"(~{int(args.nodes * args.avg_degree):,} edges), {args.features} features; {args.model} {args.layers} "
          f"layers x {args.hidden} hidden; {args.epochs} epochs (1 warm-up); DDP {args.world_size} ranks (gloo, "
          f"{args.partition}); systems {systems}; one subprocess per system; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    runs = []
    for system in systems:
        start = time.perf_counter()
        run = common.run_worker(__file__, argv, {"system": system})
        runs.append(run)
        if "error" in run:
            print(f"{system:8s} FAILED: {run['error']}", flush=True)
            continue
        print(f"{system:8s} median epoch {run['median_epoch_s']:8.3f} s   peak RSS "
              f"{run['host_peak_bytes'] / 2**20:7.0f} MiB (largest rank for ddp)   "
              f"final loss {run['epoch_losses'][-1]:.6f}   "
              f"({time.perf_counter() - start:.0f} s wall)", flush=True)
        for rank in run.get("ranks", []):
            print(f"  rank {rank['rank']}: {rank['num_owned']} owned + {rank['num_halo']} halo rows, epoch "
                  f"{rank['median_epoch_s']:.3f} s of which {rank['median_comm_s']:.3f} s in collectives, sends "
                  f"{rank['halo_sent_bytes_per_epoch'] / 2**20:.1f} MiB halo + "
                  f"{rank['allreduce_bytes_per_epoch'] / 2**20:.2f} MiB all-reduce per epoch, peak RSS "
                  f"{rank['host_peak_bytes'] / 2**20:.0f} MiB", flush=True)
    ok = {r["system"]: r for r in runs if "error" not in r}
    summary = {"median_epoch_s": {s: r["median_epoch_s"] for s, r in ok.items()},
               "host_peak_mib": {s: round(r["host_peak_bytes"] / 2**20) for s, r in ok.items()}}
    if "pyg" in ok:
        base = ok["pyg"]["epoch_losses"]
        summary["loss_max_rel_diff_vs_pyg"] = {s: max(abs(a - b) / abs(b) for a, b in zip(r["epoch_losses"], base))
                                               for s, r in ok.items()}
        summary["epoch_time_vs_pyg"] = {s: r["median_epoch_s"] / ok["pyg"]["median_epoch_s"] for s, r in ok.items()}
    if "ddp" in ok:
        summary["ddp_comm_share_median"] = ok["ddp"]["comm_share_median"]
        summary["ddp_net_send_bytes"] = ok["ddp"]["io_bytes"]["net_send"]
    print(f"summary: {summary}")
    summary["load_average_1min"] = {"start": load_start, "end": os.getloadavg()[0]}  # other work shares the cores
    print(json.dumps({"bench": "ddp_vs_single", "args": common.recorded_args(args),
                      "summary": summary, "runs": runs}, separators=(",", ":")))


if __name__ == "__main__":
    main()
