"""The ``flexgnn`` system: prepare -> calibrate -> solve -> execute, each step a value handed to the next.

    graph, model -> engine.prepare -> Prepared (chunks) + Problem
    machine      -> calibrate      -> Hardware (cached JSON; or a datasheet profile; or given by the caller)
    Problem, Hardware, budgets -> plan.solvers.solve -> Plan (feasible or not: a value)
    feasible Plan -> engine.execute -> RunResult

``train(graph, model, params, train, options)`` is the ``spec.TrainFn`` of system "flexgnn". An infeasible plan
comes back as a ``RunResult`` with ``status="infeasible"`` (the reason names the minimum budget), not an exception.
Calibration (``plan/calibrate_s``) and solving (``plan/solve_s``) are timed apart, before the timed run.

Options (``OPTIONS``, the system's own): ``policy``, ``num_chunks``, ``reorder``, ``order``, ``prefetch``,
``placement`` (a custom plan), ``print_plan``. Hardware keys (``HARDWARE_KEYS``, set in the harness's hardware
group): ``device_budget_bytes``, ``host_budget_bytes``, ``device_budget_fraction`` (a share of this problem's
all-on-device peak at its P), ``disk_dir``, ``hardware`` (a datasheet profile name such as ``h200``, a
``Hardware`` or its JSON; None: this machine's cached calibration, measured when absent).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Mapping

import torch
from torch import Tensor

from flexgnn_core import calibrate
from flexgnn_core.engine import execute, prepare, rechunk
from flexgnn_core.evaluate import Evaluation
from flexgnn_core.plan import Budgets, Plan, custom_plan, simulate
from flexgnn_core.plan import cost
from flexgnn_core.plan.cost import Hardware
from flexgnn_core.plan.solvers import NEEDS_HARDWARE, check_name, solve
from flexgnn_core.spec import Graph, ModelSpec, RunResult, TrainSpec, resolve_device

SYSTEM = "flexgnn"
OPTIONS = {"policy": "optimal", "num_chunks": 4, "reorder": "none", "order": "auto", "prefetch": True,
           "placement": None, "print_plan": True}
HARDWARE_KEYS = ("device_budget_bytes", "host_budget_bytes", "device_budget_fraction", "disk_dir", "hardware")


def parse_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], Budgets]:
    """The system's options over the defaults, and the budgets (validated once, by ``Budgets``)."""
    known = set(OPTIONS) | set(HARDWARE_KEYS)
    unknown = set(options) - known - {"name"}
    if unknown:
        raise ValueError(f"unknown flexgnn option(s) {', '.join(sorted(unknown))}; valid: {', '.join(OPTIONS)}, "
                         f"and the hardware keys {', '.join(HARDWARE_KEYS)}")
    merged = {**OPTIONS, **dict.fromkeys(HARDWARE_KEYS), **{k: v for k, v in options.items() if k != "name"}}
    budgets = Budgets(merged["device_budget_bytes"], merged["host_budget_bytes"], merged["device_budget_fraction"])
    if merged["placement"] is None:
        check_name(merged["policy"])
    return merged, budgets


def hardware_for(value: Any, device: torch.device) -> Hardware:
    """A ``Hardware`` as is, its JSON, a datasheet profile by name, or None: this machine's calibration."""
    if isinstance(value, Hardware):
        return value
    if isinstance(value, Mapping):
        return Hardware.from_json(dict(value))
    if isinstance(value, str):
        return calibrate.profile(value)
    return calibrate.load_or_measure(device)


def calibrate_options(options: Mapping[str, Any], device: Any) -> dict[str, Any]:
    """The calibration step before a run (the harness calls it): when the plan needs measured rates and none are
    given, this machine's (cached, else measured) rates go into ``options["hardware"]`` as JSON."""
    opts, _ = parse_options(options)
    needs_rates = opts["placement"] is None and opts["policy"] in NEEDS_HARDWARE
    if not needs_rates or opts["hardware"] is not None:
        return dict(options)
    return {**options, "hardware": calibrate.load_or_measure(resolve_device(str(device))).to_json()}


