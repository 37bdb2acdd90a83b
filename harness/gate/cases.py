"""The gate's fixed cases and the two probes it puts around a training run without any engine hook.

Every figure comes from public, stable entry points only (the engine is being refactored into packages):
``harness.systems.get_train_fn(name)``, ``flexgnn_core.data.load_dataset``, ``flexgnn_core.models.init_params``,
``ModelSpec``, ``TrainSpec`` and the ``RunResult`` a system returns. Plans depend on nothing of this machine: the
rates are a datasheet profile's (the hardware key ``hardware: h200``, so no calibration runs), P is fixed per
setting (``num_chunks``; no P search), and the memory the machine holds, which bounds every CPU plan
(``flexgnn_core.machine.memory_room``: ``MemAvailable``, a cgroup, a cap), is read from
``$FLEXGNN_MEMORY_ROOM_BYTES``, which ``run_case`` sets to ``MEMORY_ROOM_BYTES`` for the run.

- ``epoch_ends(callback)``: the end of each training epoch, seen through torch's global optimizer step post-hook.
  The spec makes every system take exactly one Adam step per epoch, so "between the ends of steps k-1 and k" is
  epoch k (forward, backward, step), with no hook inside the engine.
- ``OpCounter``: aten op calls counted by a ``TorchDispatchMode``. Dispatch modes are thread-local and the engine
  fetches the next chunk in a background thread, so the counter also enters itself in every thread started while
  it is active (``threading.setprofile``): it sees both threads, and counts with prefetch on equal counts with
  prefetch off (tested).
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils._python_dispatch import TorchDispatchMode

from flexgnn_core.data import load_dataset
from flexgnn_core.machine import ROOM_ENV
from flexgnn_core.models import init_params
from flexgnn_core.spec import Graph, ModelSpec, RunResult, TrainSpec
from harness.systems import get_train_fn

HARDWARE_PROFILE = "h200"  # a datasheet profile: the plan is the same on every machine
# The machine's free memory as the planner sees it. Without it the CPU plan's joint device+host bound
# (``memory_budget_bytes``) moved with MemAvailable from run to run (measured: 22262337232 vs 22140484304 bytes
# in two runs a second apart), so plans, and the gate's run-to-run check, were not reproducible. 4 GiB: far above
# what any case needs (its graph is 3 MB), so the bound never binds and the budgets in SETTINGS decide.
MEMORY_ROOM_BYTES = 4 * 2**30
# Small (an epoch takes milliseconds natively, seconds under callgrind) but aggregation-heavy, like ogbn-products
# (average degree ~50): at degree 40 the sparse aggregation is 29% of a GCN epoch's instructions (at degree 5 it
# was 12%, less than Python and dispatch), so a 20% slower aggregation kernel moves GCN and SAGE epochs by 9-17%,
# beyond the instruction layer's 5% (tests/test_gate.py, test c; results/LOG.md).
GRAPH = {"num_nodes": 2000, "avg_degree": 40.0, "num_features": 16, "num_classes": 4, "seed": 0}
MODEL = {"num_layers": 3, "hidden": 16, "heads": 2}
# Options of the flexgnn system per setting (``device_budget_fraction`` is a hardware key, passed like the options;
# P is always given, so no P search runs). in memory: one chunk, no budget; budget: 4 chunks and half of the
# all-on-device peak; dropout: the recipes' dropout (input, hidden and attention 0.5), where layer 0's aggregate
# cannot be reused (the features change every epoch) and the planner knows it, under 3/4 of the all-on-device peak
# (at 1/2 no gcn plan fits at P=4: the least device budget is 8372470 bytes of 11436346, against 1881094 without
# dropout); 3/4 keeps the features, agg0 and most gradients on the host, so bytes move on every link but disk.
SETTINGS = {
    "memory": {"num_chunks": 1},
    "budget": {"num_chunks": 4, "device_budget_fraction": 0.5},
    "dropout": {"num_chunks": 4, "device_budget_fraction": 0.75},
}
MODEL_OVERRIDES = {"dropout": {"dropout": 0.5}}  # per setting, over MODEL


@dataclass(frozen=True)
class Case:
    kind: str  # gcn, sage, gat
    setting: str  # a key of SETTINGS

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.setting}"

    def options(self, **extra: Any) -> dict[str, Any]:
        return {"hardware": HARDWARE_PROFILE, "print_plan": False, **SETTINGS[self.setting], **extra}

    def model(self) -> ModelSpec:
        return ModelSpec(kind=self.kind, **MODEL, **MODEL_OVERRIDES.get(self.setting, {}))


CASES = tuple(Case(kind, setting) for kind in ("gcn", "sage", "gat") for setting in ("memory", "budget")) + (
    Case("gcn", "dropout"),)  # one model is enough for the dropout path: the masks and the reuse rule are shared


def select(patterns: list[str] | None) -> tuple[Case, ...]:
    """The cases whose name contains any of ``patterns`` (all when None); an unmatched pattern is an error."""
    if not patterns:
        return CASES
    unmatched = [p for p in patterns if not any(p in case.name for case in CASES)]
    if unmatched:
        raise ValueError(f"--cases {', '.join(unmatched)} matches no case; valid: {', '.join(c.name for c in CASES)}")
    return tuple(case for case in CASES if any(p in case.name for p in patterns))


_GRAPH: list[Graph] = []


def graph() -> Graph:
    if not _GRAPH:
        _GRAPH.append(load_dataset("synthetic", **GRAPH))
    return _GRAPH[0]


@contextlib.contextmanager
def fixed_memory_room() -> Iterator[None]:
    """``$FLEXGNN_MEMORY_ROOM_BYTES`` = ``MEMORY_ROOM_BYTES`` while the block runs (the previous value after)."""
    before = os.environ.get(ROOM_ENV)
    os.environ[ROOM_ENV] = str(MEMORY_ROOM_BYTES)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ROOM_ENV, None)
        else:
            os.environ[ROOM_ENV] = before


def run_case(case: Case, epochs: int, **options: Any) -> RunResult:
    """Train ``case`` with the FlexGNN system for ``epochs`` epochs (none of them warm-up), on the CPU, with the
    machine's memory room fixed."""
    g = graph()
    model = case.model()
    params = init_params(model, g.num_features, g.num_classes, seed=0)
    spec = TrainSpec(epochs=epochs, warmup_epochs=0, seed=0, device="cpu", progress=False)
    with fixed_memory_room():
        result = get_train_fn("flexgnn")(g, model, params, spec, case.options(**options))
    if result.status != "ok":
        raise RuntimeError(f"case {case.name}: the flexgnn system did not train ({result.status}: {result.reason})")
    return result


