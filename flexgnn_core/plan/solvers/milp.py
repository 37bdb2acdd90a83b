"""``optimal``: the exact minimum of the cost model's predicted epoch time, a mixed-integer program per P.

``optimal`` minimises ``cost.predict``'s epoch time over: the placement of every intermediate (device / host /
disk / recompute), the order of every layer (when the model and ``problem.order_rule == "auto"`` allow it) and, for
``optimal_p``, the chunk count P from a candidate set (statistics estimated by ``chunking.estimate_chunk_stats``).
For each P it solves one MILP with scipy's HiGHS:

    binary x[i, p] (intermediate i on placement p), binary o[l] (layer l transforms first), continuous tau
    sum_p x[i, p] = 1, or = 1 - o[l] for agg{l}, or = o[l] for t{l} and grad_t{l}
    sum_i bytes_i x[i, device] <= device budget - fixed bytes - working set;  likewise host (+ the disk tier's
    staging when any x[i, disk]: a binary z >= x[i, disk]) and device + host <= the memory budget (CPU: one RAM)
    C = sum_l base_l(order) + sum compute[i, p] x[i, p]
    T = sum transfer[i, p] x[i, p] + sum transfer[a, b, ...] y[a, b, ...]
    tau >= C,  tau >= C + T - overlap (P-1)/P C;  minimise tau

which is ``predict`` term for term (``cost.item_compute_s``, ``cost.item_link_bytes``), so the plan's prediction
is the MILP optimum. A transfer that depends on several placements (``cost.joint_link_bytes``: a layer input off
the device is gathered again when its aggregate or transform is recomputed; a column pass) is a continuous
y = x[a] x[b] ... with y >= x[a] + x[b] + ... - (k - 1), y >= 0, exact at the optimum because y only costs
(y <= each x caps a saving). The device bytes of a column pass are held when any of its placement pairs holds:
a continuous w >= x[a] + x[b] - 1 for each, which only the memory rows bound.
When no placement fits any P, the best-effort plan (recompute what can be, the rest on disk, the graph on the
host) comes back with ``feasible=False`` and the missing bytes in ``reason``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from flexgnn_core.plan import cost
from flexgnn_core.plan.chunking import STAT_FIELDS, estimate_chunk_stats, problem_for
from flexgnn_core.plan.cost import Hardware
from flexgnn_core.plan.problem import (STAGING_THREADS, Plan, Problem, fixed_device_bytes, free_orders,
                                       intermediates, layer_orders, staging_bytes, working_set_bytes)
from flexgnn_core.plan.simulate import column_conditions, column_working_bytes, make_plan


def _choices(problem: Problem) -> tuple[list, list[tuple[str, str]]]:
    """The union of intermediates over both orders, and every (intermediate, placement) pair allowed."""
    layers = problem.num_layers
    union = {}
    for orders in (("aggregate_first",) * layers, ("transform_first",) * layers):
        for item in intermediates(problem, orders if not problem.attention else ("transform_first",) * layers):
            union.setdefault(item.name, item)
    pairs = [(item.name, where) for item in union.values()
             for where in item.tiers + (("recompute",) if item.recomputable else ())]
    return list(union.values()), pairs


def _solve_milp(problem: Problem, hw: Hardware, fixed: tuple[str, ...] | None) -> tuple[dict, tuple] | None:
    """The optimal (placement, orders) for the problem's P, or None when nothing fits the budgets."""
    items, pairs = _choices(problem)
    by_name = {item.name: item for item in items}
    layers = problem.num_layers
    seconds = lambda links: sum(links[link] / hw.link_bytes_per_s(link) for link in cost.LINKS)  # noqa: E731
    products = [(when, seconds(links)) for when, links in cost.joint_link_bytes(problem)
                if all(name in by_name for name, _ in when) and seconds(links) != 0]
    nx, no, ny = len(pairs), layers, len(products)
    # x[i, p], o[l], y (one per product of placements), w (a column pass runs), z (anything on disk), tau
    nv = nx + no + ny + 3
    columns_held, uses_disk = nv - 3, nv - 2
    compute = np.zeros(nv)  # coefficients of C
    transfer = np.zeros(nv)
    constant = 0.0
    for layer in range(layers):
        af = cost.layer_base_s(problem, hw, layer, "aggregate_first")
        tf = cost.layer_base_s(problem, hw, layer, "transform_first")
        if fixed is None:
            constant += af
            compute[nx + layer] = tf - af
        else:
            constant += tf if fixed[layer] == "transform_first" else af
    for k, (name, where) in enumerate(pairs):
        if by_name[name].recomputable:
            compute[k] = cost.item_compute_s(problem, hw, name, where == "recompute")
        transfer[k] = seconds(cost.item_link_bytes(problem, name, where))
    rows, lo, hi = [], [], []
    def holds(name: str, allowed: frozenset) -> np.ndarray:
        side = np.zeros(nv)
        side[[k for k, (n, w) in enumerate(pairs) if n == name and w in allowed]] = 1
        return side

    for j, (when, term_s) in enumerate(products):  # y = product of its conditions for binary x (McCormick)
        transfer[nx + no + j] = term_s
        sides = [holds(name, allowed) for name, allowed in when]
        y = np.zeros(nv)
        y[nx + no + j] = 1
        rows.append(y - sum(sides)), lo.append(1.0 - len(sides)), hi.append(np.inf)  # y >= sum - (k - 1), y >= 0
        if term_s < 0:  # a saving: minimising would raise y, so cap it too (y <= each condition)
            for side in sides:
                rows.append(y - side), lo.append(-np.inf), hi.append(0.0)
    for when in column_conditions(problem):  # w >= [both hold]: a column pass's blocks are then held
        w = np.zeros(nv)
        w[columns_held] = 1
        rows.append(w - sum(holds(name, allowed) for name, allowed in when)), lo.append(-1.0), hi.append(np.inf)
    scale = max(constant, np.abs(compute).max(), np.abs(transfer).max(), 1e-30)
    for name in by_name:  # each intermediate placed exactly once, if its layer's order has it
        row = np.zeros(nv)
        row[[k for k, (n, _) in enumerate(pairs) if n == name]] = 1
        layer, present = by_name[name].layer, 1.0
        kind = "agg" if name.startswith("agg") else "tf" if name.startswith(("t", "grad_t")) else "any"
        if kind != "any" and fixed is None:
            row[nx + layer] = 1 if kind == "agg" else -1
            present = 1.0 if kind == "agg" else 0.0
        elif kind != "any":
            present = float((fixed[layer] == "transform_first") == (kind == "tf"))
        rows.append(row), lo.append(present), hi.append(present)
    for k, (_, where) in enumerate(pairs):  # z >= x[i, disk]: the disk tier's staging buffers are then held
        if where == "disk":
            row = np.zeros(nv)
            row[uses_disk], row[k] = 1, -1
            rows.append(row), lo.append(0.0), hi.append(np.inf)
    outside = fixed_device_bytes(problem) + working_set_bytes(problem)
    budgets = {("device",): None if problem.device_budget_bytes is None else problem.device_budget_bytes - outside,
               ("host",): problem.host_budget_bytes,
               ("device", "host"): None if problem.memory_budget_bytes is None else
               problem.memory_budget_bytes - outside}
    if any(capacity is not None and capacity < 0 for capacity in budgets.values()):
        return None
    for tiers, capacity in budgets.items():
        if capacity is not None:
            row = np.zeros(nv)
            row[[k for k, (n, w) in enumerate(pairs) if w in tiers]] = [by_name[n].nbytes for n, w in pairs
                                                                      if w in tiers]
            row[uses_disk] = STAGING_THREADS * staging_bytes(problem) if "host" in tiers else 0
            row[columns_held] = column_working_bytes(problem) if "device" in tiers else 0
            rows.append(row / max(capacity, 1)), lo.append(-np.inf), hi.append(capacity / max(capacity, 1))
    tau = np.zeros(nv)
    tau[-1] = 1
    c_row, t_row = compute / scale, transfer / scale
    rows.append(tau - c_row), lo.append(constant / scale), hi.append(np.inf)  # tau >= C
    hidden_share = cost.overlap(problem, hw)
    rows.append(tau - (1 - hidden_share) * c_row - t_row)  # tau >= (1 - overlap) C + T
    lo.append((1 - hidden_share) * constant / scale), hi.append(np.inf)
    integrality = np.ones(nv)
    integrality[nx + no:] = 0  # products, w and tau are continuous (the McCormick rows make y and w exact)
    integrality[uses_disk] = 1
    upper = np.ones(nv)
    upper[-1] = np.inf
    if fixed is not None:
        upper[nx:nx + no] = 0
    bounds = Bounds(np.zeros(nv), upper)
    result = milp(tau, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality,
                  bounds=bounds, options={"mip_rel_gap": 0})
    if result.x is None:
        return None
    if hidden_share > 0 and t_row.any():  # hidden transfers tie with none: among the fastest, move the fewest bytes
        rows.append(tau), lo.append(-np.inf), hi.append(result.x[-1] * (1 + 1e-12))
        second = milp(t_row, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality,
                      bounds=bounds, options={"mip_rel_gap": 0})
        result = second if second.x is not None else result
    x = np.round(result.x)
    orders = fixed if fixed is not None else tuple(
        "transform_first" if x[nx + layer] > 0.5 else "aggregate_first" for layer in range(layers))
    present = {item.name for item in intermediates(problem, orders)}
    placement = {name: where for k, (name, where) in enumerate(pairs) if x[k] > 0.5 and name in present}
    return placement, orders


