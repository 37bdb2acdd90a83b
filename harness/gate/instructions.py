"""Layer 2 of the gate: instructions executed by one training epoch of each case, under callgrind.

Instruction counts do not care how loaded the machine is (CodSpeed's approach; what
``torch.utils.benchmark.Timer.collect_callgrind`` exists for). ``collect_callgrind`` instruments its subprocess from
the start, and importing torch instrumented took 149 s here; so the gate runs one worker
(``harness.gate.callgrind_worker``) with ``--instr-atstart=no`` and turns instrumentation on for the measured
epoch only, with callgrind's client requests (``CALLGRIND_START_INSTRUMENTATION``, ``TOGGLE_COLLECT``,
``DUMP_STATS_AT``) from a 10-line C helper built here with the system C compiler. One intra-op thread, fixed hash
seed. A case regresses when its count exceeds the baseline by more than ``THRESHOLD``.

Without valgrind or a C compiler the layer is SKIPPED and says so loudly (``.ci/run`` installs both).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from harness.gate import cases
from harness.gate.report import Finding, LayerResult

THRESHOLD = 0.05  # run-to-run spread measured at <= 0.01% (results/LOG.md); a 20% slower kernel moves it >= 10%
TIMEOUT_S = 900
HELPER_SOURCE = r"""
#include <valgrind/callgrind.h>
void gate_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; CALLGRIND_TOGGLE_COLLECT; }
void gate_stop(const char *name) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_STOP_INSTRUMENTATION;
                                   CALLGRIND_DUMP_STATS_AT(name); }
"""


def environment() -> dict[str, Any]:
    """What instruction counts depend on; a baseline made elsewhere is not comparable."""
    valgrind = shutil.which("valgrind")
    version = subprocess.run([valgrind, "--version"], capture_output=True, text=True).stdout.strip() if valgrind \
        else None
    return {"valgrind": version, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine()}


def unavailable() -> str | None:
    """Why this layer cannot run here, or None."""
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (apt-get install -y valgrind; .ci/run does this)"
    if shutil.which("cc") is None:
        return "no C compiler 'cc' to build the callgrind client-request helper (apt-get install -y gcc)"
    if not Path("/usr/include/valgrind/callgrind.h").exists():
        return "valgrind's header valgrind/callgrind.h is missing (it ships with Debian's valgrind package)"
    return None


def _parse_dumps(folder: Path) -> dict[str, int]:
    """``{case: instructions}`` from callgrind's dump files: the ``totals:`` line (the sum of the self costs
    written) of the dump named ``desc: Trigger: Client Request: CASE``. Not ``summary:``, which callgrind derives
    from its per-thread counters and which goes wrong once instrumentation is switched off and on (measured: the
    previous case's count was subtracted)."""
    counts = {}
    for path in sorted(folder.glob("callgrind.out.*")):
        text = path.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: Client Request: (\S+)$", text, re.MULTILINE)
        totals = re.search(r"^totals: (\d+)", text, re.MULTILINE)
        if trigger and totals:
            counts[trigger.group(1)] = int(totals.group(1))
    return counts


def measure(selected: tuple[cases.Case, ...], env: dict[str, str] | None = None) -> dict[str, int]:
    """Instructions of one epoch per case, from one valgrind run of the worker (minutes: see ``TIMEOUT_S``)."""
    with tempfile.TemporaryDirectory(prefix="flexgnn-gate-callgrind-") as tmp:
        folder = Path(tmp)
        (folder / "helper.c").write_text(HELPER_SOURCE)
        subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(folder / "helper.so"), str(folder / "helper.c")],
                       check=True, capture_output=True)
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                   f"--callgrind-out-file={folder / 'callgrind.out'}", sys.executable, "-m",
                   "harness.gate.callgrind_worker", str(folder / "helper.so"), *(case.name for case in selected)]
        worker_env = {**(env or os.environ), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        repo = Path(__file__).resolve().parents[2]
        done = subprocess.run(command, cwd=repo, env=worker_env, capture_output=True, text=True, timeout=TIMEOUT_S)
        counts = _parse_dumps(folder)
        missing = [case.name for case in selected if not counts.get(case.name)]
        if done.returncode or missing:
            tail = "\n".join([line for line in done.stderr.splitlines() if not line.startswith("==")][-15:])
            raise RuntimeError(f"callgrind worker failed (exit {done.returncode}; no count for "
                               f"{', '.join(missing) or 'none'}):\n{tail}")
        return {case.name: counts[case.name] for case in selected}


def run(selected: tuple[cases.Case, ...], baseline: dict[str, Any] | None, repeats: int = 1,
        env: dict[str, str] | None = None) -> tuple[LayerResult, dict[str, Any]]:
    """Measure (``repeats`` valgrind runs; the counts are their mean, the spread is reported) and compare."""
    why = unavailable()
    if why:
        banner = f"!!! INSTRUCTION LAYER SKIPPED, NOT PASSED: {why} !!!"
        return LayerResult("instructions", "skipped", notes=["!" * len(banner), banner, "!" * len(banner)]), {}
    start = time.perf_counter()
    runs = [measure(selected, env) for _ in range(repeats)]
    counts = {name: round(sum(r[name] for r in runs) / repeats) for name in runs[0]}
    spread = max((max(r[n] for r in runs) - min(r[n] for r in runs)) / counts[n] for n in counts)
    now = {"environment": environment(), "threshold": THRESHOLD, "cases": counts}
    notes = [f"{repeats} valgrind run(s) in {time.perf_counter() - start:.0f} s"
             + (f"; run-to-run spread {spread:.4%} (largest over cases)" if repeats > 1 else "")]
    result = LayerResult("instructions", "pass", notes=notes, compared=len(counts),
                         figures={f"{name}/instructions": float(count) for name, count in counts.items()})
    if baseline is None:
        result.status = "fail"
        result.findings.append(Finding("instructions", "*", "(absent)", "measured", "regression",
                                       "no baseline: python -m harness.gate --update"))
        return result, now
    if baseline.get("environment") != now["environment"]:
        result.status = "skipped"
        banner = ("!!! INSTRUCTION LAYER SKIPPED, NOT PASSED: the baseline was made on "
                  f"{baseline.get('environment')}, this is {now['environment']}; counts are not comparable. "
                  "Run python -m harness.gate --update --layers instructions here to make one !!!")
        result.notes.append(banner)
        return result, now
    for name, count in counts.items():
        before = baseline["cases"].get(name)
        if before is None:
            result.findings.append(Finding("instructions", f"{name}/instructions", "(absent)", count, "regression",
                                           "no baseline for this case: python -m harness.gate --update"))
        elif count > before * (1 + THRESHOLD):
            result.findings.append(Finding("instructions", f"{name}/instructions", before, count, "regression",
                                           f"more than +{THRESHOLD:.0%}"))
        elif count < before * (1 - THRESHOLD):
            result.findings.append(Finding("instructions", f"{name}/instructions", before, count, "improved",
                                           "lock it in: python -m harness.gate --update"))
    if any(f.verdict == "regression" for f in result.findings):
        result.status = "fail"
    return result, now
