"""Layer 3 of the gate: wall-clock A/B ratios, interleaved in one run (asv continuous's approach).

Arms: ``flexgnn@current`` and ``pyg@current`` (this checkout) and, with ``--against REV``, ``flexgnn@REV`` (a
temporary ``git worktree`` of REV, run by the same interpreter with ``PYTHONPATH`` pointing at it). Each tree gets
one long-lived worker process (``ab_worker.py``), so imports and the graph are paid once. A round runs every arm
once per model (one warm-up epoch, then ``TIMED_EPOCHS``; the arm's figure is their median), in an order that
rotates from round to round; rounds repeat until ``budget_s`` is spent (at least ``MIN_ROUNDS``).

Statistic: per round, the ratio of the two arms' epoch times (neighbours in time: a load change hits both); over
rounds, the geometric mean ratio with a 95% Student-t confidence interval of the mean log ratio. ``current`` vs
REV regresses when the interval's LOWER bound exceeds ``1 + threshold``: slower by more than the threshold beyond
the noise. FlexGNN vs PyG is reported (and kept in the history), never failed: it is a result, not a regression.
Throughput is reported as edges x layers per second, so graphs of different sizes compare.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scipy import stats

from flexgnn_core.machine import ROOM_ENV
from harness.gate.ab_worker import MARKER
from harness.gate.cases import MEMORY_ROOM_BYTES
from harness.gate.report import Finding, LayerResult

REPO = Path(__file__).resolve().parents[2]
SPEC = {"graph": {"num_nodes": 10000, "avg_degree": 10.0, "num_features": 32, "num_classes": 8, "seed": 0},
        "model": {"num_layers": 2, "hidden": 64, "heads": 4}, "threads": 1,
        "options": {"flexgnn": {"hardware": "h200", "print_plan": False}, "pyg": {}}}
MODELS = ("gcn", "sage", "gat")
TIMED_EPOCHS, MIN_ROUNDS, MAX_ROUNDS = 2, 3, 30


class Worker:
    """One ``ab_worker.py`` process importing the tree at ``tree``."""

    def __init__(self, tree: Path, label: str):
        self.label = label
        self.log = tempfile.TemporaryFile(mode="w+")
        # the machine's free memory fixed, as in the deterministic cases, so both trees plan for the same room
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(SPEC["threads"]),
               ROOM_ENV: str(MEMORY_ROOM_BYTES)}
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("ab_worker.py")),
                                         json.dumps(SPEC)], cwd=tree, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True)
        try:
            self.ready = self._answer()
            where = Path(self.ready["flexgnn_core"]).resolve()
            if not where.is_relative_to(tree.resolve()):
                raise RuntimeError(f"A/B worker for {label} imported flexgnn_core from {where}, not from {tree}")
        except RuntimeError:
            self.process.kill()
            self.process.wait()
            self.log.close()
            raise

    def _answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(MARKER):
                return json.loads(line[len(MARKER):])
        self.log.seek(0)
        raise RuntimeError(f"A/B worker for {self.label} exited:\n{self.log.read()[-3000:]}")

    def train(self, system: str, model: str) -> dict:
        request = {"system": system, "model": model, "epochs": 1 + TIMED_EPOCHS, "warmup": 1}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.log.close()


def paired_ratio(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Geometric mean of ``numerator[i] / denominator[i]`` and its 95% t confidence interval."""
    logs = [math.log(a / b) for a, b in zip(numerator, denominator)]
    mean = statistics.fmean(logs)
    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


class RevTree:
    """``with RevTree(rev) as path``: a detached temporary worktree of ``rev``, removed afterwards."""

    def __init__(self, rev: str):
        self.rev = rev

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix="flexgnn-gate-rev-")) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(self.path), self.rev],
                       check=True, capture_output=True, text=True)
        return self.path

    def __exit__(self, *exc) -> None:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(self.path)], capture_output=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)
        shutil.rmtree(self.path.parent, ignore_errors=True)


