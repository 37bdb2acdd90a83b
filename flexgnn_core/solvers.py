"""Solvers that use the cost model: ``hongtu_like`` and ``optimal`` (exact, a mixed-integer program).

``optimal`` minimises ``cost.predict``'s epoch time over: the placement of every intermediate (device / host /
disk / recompute), the order of every layer (when ``problem.order_rule == "auto"``; GAT is always transform-first)
and, when asked, the chunk count P from a candidate set. For each P it solves one MILP with scipy's HiGHS:

    binary x[i, p] (intermediate i on placement p), binary o[l] (layer l transforms first), continuous tau
    sum_p x[i, p] = 1, or = 1 - o[l] for agg{l}, or = o[l] for t{l} and grad_t{l}
    sum_i bytes_i x[i, device] <= device budget - fixed bytes - working set;  likewise host
    C = sum_l base_l(order) + sum compute[i, p] x[i, p]
    T = sum transfer[i, p] x[i, p] + sum transfer[a, b] y[a, b]
    tau >= C,  tau >= C + T - overlap (P-1)/P C;  minimise tau

which is ``predict`` term for term (``cost.item_compute_s``, ``cost.item_link_bytes``), so the plan's prediction
is the MILP optimum. A transfer that depends on two placements (``cost.pair_link_bytes``: a layer input off the
device is gathered again when its aggregate or transform is recomputed) is a continuous y[a, b] = x[a] x[b] with
y >= x[a] + x[b] - 1, y >= 0, exact at the optimum because y only costs (y <= x[a], y <= x[b] cap a saving).
When no placement fits any P, the best-effort plan (recompute what can be, the rest on disk,
the graph on the host) comes back with ``feasible=False`` and the missing bytes in ``reason``.

Solvers take only ``problem`` (STYLE #16); ``make_optimal(hw, chunk_stats)`` binds the hardware and, optionally,
the per-P chunk statistics (``chunk_stats`` exact from a graph, or ``estimate_chunk_stats`` from the problem).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Iterator

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp

from flexgnn_core import cost
from flexgnn_core.cost import Hardware
from flexgnn_core.plan import (SOLVERS as BASE_SOLVERS, Plan, Problem, _finish, fixed_device_bytes, intermediates,
                               layer_orders, working_set_bytes)

CHUNK_COUNTS = (1, 2, 4, 8, 16, 32, 64)
STAT_FIELDS = ("max_chunk_rows", "max_halo_rows", "max_chunk_edges", "sum_halo_rows", "graph_bytes")


# ---- chunk statistics per P ------------------------------------------------------------------------------------
def _graph_bytes(rows: int, edges: int, halo: int, kind: str, index: int) -> int:
    """``Chunk.nbytes()`` from its sizes: ``index``-byte index arrays, int64 halo ids, fp32 edge weights (GAT:
    self positions instead). Tested against ``chunks.build_chunks``: a change there shows up as a failing test."""
    weights = 0 if kind == "gat" else 4 * edges
    return index * (rows + 1 + 5 * edges + halo + 1 + (rows if kind == "gat" else 0)) + 8 * halo + weights


def _index_bytes(num_nodes: int, num_edges: int) -> int:
    return 4 if max(num_nodes + 1, num_edges) < 2**31 else 8  # as build_chunks chooses its index dtype


def chunk_stats(rowptr: torch.Tensor, col: torch.Tensor, kind: str, counts) -> dict[int, dict[str, int]]:
    """Exact ``Problem`` chunk statistics for each P in ``counts``, from the CSR the model aggregates over (after
    reordering and normalisation, as the engine builds it): one pass over the edges per P."""
    from flexgnn_core.chunks import chunk_bounds

    n = rowptr.numel() - 1
    index = _index_bytes(n, col.numel())
    out = {}
    for count in sorted({int(c) for c in counts if 1 <= int(c) <= n}):
        rows, halos, edges, total = [], [], [], 0
        for start, stop in chunk_bounds(n, count):
            e0, e1 = int(rowptr[start]), int(rowptr[stop])
            halo = int(torch.unique(col[e0:e1]).numel())
            rows.append(stop - start), halos.append(halo), edges.append(e1 - e0)
            total += _graph_bytes(stop - start, e1 - e0, halo, kind, index)
        out[count] = {"max_chunk_rows": max(rows), "max_halo_rows": max(halos), "max_chunk_edges": max(edges),
                      "sum_halo_rows": sum(halos), "graph_bytes": total}
    return out


def estimate_chunk_stats(problem: Problem, counts=CHUNK_COUNTS) -> dict[int, dict[str, int]]:
    """Chunk statistics for other P from the problem's own P alone: a chunk with e in-edges is assumed to read
    ``N (1 - exp(-e / N))`` distinct sources (uniform sources), scaled to match the observed halo at the problem's
    P (which captures the locality of the ordering). The problem's own P keeps its exact statistics."""
    n, e, p0 = problem.num_nodes, problem.num_edges, problem.num_chunks
    distinct = lambda edges: max(n * (1 - math.exp(-edges / max(n, 1))), 1.0)  # noqa: E731
    scale = problem.sum_halo_rows / (p0 * distinct(e / p0))
    out = {}
    for count in sorted({int(c) for c in counts if 1 <= int(c) <= n} | {p0}):
        if count == p0:
            out[count] = {name: getattr(problem, name) for name in STAT_FIELDS}
            continue
        rows, edges = math.ceil(n / count), math.ceil(problem.max_chunk_edges * p0 / count)
        halo = min(n, math.ceil(scale * distinct(e / count)))
        max_halo = min(n, math.ceil(problem.max_halo_rows * distinct(e / count) / distinct(e / p0)))
        out[count] = {"max_chunk_rows": rows, "max_halo_rows": max_halo, "max_chunk_edges": edges,
                      "sum_halo_rows": halo * count,
                      "graph_bytes": count * _graph_bytes(rows, math.ceil(e / count), halo, problem.kind,
                                                           _index_bytes(n, e))}
    return out


