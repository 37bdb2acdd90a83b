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
    """The units a buffer's rows move in, each with its exact bytes (what crosses ``h2d`` / ``d2h``), its disk
    bytes (whole blocks, ``plan.blocks``; a disk buffer is one file per column block, ``blocks.column_blocks``) and
    its transfers per pass: ``rows(w)`` every chunk's row range of a width-``w`` buffer (all ``N`` rows),
    ``halo(w)`` every chunk's halo, ``columns(w)`` one sweep of every column block (a column pass),
    ``edges()`` every chunk's edge range of a per-edge-and-head buffer."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.staging = staging_bytes(problem)
        self.halo_table = dict(problem.disk_halo_bytes)

    def _ranges(self, width: int, bounds: list[tuple[int, int]]) -> tuple[int, int]:
        span = partial = 0
        for c0, c1 in blocks.column_blocks(width):
            row = FLOAT * (c1 - c0)
            moved = blocks.range_moves(bounds, row, blocks.window(self.staging, row))
            span, partial = span + moved[0], partial + moved[1]
        return span, partial

    def rows(self, width: int) -> "_Unit":
        p = self.problem
        span, partial = self._ranges(width, chunk_bounds(p.num_nodes, p.num_chunks))
        return _Unit(p.num_nodes * FLOAT * width, span, partial, p.num_chunks)

    def columns(self, width: int) -> "_Unit":
        p = self.problem
        span, partial = self._ranges(width, [(0, p.num_nodes)])
        return _Unit(p.num_nodes * FLOAT * width, span, partial, len(blocks.column_blocks(width)))

    def halo(self, width: int) -> "_Unit":
        p = self.problem
        span = sum(self.halo_table.get(FLOAT * (c1 - c0), p.sum_halo_rows * FLOAT * (c1 - c0))
                   for c0, c1 in blocks.column_blocks(width))
        return _Unit(p.sum_halo_rows * FLOAT * width, span, 0, p.num_chunks)

    def edges(self) -> "_Unit":
        p, row = self.problem, FLOAT * self.problem.heads
        if p.disk_edge_bytes is not None:
            span, partial = p.disk_edge_bytes
        else:
            span, partial = blocks.range_moves(chunk_bounds(p.num_edges, p.num_chunks) if p.num_edges >= p.num_chunks
                                               else [(0, p.num_edges)], row, blocks.window(self.staging, row))
        return _Unit(p.num_edges * row, span, partial, p.num_chunks)


@dataclass(frozen=True)
class _Unit:
    exact: int  # bytes of the rows themselves
    span: int  # bytes of the blocks around them (a disk read or write)
    partial: int  # blocks a disk write of them reads first (rows covering a block in part)
    ops: int  # transfers per pass (a chunk-level transfer per chunk; a column pass one sweep per column block)


@functools.lru_cache(maxsize=256)
def column_layers(problem: Problem) -> tuple[bool, ...]:
    """Per layer, whether its aggregation runs as column passes when its source or target is on disk (see
    ``column_passes``): a linear-family layer after the first, at least two column blocks wide (a pass holds three
    blocks: for a narrower layer that is more than keeping its whole input in memory), whose chunks' halo gathers
    move at least twice the blocks of one sweep of the whole buffer (halos spread over the file, as in a graph
    without locality: each chunk's gather then reads most of the file, P times per pass)."""
    units = _Units(problem)
    return tuple(layer > 0 and not problem.attention and problem.dims[layer] >= 2 * blocks.COLUMN_BLOCK
                 and units.halo(problem.dims[layer]).span >= 2 * units.columns(problem.dims[layer]).span
                 for layer in range(problem.num_layers))


def column_passes(problem: Problem, placement: dict[str, str], layer: int) -> tuple[bool, bool]:
    """``(forward, backward)``: whether layer ``layer``'s aggregation runs by column blocks instead of by chunk
    halos (``engine.executor``), given the placement. Forward when ``h{l}`` is on disk and ``agg{l}`` is stored:
    each column block of ``h{l}`` is read with one sweep, aggregated for every row and written to ``agg{l}``; then
    the chunk steps read ``agg{l}`` rows. Backward when ``grad_h{l}`` is on disk and ``agg{l}`` is stored: the chunk
    steps overwrite ``agg{l}``'s rows (read for the weight gradient first) with the aggregate's gradient, and each
    of its column blocks is scattered through ``A^T`` into a whole column block of ``grad_h{l}`` with one sweep."""
    if not column_layers(problem)[layer] or placement.get(f"agg{layer}") not in TIERS:
        return False, False
    return placement.get(f"h{layer}") == "disk", placement.get(f"grad_h{layer}") == "disk"


def column_conditions(problem: Problem) -> list[tuple[tuple[str, frozenset[str]], ...]]:
    """The placements under which a column pass runs (each a pair of conditions; ``column_passes``)."""
    stored = frozenset(TIERS)
    out = []
    for layer, columns in enumerate(column_layers(problem)):
        if columns:
            out.append(((f"h{layer}", frozenset({"disk"})), (f"agg{layer}", stored)))
            out.append(((f"grad_h{layer}", frozenset({"disk"})), (f"agg{layer}", stored)))
    return out


def column_working_bytes(problem: Problem) -> int:
    """Device bytes a column pass holds beyond a chunk step's: its output block and two input blocks (one in
    flight while the other is aggregated), ``N`` rows of at most ``COLUMN_BLOCK`` floats each (0 when no layer
    can run one)."""
    widths = [problem.dims[layer] for layer, columns in enumerate(column_layers(problem)) if columns]
    return 3 * problem.num_nodes * min(max(widths, default=0), blocks.COLUMN_BLOCK) * FLOAT


def _moves(tier: str, read=(), write=(), add=(), zero: int = 0) -> tuple[tuple[str, int], ...]:
    """Bytes per link of reads, writes and read-modify-write adds (each a sequence of ``(times, unit)``) and a
    zeroing of ``zero`` bytes, on an off-device buffer, as ``engine.buffers.Buffer`` counts them: ``h2d`` / ``d2h``
    the rows; a host add is one d2h copy; on disk the blocks the system calls move (a write also reads its partial
    blocks, an add reads and writes its span, zeroing writes the whole file). ``ops``: the transfers that carry
    them, the unit's per pass for each kind of access (a per-transfer latency in the cost model; an access that
    runs twice per epoch is still counted once)."""
    total = lambda accesses, attr: sum(times * getattr(unit, attr) for times, unit in accesses)  # noqa: E731
    links = {"h2d": total(read, "exact"), "d2h": total(write, "exact") + total(add, "exact"),
             "disk_read": 0, "disk_write": 0}
    if tier == "disk":
        links["disk_read"] = total(read, "span") + total(write, "partial") + total(add, "span")
        links["disk_write"] = total(write, "span") + total(add, "span") + zero
    ops = sum(max((unit.ops for times, unit in accesses if times), default=0) for accesses in (read, write, add))
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
      first, rows again for self rows), read by layer l-1; transform-first without self rows: written by rows, not
      zeroed (the transform backward is its one writer); ``grad_h{L}`` written by the loss, read once;
    - column passes (``column_passes``) instead: ``h{l}`` read by one sweep of each column block, ``agg{l}`` written
      by column blocks and read by rows forward; backward ``agg{l}`` written by rows (the aggregate's gradient) and
      read by column blocks, ``grad_h{l}`` written by column blocks (added to, after zeroing, for self rows); the
      graph's chunk blocks walked once per column block.
    """
    n, L = problem.num_nodes, problem.num_layers
    reused = not problem.input_dropout  # layer 0's stored aggregate, made once
    attention, own = problem.attention, problem.model.self_rows
    stored, every, off = frozenset(TIERS), frozenset(PLACEMENTS), ("host", "disk")
    recomputed = frozenset({"recompute"})
    units = _Units(problem)
    rows, halo, columns = functools.cache(units.rows), functools.cache(units.halo), functools.cache(units.columns)
    edges = units.edges() if attention else None  # one per-edge range pass, shared by every att{l} term
    file_bytes = lambda width: sum(blocks.aligned(n * (c1 - c0) * FLOAT)  # noqa: E731  (what zeroing writes)
                                   for c0, c1 in blocks.column_blocks(width))
    by_columns = column_layers(problem)
    disk, resident = frozenset({"disk"}), frozenset({"device", "host"})
    link_blocks = (("h2d", 2 * L * problem.graph_bytes), ("d2h", 0), ("disk_read", 0), ("disk_write", 0),
                   ("ops", 2 * L * problem.num_chunks))
    terms = [LinkTerm((("graph", frozenset({"host"})),), link_blocks)]

    def term(tier: str, name: str, other: tuple[str, frozenset[str]] | None = None, **accesses) -> None:
        terms.append(LinkTerm(((name, frozenset({tier})),) + ((other,) if other else ()), _moves(tier, **accesses)))

    for layer in range(L):
        d, tw = problem.dims[layer], transform_width(problem, layer)
        h, agg, t, grad = f"h{layer}", f"agg{layer}", f"t{layer}", f"grad_h{layer}"
        gathers = 2 if attention else 1
        col = by_columns[layer]  # column passes when h / grad_h is on disk and agg stored (column_passes)
        for tier in off:
            term(tier, h, read=[(2 * own + (layer > 0), rows(d))], write=[(int(layer > 0), rows(d))])
            if not attention:  # aggregate-first layers
                if col and tier == "disk":  # the forward column pass: one sweep of each column block
                    term(tier, h, (agg, stored), read=[(1, columns(d))])
                else:
                    term(tier, h, (agg, stored), read=[(int(layer > 0 or not reused), halo(d))])
                term(tier, h, (agg, recomputed), read=[(2, halo(d))])
                if layer == 0 and reused:
                    term(tier, agg, read=[(2, rows(d))])
                elif col:
                    # forward with h on disk: written by column blocks, read by rows (forward and backward);
                    # backward with grad_h on disk: it also holds the aggregate's gradient, written by rows and
                    # read by column blocks
                    term(tier, agg, (h, resident), read=[(1, rows(d))], write=[(1, rows(d))])
                    term(tier, agg, (h, disk), read=[(2, rows(d))], write=[(1, columns(d))])
                    term(tier, agg, (grad, disk), write=[(1, rows(d))], read=[(1, columns(d))])
                else:
                    term(tier, agg, read=[(1, rows(d))], write=[(1, rows(d))])
            term(tier, h, (t, stored), read=[(2, rows(d))])
            term(tier, h, (t, recomputed), read=[(1, rows(d)), (gathers, halo(d))])
            term(tier, t, write=[(1, rows(tw))], read=[(gathers, halo(tw))])
            term(tier, f"grad_t{layer}", zero=file_bytes(tw), add=[(1, halo(tw))], read=[(1, rows(tw))])
            if attention:
                term(tier, f"att{layer}", write=[(1, edges)], read=[(1, edges)])
            if layer > 0:  # read by layer l-1; self rows added; transform-first: the transform backward's rows
                term(tier, grad, read=[(1, rows(d))], add=[(own, rows(d))])  # (set, not added, without self rows)
                term(tier, grad, (t, every), zero=own * file_bytes(d), add=[(own, rows(d))], write=[(1 - own, rows(d))])
                if not attention and col and tier == "disk":  # the column pass sets (or adds to) whole blocks
                    term(tier, grad, (agg, recomputed), zero=file_bytes(d), add=[(1, halo(d))])
                    if own:
                        term(tier, grad, (agg, stored), zero=file_bytes(d), add=[(1, columns(d))])
                    else:
                        term(tier, grad, (agg, stored), write=[(1, columns(d))])
                elif not attention:
                    term(tier, grad, (agg, every), zero=file_bytes(d), add=[(1, halo(d))])
        if col:  # a column pass walks every chunk block once per column block, a chunk pass once
            extra = len(blocks.column_blocks(d)) - 1
            graph_links = (("h2d", extra * problem.graph_bytes), ("d2h", 0), ("disk_read", 0), ("disk_write", 0),
                           ("ops", extra * problem.num_chunks))
            for target in (h, grad):
                terms.append(LinkTerm((("graph", frozenset({"host"})), (target, disk), (agg, stored)), graph_links))
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
    if any(any(column_passes(problem, placement, layer)) for layer in range(problem.num_layers)):
        peak["device"] += column_working_bytes(problem)
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
