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

# Two runs agreed within 0.24% (results/LOG.md); a 20% slower aggregation kernel moves GCN and SAGE epochs by
# 9-17% (tests/test_gate.py, test c), GAT epochs by 2-3% only (aggregation is 4% of a GAT epoch).
THRESHOLD = 0.05
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


class Measurement:
    """One valgrind run of the worker over ``selected``, started at construction (it runs beside the
    deterministic layer: both count, neither times); ``counts()`` waits for it and reads the dumps."""

    def __init__(self, selected: tuple[cases.Case, ...], env: dict[str, str] | None = None):
        self.selected = selected
        self.folder = tempfile.TemporaryDirectory(prefix="flexgnn-gate-callgrind-")
        folder = Path(self.folder.name)
        (folder / "helper.c").write_text(HELPER_SOURCE)
        subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(folder / "helper.so"), str(folder / "helper.c")],
                       check=True, capture_output=True)
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                   f"--callgrind-out-file={folder / 'callgrind.out'}", sys.executable, "-m",
                   "harness.gate.callgrind_worker", str(folder / "helper.so"), *(case.name for case in selected)]
        worker_env = {**(env or os.environ), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        self.log = (folder / "worker.log").open("w+")
        self.process = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[2], env=worker_env,
                                        stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def counts(self) -> dict[str, int]:
        try:
            code = self.process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise RuntimeError(f"callgrind worker did not finish within {TIMEOUT_S} s") from None
        try:
            found = _parse_dumps(Path(self.folder.name))
            missing = [case.name for case in self.selected if not found.get(case.name)]
            if code or missing:
                self.log.seek(0)
                tail = "\n".join([line for line in self.log.read().splitlines() if not line.startswith("==")][-15:])
                raise RuntimeError(f"callgrind worker failed (exit {code}; no count for "
                                   f"{', '.join(missing) or 'none'}):\n{tail}")
            return {case.name: found[case.name] for case in self.selected}
        finally:
            self.log.close()
            self.folder.cleanup()


def run(selected: tuple[cases.Case, ...], baseline: dict[str, Any] | None, repeats: int = 1,
        env: dict[str, str] | None = None, started: Measurement | None = None) -> tuple[LayerResult, dict[str, Any]]:
    """Measure (``repeats`` valgrind runs, the first possibly ``started`` already; the counts are their mean, the
    spread is reported per case) and compare with ``baseline``."""
    why = unavailable()
    if why:
        banner = f"!!! INSTRUCTION LAYER SKIPPED, NOT PASSED: {why} !!!"
        return LayerResult("instructions", "skipped", notes=["!" * len(banner), banner, "!" * len(banner)]), {}
    start = time.perf_counter()
    runs = [(started if i == 0 and started else Measurement(selected, env)).counts() for i in range(repeats)]
    counts = {name: round(sum(r[name] for r in runs) / repeats) for name in runs[0]}
    now = {"environment": environment(), "threshold": THRESHOLD, "cases": counts}
    notes = [f"{repeats} valgrind run(s), {time.perf_counter() - start:.0f} s waited for"]
    if repeats > 1:
        now["runs"] = runs
        spread = {n: (max(r[n] for r in runs) - min(r[n] for r in runs)) / counts[n] for n in counts}
        notes.append("run-to-run spread (max - min) / mean: "
                     + ", ".join(f"{name} {value:.3%}" for name, value in spread.items()))
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
