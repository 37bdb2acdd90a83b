"""Plan evaluation apart from plan generation (STYLE #17): peaks per tier and bytes per link of a placement.

``simulate(plan, problem)`` replays a plan on the problem's statistics; ``link_terms(problem)`` lists every
off-device transfer of one steady-state epoch exactly as the engine makes it (``tests/test_engine_links.py`` pins
one epoch of the engine's counters to it); ``make_plan`` wraps any placement into a ``Plan`` with its predicted
peaks and feasibility, which is how every solver finishes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from flexgnn_core.plan import blocks
from flexgnn_core.plan.chunking import chunk_bounds
from flexgnn_core.plan.problem import (FLOAT, PLACEMENTS, STAGING_THREADS, Plan, Problem, check_placement,
                                       fixed_device_bytes, intermediates, layer_orders, staging_bytes,
                                       transform_width, working_set_bytes)
from flexgnn_core.spec import TIERS


@dataclass(frozen=True)
class LinkTerm:
    """Bytes per link per epoch that move when every condition ``(intermediate, placements)`` in ``when`` holds
    (one condition: the intermediate's own traffic; two: traffic that depends on a neighbour's placement too)."""

    when: tuple[tuple[str, frozenset[str]], ...]
    links: tuple[tuple[str, int], ...]

    def applies(self, placement: dict[str, str]) -> bool:
        return all(placement.get(name) in allowed for name, allowed in self.when)


class _Units:
    """The units a buffer's rows move in, each with its exact bytes (what crosses ``h2d`` / ``d2h``) and its disk
    bytes (whole blocks, ``plan.blocks``): ``rows(w)`` every chunk's row range of a width-``w`` buffer (all ``N``
    rows), ``halo(w)`` every chunk's halo, ``edges()`` every chunk's edge range of a per-edge-and-head buffer."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.staging = staging_bytes(problem)
        self.halo_table = dict(problem.disk_halo_bytes)

    def rows(self, width: int) -> "_Unit":
        p, row = self.problem, FLOAT * width
        span, partial = blocks.range_moves(chunk_bounds(p.num_nodes, p.num_chunks), row,
                                           blocks.window(self.staging, row))
        return _Unit(p.num_nodes * row, span, partial)

    def halo(self, width: int) -> "_Unit":
        p, row = self.problem, FLOAT * width
        exact = p.sum_halo_rows * row
        return _Unit(exact, self.halo_table.get(row, exact), 0)

    def edges(self) -> "_Unit":
        p, row = self.problem, FLOAT * self.problem.heads
        if p.disk_edge_bytes is not None:
            span, partial = p.disk_edge_bytes
        else:
            span, partial = blocks.range_moves(chunk_bounds(p.num_edges, p.num_chunks) if p.num_edges >= p.num_chunks
                                               else [(0, p.num_edges)], row, blocks.window(self.staging, row))
        return _Unit(p.num_edges * row, span, partial)


@dataclass(frozen=True)
class _Unit:
    exact: int  # bytes of the rows themselves
    span: int  # bytes of the blocks around them (a disk read or write)
    partial: int  # blocks a disk write of them reads first (rows covering a block in part)


def _moves(tier: str, chunks: int, read=(), write=(), add=(), zero: int = 0) -> tuple[tuple[str, int], ...]:
    """Bytes per link of reads, writes and read-modify-write adds (each a sequence of ``(times, unit)``) and a
    zeroing of ``zero`` bytes, on an off-device buffer, as ``engine.tiers.Buffer`` counts them: ``h2d`` / ``d2h``
    the rows; a host add is one d2h copy; on disk the blocks the system calls move (a write also reads its partial
    blocks, an add reads and writes its span, zeroing writes the whole file). ``ops``: the chunk-level transfers
    that carry them, one per chunk for each kind of access (a per-transfer latency in the cost model; an access
    that runs twice per epoch is still counted once per chunk)."""
    total = lambda accesses, attr: sum(times * getattr(unit, attr) for times, unit in accesses)  # noqa: E731
    links = {"h2d": total(read, "exact"), "d2h": total(write, "exact") + total(add, "exact"),
             "disk_read": 0, "disk_write": 0}
    if tier == "disk":
        links["disk_read"] = total(read, "span") + total(write, "partial") + total(add, "span")
        links["disk_write"] = total(write, "span") + total(add, "span") + zero
    ops = chunks * sum(1 for accesses in (read, write, add) if any(times for times, _ in accesses))
    return tuple(links.items()) + (("ops", ops),)