def _best_effort(problem: Problem) -> Plan:
    orders = layer_orders(problem)
    placement = {item.name: "host" if item.name == "graph" else "recompute" if item.recomputable else "disk"
                 for item in intermediates(problem, orders)}
    return make_plan("optimal", problem, orders, placement)


def make_optimal(hw: Hardware, chunk_counts: dict[int, dict[str, int]] | None = None) -> Callable[[Problem], Plan]:
    """``solve(problem) -> Plan`` minimising ``cost.predict`` with ``hw``; over the P in ``chunk_counts`` (stats
    per P, e.g. ``chunk_stats(...)``) or, when None, at the problem's own P only."""

    def optimal(problem: Problem) -> Plan:
        fixed = None if free_orders(problem) else layer_orders(problem)
        stats = chunk_counts or {problem.num_chunks: {name: getattr(problem, name) for name in STAT_FIELDS}}
        best, best_s, fallback = None, math.inf, None
        for count, values in sorted(stats.items()):
            candidate = problem_for(problem, values, count)
            if count > problem.num_nodes:
                continue
            solved = _solve_placement(candidate, hw, fixed)
            if solved is None:
                effort = _best_effort(candidate)
                if fallback is None or effort.min_device_budget_bytes < fallback.min_device_budget_bytes:
                    fallback = effort
                continue
            plan = make_plan("optimal", candidate, solved[1], solved[0])
            predicted = cost.predict(plan, candidate, hw).epoch_s
            if predicted < best_s:
                best, best_s = plan, predicted
        return best if best is not None else fallback

    optimal.__doc__ = f"Exact minimum of predicted epoch time on hardware '{hw.name}' ({hw.source})."
    return optimal


