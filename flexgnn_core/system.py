"""The ``flexgnn`` system: prepare -> calibrate -> solve -> execute, each step a value handed to the next.

    graph, model -> engine.prepare -> Prepared (chunks) + Problem
    machine      -> calibrate      -> Hardware (cached JSON; or a datasheet profile; or given by the caller)
    Problem, Hardware, budgets -> plan.solvers -> Plan (feasible or not: a value)
    feasible Plan -> engine.execute -> RunResult

``train(graph, model, params, train, options)`` is the ``spec.TrainFn`` of system "flexgnn". An infeasible plan
comes back as a ``RunResult`` with ``status="infeasible"`` (the reason names what is missing), not an exception.
Calibration (``plan/calibrate_s``) and solving (``plan/solve_s``) are timed apart, before the timed run.

Budgets: what the caller gives (``device_budget_bytes``, ``host_budget_bytes``, ``device_budget_fraction``), and
always what the machine holds (``flexgnn_core.machine``): on CPU, where "device" and "host" are one RAM, their sum
is bounded by the memory this process may still take (``MemAvailable``, a memory cgroup's limit, the
``memory_cap`` the harness enforces; a margin kept free) plus the graph blocks already built; on CUDA the device
budget is at most the free device memory. So the default never plans more than the machine holds.

P: with ``num_chunks`` null (the default) the solver runs at every P of ``plan.solvers.SEARCH_COUNTS`` on estimated
chunk statistics and the best feasible P (fastest predicted; without rates the smallest) is cut and solved exactly,
the next one tried if estimates were off; a budget that some P meets is never refused. A given ``num_chunks``
fixes P (``optimal_p`` searches regardless).

Options (``OPTIONS``, the system's own): ``policy``, ``num_chunks``, ``reorder``, ``order``, ``prefetch``,
``placement`` (a custom plan), ``print_plan``. Hardware keys (``HARDWARE_KEYS``, set in the harness's hardware
group): the budgets above, ``memory_cap`` (bytes), ``disk_dir``, ``hardware`` (a datasheet profile name such as
``h200``, a ``Hardware`` or its JSON; None: this machine's cached calibration, measured when absent).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Mapping

import torch
from torch import Tensor

from flexgnn_core import calibrate, machine
from flexgnn_core.engine import Prepared, execute, prepare, rechunk
from flexgnn_core.evaluate import Evaluation
from flexgnn_core.plan import Budgets, Plan, cost, custom_plan, simulate
from flexgnn_core.plan.cost import Hardware
from flexgnn_core.plan.solvers import NEEDS_HARDWARE, check_name, rank_over_p, solve
from flexgnn_core.spec import Graph, ModelSpec, RunResult, TrainSpec, resolve_device

SYSTEM = "flexgnn"
OPTIONS = {"policy": "optimal", "num_chunks": None, "reorder": "none", "order": "auto", "prefetch": True,
           "placement": None, "print_plan": True}
HARDWARE_KEYS = ("device_budget_bytes", "host_budget_bytes", "device_budget_fraction", "memory_cap", "disk_dir",
                 "hardware")
NATIVE_KERNELS = True  # its CSR products run flexgnn_core.native (the harness builds it outside a memory cap)
START_CHUNKS = 4  # P at which an automatic P search measures the graph's chunk statistics
RETRIES = 3  # ranked P tried exactly before giving up


def parse_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], Budgets]:
    """The system's options over the defaults, and the budgets (validated once, by ``Budgets``)."""
    known = set(OPTIONS) | set(HARDWARE_KEYS)
    unknown = set(options) - known - {"name"}
    if unknown:
        raise ValueError(f"unknown flexgnn option(s) {', '.join(sorted(unknown))}; valid: {', '.join(OPTIONS)}, "
                         f"and the hardware keys {', '.join(HARDWARE_KEYS)}")
    merged = {**OPTIONS, **dict.fromkeys(HARDWARE_KEYS), **{k: v for k, v in options.items() if k != "name"}}
    budgets = Budgets(merged["device_budget_bytes"], merged["host_budget_bytes"], merged["device_budget_fraction"])
    cap = merged["memory_cap"]
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0):
        raise ValueError(f"hardware.memory_cap={cap!r} must be a positive integer number of bytes or None")
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


def machine_budgets(prepared: Prepared, device: torch.device, cap: int | None) -> tuple[dict[str, int], str]:
    """The budgets this machine imposes (see the module docstring) and a line saying where they come from."""
    room = machine.memory_room(cap)
    device_room = machine.device_room(device)
    if device_room is None:  # CPU: device and host are one RAM; the graph blocks are already resident in it, and
        # the model's whole-graph CSR, which the chunks replace before training, will be released
        released = sum(t.numel() * t.element_size() for t in (prepared.rowptr, prepared.col, prepared.values)
                       if t is not None)
        return {"memory_budget_bytes": room.bytes + prepared.problem.graph_bytes + released}, \
            (f"device + host: {room.describe()} + the graph blocks already built + {released / 2**20:.0f} MiB "
             "released before training")
    return {"device_budget_bytes": device_room.bytes, "host_budget_bytes": room.bytes}, \
        f"device: {device_room.describe()}; host: {room.describe()}"