def problem_for(problem: Problem, stats: dict[str, int], count: int) -> Problem:
    return replace(problem, num_chunks=count, **stats)


# ---- the MILP for one P ----------------------------------------------------------------------------------------
def _free_orders(problem: Problem) -> bool:
    return problem.kind != "gat" and problem.order_rule == "auto"


def _choices(problem: Problem) -> tuple[list, list[tuple[str, str]]]:
    """The union of intermediates over both orders, and every (intermediate, placement) pair allowed."""
    layers = problem.num_layers
    union = {}
    for orders in (("aggregate_first",) * layers, ("transform_first",) * layers):
        for item in intermediates(problem, orders if problem.kind != "gat" else ("transform_first",) * layers):
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
    products = [(a, b, seconds(links)) for a, b, links in cost.pair_link_bytes(problem)
                if a[0] in by_name and b[0] in by_name and seconds(links) != 0]
    nx, no, ny = len(pairs), layers, len(products)
    nv = nx + no + ny + 1  # x[i, p], o[l], y (one per product of two placements), tau
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
    for j, (a, b, term_s) in enumerate(products):  # y = [a holds] x [b holds] for binary x (McCormick)
        transfer[nx + no + j] = term_s
        sides = []
        for name, allowed in (a, b):
            side = np.zeros(nv)
            side[[k for k, (n, w) in enumerate(pairs) if n == name and w in allowed]] = 1
            sides.append(side)
        y = np.zeros(nv)
        y[nx + no + j] = 1
        rows.append(y - sides[0] - sides[1]), lo.append(-1.0), hi.append(np.inf)  # y >= [a] + [b] - 1, y >= 0
        if term_s < 0:  # a saving: minimising would raise y, so cap it too (y <= [a], y <= [b])
            for side in sides:
                rows.append(y - side), lo.append(-np.inf), hi.append(0.0)
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
    budgets = {"device": None if problem.device_budget_bytes is None else
               problem.device_budget_bytes - fixed_device_bytes(problem) - working_set_bytes(problem),
               "host": problem.host_budget_bytes}
    if budgets["device"] is not None and budgets["device"] < 0:
        return None
    for tier, capacity in budgets.items():
        if capacity is not None:
            row = np.zeros(nv)
            row[[k for k, (n, w) in enumerate(pairs) if w == tier]] = [by_name[n].nbytes for n, w in pairs if w == tier]
            rows.append(row / max(capacity, 1)), lo.append(-np.inf), hi.append(capacity / max(capacity, 1))
    tau = np.zeros(nv)
    tau[-1] = 1
    c_row, t_row = compute / scale, transfer / scale
    rows.append(tau - c_row), lo.append(constant / scale), hi.append(np.inf)  # tau >= C
    hidden_share = cost.overlap(problem, hw)
    rows.append(tau - (1 - hidden_share) * c_row - t_row)  # tau >= (1 - overlap) C + T
    lo.append((1 - hidden_share) * constant / scale), hi.append(np.inf)
    integrality = np.ones(nv)
    integrality[nx + no:] = 0  # products and tau are continuous (the McCormick rows make y exact)
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
    return _finish("optimal", problem, orders, placement)


