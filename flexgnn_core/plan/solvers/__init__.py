"""The solver registry: every policy is ``solve(problem, hardware) -> Plan`` and is chosen by name (STYLE #16).

Solvers never calibrate: a cost-model solver gets its ``Hardware`` from the caller (measured once by
``flexgnn_core.calibrate``, or a datasheet profile). Naive placements are solvers too, so every plan comes out in
the same shape. ``optimal`` is exact at the problem's P; ``optimal_p`` also picks P.
"""

from __future__ import annotations

from typing import Callable

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


__all__ = ["SOLVERS", "NEEDS_HARDWARE", "Solver", "check_name", "solve", "make_optimal"]