def _with_budgets(problem, limits: dict[str, int]):
    """The problem's own budgets, each lowered to the machine's limit where it has one."""
    merged = {"memory_budget_bytes": limits.get("memory_budget_bytes")}
    for key in ("device_budget_bytes", "host_budget_bytes"):
        given = getattr(problem, key)
        merged[key] = min(v for v in (given, limits.get(key)) if v is not None) if (
            given is not None or limits.get(key) is not None) else None
    return dataclasses.replace(problem, **merged)


def plan_for(prepared: Prepared, policy: str, placement: dict | None, hw: Hardware | None,
             search_p: bool) -> tuple[Prepared, Plan]:
    """Solve (or validate a custom placement). With ``search_p`` rank every P on estimated statistics, then cut the
    graph at the best ones in turn and solve exactly there, keeping the first feasible plan."""
    if placement is not None:
        return prepared, custom_plan(prepared.problem, dict(placement))
    if not search_p:
        return prepared, solve(prepared.problem, policy, hw)
    ranked, fallback = rank_over_p(prepared.problem, policy, hw)
    exact_policy = "optimal" if policy == "optimal_p" else policy
    for _, estimated in ranked[:RETRIES]:
        if estimated.num_chunks != prepared.problem.num_chunks:
            budgets = {key: getattr(prepared.problem, key) for key in
                       ("device_budget_bytes", "host_budget_bytes", "memory_budget_bytes")}
            prepared.chunks = []  # the old blocks go before the new ones are built: never both in memory
            prepared = rechunk(prepared, estimated.num_chunks)
            prepared.problem = dataclasses.replace(prepared.problem, **budgets)
        plan = solve(prepared.problem, exact_policy, hw)
        if plan.feasible:
            return prepared, dataclasses.replace(plan, policy=policy)
    return prepared, dataclasses.replace(fallback, policy=policy, reason=(
        f"no P in {ranked[0][1].num_chunks if ranked else 1}..{fallback.num_chunks} fits: {fallback.reason}"))


def train(graph: Graph, model: ModelSpec, params: Mapping[str, Tensor], train: TrainSpec,
          options: Mapping[str, Any]) -> RunResult:
    """Train ``model`` on the whole ``graph`` with the FlexGNN engine (see the module docstring)."""
    opts, budgets = parse_options(options)
    device = resolve_device(train.device)
    search_p = opts["placement"] is None and (opts["num_chunks"] is None or opts["policy"] == "optimal_p")
    start_p = min(START_CHUNKS, graph.num_nodes) if opts["num_chunks"] is None else opts["num_chunks"]
    prepared = prepare(graph, model, params, start_p, opts["reorder"], opts["order"], budgets)
    needs_rates = opts["placement"] is None and opts["policy"] in NEEDS_HARDWARE
    start = time.perf_counter()
    hw = hardware_for(opts["hardware"], device) if needs_rates or opts["hardware"] is not None else None
    calibrate_s = time.perf_counter() - start
    start = time.perf_counter()
    if budgets.device_budget_fraction is not None:  # a share of what all-on-device needs at this P
        everything = simulate(solve(prepared.problem, "all_device"), prepared.problem)["peak_bytes"]["device"]
        resolved = math.ceil(budgets.device_budget_fraction * everything)
        prepared.problem = dataclasses.replace(prepared.problem, device_budget_bytes=resolved)
    limits, limits_text = machine_budgets(prepared, device, opts["memory_cap"])
    prepared.problem = _with_budgets(prepared.problem, limits)
    prepared, plan = plan_for(prepared, opts["policy"], opts["placement"], hw, search_p)
    solve_s = time.perf_counter() - start
    prediction = cost.predict(plan, prepared.problem, hw) if hw is not None and plan.feasible else None
    timings = {"preprocess": prepared.seconds, "calibrate": calibrate_s, "solve": solve_s}
    extra = {"reorder": opts["reorder"], "device_budget_fraction": budgets.device_budget_fraction,
             "machine_budgets": limits, "machine_budgets_source": limits_text, "search_p": search_p,
             "hardware": None if hw is None else {"name": hw.name, "source": hw.source},
             "predicted_epoch_s": None if prediction is None else prediction.epoch_s,
             "prediction": None if prediction is None else prediction.to_json()}
    if opts["print_plan"]:
        guess = "" if prediction is None else (
            f"\n  predicted epoch {prediction.epoch_s:.4g} s on {hw.name} (compute {prediction.compute_s:.4g} s, "
            f"transfers {sum(dict(prediction.transfer_s).values()):.4g} s)")
        print(f"{plan}\n  machine: {limits_text}{guess}", file=sys.stderr)
    if not plan.feasible:
        return RunResult(system=SYSTEM, epoch_losses=[], epoch_times_s=[], warmup_epochs=train.warmup_epochs,
                         accuracy={}, device=str(device), timings_s=timings, plan=plan.to_json(),
                         extra={**extra, "policy": plan.policy, "num_chunks": plan.num_chunks},
                         status="infeasible", reason=f"plan '{plan.policy}' is infeasible: {plan.reason}")
    prepared = dataclasses.replace(prepared, rowptr=None, col=None, values=None)  # the chunks hold the graph now
    return execute(prepared, plan, params, train, disk_dir=opts["disk_dir"], prefetch=bool(opts["prefetch"]),
                   timings_s=timings, extra=extra, evaluation=Evaluation.of(graph))


__all__ = ["SYSTEM", "OPTIONS", "HARDWARE_KEYS", "NATIVE_KERNELS", "calibrate_options", "hardware_for",
           "machine_budgets", "parse_options", "plan_for", "train"]
