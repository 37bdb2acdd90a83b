"""One prepared check of the CUDA paths on a lent GPU (issue 18), in one call well under 8 minutes.

What it does, in order, rewriting one JSON file (``--out``) after each step so that a step that fails or runs out
of time is recorded and the steps after it still run:
1. the machine: GPU names and memory, device count, torch and CUDA versions (no GPU: said so);
2. ``pytest -m gpu`` (tests/test_gpu.py: PyG and the engine on CUDA for every model and policy, the allocator's
   peak less cuBLAS workspaces within a tight device budget, a host-placed graph reading device rows through the
   side stream, one side stream and released pinned slots per store, NCCL DDP on two ranks where two GPUs exist,
   else one), its summary line and failures kept;
3. ``bench/flexgnn_vs_pyg.py`` at a size that matters under a hard device cap (``$FLEXGNN_DEVICE_CAP_BYTES``:
   every run's CUDA allocator limit, ``flexgnn_core.memory.cap_device_memory``), its last JSON line kept whole.

Dry mode (``--dry``; CPU, run by the default test suite): the same steps made small: the machine, ``pytest -m gpu
--collect-only tests/test_gpu.py`` (the GPU tests import and are collected), and one benchmark worker (a budgeted
FlexGNN run at a tiny size, on CPU, with the cap set: a no-op there), so that the script, its arguments and its CPU
parts are checked without a GPU.

Command (GPU machine, from the repository root):
    python bench/gpu_check.py --out results/gpu_check/h200.json
The last stdout line is a compact JSON summary (steps' status and seconds, the benchmark's ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Sized for one H200 (141 GB) within the time limit: 1M vertices, 16M edges, 128 features (a 0.5 GB feature
# matrix), 3 layers of 128 (GAT: 4 heads); every run under the cap below as a hard allocator limit (PyG's GAT keeps
# [E, heads, C] messages per layer, about 8 GB each here: it may not fit, which is a result), FlexGNN's budgeted
# run (greedy) under 1/8 of its own all-device peak at the smallest P that fits. About 13 worker processes.
BENCH = ["--nodes", "1000000", "--avg-degree", "16", "--features", "128", "--hidden", "128", "--layers", "3",
         "--epochs", "3", "--models", "gcn,sage,gat", "--offload", "flexgnn_greedy", "--reorder", "rcm",
         "--chunks", "8,16,32,64,128"]
# Dry: one benchmark worker (the part that trains, caps and reports), one FlexGNN run under a budget, on CPU.
DRY_JOB = {"label": "dry", "model": "gcn", "system": "flexgnn", "chunk_candidates": [2, 4, 8, 16],
           "options": {"policy": "flexgnn_greedy", "device_budget_bytes": 400_000}}
DRY_BENCH = ["--nodes", "1500", "--avg-degree", "5", "--features", "16", "--hidden", "16", "--layers", "2",
             "--epochs", "3", "--worker", json.dumps(DRY_JOB)]


def machine() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0, "gpus": []}
    for index in range(info["device_count"]):
        props = torch.cuda.get_device_properties(index)
        info["gpus"].append({"name": props.name, "total_memory_bytes": props.total_memory,
                             "capability": f"{props.major}.{props.minor}"})
    return info


def run_step(command: list[str], timeout_s: float, env: dict | None = None) -> dict:
    """Run ``command`` from the repository root in its own process group; its status, seconds and output's tail.
    A timeout is a value: the whole group is killed (the benchmark's workers too, so none keeps the GPU)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout_s)
        status = "ok" if process.returncode == 0 else f"exit {process.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        status = f"timeout after {timeout_s:.0f} s"
    return {"command": command, "status": status, "seconds": round(time.perf_counter() - start, 1),
            "stdout_tail": out[-6000:], "stderr_tail": err[-3000:], "last_json": last_json(out)}


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="JSON file written after each step (default: results/gpu_check/"
                                                 "<UTC time>.json, or a temporary one with --dry)")
    parser.add_argument("--dry", action="store_true", help="CPU only and small: check the script and its CPU parts")
    parser.add_argument("--cap-gib", type=float, default=24.0, help="hard device cap of every benchmark run, GiB")
    parser.add_argument("--pytest-timeout-s", type=float, default=180.0)
    parser.add_argument("--bench-timeout-s", type=float, default=270.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or (Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check_dry_{stamp}.json" if args.dry
                       else ROOT / "results" / "gpu_check" / f"{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    cap_bytes = int(args.cap_gib * 2**30)
    bench_args = DRY_BENCH if args.dry else BENCH
    pytest_args = ["-m", "gpu", "-q", "-p", "no:cacheprovider", "-n", "0"] + (  # one process: one GPU, one cap
        ["--collect-only", "tests/test_gpu.py"] if args.dry else [])
    print(f"plan: {'dry (CPU) ' if args.dry else ''}pytest {' '.join(pytest_args)} (<= {args.pytest_timeout_s:.0f} "
          f"s); flexgnn_vs_pyg {' '.join(bench_args)} under a {args.cap_gib:g} GiB device cap (<= "
          f"{args.bench_timeout_s:.0f} s); writing {out}", flush=True)
    record: dict = {"check": "gpu_check", "dry": args.dry, "utc": stamp, "device_cap_bytes": cap_bytes}

    def save() -> None:
        out.write_text(json.dumps(record, indent=1))

    record["machine"] = machine()
    if not args.dry and not record["machine"]["cuda_available"]:
        record["error"] = "no CUDA device: run with --dry on a CPU machine"
        save()
        raise SystemExit(record["error"])
    save()
    record["pytest"] = run_step([sys.executable, "-m", "pytest", *pytest_args], args.pytest_timeout_s)
    record["pytest"].pop("last_json")
    tail = record["pytest"]["stdout_tail"].strip().splitlines()
    record["pytest"]["summary"] = tail[-1] if tail else ""
    save()
    print(f"pytest: {record['pytest']['status']} in {record['pytest']['seconds']} s: {record['pytest']['summary']}",
          flush=True)
    env = {"FLEXGNN_DEVICE_CAP_BYTES": str(cap_bytes)} | ({"CUDA_VISIBLE_DEVICES": ""} if args.dry else {})
    bench = run_step([sys.executable, "bench/flexgnn_vs_pyg.py", *bench_args], args.bench_timeout_s, env)
    bench["record"] = bench.pop("last_json")  # the benchmark's own record, read from its whole output
    if bench["record"] is not None:
        bench["stdout_tail"] = bench["stdout_tail"][-2000:]  # the record holds the numbers
    record["bench"] = bench
    save()
    summary = {"out": str(out), "dry": args.dry, "gpus": [g["name"] for g in record["machine"]["gpus"]],
               "pytest": [record["pytest"]["status"], record["pytest"]["summary"], record["pytest"]["seconds"]],
               "bench": [bench["status"], bench["seconds"]],
               "bench_summary": (bench["record"] or {}).get("summary")}
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return record


if __name__ == "__main__":
    main()