def _solve_placement(problem: Problem, hw: Hardware, fixed) -> tuple[dict, tuple] | None:
    """The MILP, re-solved with the capacity lowered by any overshoot the solver's tolerances let through."""
    current = problem
    for _ in range(3):
        solved = _solve_milp(current, hw, fixed)
        if solved is None:
            return None
        plan = make_plan("optimal", problem, solved[1], solved[0])
        if plan.feasible:
            return solved
        peak = dict(plan.predicted_peak_bytes)
        peak["memory"] = peak["device"] + peak["host"]
        over = {tier: peak[tier] - budget for tier, budget in (("device", problem.device_budget_bytes),
                                                                ("host", problem.host_budget_bytes),
                                                                ("memory", problem.memory_budget_bytes))
                if budget is not None and peak[tier] > budget}
        current = replace(current, **{f"{tier}_budget_bytes": getattr(current, f"{tier}_budget_bytes") - extra
                                      for tier, extra in over.items()})
    return None


def _need(hardware: Hardware | None, name: str) -> Hardware:
    if hardware is None:
        raise ValueError(f"solver '{name}' plans with a cost model and needs hardware rates: pass a "
                         "flexgnn_core.plan.cost.Hardware (flexgnn_core.calibrate.load_or_measure() measures this "
                         "machine; calibrate.profile('h200') is a datasheet profile)")
    return hardware


def optimal(problem: Problem, hardware: Hardware | None = None) -> Plan:
    """Exact minimum of predicted epoch time at the problem's P, on ``hardware``."""
    return make_optimal(_need(hardware, "optimal"))(problem)


def optimal_p(problem: Problem, hardware: Hardware | None = None) -> Plan:
    """``optimal`` over P in ``CHUNK_COUNTS`` too (statistics estimated; the engine must rebuild its chunks and the
    caller re-solve at the chosen P with exact statistics)."""
    plan = make_optimal(_need(hardware, "optimal_p"), estimate_chunk_stats(problem))(problem)
    return replace(plan, policy="optimal_p")
