"""The regression gate (``python -m harness.gate``) fails, naming the figure, on the regressions it exists for:

(a) a baseline edited to demand 20% fewer bytes on one link; (b) layer 0's aggregate reuse disabled in a scratch
copy of the tree; (c) a 20% slower kernel patched in (instruction layer, under valgrind: ``-m slow``). Plus the
parts those rest on: the op counter sees the prefetch thread, the A/B statistic, the history and its plot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.gate import cases, deterministic, history, instructions, wallclock
from harness.gate.__main__ import main

REPO = Path(__file__).resolve().parent.parent
BASELINE = REPO / "results" / "baseline"

# (b) targets the engine line that marks layer 0's aggregate as computed, so later epochs reuse it instead of
# aggregating the features again. Searched in every file under flexgnn_core/, so the engine's move into packages
# does not break the test; if the line is renamed, the test fails at the assert below: update this pattern.
AGG0_REUSE_PATTERN = r"self\.agg0_ready = True"
AGG0_REUSE_DISABLED = "self.agg0_ready = False"

# (c) the kernel the engine aggregates with (flexgnn_core.native.csr_mm: every conv step, forward and backward)
# made 20% slower: every call also multiplies again the leading rows that hold a fifth of the nonzeros. Measured
# under callgrind on the native kernel (2026-12-02): epochs gcn-memory +12.4%, gcn-budget +15.8%, sage-memory
# +11.3%, sage-budget +18.1%; GAT only +2.4% (not caught, and not asserted). (On torch.sparse.mm, before: gcn-memory
# +8.7%, sage +9-17%.) Patched in through a sitecustomize module, so the engine code is untouched.
# GATE_TEST_EXTRA=0 keeps the wrapper but adds nothing: the control, showing that the wrapper alone does not trip
# the gate.
SLOW_KERNEL_SITECUSTOMIZE = """
import atexit, os, torch
from flexgnn_core import native
_mm, _calls, _extra = native.csr_mm, [0], float(os.environ["GATE_TEST_EXTRA"])
def mm(crow, col, values, x, width=None):
    _calls[0] += 1
    out = _mm(crow, col, values, x, width)
    if _extra:  # the wasted work: the leading rows holding a share of the nonzeros, multiplied again
        rows = int(torch.searchsorted(crow, int(crow[-1]) * _extra))
        nnz = int(crow[rows])
        _mm(crow[:rows + 1], col[:nnz], values[:nnz], x, width)
    return out