def make_optimal(hw: Hardware, chunk_counts: dict[int, dict[str, int]] | None = None) -> Callable[[Problem], Plan]:
    """``solve(problem) -> Plan`` minimising ``cost.predict`` with ``hw``; over the P in ``chunk_counts`` (stats
    per P, e.g. ``chunk_stats(...)``) or, when None, at the problem's own P only."""

    def optimal(problem: Problem) -> Plan:
        check_budgets(problem)
        fixed = None if _free_orders(problem) else layer_orders(problem)
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
            plan = _finish("optimal", candidate, solved[1], solved[0])
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
        plan = _finish("optimal", problem, solved[1], solved[0])
        if plan.feasible:
            return solved
        peak = dict(plan.predicted_peak_bytes)
        over = {tier: peak[tier] - budget for tier, budget in (("device", problem.device_budget_bytes),
                                                                ("host", problem.host_budget_bytes))
                if budget is not None and peak[tier] > budget}
        current = replace(current, **{f"{tier}_budget_bytes": getattr(current, f"{tier}_budget_bytes") - extra
                                      for tier, extra in over.items()})
    return None


def check_budgets(problem: Problem) -> None:
    """Budgets are a positive whole number of bytes or None (unlimited)."""
    for field in ("device_budget_bytes", "host_budget_bytes"):
        value = getattr(problem, field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"{field}={value!r} must be a positive integer number of bytes or None (unlimited)")


# ---- hongtu_like -----------------------------------------------------------------------------------------------
def hongtu_like(problem: Problem) -> Plan:
    """HongTu's choice: vertex data (layer inputs and gradients) in host memory, aggregates and transforms
    recomputed in backward; the graph blocks on the device when they fit, else on the host."""
    check_budgets(problem)
    orders = layer_orders(problem)
    items = intermediates(problem, orders)
    placement = {item.name: "recompute" if item.recomputable else "host" for item in items}
    room = (None if problem.device_budget_bytes is None else
            problem.device_budget_bytes - fixed_device_bytes(problem) - working_set_bytes(problem))
    placement["graph"] = "device" if room is None or problem.graph_bytes <= room else "host"
    return _finish("hongtu_like", problem, orders, placement)


# ---- registry --------------------------------------------------------------------------------------------------
_HARDWARE: list[Hardware] = []


def use_hardware(hw: Hardware) -> None:
    """The hardware the registered ``optimal`` plans for (default: this machine's cached calibration)."""
    _HARDWARE[:] = [hw]


@contextmanager
def using_hardware(hw: Hardware) -> Iterator[None]:
    """``use_hardware`` for a block only (calibration's engine probe plans with its uncorrected rates)."""
    saved = list(_HARDWARE)
    _HARDWARE[:] = [hw]
    try:
        yield
    finally:
        _HARDWARE[:] = saved


def current_hardware() -> Hardware:
    if not _HARDWARE:
        from flexgnn_core.calibrate import load_or_measure

        _HARDWARE.append(load_or_measure())
    return _HARDWARE[0]


def hardware_for(profile: str | Hardware | None, device=None) -> Hardware:
    """A datasheet profile by name (``calibrate.profile``), a ``Hardware`` as is, or None: the hardware in use
    (``use_hardware``), else this machine's cached calibration."""
    from flexgnn_core import calibrate

    if isinstance(profile, Hardware):
        return profile
    if profile is None:
        return _HARDWARE[0] if _HARDWARE else calibrate.load_or_measure(device)
    return calibrate.profile(profile)


def optimal(problem: Problem) -> Plan:
    """Exact minimum of predicted epoch time at the problem's P, on ``current_hardware()``."""
    return make_optimal(current_hardware())(problem)


def optimal_p(problem: Problem) -> Plan:
    """``optimal`` over P in ``CHUNK_COUNTS`` too (statistics estimated; the engine must rebuild its chunks)."""
    return make_optimal(current_hardware(), estimate_chunk_stats(problem))(problem)


SOLVERS: dict[str, Callable[[Problem], Plan]] = {**BASE_SOLVERS, "hongtu_like": hongtu_like, "optimal": optimal,
                                                 "optimal_p": optimal_p}


def solve(problem: Problem, policy: str, hw: Hardware | None = None) -> Plan:
    """Any solver by name; ``optimal`` on ``hw`` when given."""
    if policy not in SOLVERS:
        raise ValueError(f"policy '{policy}' is unknown; valid: {', '.join(SOLVERS)}")
    check_budgets(problem)
    if hw is not None and policy == "optimal":
        return make_optimal(hw)(problem)
    if hw is not None and policy == "optimal_p":
        return make_optimal(hw, estimate_chunk_stats(problem))(problem)
    return SOLVERS[policy](problem)
