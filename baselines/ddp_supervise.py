"""Supervision of the ranks the DDP baseline starts itself: a failing, crashing or hanging rank ends the whole job
with the root cause's traceback, and no rank outlives its launcher; and how a torchrun rank ends (``end_process``)."""

from __future__ import annotations

import atexit
import json
import multiprocessing.connection
import os
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

from baselines.ddp_options import DDPOptions


class DistributedJobError(RuntimeError):
    """A rank failed or the job timed out; the message carries the first failing rank's error and traceback."""

    def __init__(self, message: str, rank_pids: list[int]):
        super().__init__(message)
        self.rank_pids = rank_pids


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def end_process(code: int = 0) -> NoReturn:
    """End a process that was a rank of a gloo group the way multiprocessing ends the ranks ``train`` starts: other
    threads joined, atexit handlers run, stdio flushed, then ``os._exit`` with no interpreter finalization.

    Why: gloo's worker thread releases a finished collective's tensors only after the rank that waited on it has
    moved on. When that release, which takes the GIL to drop the tensors' Python objects, meets interpreter
    finalization, the thread is unwound inside a noexcept destructor and the process aborts (SIGABRT, "terminate
    called without an active exception"; core dump: ``ProcessGroupGloo::runLoop`` -> ``~AsyncAllgatherWork`` ->
    ``decref_pyobject`` -> ``take_gil`` -> ``pthread_exit``). ``destroy_process_group`` does not wait for it. Seen
    in 2 of 64 torchrun runs of ``baselines.ddp_fullgraph`` on this machine under load, and once in CI."""
    for thread in threading.enumerate():  # what the interpreter's own shutdown waits for
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def watch_parent(launcher_pid: int) -> None:
    """Exit if the launching process disappears, so that no rank outlives a killed parent."""
    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(launcher_pid, 0)
            except ProcessLookupError:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def failure_message(job_dir: Path, processes: list, reason: str, stopped: set[int]) -> str:
    """The root cause first: a rank that died without a record (crash, signal, out of memory) is what its peers'
    "connection closed" errors follow from; otherwise the earliest recorded error, with its traceback."""
    errors = sorted((json.loads(p.read_text()) for p in job_dir.glob("error*.json")), key=lambda e: e["time"])
    recorded = {e["rank"] for e in errors}
    context = f"({reason}; exit codes " + ", ".join(f"rank {r}: {p.exitcode}" for r, p in enumerate(processes))
    context += "; negative = signal)"
    crashed = [r for r, p in enumerate(processes) if p.exitcode not in (0, None) and r not in recorded | stopped]
    if crashed:
        lines = [f"ddp job failed: rank {crashed[0]} exited with code {processes[crashed[0]].exitcode} without an "
                 "error record (crashed, killed by a signal or out of memory)", context]
    elif errors:
        first, errors = errors[0], errors[1:]
        lines = [f"ddp job failed: rank {first['rank']} raised {first['type']}: {first['message']}", context,
                 f"--- traceback of rank {first['rank']} ---", first["traceback"]]
    else:
        lines = ["ddp job failed and no rank left an error record", context]
    for other in errors:
        lines.append(f"--- then rank {other['rank']}: {other['type']}: {other['message'].splitlines()[0][:300]}")
    return "\n".join(lines)


def supervise(processes: list, job_dir: Path, opts: DDPOptions) -> None:
    """Wait for the ranks; on the first failure give the others a moment to record theirs, then stop them all."""
    start = time.monotonic()
    pending = {p.sentinel: p for p in processes}
    reason = None
    while pending and reason is None:
        for sentinel in multiprocessing.connection.wait(list(pending), timeout=0.5):
            process = pending.pop(sentinel)
            process.join()
            if process.exitcode != 0 and reason is None:
                reason = f"rank {processes.index(process)} exited with code {process.exitcode}"
        if opts.job_timeout_s is not None and time.monotonic() - start > opts.job_timeout_s:
            reason = f"job exceeded system.job_timeout_s={opts.job_timeout_s}"
    if reason is None:
        return
    grace = time.monotonic() + min(5.0, opts.timeout_s)
    while any(p.is_alive() for p in processes) and time.monotonic() < grace:
        time.sleep(0.05)
    stopped = stop(processes)
    raise DistributedJobError(failure_message(job_dir, processes, reason, stopped), [p.pid for p in processes])


def stop(processes: list) -> set[int]:
    """Terminate, then kill, every rank still running; returns the ranks that had to be stopped."""
    stopped = {r for r, p in enumerate(processes) if p.is_alive()}
    for r in stopped:
        processes[r].terminate()
    for r in stopped:
        processes[r].join(timeout=2.0)
        if processes[r].is_alive():
            processes[r].kill()
            processes[r].join()
    return stopped
