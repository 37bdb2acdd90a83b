"""Training plans for the FlexGNN engine: the problem, the plan value, the policies (solvers) and a simulator.

- ``Problem``: everything a solver may look at, as plain values (graph and chunk statistics, model dims, budgets).
- ``intermediates(problem, order)``: the named whole-graph tensors of one training epoch, per layer:
  ``h{l}`` layer input (``h0`` = features), ``agg{l}`` aggregate (aggregate-first layers), ``t{l}`` transformed
  input (transform-first layers and GAT), ``att{l}`` GAT attention per edge and head, ``grad_h{l}`` gradient of
  ``h{l}`` (``grad_h{L}`` = logits gradient), ``grad_t{l}`` gradient of ``t{l}``, and ``graph`` (the chunk blocks).
- ``Plan``: frozen, printable, JSON round-trippable; infeasible is a value with a reason, not an exception.
- ``SOLVERS``: every policy is ``solve(problem) -> Plan`` (STYLE #16); ``simulate(plan, problem)`` replays a plan
  and returns peak bytes per tier and bytes per link per epoch (STYLE #17), separately from plan generation.

A cost model and an ``optimal`` solver plug in by adding an entry to ``SOLVERS`` with the same signature.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from typing import Any, Callable

from flexgnn_core.spec import TIERS

PLACEMENTS = TIERS + ("recompute",)
ORDERS = ("aggregate_first", "transform_first")
ORDER_RULES = ("auto",) + ORDERS
FLOAT = 4


@dataclass(frozen=True)
class Problem:
    """Plain-value description of one training job (``dims`` = layer widths ``[in, hidden.., classes]``)."""

    kind: str
    dims: tuple[int, ...]
    heads: int
    num_nodes: int
    num_edges: int  # edges the model aggregates over (self-loops included for GCN and GAT)
    num_chunks: int
    max_chunk_rows: int
    max_halo_rows: int
    max_chunk_edges: int
    sum_halo_rows: int
    graph_bytes: int
    param_bytes: int
    device_budget_bytes: int | None = None  # None = unlimited
    host_budget_bytes: int | None = None
    order_rule: str = "auto"

    @property
    def num_layers(self) -> int:
        return len(self.dims) - 1


@dataclass(frozen=True)
class Intermediate:
    name: str
    layer: int
    nbytes: int
    recomputable: bool
    tiers: tuple[str, ...] = TIERS


def transform_width(problem: Problem, layer: int) -> int:
    """Width of ``t{layer}``: GAT = heads x channels per head; GCN/SAGE = the layer's output width."""
    out = problem.dims[layer + 1]
    if problem.kind != "gat":
        return out
    return problem.heads * (out if layer == problem.num_layers - 1 else out // problem.heads)


def layer_orders(problem: Problem) -> tuple[str, ...]:
    """GAT always transforms first; GCN/SAGE follow ``order_rule``; ``auto`` transforms first when that narrows
    the aggregated width (layer 0 stays aggregate-first: its aggregate of fixed features is computed once)."""
    if problem.order_rule not in ORDER_RULES:
        raise ValueError(f"order='{problem.order_rule}' is unknown; valid: {', '.join(ORDER_RULES)}")
    orders = []
    for layer in range(problem.num_layers):
        if problem.kind == "gat":
            orders.append("transform_first")
        elif problem.order_rule == "auto":
            narrower = problem.dims[layer + 1] < problem.dims[layer]
            orders.append("transform_first" if layer > 0 and narrower else "aggregate_first")
        else:
            orders.append(problem.order_rule)
    return tuple(orders)


def intermediates(problem: Problem, orders: tuple[str, ...]) -> list[Intermediate]:
    """Named intermediates, first layer to last (the graph blocks first)."""
    n = problem.num_nodes
    items = [Intermediate("graph", -1, problem.graph_bytes, False, ("device", "host"))]
    for layer, order in enumerate(orders):
        width = problem.dims[layer]
        items.append(Intermediate(f"h{layer}", layer, n * width * FLOAT, False))
        if order == "aggregate_first":
            items.append(Intermediate(f"agg{layer}", layer, n * width * FLOAT, True))
        else:
            t_width = transform_width(problem, layer)
            items.append(Intermediate(f"t{layer}", layer, n * t_width * FLOAT, True))
            items.append(Intermediate(f"grad_t{layer}", layer, n * t_width * FLOAT, False))
        if problem.kind == "gat":
            items.append(Intermediate(f"att{layer}", layer, problem.num_edges * problem.heads * FLOAT, True))
        if layer > 0:
            items.append(Intermediate(f"grad_h{layer}", layer, n * width * FLOAT, False))
    last = problem.num_layers
    items.append(Intermediate(f"grad_h{last}", last, n * problem.dims[last] * FLOAT, False))
    return items


def fixed_device_bytes(problem: Problem) -> int:
    """Always on the device: parameters, their gradients and Adam's two moments; labels and train mask."""
    return 4 * problem.param_bytes + problem.num_nodes * 9


def working_set_bytes(problem: Problem) -> int:
    """Upper bound on one chunk step's device tensors (two chunks' inputs in flight while prefetching)."""
    widths = list(problem.dims) + [transform_width(problem, layer) for layer in range(problem.num_layers)]
    wide = max(widths)
    halo = problem.max_halo_rows * wide * FLOAT
    rows = problem.max_chunk_rows * wide * FLOAT
    edges = problem.max_chunk_edges * FLOAT * (problem.heads * 8 if problem.kind == "gat" else 2)
    block = problem.graph_bytes * problem.max_chunk_edges // max(problem.num_edges, 1)
    return 3 * halo + 6 * rows + edges + 2 * block


@dataclass(frozen=True)
class Plan:
    """Where every intermediate lives, how the graph is chunked and each layer ordered, and what that costs."""

    policy: str
    num_chunks: int
    orders: tuple[str, ...]
    placement: tuple[tuple[str, str], ...]  # (intermediate, device | host | disk | recompute)
    device_budget_bytes: int | None
    host_budget_bytes: int | None
    predicted_peak_bytes: tuple[tuple[str, int], ...]  # per tier
    min_device_budget_bytes: int
    feasible: bool
    reason: str = ""

    def where(self, name: str) -> str:
        return dict(self.placement)[name]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["placement"] = dict(self.placement)
        out["predicted_peak_bytes"] = dict(self.predicted_peak_bytes)
        out["orders"] = list(self.orders)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Plan":
        fields = dict(data)
        fields["placement"] = tuple(fields["placement"].items())
        fields["predicted_peak_bytes"] = tuple(fields["predicted_peak_bytes"].items())
        fields["orders"] = tuple(fields["orders"])
        return cls(**fields)

    def __str__(self) -> str:
        mib = lambda b: "unlimited" if b is None else f"{b / 2**20:.1f} MiB"  # noqa: E731
        lines = [f"plan {self.policy}: P={self.num_chunks} feasible={self.feasible}"
                 + (f" ({self.reason})" if self.reason else ""),
                 f"  budgets: device {mib(self.device_budget_bytes)}, host {mib(self.host_budget_bytes)}; "
                 f"min device {mib(self.min_device_budget_bytes)}",
                 "  predicted peak: " + ", ".join(f"{t} {mib(b)}" for t, b in self.predicted_peak_bytes),
                 "  orders: " + ", ".join(self.orders),
                 "  placement: " + ", ".join(f"{name}={where}" for name, where in self.placement)]
        return "\n".join(lines)


def check_placement(placement: dict[str, str], problem: Problem, orders: tuple[str, ...]) -> None:
    """Raise if a placement names an unknown intermediate or tier, or recomputes what cannot be recomputed."""
    known = {item.name: item for item in intermediates(problem, orders)}
    for name, where in placement.items():
        if name not in known:
            raise ValueError(f"plan names unknown intermediate '{name}'; valid: {', '.join(known)}")
        item = known[name]
        valid = item.tiers + (("recompute",) if item.recomputable else ())
        if where not in valid:
            raise ValueError(f"plan puts '{name}' on unknown or invalid tier '{where}'; valid for it: "
                             f"{', '.join(valid)}")
    missing = [name for name in known if name not in placement]
    if missing:
        raise ValueError(f"plan has no placement for {', '.join(missing)}; give each one of {', '.join(PLACEMENTS)}")


@dataclass(frozen=True)
class LinkTerm:
    """Bytes per link per epoch that move when every condition ``(intermediate, placements)`` in ``when`` holds
    (one condition: the intermediate's own traffic; two: traffic that depends on a neighbour's placement too)."""

    when: tuple[tuple[str, frozenset[str]], ...]
    links: tuple[tuple[str, int], ...]

    def applies(self, placement: dict[str, str]) -> bool:
        return all(placement.get(name) in allowed for name, allowed in self.when)


def _moves(tier: str, chunks: int, read: int = 0, write: int = 0, add: int = 0,
           zero: int = 0) -> tuple[tuple[str, int], ...]:
    """Bytes per link of reads, writes, read-modify-write adds and zeroings of an off-device buffer (as
    ``tiers.Buffer`` counts them: a host add is one d2h copy, a disk add also reads and writes the file), and
    ``ops``: the chunk-level transfers that carry them, one per chunk for each kind of access (a per-transfer
    latency in the cost model; an access that runs twice per epoch is still counted once per chunk)."""
    disk = tier == "disk"
    links = {"h2d": read, "d2h": write + add, "disk_read": (read + add) * disk,
             "disk_write": (write + add + zero) * disk}
    ops = chunks * sum(1 for rows in (read, write, add) if rows)
    return tuple((link, FLOAT * rows) for link, rows in links.items()) + (("ops", ops),)


@functools.lru_cache(maxsize=256)  # solvers ask once per intermediate and placement; the problem is a frozen value
def link_terms(problem: Problem) -> tuple[LinkTerm, ...]:
    """Every off-device transfer of one steady-state training epoch (layer 0's stored aggregate reused), in rows
    x width units turned into bytes, mirroring ``engine.Engine`` read by read (``H`` = sum of chunk halo sizes):

    - ``graph`` on the host: every chunk block is copied once per conv step, forward and backward, per layer;
    - ``h{l}``: written by layer l-1 and read back for its activation gradient; SAGE reads its rows forward and
      backward (root weight); aggregate-first gathers the halo forward (not layer 0, whose aggregate is reused when
      stored) and again backward when the aggregate is recomputed; transform-first reads rows in the transform
      pass (only when ``t`` is stored) and in its backward, and gathers the halo per step when ``t`` is recomputed
      (twice for GAT: forward and backward);
    - ``agg{l}``: written forward and read backward (layer 0: read forward and backward, written only once);
    - ``t{l}``: written by the transform pass, its halo gathered forward (and backward for GAT);
    - ``grad_t{l}``: zeroed, scatter-added per halo, read back by rows; ``att{l}``: written forward, read backward;
    - ``grad_h{l}``: zeroed, added by layer l's backward (halo scatter when aggregate-first, rows when transform-
      first, rows again for SAGE's root weight), read by layer l-1; ``grad_h{L}`` written by the loss, read once.
    """
    n, halo, edges, L = problem.num_nodes, problem.sum_halo_rows, problem.num_edges, problem.num_layers
    gat, sage = problem.kind == "gat", problem.kind == "sage"
    stored, every, off = frozenset(TIERS), frozenset(PLACEMENTS), ("host", "disk")
    recomputed = frozenset({"recompute"})
    blocks = (("h2d", 2 * L * problem.graph_bytes), ("d2h", 0), ("disk_read", 0), ("disk_write", 0),
              ("ops", 2 * L * problem.num_chunks))
    terms = [LinkTerm((("graph", frozenset({"host"})),), blocks)]

    def term(tier: str, name: str, other: tuple[str, frozenset[str]] | None = None, **rows: int) -> None:
        terms.append(LinkTerm(((name, frozenset({tier})),) + ((other,) if other else ()),
                              _moves(tier, problem.num_chunks, **rows)))

    for layer in range(L):
        d, tw = problem.dims[layer], transform_width(problem, layer)
        h, agg, t = f"h{layer}", f"agg{layer}", f"t{layer}"
        for tier in off:
            term(tier, h, read=2 * n * d * sage + n * d * (layer > 0), write=n * d * (layer > 0))
            if not gat:  # aggregate-first layers
                term(tier, h, (agg, stored), read=halo * d * (layer > 0))
                term(tier, h, (agg, recomputed), read=2 * halo * d)
                if layer == 0:
                    term(tier, agg, read=2 * n * d)
                else:
                    term(tier, agg, read=n * d, write=n * d)
            term(tier, h, (t, stored), read=2 * n * d)
            term(tier, h, (t, recomputed), read=n * d + halo * d * (2 if gat else 1))
            term(tier, t, write=n * tw, read=halo * tw * (2 if gat else 1))
            term(tier, f"grad_t{layer}", zero=n * tw, add=halo * tw, read=n * tw)
            if gat:
                term(tier, f"att{layer}", write=edges * problem.heads, read=edges * problem.heads)
            if layer > 0:
                grad = f"grad_h{layer}"
                term(tier, grad, zero=n * d, read=n * d, add=n * d * sage)
                if not gat:
                    term(tier, grad, (agg, every), add=halo * d)
                term(tier, grad, (t, every), add=n * d)
    for tier in off:
        term(tier, f"grad_h{L}", write=n * problem.dims[L], read=n * problem.dims[L])
    return tuple(terms)


def simulate(plan: Plan, problem: Problem) -> dict[str, dict[str, int]]:
    """Replay a plan on the problem's statistics: ``{"peak_bytes": per tier, "link_bytes": per link per epoch,
    "transfer_ops": chunk-level transfers per epoch}``.

    Peaks: fixed device bytes + one chunk's working set + every stored intermediate on its tier (buffers live for
    the whole run). Links: the bytes one steady-state epoch moves, exactly as the engine counts them
    (``link_terms``; ``tests/test_engine_links.py`` checks them against the engine's counters).
    """
    items = {item.name: item for item in intermediates(problem, plan.orders)}
    placement = dict(plan.placement)
    check_placement(placement, problem, plan.orders)
    peak = {"device": fixed_device_bytes(problem) + working_set_bytes(problem), "host": 0, "disk": 0}
    for name, where in plan.placement:
        if where != "recompute":
            peak[where] += items[name].nbytes
    links = {"h2d": 0, "d2h": 0, "disk_read": 0, "disk_write": 0, "ops": 0}
    for term in link_terms(problem):
        if term.applies(placement):
            for link, nbytes in term.links:
                links[link] += nbytes
    ops = links.pop("ops")
    return {"peak_bytes": peak, "link_bytes": links, "transfer_ops": ops}


def _finish(policy: str, problem: Problem, orders: tuple[str, ...], placement: dict[str, str]) -> Plan:
    """Wrap a placement into a Plan with predicted peaks and feasibility against the budgets."""
    draft = Plan(policy, problem.num_chunks, orders, tuple(placement.items()), problem.device_budget_bytes,
                 problem.host_budget_bytes, (), 0, True)
    peak = simulate(draft, problem)["peak_bytes"]
    graph_on_device = problem.graph_bytes if placement["graph"] == "device" else 0
    minimum = fixed_device_bytes(problem) + working_set_bytes(problem) + graph_on_device
    reasons = []
    if problem.device_budget_bytes is not None and peak["device"] > problem.device_budget_bytes:
        reasons.append(f"device needs {peak['device']} bytes > device_budget_bytes={problem.device_budget_bytes} "
                       f"(minimum for P={problem.num_chunks} with this placement: {minimum} bytes; raise the "
                       "budget, move intermediates off the device or raise num_chunks)")
    if problem.host_budget_bytes is not None and peak["host"] > problem.host_budget_bytes:
        reasons.append(f"host needs {peak['host']} bytes > host_budget_bytes={problem.host_budget_bytes}")
    return Plan(policy, problem.num_chunks, orders, tuple(placement.items()), problem.device_budget_bytes,
                problem.host_budget_bytes, tuple(peak.items()), minimum, not reasons, "; ".join(reasons))


def _uniform(tier: str) -> Callable[[Problem], Plan]:
    def solve(problem: Problem) -> Plan:
        orders = layer_orders(problem)
        placement = {item.name: (tier if tier in item.tiers else "host") for item in intermediates(problem, orders)}
        return _finish(f"all_{tier}", problem, orders, placement)
    solve.__doc__ = f"Every intermediate on the {tier} tier (graph blocks on the nearest tier that holds them)."
    return solve


def _capacity_walk(problem: Problem, orders: tuple[str, ...], items: list[Intermediate]) -> dict[str, str]:
    """FlexGNN's released rule: graph first, then intermediates from the deepest layer back to the first, each on
    the device if it still fits the budget, else on the host if it fits there, else on disk."""
    free = {"device": None if problem.device_budget_bytes is None else
            problem.device_budget_bytes - fixed_device_bytes(problem) - working_set_bytes(problem),
            "host": problem.host_budget_bytes}
    placement = {}
    for item in sorted(items, key=lambda item: (item.name != "graph", -item.layer)):
        for tier in item.tiers:
            if tier == "disk" or free[tier] is None or item.nbytes <= free[tier]:
                placement[item.name] = tier
                if tier != "disk" and free[tier] is not None:
                    free[tier] -= item.nbytes
                break
        else:  # fits nowhere (the graph cannot go to disk): the last tier it may use; feasibility will say so
            placement[item.name] = item.tiers[-1]
    return placement


def flexgnn_greedy(problem: Problem) -> Plan:
    """If everything fits on the device keep it there; else the capacity walk (``_capacity_walk``)."""
    everything = all_device(problem)
    if everything.feasible:
        return Plan(**{**everything.__dict__, "policy": "flexgnn_greedy"})
    orders = layer_orders(problem)
    items = intermediates(problem, orders)
    placement = _capacity_walk(problem, orders, items)
    return _finish("flexgnn_greedy", problem, orders, {item.name: placement[item.name] for item in items})


def recompute(problem: Problem) -> Plan:
    """Recompute everything recomputable in backward; place the rest with the capacity walk."""
    orders = layer_orders(problem)
    items = intermediates(problem, orders)
    kept = _capacity_walk(problem, orders, [item for item in items if not item.recomputable])
    placement = {item.name: "recompute" if item.recomputable else kept[item.name] for item in items}
    return _finish("recompute", problem, orders, placement)


all_device, all_host, all_disk = _uniform("device"), _uniform("host"), _uniform("disk")

SOLVERS: dict[str, Callable[[Problem], Plan]] = {
    "all_device": all_device,
    "all_host": all_host,
    "all_disk": all_disk,
    "recompute": recompute,
    "flexgnn_greedy": flexgnn_greedy,
}


def solve(problem: Problem, policy: str) -> Plan:
    if policy not in SOLVERS:
        raise ValueError(f"policy '{policy}' is unknown; valid: {', '.join(SOLVERS)}")
    return SOLVERS[policy](problem)


def custom_plan(problem: Problem, placement: dict[str, str], policy: str = "custom") -> Plan:
    """A user-given placement, validated (unknown intermediates or tiers raise, listing the valid ones)."""
    orders = layer_orders(problem)
    check_placement(placement, problem, orders)
    return _finish(policy, problem, orders, {item.name: placement[item.name]
                                             for item in intermediates(problem, orders)})


def plan_json(plan: Plan) -> str:
    return json.dumps(plan.to_json(), sort_keys=True)
