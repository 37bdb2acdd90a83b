"""The placement rules that need no cost model: the naive ones, FlexGNN's released greedy rule and HongTu's.

Every solver has the registry's signature ``solve(problem, hardware) -> Plan`` (STYLE #16); these ignore
``hardware``. All finish with ``make_plan``, so every plan comes out in the same shape, feasible or not.
"""

from __future__ import annotations

from flexgnn_core.plan.cost import Hardware
from flexgnn_core.plan.problem import (STAGING_THREADS, Intermediate, Plan, Problem, fixed_device_bytes,
                                       intermediates, layer_orders, staging_bytes, working_set_bytes)
from flexgnn_core.plan.simulate import column_passes, column_working_bytes, make_plan


def _uniform(tier: str):
    def solve(problem: Problem, hardware: Hardware | None = None) -> Plan:
        orders = layer_orders(problem)
        placement = {item.name: (tier if tier in item.tiers else "host") for item in intermediates(problem, orders)}
        return make_plan(f"all_{tier}", problem, orders, placement)
    solve.__doc__ = f"Every intermediate on the {tier} tier (graph blocks on the nearest tier that holds them)."
    solve.__name__ = f"all_{tier}"
    return solve


all_device, all_host, all_disk = _uniform("device"), _uniform("host"), _uniform("disk")


def device_room(problem: Problem) -> int | None:
    """Device bytes left for intermediates and the graph after the fixed bytes and one chunk's working set."""
    if problem.device_budget_bytes is None:
        return None
    return problem.device_budget_bytes - fixed_device_bytes(problem) - working_set_bytes(problem)


def _memory_room(problem: Problem) -> int | None:
    """Device + host bytes left for intermediates and the graph under the joint memory budget."""
    if problem.memory_budget_bytes is None:
        return None
    return problem.memory_budget_bytes - fixed_device_bytes(problem) - working_set_bytes(problem)


def _capacity_walk(problem: Problem, items: list[Intermediate]) -> dict[str, str]:
    """FlexGNN's released rule: graph first, then intermediates from the deepest layer back to the first, each on
    the device if it still fits the budget, else on the host if it fits there, else on disk (a joint memory budget,
    device + host, is drawn on by both). When anything lands on disk, the walk is made again with the disk tier's
    staging buffers (host memory) set aside first, and once more with a column pass's device bytes set aside when
    that placement runs one (``simulate.column_passes``)."""
    placement = _walk(problem, items, staging=0)
    if "disk" in placement.values():
        staging = STAGING_THREADS * staging_bytes(problem)
        placement = _walk(problem, items, staging=staging)
        if any(any(column_passes(problem, placement, layer)) for layer in range(problem.num_layers)):
            placement = _walk(problem, items, staging=staging, columns=column_working_bytes(problem))
    return placement


def _walk(problem: Problem, items: list[Intermediate], staging: int, columns: int = 0) -> dict[str, str]:
    free = {"device": device_room(problem), "host": problem.host_budget_bytes}
    shared = _memory_room(problem)
    free["host"] = None if free["host"] is None else free["host"] - staging
    free["device"] = None if free["device"] is None else free["device"] - columns
    shared = None if shared is None else shared - staging - columns
    placement = {}
    for item in sorted(items, key=lambda item: (item.name != "graph", -item.layer)):
        for tier in item.tiers:
            fits = tier == "disk" or ((free[tier] is None or item.nbytes <= free[tier])
                                      and (shared is None or item.nbytes <= shared))
            if fits:
                placement[item.name] = tier
                if tier != "disk" and free[tier] is not None:
                    free[tier] -= item.nbytes
                if tier != "disk" and shared is not None:
                    shared -= item.nbytes
                break
        else:  # fits nowhere (the graph cannot go to disk): the last tier it may use; feasibility will say so
            placement[item.name] = item.tiers[-1]
    return placement


def flexgnn_greedy(problem: Problem, hardware: Hardware | None = None) -> Plan:
    """If everything fits on the device keep it there; else the capacity walk (``_capacity_walk``)."""
    everything = all_device(problem)
    if everything.feasible:
        return Plan(**{**everything.__dict__, "policy": "flexgnn_greedy"})
    orders = layer_orders(problem)
    items = intermediates(problem, orders)
    placement = _capacity_walk(problem, items)
    return make_plan("flexgnn_greedy", problem, orders, {item.name: placement[item.name] for item in items})


def recompute(problem: Problem, hardware: Hardware | None = None) -> Plan:
    """Recompute everything recomputable in backward; place the rest with the capacity walk."""
    orders = layer_orders(problem)
    items = intermediates(problem, orders)
    kept = _capacity_walk(problem, [item for item in items if not item.recomputable])
    placement = {item.name: "recompute" if item.recomputable else kept[item.name] for item in items}
    return make_plan("recompute", problem, orders, placement)


def hongtu_like(problem: Problem, hardware: Hardware | None = None) -> Plan:
    """HongTu's choice: vertex data (layer inputs and gradients) in host memory, aggregates and transforms
    recomputed in backward; the graph blocks on the device when they fit, else on the host. HongTu has no disk
    tier: where host memory cannot hold the vertex data, the plan is infeasible."""
    orders = layer_orders(problem)
    items = intermediates(problem, orders)
    placement = {item.name: "recompute" if item.recomputable else "host" for item in items}
    room = device_room(problem)
    placement["graph"] = "device" if room is None or problem.graph_bytes <= room else "host"
    return make_plan("hongtu_like", problem, orders, placement)
