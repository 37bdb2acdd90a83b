"""The solver registry: every policy is ``solve(problem, hardware) -> Plan`` and is chosen by name (STYLE #16).

Solvers never calibrate: a cost-model solver gets its ``Hardware`` from the caller (measured once by
``flexgnn_core.calibrate``, or a datasheet profile). Naive placements are solvers too, so every plan comes out in
the same shape. ``optimal`` is exact at the problem's P; ``optimal_p`` also picks P.
"""

from __future__ import annotations

from typing import Callable

from flexgnn_core.plan import cost
from flexgnn_core.plan.chunking import estimate_chunk_stats, problem_for
from flexgnn_core.plan.cost import Hardware
from flexgnn_core.plan.problem import Plan, Problem
from flexgnn_core.plan.solvers.milp import make_optimal, optimal, optimal_p
from flexgnn_core.plan.solvers.simple import all_device, all_disk, all_host, flexgnn_greedy, hongtu_like, recompute

Solver = Callable[[Problem, "Hardware | None"], Plan]

SOLVERS: dict[str, Solver] = {
    "all_device": all_device,
    "all_host": all_host,
    "all_disk": all_disk,
    "recompute": recompute,
    "flexgnn_greedy": flexgnn_greedy,
    "hongtu_like": hongtu_like,
    "optimal": optimal,
    "optimal_p": optimal_p,
}
NEEDS_HARDWARE = ("optimal", "optimal_p")  # solvers that plan with the cost model


def check_name(policy: str) -> None:
    if policy not in SOLVERS:
        raise ValueError(f"policy '{policy}' is unknown; valid: {', '.join(SOLVERS)}")


def solve(problem: Problem, policy: str, hardware: Hardware | None = None) -> Plan:
    """The plan of solver ``policy`` for ``problem`` (on ``hardware`` where the solver plans with costs)."""
    check_name(policy)
    return SOLVERS[policy](problem, hardware)


# Chunk counts a P search tries: a power-of-two ladder up to where a chunk of a 100M-vertex graph is ~100k rows.
SEARCH_COUNTS = tuple(2**k for k in range(11))


def rank_over_p(problem: Problem, policy: str, hardware: Hardware | None = None,
                counts: tuple[int, ...] = SEARCH_COUNTS) -> tuple[list[tuple[float, Plan]], Plan]:
    """Solver ``policy`` at every P in ``counts`` (chunk statistics estimated from ``problem``'s own P):
    ``(ranked, fallback)``: the feasible plans best first (fastest predicted on ``hardware``, else smallest P),
    and the plan to report when none is feasible (the one at the largest P, whose reason names what is missing).
    The caller cuts the graph at a ranked P and solves there exactly (estimates can be off)."""
    check_name(policy)
    ranked, fallback = [], None
    for count, stats in sorted(estimate_chunk_stats(problem, counts).items()):
        candidate = problem_for(problem, stats, count)
        plan = SOLVERS["optimal" if policy == "optimal_p" else policy](candidate, hardware)
        if plan.feasible:
            key = cost.predict(plan, candidate, hardware).epoch_s if hardware is not None else float(count)
            ranked.append((key, plan))
        fallback = plan
    ranked.sort(key=lambda entry: (entry[0], entry[1].num_chunks))
    return ranked, fallback


__all__ = ["SOLVERS", "NEEDS_HARDWARE", "SEARCH_COUNTS", "Solver", "check_name", "make_optimal", "rank_over_p",
           "solve"]
