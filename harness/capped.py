"""Load and train under ``hardware.memory_cap``: the job runs in a child process inside a capped control group.

The harness process stays outside the group (it keeps MLflow, the record and the bookkeeping) and runs
``python -m harness.capped JOB_DIR`` inside it (``harness/memcap.py``): the child validates the same resolved
config, loads the graph and trains with the chosen system, and every process it starts (DDP ranks and their fork
server, the DGL worker) inherits the group. The child writes its outcome to ``JOB_DIR/outcome.json``; the parent
reads the group's meters and decides:

- ok: the child's result, with ``peak_bytes.job`` = the group's peak (what the kernel charged to the whole job);
- oom (``OutOfMemory``): the kernel OOM-killed a process of the group, or an allocator refused memory in the
  child (Python's ``MemoryError``, torch's "can't allocate memory", "CUDA out of memory" under the device cap), or
  the job thrashed at the cap: the kernel kept it alive by evicting and re-reading its code and file pages, every
  task stalled on memory at least ``THRASH_STALL`` % of the time (PSI) for ``$FLEXGNN_THRASH_S`` seconds (60; 0
  turns the watchdog off), and the parent killed it (measured: DGL's SAGE at 300k nodes under 1 GiB sat at the cap
  for 15 min at 53-65% full stall instead of being OOM-killed);
- infeasible: the planner found no plan (a result with ``status: infeasible``, as in-process);
- anything else: ``CappedJobError`` (``CappedUserError`` for bad input) with the child's error and traceback.

The child and every process it starts run with glibc's allocator told to give freed blocks over 4 MiB back at
once (``CAPPED_MALLOC``: fixed thresholds for mapping a block anew and for trimming the heap; a variable the user
set wins). glibc's default raises its mapping threshold as large blocks are freed (up to 32 MiB) and then keeps
freed memory in the heap, which a cap charges like live data. Measured (results/LOG.md 2026-12-02): on the
600k-node memory-wall job the anonymous peak 901 -> 717 MiB and the median during training 759 -> 639 MiB (the
engine's own tally 361 MiB plus about 175 MiB of process), epochs 62-64 -> 56 s; 128 KiB thresholds gave 675 / 612
MiB but slower epochs (page faults on every mid-size temporary: 70-75 s there, and 3.0-3.2 s against 1.9 s
default and 1.4 s at 4 MiB on the 300k-node 1 GiB job). Every system gets the same setting under a cap, so their
outcomes and times compare; uncapped jobs keep the default.

The child sees the cap as ``$FLEXGNN_MEMORY_CAP_BYTES`` (for a planner to read) and, on CUDA, the device budget
as ``$FLEXGNN_DEVICE_CAP_BYTES``, which ``flexgnn_core.memory.cap_device_memory`` makes the allocator's hard limit
in every process that trains.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import memcap

CAP_ENV = "FLEXGNN_MEMORY_CAP_BYTES"
THRASH_ENV = "FLEXGNN_THRASH_S"
THRASH_S = 60.0  # how long a job may thrash at its cap before it counts as out of memory
THRASH_STALL = 50.0  # PSI full avg10, %: every task of the job waited for memory half the time
THRASH_AT_CAP = 0.95  # ... while the group held at least this share of its cap
OUTCOME_FILE = "outcome.json"
REPO_ROOT = Path(__file__).resolve().parent.parent
_SIZE_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
# An exception line (column 0 in a traceback, or "rank N raised ..." from the DDP supervisor), never source lines
# (indented) such as "except MemoryError:"; ENOMEM from the OS (fork, mmap) counts too.
_OOM_TEXT = re.compile(r"(?:^|raised )(?:[\w.]+\.)?(?:OutOfMemory|Memory)Error\b|can't allocate memory|"
                       r"CUDA out of memory|\[Errno 12\]", re.MULTILINE)
_REQUESTED = re.compile(r"(?:you tried to allocate (\d+) bytes|Tried to allocate ([\d.]+) (bytes|[KMGT]iB))")
_IN_USE = re.compile(r"([\d.]+) (bytes|[KMGT]iB) is allocated by PyTorch")
log = logging.getLogger("harness")


class OutOfMemory(Exception):
    """The job did not fit under the cap; ``facts`` is the record's ``memory_cap`` (the cap, the meters, and what
    the job asked for where an allocator said so)."""

    def __init__(self, message: str, facts: dict[str, Any]):
        super().__init__(message)
        self.facts = facts


class CappedJobError(RuntimeError):
    """The capped child failed for a reason other than memory; the message holds its error and traceback."""

    def __init__(self, message: str, child_traceback: str | None = None):
        super().__init__(message)
        self.child_traceback = child_traceback


class CappedUserError(CappedJobError, ValueError):
    """The child stopped on bad input (a ValueError or OSError, e.g. a missing data file): a user error."""


def is_out_of_memory(text: str) -> bool:
    """An error (type and message, or a traceback) that says memory ran out."""
    return bool(_OOM_TEXT.search(text))


def allocation_facts(text: str) -> dict[str, int | None]:
    """What an allocator's refusal says: ``requested_bytes`` (torch on CPU and CUDA), ``in_use_bytes`` (CUDA),
    and ``needed_bytes_min``, a lower bound on what the job needed (in use + requested where both are known)."""
    def size(number: str, unit: str) -> int:
        return int(float(number) * _SIZE_UNITS[unit])

    requested = in_use = None
    if match := _REQUESTED.search(text):
        requested = int(match.group(1)) if match.group(1) else size(match.group(2), match.group(3))
    if match := _IN_USE.search(text):
        in_use = size(match.group(1), match.group(2))
    needed = requested + in_use if requested is not None and in_use is not None else requested
    return {"requested_bytes": requested, "in_use_bytes": in_use, "needed_bytes_min": needed}


# glibc reads these at process start (mallopt(3)): a freed block over 4 MiB goes back to the kernel at once
CAPPED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4194304", "MALLOC_TRIM_THRESHOLD_": "4194304"}


def allocator_env() -> dict[str, str]:
    """The allocator settings a capped child runs with: ``CAPPED_MALLOC``, except where the user set a variable."""
    return {key: os.environ.get(key, value) for key, value in CAPPED_MALLOC.items()}


@dataclass
class CappedRun:
    """One job under ``cap_bytes`` with ``mechanism``; ``facts`` (the record's ``memory_cap``) after ``train``."""

    cap_bytes: int
    mechanism: memcap.Mechanism
    device_cap_bytes: int | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def train(self, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run load + train of the resolved ``config`` in a capped child; (graph stats, result JSON) or raise."""
        from harness.systems import uses_native

        if uses_native(config["system"]["name"]):
            # Compiling the C++ kernel (once per machine, ~45 s, g++ near 1 GB) must not happen under the cap.
            from flexgnn_core import native

            log.info("native CPU kernel: %s", native.describe())
        with tempfile.TemporaryDirectory(prefix="flexgnn-capped-") as tmp:
            job_dir = Path(tmp)
            (job_dir / "job.json").write_text(json.dumps({"config": config}))
            group = self.mechanism.create(self.cap_bytes, job_dir)
            log.info("memory cap %d bytes (%.2f GiB) by %s", self.cap_bytes, self.cap_bytes / 2**30,
                     self.mechanism.description)
            start = time.perf_counter()
            try:
                # The child's stdout goes to stderr: the harness's stdout ends with the record alone.
                child = subprocess.Popen(group.command([sys.executable, "-m", "harness.capped", str(job_dir)]),
                                         env=self._child_env(), stdout=2)
                returncode, thrash = self._wait(child, group)
                group.kill()  # what the job left behind (a rank, a fork server) goes with it
                usage = group.usage()
            finally:
                group.kill()
                group.remove()
            outcome_path = job_dir / OUTCOME_FILE
            outcome = json.loads(outcome_path.read_text()) if outcome_path.exists() else None
        self.facts = {"cap_bytes": self.cap_bytes, "mechanism": self.mechanism.kind, "peak_bytes": usage.peak_bytes,
                      "oom_kills": usage.oom_kills, "limit_hits": usage.limit_hits,
                      "device_cap_bytes": self.device_cap_bytes, "returncode": returncode,
                      "allocator": allocator_env(),
                      "wall_s": time.perf_counter() - start}
        return self._decide(returncode, usage, outcome, thrash)

    def _wait(self, child: subprocess.Popen, group: memcap.Group, poll_s: float = 1.0
              ) -> tuple[int, dict[str, Any] | None]:
        """The child's exit code, and what the thrash watchdog saw where it killed the job (else None)."""
        limit_s = float(os.environ.get(THRASH_ENV) or THRASH_S)
        since = None
        while True:
            try:
                return child.wait(timeout=poll_s), None
            except subprocess.TimeoutExpired:
                pass
            if limit_s <= 0:
                continue
            stall, charged = group.stall(), group.charged()
            now = time.monotonic()
            at_cap = charged is not None and charged >= THRASH_AT_CAP * self.cap_bytes
            since = (since or now) if at_cap and stall is not None and stall >= THRASH_STALL else None
            if since is not None and now - since >= limit_s:
                group.kill()
                return child.wait(), {"stall_full_avg10": stall, "thrashing_s": round(now - since, 1),
                                      "charged_bytes": charged}

    def _child_env(self) -> dict[str, str]:
        env = {**os.environ, **allocator_env(), CAP_ENV: str(self.cap_bytes)}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        if self.device_cap_bytes is not None:
            from flexgnn_core.memory import DEVICE_CAP_ENV

            env[DEVICE_CAP_ENV] = str(self.device_cap_bytes)
        return env

    def _decide(self, returncode: int, usage: memcap.Usage, outcome: dict[str, Any] | None,
                thrash: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        if thrash is not None:
            self.facts.update(oom_by="thrashing", thrash=thrash)
            raise OutOfMemory(f"out of memory under hardware.memory_cap={self.cap_bytes} bytes "
                              f"({self.cap_bytes / 2**30:.2f} GiB, {self.mechanism.kind}): the job thrashed at the "
                              f"cap (every task waited for memory {thrash['stall_full_avg10']:.0f}% of the time for "
                              f"{thrash['thrashing_s']:.0f} s) and was killed; {THRASH_ENV}=0 lets it run on",
                              self.facts)
        if outcome and outcome["status"] == "ok" and returncode == 0:
            result = outcome["result"]
            result["peak_bytes"]["job"] = usage.peak_bytes
            return outcome["graph"], result
        error_text = f"{outcome['type']}: {outcome['message']}" if outcome else None
        # Older kernels (cgroup v1 before Linux 4.13) count no OOM kills: a SIGKILL at the limit then counts.
        killed = bool(usage.oom_kills) if usage.oom_kills is not None else bool(usage.limit_hits and returncode < 0)
        refused = outcome is not None and is_out_of_memory(f"{error_text}\n{outcome['traceback']}")
        if killed or refused:
            self.facts.update(oom_by="kernel" if killed else "allocator", job_error=error_text and error_text[:2000],
                              **allocation_facts(f"{error_text}\n{outcome['traceback']}" if refused else ""))
            how = (f"the kernel OOM-killed {usage.oom_kills or 'a'} process(es) of the job" if killed
                   else f"an allocator refused: {error_text[:500]}")
            raise OutOfMemory(f"out of memory under hardware.memory_cap={self.cap_bytes} bytes "
                              f"({self.cap_bytes / 2**30:.2f} GiB, {self.mechanism.kind}): {how}", self.facts)
        if outcome is None:
            raise CappedJobError(f"the capped job exited with code {returncode} and wrote no outcome (negative = "
                                 "killed by that signal)")
        if outcome.get("user_error"):
            raise CappedUserError(error_text, outcome["traceback"])
        raise CappedJobError(f"{error_text}\n--- traceback of the capped job ---\n{outcome['traceback']}",
                             outcome["traceback"])


def prepare(settings: Any) -> CappedRun | None:
    """The capped run for ``settings`` (None without ``hardware.memory_cap``); fails naming the field where no
    mechanism can cap memory here (``memcap.detect`` says what each one lacks)."""
    if settings.memory_cap_bytes is None:
        return None
    from harness.config import ConfigError

    try:
        mechanism = memcap.detect()
    except memcap.MemcapUnavailable as error:
        raise ConfigError(f"config field 'hardware.memory_cap': {error}") from None
    return CappedRun(settings.memory_cap_bytes, mechanism, settings.device_budget_bytes)


def main(job_dir: Path) -> int:
    """The child: validate the job's config, cap the device, load and train; the outcome goes to a file."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    outcome: dict[str, Any]
    try:
        from omegaconf import OmegaConf

        from flexgnn_core.memory import cap_device_memory
        from flexgnn_core.spec import resolve_device
        from harness.config import validate
        from harness.job import train_job
        from harness.systems import get_train_fn

        settings = validate(OmegaConf.create(json.loads((job_dir / "job.json").read_text())["config"]))
        cap_device_memory(resolve_device(settings.train.device))
        graph_stats, result = train_job(settings, get_train_fn(settings.system_name))
        outcome = {"status": "ok", "graph": graph_stats, "result": result}
    except BaseException as error:  # noqa: BLE001 (every failure is reported to the parent, which decides)
        outcome = {"status": "error", "type": type(error).__name__, "message": str(error),
                   "traceback": traceback.format_exc(), "user_error": isinstance(error, (ValueError, OSError))}
    from harness.record import dumps, jsonable

    (job_dir / OUTCOME_FILE).write_text(dumps(jsonable(outcome)))
    return 0 if outcome["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
