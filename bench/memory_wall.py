"""The memory wall: FlexGNN under a hard cap at a quarter of PyG's real peak, against its own uncapped epoch.

Per model (GCN, GraphSAGE, GAT) on one synthetic graph whose layer intermediates dominate the working set
(600k nodes, 6M edges, 3 layers, hidden 128 by default: PyG should peak near 3 GB, so a quarter of it stays above
the ~0.4 GB a Python + torch process holds before any data), every run is a real harness job (``python -m
harness``) in its own process, inside a memory-limited control group (``hardware.memory_cap``,
``harness/memcap.py``). The graph is ``dataset=synthetic_large``: written once (by the first job) and memory-mapped,
so that loading it costs no more than the cap allows (the in-memory generator alone needs more than a quarter of
PyG's peak: measured, every job under such a cap was killed while building the graph):

1. PyG under a loose cap (``--loose-cap``, default 20 GiB, far above its need): its real peak, the cgroup's
   reading of the whole job (``result.peak_bytes.job``). The tight cap is a quarter of it (``--cap-fraction``).
2. PyG under the tight cap: expected ``status: oom`` (a result, not a crash).
3. FlexGNN (default planner: P and placements chosen for the machine's room) under the loose cap and under the
   tight cap, interleaved ``--repeats`` times: median epoch time each, their ratio, the job peak against the cap,
   the plan (P, tiers) and the real disk bytes (``/proc/self/io``) against the tier counters.
4. Exactness: the capped and loose FlexGNN loss curves, largest relative difference.

Goals (issue 10): capped / uncapped epoch <= 2x for GCN and SAGE, <= 2.5x for GAT.

Command (about 20-40 minutes on 2 shared cores at the defaults):
    python bench/memory_wall.py
    python bench/memory_wall.py --models gcn --nodes 100000 --hidden 128 --layers 2   # minutes
Each run's record stays in ``--runs-dir`` (default ``runs/bench-memory-wall``); the last stdout line is one compact
JSON summary naming those records. Timing on a shared machine is noisy: interleaved repeats, spread reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("gcn", "sage", "gat")
GOALS = {"gcn": 2.0, "sage": 2.0, "gat": 2.5}
GiB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: gcn,sage,gat")
    parser.add_argument("--nodes", type=int, default=600_000)
    parser.add_argument("--avg-degree", type=float, default=10.0)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=1, help="GAT heads (hidden is split across heads)")
    parser.add_argument("--epochs", type=int, default=3, help="including one warm-up epoch")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved loose/tight FlexGNN pairs")
    parser.add_argument("--cap-fraction", type=float, default=0.25, help="tight cap = this x PyG's real peak")
    parser.add_argument("--loose-cap", default="20GiB", help="the 'uncapped' runs' cap (meters the job)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every run")
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "bench-memory-wall"))
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        parser.error(f"--models: unknown {bad}; choose from {','.join(MODELS)}")
    if not 0 < args.cap_fraction < 1:
        parser.error(f"--cap-fraction={args.cap_fraction}: must be in (0, 1)")
    if args.epochs < 2 or args.repeats < 1:
        parser.error("--epochs must be >= 2 (one warm-up) and --repeats >= 1")
    return args


def job(args: argparse.Namespace, system: str, model: str, cap: str | int) -> dict:
    """One harness job under ``cap``; returns its record (the last stdout line), with the wall time added."""
    overrides = [f"system={system}", f"model={model}", f"model.num_layers={args.layers}", f"model.hidden={args.hidden}",
                 "dataset=synthetic_large", f"dataset.root={Path(args.runs_dir) / 'graphs'}",
                 "dataset.num_classes=8", f"dataset.num_nodes={args.nodes}", f"dataset.avg_degree={args.avg_degree}",
                 f"dataset.num_features={args.features}", f"train.epochs={args.epochs}", f"hardware.memory_cap={cap}",
                 "mlflow.enabled=false"]
    if model == "gat":
        overrides.append(f"model.heads={args.heads}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "FLEXGNN_RUNS_DIR": args.runs_dir}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", *overrides], cwd=REPO, env=env, text=True,
                          capture_output=True)
    wall = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"memory_wall: {system}/{model} under cap {cap} failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    record = json.loads(lines[-1])
    record["bench_wall_s"] = wall
    print(f"  {system:8s} {model:4s} cap={cap!s:>12}: {describe(record)} ({wall:.0f} s)", file=sys.stderr)
    return record


def describe(record: dict) -> str:
    result = record.get("result") or {}
    status = result.get("status") or record.get("status")
    if status != "ok":
        return f"status={status}"
    peak = (result.get("peak_bytes") or {}).get("job")
    extra = result.get("extra") or {}
    return (f"ok, median epoch {result['median_epoch_s']:.2f} s, job peak {peak / GiB:.2f} GiB"
            + (f", P={extra['num_chunks']}" if "num_chunks" in extra else ""))


def summarise(record: dict) -> dict:
    """The numbers of one run that the summary keeps, and where its record is."""
    result = record.get("result") or {}
    extra = result.get("extra") or {}
    plan = result.get("plan") or {}
    return {"status": result.get("status") or record.get("status"), "median_epoch_s": result.get("median_epoch_s"),
            "job_peak_bytes": (result.get("peak_bytes") or {}).get("job"),
            "num_chunks": extra.get("num_chunks"), "policy": extra.get("policy"),
            "placement": plan.get("placement"), "io_bytes": result.get("io_bytes"),
            "disk_actual_bytes": extra.get("disk_actual_bytes"), "proc_io_bytes": extra.get("proc_io_bytes"),
            "losses": result.get("epoch_losses"), "record": (record.get("paths") or {}).get("record"),
            "wall_s": round(record["bench_wall_s"], 1)}


def max_rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a, b, strict=True))


def run_model(args: argparse.Namespace, model: str) -> dict:
    print(f"{model}:", file=sys.stderr)
    pyg_loose = summarise(job(args, "pyg", model, args.loose_cap))
    if pyg_loose["status"] != "ok":
        raise SystemExit(f"memory_wall: PyG {model} did not run under the loose cap {args.loose_cap}: "
                         f"{pyg_loose['status']}; lower --nodes or --hidden")
    cap = int(pyg_loose["job_peak_bytes"] * args.cap_fraction)
    pyg_tight = summarise(job(args, "pyg", model, cap))
    loose, tight = [], []
    for _ in range(args.repeats):  # interleaved, so load drift hits both sides alike
        loose.append(summarise(job(args, "flexgnn", model, args.loose_cap)))
        tight.append(summarise(job(args, "flexgnn", model, cap)))
    ok_loose = [r["median_epoch_s"] for r in loose if r["status"] == "ok"]
    ok_tight = [r["median_epoch_s"] for r in tight if r["status"] == "ok"]
    ratios = [t / u for t, u in zip(ok_tight, ok_loose)] if len(ok_tight) == len(ok_loose) else []
    out = {"cap_bytes": cap, "pyg_loose": pyg_loose, "pyg_tight": pyg_tight, "flexgnn_loose": loose,
           "flexgnn_tight": tight, "goal_ratio": GOALS[model]}
    if ok_loose and ok_tight:
        out["ratio_median"] = statistics.median(ok_tight) / statistics.median(ok_loose)
        out["ratio_per_pair"] = ratios
        out["tight_peak_over_cap"] = max(r["job_peak_bytes"] for r in tight if r["status"] == "ok") / cap
        out["loss_max_rel_diff"] = max(max_rel_diff(t["losses"], loose[0]["losses"])
                                       for t in tight if t["status"] == "ok")
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = {model: run_model(args, model) for model in args.models}
    print("\nmodel  PyG peak   cap        PyG@cap  FlexGNN loose  FlexGNN@cap   ratio (goal)  peak/cap  P@cap  loss diff")
    for model, r in results.items():
        loose = [x["median_epoch_s"] for x in r["flexgnn_loose"] if x["median_epoch_s"]]
        tight = [x["median_epoch_s"] for x in r["flexgnn_tight"] if x["median_epoch_s"]]
        ratio = f"{r['ratio_median']:.2f}x ({r['goal_ratio']}x)" if "ratio_median" in r else "n/a"
        print(f"{model:5s}  {r['pyg_loose']['job_peak_bytes'] / GiB:6.2f} GiB {r['cap_bytes'] / GiB:6.3f} GiB  "
              f"{r['pyg_tight']['status']:7s}  {','.join(f'{t:.2f}' for t in loose):13s}  "
              f"{','.join(f'{t:.2f}' for t in tight) or r['flexgnn_tight'][0]['status']:12s}  {ratio:13s} "
              f"{r.get('tight_peak_over_cap', float('nan')):8.3f}  {r['flexgnn_tight'][0]['num_chunks']!s:5s}  "
              f"{r.get('loss_max_rel_diff', float('nan')):.1e}")
    print(json.dumps({"bench": "memory_wall", "args": {k: v for k, v in vars(args).items()}, "results": results},
                     separators=(",", ":")))


if __name__ == "__main__":
    main()