@contextlib.contextmanager
def epoch_ends(callback: Callable[[int], None]) -> Iterator[None]:
    """Call ``callback(epoch)`` (1, 2, ...) at the end of every optimizer step while the block runs."""
    steps = [0]

    def after_step(optimizer, args, kwargs) -> None:
        steps[0] += 1
        callback(steps[0])

    handle = register_optimizer_step_post_hook(after_step)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class _Tally:
    counts: collections.Counter = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on: bool = False


class _CountingMode(TorchDispatchMode):
    def __init__(self, tally: _Tally):
        super().__init__()
        self.tally = tally

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.tally.on:
            with self.tally.lock:
                self.tally.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


class OpCounter:
    """``with OpCounter() as ops: ...``; ``ops.on = True/False`` chooses what counts; ``ops.counts`` by op name.

    Threads started inside the block (the engine's prefetch workers) count into the same tally: each enters its
    own mode on its first profiled event, then drops the profile function."""

    def __init__(self):
        self.tally = _Tally()

    @property
    def counts(self) -> dict[str, int]:
        return dict(sorted(self.tally.counts.items()))

    @property
    def on(self) -> bool:
        return self.tally.on

    @on.setter
    def on(self, value: bool) -> None:
        self.tally.on = value

    def __enter__(self) -> "OpCounter":
        tally = self.tally

        def enter_in_new_thread(frame, event, arg) -> None:
            sys.setprofile(None)
            _CountingMode(tally).__enter__()  # left when the thread ends (a pool thread lives for one pass)

        self._mode = _CountingMode(tally)
        self._mode.__enter__()
        threading.setprofile(enter_in_new_thread)
        return self

    def __exit__(self, *exc) -> None:
        threading.setprofile(None)
        self._mode.__exit__(*exc)