def plan_for(prepared, policy: str, placement: dict | None, hw: Hardware | None):
    """Solve (or validate a custom placement); when the solver picked another P (or, finding none, proposes one),
    cut the graph at that P and solve exactly there (``optimal`` with the measured chunk statistics, keeping the
    solver's name)."""
    problem = prepared.problem
    if placement is not None:
        return prepared, custom_plan(problem, dict(placement))
    plan = solve(problem, policy, hw)
    if plan.num_chunks != problem.num_chunks:  # planned on estimated statistics: the exact ones decide
        prepared = rechunk(prepared, plan.num_chunks)
        plan = dataclasses.replace(solve(prepared.problem, "optimal", hw), policy=plan.policy)
    return prepared, plan


def train(graph: Graph, model: ModelSpec, params: Mapping[str, Tensor], train: TrainSpec,
          options: Mapping[str, Any]) -> RunResult:
    """Train ``model`` on the whole ``graph`` with the FlexGNN engine (see the module docstring)."""
    opts, budgets = parse_options(options)
    device = resolve_device(train.device)
    prepared = prepare(graph, model, params, opts["num_chunks"], opts["reorder"], opts["order"], budgets)
    needs_rates = opts["placement"] is None and opts["policy"] in NEEDS_HARDWARE
    start = time.perf_counter()
    hw = hardware_for(opts["hardware"], device) if needs_rates or opts["hardware"] is not None else None
    calibrate_s = time.perf_counter() - start
    start = time.perf_counter()
    if budgets.device_budget_fraction is not None:  # a share of what all-on-device needs at this P
        everything = simulate(solve(prepared.problem, "all_device"), prepared.problem)["peak_bytes"]["device"]
        resolved = math.ceil(budgets.device_budget_fraction * everything)
        prepared.problem = dataclasses.replace(prepared.problem, device_budget_bytes=resolved)
    prepared, plan = plan_for(prepared, opts["policy"], opts["placement"], hw)
    solve_s = time.perf_counter() - start
    prediction = cost.predict(plan, prepared.problem, hw) if hw is not None else None
    timings = {"preprocess": prepared.seconds, "calibrate": calibrate_s, "solve": solve_s}
    extra = {"reorder": opts["reorder"], "device_budget_fraction": budgets.device_budget_fraction,
             "hardware": None if hw is None else {"name": hw.name, "source": hw.source},
             "predicted_epoch_s": None if prediction is None else prediction.epoch_s,
             "prediction": None if prediction is None else prediction.to_json()}
    if opts["print_plan"]:
        guess = "" if prediction is None else (
            f"\n  predicted epoch {prediction.epoch_s:.4g} s on {hw.name} (compute {prediction.compute_s:.4g} s, "
            f"transfers {sum(dict(prediction.transfer_s).values()):.4g} s)")
        print(f"{plan}{guess}", file=sys.stderr)
    if not plan.feasible:
        return RunResult(system=SYSTEM, epoch_losses=[], epoch_times_s=[], warmup_epochs=train.warmup_epochs,
                         accuracy={}, device=str(device), timings_s=timings, plan=plan.to_json(),
                         extra={**extra, "policy": plan.policy, "num_chunks": plan.num_chunks},
                         status="infeasible", reason=f"plan '{plan.policy}' is infeasible: {plan.reason}")
    return execute(prepared, plan, params, train, disk_dir=opts["disk_dir"], prefetch=bool(opts["prefetch"]),
                   timings_s=timings, extra=extra, evaluation=Evaluation.of(graph))


__all__ = ["SYSTEM", "OPTIONS", "HARDWARE_KEYS", "Plan", "calibrate_options", "hardware_for", "parse_options",
           "plan_for", "train"]
