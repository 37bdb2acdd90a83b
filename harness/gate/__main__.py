"""Throughput regression gate: ``python -m harness.gate`` exits 0 (no regression) or 1 (a figure regressed).

Three layers, from exact to noisy (README "Regression gate"):

1. ``deterministic``: bytes per link per epoch, accounted peaks, plan, predicted epoch time, aten calls per epoch
   and the loss curve of seven small FlexGNN cases (each model in memory and under a budget, GCN also with dropout;
   ``h200`` datasheet plans, fixed P and memory room), against ``results/baseline/deterministic.json``: exact
   (losses within 1e-6 relative).
2. ``instructions``: instructions of one epoch per case under callgrind, against
   ``results/baseline/instructions.json``: fails above +5%; SKIPPED loudly where valgrind is missing.
3. ``wallclock``: interleaved A/B epoch-time ratios, FlexGNN vs PyG and, with ``--against REV``, this tree vs REV
   in a temporary worktree; fails when the 95% interval of the slowdown lies above ``--ab-threshold``.

    python -m harness.gate                          # all layers (about 3-4 min on 2 shared cores)
    python -m harness.gate --against main           # also this tree vs main, wall clock
    python -m harness.gate --update                 # rewrite the baselines from this tree, on purpose; commit them
    python -m harness.gate --layers deterministic   # seconds
    python -m harness.gate --plot                   # results/bench/history.png from results/bench/history.jsonl

Every run appends its figures and commit to ``results/bench/history.jsonl`` (``--no-history`` not to).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.gate import cases, deterministic, history, instructions, wallclock
from harness.gate.report import Finding, LayerResult, render

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("deterministic", "instructions", "wallclock")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.gate", description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default=",".join(LAYERS), help=f"comma-separated subset of {', '.join(LAYERS)}")
    parser.add_argument("--cases", nargs="+", help="only cases whose name contains one of these (layers 1-2)")
    parser.add_argument("--update", action="store_true", help="write the baselines from this run (on purpose)")
    parser.add_argument("--against", metavar="REV", help="wall clock: also this tree vs REV (git worktree)")
    parser.add_argument("--ab-threshold", type=float, default=0.10,
                        help="wall clock fails when the slowdown's 95%% CI lower bound exceeds 1 + this (0.10)")
    parser.add_argument("--ab-report-only", action="store_true", help="wall clock never fails (CI's setting)")
    parser.add_argument("--ab-seconds", type=float, default=90.0, help="time for interleaved A/B rounds (90)")
    parser.add_argument("--instr-repeats", type=int, default=1, help="valgrind runs, to measure the spread (1)")
    parser.add_argument("--baseline-dir", type=Path, default=REPO / "results" / "baseline")
    parser.add_argument("--history", type=Path, default=REPO / "results" / "bench" / "history.jsonl")
    parser.add_argument("--no-history", action="store_true", help="do not append this run to the history")
    parser.add_argument("--plot", action="store_true", help="only draw the history (see --plot-out) and exit")
    parser.add_argument("--plot-out", type=Path, default=REPO / "results" / "bench" / "history.png")
    args = parser.parse_args(argv)
    args.layers = [layer.strip() for layer in args.layers.split(",") if layer.strip()]
    unknown = [layer for layer in args.layers if layer not in LAYERS]
    if unknown or not args.layers:
        parser.error(f"--layers {','.join(unknown) or '(empty)'}: valid layers are {', '.join(LAYERS)}")
    if args.instr_repeats < 1 or args.ab_seconds < 0 or args.ab_threshold < 0:
        parser.error("--instr-repeats must be >= 1, --ab-seconds and --ab-threshold >= 0")
    if args.against and not _resolves(args.against):
        parser.error(f"--against {args.against}: not a commit in {REPO} (try HEAD~1, main, or a sha)")
    return args


def _resolves(rev: str) -> bool:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                          capture_output=True)
    return done.returncode == 0


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _save(path: Path, about: str, content: dict[str, Any], old: dict[str, Any] | None) -> None:
    """Write a baseline: the measured cases replace their old entries, unmeasured cases stay."""
    merged = {**((old or {}).get("cases", {})), **content.pop("cases")}
    data = {"about": about, **content, "cases": dict(sorted(merged.items()))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def deterministic_layer(args: argparse.Namespace, selected: tuple[cases.Case, ...]) -> LayerResult:
    path = args.baseline_dir / "deterministic.json"
    figures = deterministic.measure(selected)
    old = _load(path)
    result = LayerResult("deterministic", "pass", compared=len(deterministic.flatten(figures)),
                         against=_shown(path), figures=deterministic.history_figures(figures))
    if old is None and not args.update:
        result.findings.append(Finding("deterministic", "*", "(absent)", "measured", "regression",
                                       f"no baseline file {path}: python -m harness.gate --update"))
    elif old is not None:
        result.findings = deterministic.compare(old["cases"], figures)
        if result.findings and old.get("environment") != deterministic.environment():
            result.notes.append(f"note: the baseline was made with {old.get('environment')}, this run has "
                                f"{deterministic.environment()}: op names and counts may move with torch alone")
    if args.update:
        result.findings = [Finding(f.layer, f.figure, f.baseline, f.now, "info", "baseline updated")
                           for f in result.findings]
        _save(path, "python -m harness.gate --update; figures of one steady-state epoch per case, compared "
              "exactly (loss curve within 1e-6 relative); see harness/gate/deterministic.py",
              {"environment": deterministic.environment(), "cases": figures}, old)
        result.notes.append(f"baseline written: {_shown(path)} (commit it with the change that moved it)")
    result.status = "fail" if any(f.verdict == "regression" for f in result.findings) else "pass"
    return result


def instructions_layer(args: argparse.Namespace, selected: tuple[cases.Case, ...],
                       started: instructions.Measurement | None) -> LayerResult:
    path = args.baseline_dir / "instructions.json"
    old = _load(path)
    result, now = instructions.run(selected, None if args.update else old, args.instr_repeats, started=started)
    result.against = _shown(path)
    if args.update and now:
        result.status, result.findings = "pass", []
        _save(path, "python -m harness.gate --update; instructions of one steady-state epoch per case under "
              "callgrind; fails above +5%; see harness/gate/instructions.py", now, old)
        result.notes.append(f"baseline written: {_shown(path)} (commit it with the change that moved it)")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot:
        print(f"gate: history plotted to {history.plot(args.history, args.plot_out)}")
        return 0
    try:
        selected = cases.select(args.cases)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results, started = [], None
    if "instructions" in args.layers and instructions.unavailable() is None:
        started = instructions.Measurement(selected)  # valgrind on one core while layer 1 runs on the other
    for layer in (layer for layer in LAYERS if layer in args.layers):  # wall clock last, alone on the machine
        print(f"gate: running layer {layer} ...", file=sys.stderr, flush=True)
        try:
            if layer == "deterministic":
                results.append(deterministic_layer(args, selected))
            elif layer == "instructions":
                results.append(instructions_layer(args, selected, started))
            else:
                results.append(wallclock.run(args.against, args.ab_threshold, args.ab_report_only, args.ab_seconds))
        except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as error:  # the tree under test broke
            results.append(LayerResult(layer, "fail", [Finding(layer, "*", "-", "crashed", "regression",
                                                               f"{type(error).__name__}: {error}")]))
    print(render(results))
    failed = [r.layer for r in results if r.status == "fail"]
    verdict = "regression" if failed else "ok"
    if not args.no_history:
        figures = {name: value for r in results for name, value in r.figures.items()}
        history.append(args.history, verdict, {r.layer: r.status for r in results}, figures)
    skipped = [r.layer for r in results if r.status == "skipped"]
    print(f"gate: {'REGRESSION in ' + ', '.join(failed) if failed else 'no regression'}"
          + (f" (SKIPPED, NOT PASSED: {', '.join(skipped)})" if skipped else "")
          + ("" if args.no_history else f"; appended to {_shown(args.history)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