@functools.lru_cache(maxsize=256)  # solvers ask once per intermediate and placement; the problem is a frozen value
def link_terms(problem: Problem) -> tuple[LinkTerm, ...]:
    """Every off-device transfer of one steady-state training epoch (layer 0's stored aggregate reused unless
    ``problem.input_dropout``), in units of every chunk's rows, halos or edges (``_Units``), mirroring the engine
    read by read:

    - ``graph`` on the host: every chunk block is copied once per conv step, forward and backward, per layer;
    - ``h{l}``: written by layer l-1 and read back for its activation gradient; a model with self rows (SAGE's
      root weight) reads its rows forward and backward; aggregate-first gathers the halo forward (not layer 0,
      whose aggregate is reused when stored, unless input dropout changes it every epoch) and again backward when
      the aggregate is recomputed; transform-first
      reads rows in the transform pass (only when ``t`` is stored) and in its backward, and gathers the halo per
      step when ``t`` is recomputed (twice for attention: forward and backward);
    - ``agg{l}``: written forward and read backward (layer 0 reused: read forward and backward, written only once);
    - ``t{l}``: written by the transform pass, its halo gathered forward (and backward for attention);
    - ``grad_t{l}``: zeroed, scatter-added per halo, read back by rows; ``att{l}``: written forward, read backward;
    - ``grad_h{l}``: zeroed, added by layer l's backward (halo scatter when aggregate-first, rows when transform-
      first, rows again for self rows), read by layer l-1; ``grad_h{L}`` written by the loss, read once.
    """
    n, L = problem.num_nodes, problem.num_layers
    reused = not problem.input_dropout  # layer 0's stored aggregate, made once
    attention, own = problem.attention, problem.model.self_rows
    stored, every, off = frozenset(TIERS), frozenset(PLACEMENTS), ("host", "disk")
    recomputed = frozenset({"recompute"})
    units = _Units(problem)
    rows, halo = functools.cache(units.rows), functools.cache(units.halo)
    edges = units.edges() if attention else None  # one per-edge range pass, shared by every att{l} term
    file_bytes = lambda width: blocks.aligned(n * width * FLOAT)  # noqa: E731  (what zeroing writes)
    link_blocks = (("h2d", 2 * L * problem.graph_bytes), ("d2h", 0), ("disk_read", 0), ("disk_write", 0),
                   ("ops", 2 * L * problem.num_chunks))
    terms = [LinkTerm((("graph", frozenset({"host"})),), link_blocks)]

    def term(tier: str, name: str, other: tuple[str, frozenset[str]] | None = None, **accesses) -> None:
        terms.append(LinkTerm(((name, frozenset({tier})),) + ((other,) if other else ()),
                              _moves(tier, problem.num_chunks, **accesses)))

    for layer in range(L):
        d, tw = problem.dims[layer], transform_width(problem, layer)
        h, agg, t = f"h{layer}", f"agg{layer}", f"t{layer}"
        gathers = 2 if attention else 1
        for tier in off:
            term(tier, h, read=[(2 * own + (layer > 0), rows(d))], write=[(int(layer > 0), rows(d))])
            if not attention:  # aggregate-first layers
                term(tier, h, (agg, stored), read=[(int(layer > 0 or not reused), halo(d))])
                term(tier, h, (agg, recomputed), read=[(2, halo(d))])
                if layer == 0 and reused:
                    term(tier, agg, read=[(2, rows(d))])
                else:
                    term(tier, agg, read=[(1, rows(d))], write=[(1, rows(d))])
            term(tier, h, (t, stored), read=[(2, rows(d))])
            term(tier, h, (t, recomputed), read=[(1, rows(d)), (gathers, halo(d))])
            term(tier, t, write=[(1, rows(tw))], read=[(gathers, halo(tw))])
            term(tier, f"grad_t{layer}", zero=file_bytes(tw), add=[(1, halo(tw))], read=[(1, rows(tw))])
            if attention:
                term(tier, f"att{layer}", write=[(1, edges)], read=[(1, edges)])
            if layer > 0:
                grad = f"grad_h{layer}"
                term(tier, grad, zero=file_bytes(d), read=[(1, rows(d))], add=[(own, rows(d))])
                if not attention:
                    term(tier, grad, (agg, every), add=[(1, halo(d))])
                term(tier, grad, (t, every), add=[(1, rows(d))])
    for tier in off:
        term(tier, f"grad_h{L}", write=[(1, rows(problem.dims[L]))], read=[(1, rows(problem.dims[L]))])
    return tuple(terms)