native.csr_mm = mm
atexit.register(lambda: open(os.environ["GATE_TEST_MARKER"], "w").write(str(_calls[0])))
"""


def _gate(*argv: str, capsys) -> tuple[int, str]:
    code = main([*argv, "--no-history"])
    return code, capsys.readouterr().out


def test_a_gate_fails_naming_the_link_when_the_baseline_demands_20pct_fewer_bytes(tmp_path, capsys):
    shutil.copytree(BASELINE, tmp_path / "baseline")
    args = ("--layers", "deterministic", "--cases", "gcn-budget", "--baseline-dir", str(tmp_path / "baseline"))
    assert _gate(*args, capsys=capsys)[0] == 0, "the committed baseline must pass on this tree"

    path = tmp_path / "baseline" / "deterministic.json"
    data = json.loads(path.read_text())
    measured = data["cases"]["gcn-budget"]["io_bytes_per_epoch"]["h2d"]
    assert measured > 0
    data["cases"]["gcn-budget"]["io_bytes_per_epoch"]["h2d"] = int(measured * 0.8)
    path.write_text(json.dumps(data))
    code, out = _gate(*args, capsys=capsys)
    assert code == 1
    row = next(line for line in out.splitlines() if "gcn-budget/io_bytes_per_epoch/h2d" in line)
    assert "+25.00%" in row and "regression" in row  # measured / demanded - 1
    assert "gate deterministic: REGRESSION" in out


def _scratch_copy(tmp_path: Path) -> Path:
    scratch = tmp_path / "tree"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, scratch / name)
    return scratch


@pytest.mark.slow  # 10 s: the gate on a patched copy of the repo; CI runs the slow set and the gate itself
def test_b_gate_fails_when_layer0_aggregate_reuse_is_disabled(tmp_path):
    scratch = _scratch_copy(tmp_path)
    hits = [(path, len(re.findall(AGG0_REUSE_PATTERN, path.read_text())))
            for path in sorted((scratch / "flexgnn_core").rglob("*.py"))]
    hits = [(path, n) for path, n in hits if n]
    assert sum(n for _, n in hits) == 1, (f"AGG0_REUSE_PATTERN {AGG0_REUSE_PATTERN!r} must match exactly once in "
                                          f"flexgnn_core/, matched {hits}: the engine changed; update the pattern")
    path = hits[0][0]
    path.write_text(re.sub(AGG0_REUSE_PATTERN, AGG0_REUSE_DISABLED, path.read_text()))

    env = {**os.environ, "PYTHONPATH": str(scratch)}
    done = subprocess.run([sys.executable, "-m", "harness.gate", "--layers", "deterministic", "--cases", "gcn",
                           "sage", "--baseline-dir", str(BASELINE), "--no-history"], cwd=scratch, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    moved = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("deterministic ")}
    # in memory only the kernel calls show it (layer 0 aggregates again); under a budget the bytes too (gcn-budget
    # keeps h0 on disk and agg0 on the host: agg0 is written back every epoch and no longer read; the features'
    # halo for building agg0 comes from x, never from h0's file, so disk_read need not move)
    for case in ("gcn-memory", "sage-memory", "gcn-budget"):
        assert f"{case}/kernel_calls_per_epoch/flexgnn.csr_spmm.default" in moved, moved  # flexgnn_core/native
    for link in ("h2d", "d2h"):
        assert f"gcn-budget/io_bytes_per_epoch/{link}" in moved, moved
    assert not any("epoch_losses" in figure for figure in moved), "reuse or not, training is exact"
    # with input dropout the features change every epoch, so layer 0 aggregates again anyway: nothing moves there
    assert not any(figure.startswith("gcn-dropout/") for figure in moved), moved


@pytest.mark.slow
@pytest.mark.parametrize("extra", [0.2, 0.0])
def test_c_instruction_layer_catches_a_20pct_slower_kernel(tmp_path, extra):
    if instructions.unavailable():
        pytest.skip(instructions.unavailable())
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_KERNEL_SITECUSTOMIZE)
    marker = tmp_path / "calls"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)]),
           "GATE_TEST_MARKER": str(marker), "GATE_TEST_EXTRA": str(extra)}
    baseline = json.loads((BASELINE / "instructions.json").read_text())
    result, now = instructions.run(cases.select(["gcn-memory", "sage-budget"]), baseline, env=env)
    assert int(marker.read_text()) > 0, "never called: the engine no longer aggregates with native.csr_mm"
    if not extra:
        assert result.status == "pass", result
        return
    assert result.status == "fail", result
    assert {(f.figure, f.verdict) for f in result.findings} == {("gcn-memory/instructions", "regression"),
                                                                ("sage-budget/instructions", "regression")}
    for name in ("gcn-memory", "sage-budget"):
        assert now["cases"][name] > baseline["cases"][name] * (1 + instructions.THRESHOLD)


def test_op_counter_sees_the_prefetch_thread():
    """Dispatch modes are thread-local: without the per-thread hook, prefetched fetches would go uncounted and the
    two counts below would differ (measured at average degree 5: 2340 vs 2540 calls for gcn-budget)."""
    case = cases.Case("gcn", "budget")
    counts = {}
    for prefetch in (True, False):
        counter = cases.OpCounter()

        def count_second_epoch(epoch: int) -> None:
            counter.on = epoch == 1

        with counter, cases.epoch_ends(count_second_epoch):
            result = cases.run_case(case, 2, prefetch=prefetch)
        counts[prefetch] = counter.counts
    assert result.plan["placement"]["h0"] != "device", "the case must fetch off the device, or prefetch never runs"
    assert counts[True] == counts[False] and sum(counts[True].values()) > 0


def test_loss_tolerance_is_relative_1e6_and_everything_else_exact():
    base = {"c": {"epoch_losses": [1.0, 0.5], "io_bytes_per_epoch": {"h2d": 10}, "predicted_epoch_s": 1.0}}
    close = {"c": {"epoch_losses": [1.0 + 5e-7, 0.5], "io_bytes_per_epoch": {"h2d": 10}, "predicted_epoch_s": 1.0}}
    assert deterministic.compare(base, close) == []
    far = {"c": {"epoch_losses": [1.0, 0.5 * (1 + 3e-6)], "io_bytes_per_epoch": {"h2d": 11},
                 "predicted_epoch_s": 1.0 + 1e-6, "new": 1}}
    assert {f.figure for f in deterministic.compare(base, far)} == {
        "c/epoch_losses/1", "c/io_bytes_per_epoch/h2d", "c/predicted_epoch_s", "c/new"}


def test_paired_ratio_interval_covers_the_true_ratio_and_narrows_with_agreement():
    ratio, low, high = wallclock.paired_ratio([2.0, 2.2, 1.8, 2.0], [1.0, 1.1, 0.9, 1.0])
    assert ratio == pytest.approx(2.0) and low == pytest.approx(2.0) and high == pytest.approx(2.0)
    ratio, low, high = wallclock.paired_ratio([1.0, 1.3, 0.9, 1.2], [1.0, 1.0, 1.0, 1.0])
    assert low < ratio < high and low < 1.0 < high  # noise of +-30%: not a regression at any threshold


def test_history_appends_one_line_per_run_and_plots(tmp_path):
    path = tmp_path / "history.jsonl"
    history.append(path, "ok", {"deterministic": "pass"}, {"gcn-memory/io_bytes_per_epoch/h2d": 5.0})
    history.append(path, "regression", {"deterministic": "fail"}, {"gcn-memory/io_bytes_per_epoch/h2d": 6.0})
    runs = history.read(path)
    assert [run["verdict"] for run in runs] == ["ok", "regression"] and runs[0]["commit"]
    out = history.plot(path, tmp_path / "history.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
