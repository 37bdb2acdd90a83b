"""Where a FlexGNN epoch's time goes: torch.profiler, per phase of the engine and per aten op, as a markdown table.

What it measures: one FlexGNN training run (the default planner, as in the sweep: in memory it plans P=1,
everything on the device tier) on the sweep's in-memory graph (20k nodes, degree 10, 64 features, hidden 128,
4 heads), with every epoch's forward / backward and their per-layer steps wrapped in ``record_function``. Only ops
inside an epoch's forward or backward are counted (not preparation, planning or evaluation), per epoch.
``FLEXGNN_NATIVE=0`` gives the engine's products on ``torch.sparse.mm`` (the code before the native kernel), so
the same command run with and without it gives the before / after tables of issue 17.

Command (one model, about a minute on 2 cores):
    python bench/profile_epoch.py --model gat --out results/profile/gat_after.md
The "before" tables of results/profile/ ran this script in a worktree of the commit before the kernel work
(``git worktree add /tmp/before 1bcbdef && cp bench/profile_epoch.py /tmp/before/bench/``, then the same command
there with a Python whose path has this venv's packages but not its editable install of this checkout, which would
win over the worktree: ``python3 -m venv /tmp/bvenv`` plus a ``.pth`` naming ``.venv/lib/python3.11/site-packages``);
the header names the tree whose ``flexgnn_core`` ran.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on sys.path
from bench import common  # noqa: E402

PHASES = ("forward", "backward", "_forward_transform", "_forward_linear", "_forward_attention", "_backward_linear",
          "_backward_transform", "_backward_attention")
TOP_OPS = 25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_graph_model_args(parser, nodes=20_000, avg_degree=10.0, features=64, classes=8, epochs=5)
    parser.add_argument("--model", choices=("gcn", "sage", "gat"), default="gat")
    parser.add_argument("--out", type=Path, help="markdown file to write (stdout only when absent)")
    return parser.parse_args(argv)


def _wrap(cls, name: str, counter: dict) -> None:
    """Time ``cls.name`` as ``phase::name`` inside training epochs; evaluation's forward (``logits_out=``) and
    everything it calls stay out (``counter["evaluating"]`` marks it)."""
    import torch

    method = getattr(cls, name)

    def wrapped(self, *args, **kwargs):
        if name == "forward" and kwargs.get("logits_out") is not None:
            counter["evaluating"] = 1
            try:
                return method(self, *args, **kwargs)
            finally:
                counter["evaluating"] = 0
        if counter["evaluating"]:
            return method(self, *args, **kwargs)
        counter[name] += 1
        with torch.profiler.record_function(f"phase::{name}"):
            return method(self, *args, **kwargs)

    setattr(cls, name, wrapped)


def _phase_of(event) -> str | None:
    """The outermost ``phase::`` range around ``event`` (forward or backward), or None outside an epoch."""
    found, node = None, event
    while node is not None:
        if node.name.startswith("phase::"):
            found = node.name
        node = node.cpu_parent
    return found


def profile(args) -> dict:
    import torch

    from flexgnn_core import system
    from flexgnn_core.engine.executor import Engine

    try:
        from flexgnn_core import native
    except ImportError:  # a tree from before the native kernel (e.g. a worktree at the "before" commit)
        native = None

    calls: dict = defaultdict(int)
    originals = {name: getattr(Engine, name) for name in PHASES}
    graph, model, params, train = common.setup_run(args, args.model, device="cpu")
    if native is not None:
        native.load()  # a first build is not part of any epoch
    # The machine's rates before the engine is wrapped: a calibration not cached yet trains small engine runs
    # (calibrate.probe), whose epochs would be counted and profiled as this run's.
    options = system.calibrate_options({}, "cpu") if hasattr(system, "calibrate_options") else {}
    try:
        for name in PHASES:
            _wrap(Engine, name, calls)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            result = system.train(graph, model, params, train, options)
    finally:
        for name, method in originals.items():  # the engine as it was, for whatever runs next in this process
            setattr(Engine, name, method)
    epochs = calls["forward"]
    phases: dict = defaultdict(float)
    ops: dict = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.name.startswith("phase::"):
            phases[event.name[len("phase::"):]] += event.cpu_time_total / 1e3
        elif _phase_of(event) is not None:
            ops[event.name][0] += 1
            ops[event.name][1] += event.self_cpu_time_total / 1e3
    return {"epochs": epochs, "median_epoch_s": result.median_epoch_s, "plan": result.extra.get("policy"),
            "num_chunks": result.extra.get("num_chunks"), "kernel": native.describe() if native else "torch.sparse.mm, no flexgnn_core.native",
            "threads": torch.get_num_threads(), "phases_ms": {k: v / epochs for k, v in phases.items()},
            "ops": {k: (c / epochs, ms / epochs) for k, (c, ms) in ops.items()},
            "calls": {k: v for k, v in calls.items() if k != "evaluating"}}


def _commit(tree: Path) -> str:
    import subprocess

    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no", "--",
                            "flexgnn_core", "baselines", "bench"],
                           capture_output=True, text=True).stdout.strip()
    return (done.stdout.strip() or "unknown") + (" + uncommitted changes" if dirty else "")


def render(args, argv: list[str], got: dict) -> str:
    total = sum(ms for _, ms in got["ops"].values())
    env = " ".join(f"{k}={os.environ[k]}" for k in ("FLEXGNN_NATIVE", "OMP_NUM_THREADS") if k in os.environ)
    import flexgnn_core

    tree = Path(flexgnn_core.__file__).resolve().parents[1]  # the engine that ran, not where this script lies
    lines = [f"# FlexGNN {args.model.upper()} epoch profile ({got['kernel']})", "",
             f"Tree: `{tree}` at commit `{_commit(tree)}`  ",
             f"Command: `{(env + ' ') if env else ''}python bench/profile_epoch.py {shlex.join(argv)}`  ",
             f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
             f"{open('/proc/loadavg').read().split()[0]}, {got['threads']} torch threads, graph {args.nodes} nodes x "
             f"degree {args.avg_degree:g}, {args.features} features, hidden {args.hidden}, {args.heads} heads, "
             f"{args.layers} layers; plan {got['plan']}, P={got['num_chunks']}; {got['epochs']} epochs profiled "
             f"(warm-up included, evaluation not); median epoch under the profiler {got['median_epoch_s'] * 1e3:.0f} ms.", "",
             "## Per phase (CPU ms per epoch, inclusive)", "", "| phase | ms / epoch |", "|---|---|"]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in sorted(got["phases_ms"].items(), key=lambda kv: -kv[1])]
    lines += ["", f"## Top {TOP_OPS} aten ops inside forward / backward (self CPU time per epoch; all ops: "
              f"{total:.1f} ms)", "", "| op | calls / epoch | self ms / epoch | share |", "|---|---|---|---|"]
    for name, (count, ms) in sorted(got["ops"].items(), key=lambda kv: -kv[1][1])[:TOP_OPS]:
        lines.append(f"| `{name}` | {count:.0f} | {ms:.2f} | {ms / total:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    text = render(args, argv, profile(args))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