def simulate(plan: Plan, problem: Problem) -> dict[str, dict[str, int]]:
    """Replay a plan on the problem's statistics: ``{"peak_bytes": per tier, "link_bytes": per link per epoch,
    "transfer_ops": chunk-level transfers per epoch}``.

    Peaks: fixed device bytes + one chunk's working set + every stored intermediate on its tier (buffers live for
    the whole run), and on the host the disk tier's staging buffers when anything is on disk. Links: the bytes one
    steady-state epoch moves, exactly as the engine counts them.
    """
    items = {item.name: item for item in intermediates(problem, plan.orders)}
    placement = dict(plan.placement)
    check_placement(placement, problem, plan.orders)
    peak = {"device": fixed_device_bytes(problem) + working_set_bytes(problem), "host": 0, "disk": 0}
    for name, where in plan.placement:
        if where != "recompute":
            peak[where] += items[name].nbytes
    if peak["disk"]:  # the disk tier's staging buffers are host memory
        peak["host"] += STAGING_THREADS * staging_bytes(problem)
    links = {"h2d": 0, "d2h": 0, "disk_read": 0, "disk_write": 0, "ops": 0}
    for term in link_terms(problem):
        if term.applies(placement):
            for link, nbytes in term.links:
                links[link] += nbytes
    ops = links.pop("ops")
    return {"peak_bytes": peak, "link_bytes": links, "transfer_ops": ops}


def make_plan(policy: str, problem: Problem, orders: tuple[str, ...], placement: dict[str, str]) -> Plan:
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
    memory = peak["device"] + peak["host"]
    if problem.memory_budget_bytes is not None and memory > problem.memory_budget_bytes:
        least = fixed_device_bytes(problem) + working_set_bytes(problem) + problem.graph_bytes
        reasons.append(f"device + host need {memory} bytes > memory budget {problem.memory_budget_bytes} (least at "
                       f"P={problem.num_chunks}, everything else on disk or recomputed: {least} bytes)")
    return Plan(policy, problem.num_chunks, orders, tuple(placement.items()), problem.device_budget_bytes,
                problem.host_budget_bytes, tuple(peak.items()), minimum, not reasons, "; ".join(reasons),
                problem.memory_budget_bytes)


def custom_plan(problem: Problem, placement: dict[str, str], policy: str = "custom") -> Plan:
    """A user-given placement, validated (unknown intermediates or tiers raise, listing the valid ones)."""
    orders = layer_orders(problem)
    check_placement(placement, problem, orders)
    return make_plan(policy, problem, orders, {item.name: placement[item.name]
                                               for item in intermediates(problem, orders)})
