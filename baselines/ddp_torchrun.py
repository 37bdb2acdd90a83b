"""The DDP baseline's ranks started by torchrun inside the job (``system.launch=torchrun``): how a DDP job runs on a
cluster.

A Slurm job of the harness is one task holding R GPUs (``hydra/launcher=submitit_slurm
hydra.launcher.gpus_per_task=R``, README); inside that allocation ``baselines.ddp_fullgraph.train`` partitions the
graph and writes one shard per rank, as it does for ranks it starts itself, then this module runs
``torchrun --standalone --nproc-per-node=R -m baselines.ddp_fullgraph --job-dir DIR``: torchrun picks a free local
port for its own rendezvous, gives every rank RANK / LOCAL_RANK / WORLD_SIZE (rank r uses GPU r of the allocation;
gloo on CPU), and stops all ranks when one fails. Rank 0 writes the combined result into the job directory, which
``train`` reads back, so the record is the one the other launches give. A failing rank's error and traceback come
back as ``DistributedJobError``; ``system.job_timeout_s`` bounds the whole job; SIGTERM or Ctrl-C of the job stops
torchrun, which stops its ranks, and every rank also exits when the job's process disappears.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from baselines.ddp_options import DDPOptions
from baselines.ddp_supervise import DistributedJobError

STOP_GRACE_S = 10.0  # torchrun forwards SIGTERM to its ranks and waits for them; then it is killed


def command(job_dir: Path, world_size: int, launched_at: float) -> list[str]:
    """The torchrun command line (torchrun as ``python -m torch.distributed.run``: the job's own interpreter)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc-per-node={world_size}", "--max-restarts=0", "-m", "baselines.ddp_fullgraph",
            "--job-dir", str(job_dir), "--launcher-pid", str(os.getpid()), "--launched-at", repr(launched_at)]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def failure_message(job_dir: Path, reason: str) -> str:
    """The earliest recorded rank error with its traceback, else what torchrun's exit says."""
    errors = sorted((json.loads(p.read_text()) for p in Path(job_dir).glob("error*.json")), key=lambda e: e["time"])
    if not errors:
        return (f"ddp job failed: {reason}, and no rank left an error record (crashed, killed by a signal or out of "
                "memory); torchrun's output above names the rank")
    first = errors[0]
    lines = [f"ddp job failed: rank {first['rank']} raised {first['type']}: {first['message']} ({reason})",
             f"--- traceback of rank {first['rank']} ---", first["traceback"]]
    lines += [f"--- then rank {e['rank']}: {e['type']}: {e['message'].splitlines()[0][:300]}" for e in errors[1:]]
    return "\n".join(lines)


def run_ranks(job_dir: Path, opts: DDPOptions) -> None:
    """Run the job's ``opts.world_size`` ranks under torchrun and wait; raises ``DistributedJobError`` on failure.
    The ranks' output goes to this process's stderr (stdout stays the harness's record)."""
    root = str(Path(__file__).resolve().parents[1])  # the ranks import this checkout's code, whatever the cwd
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    # the ranks share the job's cores (each rank sets its own count too); saying so quiets torchrun's banner
    env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // opts.world_size)))
    process = subprocess.Popen(command(job_dir, opts.world_size, time.time()), stdout=2, stderr=2, env=env)
    try:
        process.wait(timeout=opts.job_timeout_s)
    except subprocess.TimeoutExpired:
        _stop(process)
        raise DistributedJobError(failure_message(job_dir, f"job exceeded system.job_timeout_s={opts.job_timeout_s}"),
                                  []) from None
    finally:
        _stop(process)  # Ctrl-C or SIGTERM of the job: torchrun stops its ranks
    if process.returncode != 0:
        raise DistributedJobError(failure_message(job_dir, f"torchrun exited with code {process.returncode}"), [])