def measure(arms: dict[str, tuple[Worker, str]], budget_s: float) -> tuple[dict, list[str]]:
    """``{(arm, model): [median epoch s per round]}`` interleaved; arms that fail are dropped with a note."""
    times: dict[tuple[str, str], list[float]] = {(arm, m): [] for arm in arms for m in MODELS}
    notes, failed, start = [], set(), time.perf_counter()
    for round_index in range(MAX_ROUNDS):
        if round_index >= MIN_ROUNDS and time.perf_counter() - start > budget_s:
            break
        order = list(arms)
        order = order[round_index % len(order):] + order[:round_index % len(order)]
        for model in MODELS:
            for arm in order:
                if arm in failed:
                    continue
                worker, system = arms[arm]
                got = worker.train(system, model)
                if "error" in got:
                    failed.add(arm)
                    notes.append(f"!!! arm {arm} FAILED and is left out: {got['error']}")
                    continue
                times[(arm, model)].append(statistics.median(got["epoch_times_s"]))
    return {key: value for key, value in times.items() if key[0] not in failed}, notes


def run(against: str | None, threshold: float, report_only: bool, budget_s: float) -> LayerResult:
    """Measure the arms interleaved and compare them; ``against=None`` runs FlexGNN vs PyG only."""
    result = LayerResult("wallclock", "report" if report_only else "pass",
                         against=f"{against} (temporary worktree) and PyG" if against else "PyG (no --against)")
    start = time.perf_counter()
    with (RevTree(against) if against else contextlib.nullcontext()) as rev_tree:
        current = Worker(REPO, "current")
        workers = [current]
        try:
            arms = {"flexgnn@current": (current, "flexgnn"), "pyg@current": (current, "pyg")}
            problems = []
            if rev_tree is not None:
                try:
                    workers.append(Worker(rev_tree, against))
                    arms[f"flexgnn@{against}"] = (workers[-1], "flexgnn")
                except RuntimeError as error:  # e.g. REV predates the public entry points the worker imports
                    problems.append(f"!!! {against} cannot be measured, the A/B against it is SKIPPED: {error}")
            times, result.notes = measure(arms, budget_s)
            result.notes += problems
        finally:
            for worker in workers:
                worker.close()
    rounds = min((len(v) for v in times.values()), default=0)
    rule = "nothing to fail on without --against"
    if against:
        rule = (f"fails when current/{against} has its lower bound above {1 + threshold:.2f}"
                + (" (report only here)" if report_only else ""))
    result.notes.insert(0, f"{rounds} interleaved rounds in {time.perf_counter() - start:.0f} s; statistic: geometric "
                        f"mean of per-round epoch-time ratios with its 95% t interval; {rule}")
    edge_layers = current.ready["num_edges"] * SPEC["model"]["num_layers"]
    pairs = [("flexgnn_over_pyg", "flexgnn@current", "pyg@current")]
    if against:
        pairs.append(("current_over_rev", "flexgnn@current", f"flexgnn@{against}"))
    for model in MODELS:
        for arm in [a for a in arms if (a, model) in times]:
            median = statistics.median(times[(arm, model)])
            name = arm.replace(f"@{against}", "@rev") if against else arm
            result.figures[f"wallclock/{model}/{name}/edge_layers_per_s"] = edge_layers / median
            result.notes.append(f"{model} {arm}: median epoch {median * 1e3:.1f} ms = {edge_layers / median:.3g} "
                                "edges x layers / s")
        for label, a, b in pairs:
            if (a, model) not in times or (b, model) not in times:
                continue
            ratio, low, high = paired_ratio(times[(a, model)], times[(b, model)])
            result.figures[f"wallclock/{model}/{label}"] = ratio
            result.compared += 1
            result.notes.append(f"{model} {a} / {b} epoch time: {ratio:.3f} (95% CI {low:.3f}-{high:.3f})")
            if label == "current_over_rev" and low > 1 + threshold:
                note = f"slower beyond the noise: CI lower bound {low:.3f} > {1 + threshold:.2f}"
                result.findings.append(Finding("wallclock", f"{model}/{label}", 1.0, ratio,
                                               "info" if report_only else "regression",
                                               note + ("; report only" if report_only else "")))
    if not any(arm == "flexgnn@current" for arm, _ in times):  # this tree failed to train: never a silent pass
        result.findings.append(Finding("wallclock", "flexgnn@current", "trains", "failed", "regression",
                                       "see the arm's error above"))
    if any(f.verdict == "regression" for f in result.findings):
        result.status = "fail"
    return result
