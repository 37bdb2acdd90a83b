"""Fair timing when a sweep's jobs run side by side on one machine: every job gets cores of its own.

The launching process plans (``plan_for``, written to ``<sweep dir>/cores.json``): with P jobs at once on the C cores
it may use (its affinity), P <= C gives each job C // P cores of its own (disjoint sets; a remainder stays idle so
that every job has as many); P > C cannot be split, so slot i shares core i mod C and the plan says the timings are
not comparable (the sweep prints it, the summary marks those rows). How many jobs run at once comes from the
launcher: 1 under Hydra's basic launcher (nothing is pinned), ``n_jobs`` under joblib, every job under
submitit_local; on Slurm (submitit_slurm) each job is its own allocation, pinned by the scheduler, not by us.

Each job (``job_slot``, in whichever process the launcher runs it) claims the first free slot under a lock held
while it runs, pins all its threads to the slot's cores (``pin``: DDP ranks, the memory-capped child and
the DGL worker inherit it) and sets torch's and OpenMP's thread counts to match. Its record says what it had:
``machine.cpu_affinity``, ``machine.torch_threads`` and ``machine.sweep_slot`` (``harness.record.machine_info``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

PLAN_FILE = "cores.json"
SLOTS_DIR = ".cores"  # one lock file per slot
log = logging.getLogger("harness")
_current: dict[str, Any] | None = None  # the slot this process's job holds, for its record


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def parallel_jobs(launcher: Any, total: int | None) -> int | None:
    """Jobs the launcher runs at once on this machine (``hydra.launcher`` config); None when each job gets its own
    allocation from a scheduler (Slurm)."""
    target = str(launcher.get("_target_", "")) if launcher is not None else ""
    total = total or 1
    if target.endswith("BasicLauncher"):
        return 1
    if target.endswith("JoblibLauncher"):
        n_jobs = int(launcher.get("n_jobs") or -1)
        if n_jobs < 0:  # joblib's convention: -1 = all CPUs, -2 = all but one, ...
            n_jobs = max(1, len(available_cores()) + 1 + n_jobs)
        return max(1, min(n_jobs, total))
    if target.endswith("SlurmLauncher"):
        return None
    return total  # submitit_local starts every job at once; an unknown launcher is assumed to as well


def plan_for(jobs: int | None, cores: list[int]) -> dict[str, Any]:
    """Core sets for ``jobs`` slots on ``cores``: disjoint when ``jobs <= len(cores)``, else shared and marked."""
    if jobs is None:
        return {"parallel_jobs": None, "cores": cores, "slots": [], "comparable": True,
                "note": "each job runs in its own scheduler allocation"}
    if jobs <= len(cores):
        width = len(cores) // jobs
        slots = [cores[i * width:(i + 1) * width] for i in range(jobs)]
        return {"parallel_jobs": jobs, "cores": cores, "slots": slots, "comparable": True, "note": None}
    slots = [[cores[i % len(cores)]] for i in range(jobs)]
    note = (f"{jobs} jobs at once on {len(cores)} core(s): jobs share cores, so their timings are not comparable; "
            f"run with at most {len(cores)} jobs at once (e.g. hydra.launcher.n_jobs={len(cores)}) for fair timings")
    return {"parallel_jobs": jobs, "cores": cores, "slots": slots, "comparable": False, "note": note}


def write_plan(sweep_dir: Path, plan: dict[str, Any]) -> None:
    path = Path(sweep_dir) / PLAN_FILE
    tmp = path.with_name(f".{PLAN_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(plan, indent=1) + "\n")
    os.replace(tmp, path)


def read_plan(sweep_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(sweep_dir) / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return None


def pin(cores: Any) -> None:
    """Every thread of this process onto ``cores``. ``sched_setaffinity`` acts on one thread: threads that exist
    already (e.g. torch's OpenMP pool from a job this worker process ran before) would keep their old cores."""
    os.sched_setaffinity(0, cores)  # this thread first: a bad core set raises here; threads it starts inherit it
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: only this thread and those it starts from now on
        return
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cores)
        except (ProcessLookupError, PermissionError):
            pass  # a thread that ended meanwhile


def current() -> dict[str, Any] | None:
    """The slot this process's job holds (``job_slot``), or None outside a parallel sweep."""
    return dict(_current) if _current else None


def _claim(sweep_dir: Path, count: int) -> tuple[int, Any]:
    """The first free slot's index and its held lock file; waits while all are taken (more jobs started at once
    than planned), so that no two jobs ever hold one slot."""
    folder = Path(sweep_dir) / SLOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for index in range(count):
            handle = open(folder / f"slot-{index}.lock", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return index, handle
            except BlockingIOError:
                handle.close()
        if not waited:
            log.warning("all %d core slots of this sweep are taken; waiting for one", count)
            waited = True
        time.sleep(0.2)


@contextlib.contextmanager
def job_slot(sweep_dir: Path | None) -> Iterator[dict[str, Any] | None]:
    """Pin this job to a free slot of the sweep's plan for the duration of the block (nothing without a plan, or
    with one job at a time); restores the process's affinity and thread count after (joblib reuses workers)."""
    global _current
    plan = read_plan(sweep_dir) if sweep_dir is not None else None
    if not plan or not plan.get("slots") or (plan.get("parallel_jobs") or 1) <= 1:
        yield None
        return
    import torch

    index, handle = _claim(Path(sweep_dir), len(plan["slots"]))
    cores = plan["slots"][index]
    before = (os.sched_getaffinity(0), torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))
    try:
        pin(cores)
        torch.set_num_threads(len(cores))
        os.environ["OMP_NUM_THREADS"] = str(len(cores))  # child processes (DDP ranks, the DGL worker) match
        _current = {"slot": index, "cores": cores, "parallel_jobs": plan["parallel_jobs"],
                    "comparable": plan["comparable"], "note": plan.get("note")}
        log.info("core slot %d of %d: cores %s, %d torch thread(s)%s", index, len(plan["slots"]), cores, len(cores),
                 "" if plan["comparable"] else " (shared: timings not comparable)")
        yield current()
    finally:
        _current = None
        pin(before[0])
        torch.set_num_threads(before[1])
        if before[2] is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before[2]
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
