"""How P destination chunks cut a graph, and the chunk statistics a ``Problem`` carries, for any P.

``chunk_bounds`` is the one rule (shared with the engine's ``build_chunks``); ``chunk_stats`` measures the exact
statistics per P from the CSR the model aggregates over; ``estimate_chunk_stats`` extrapolates them to other P from
one problem alone (what a P search plans with before the engine cuts the graph at the chosen P).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from flexgnn_core.plan import blocks
from flexgnn_core.plan.problem import Problem

CHUNK_COUNTS = (1, 2, 4, 8, 16, 32, 64)
STAT_FIELDS = ("max_chunk_rows", "max_halo_rows", "max_chunk_edges", "sum_halo_rows", "graph_bytes")


def chunk_bounds(num_nodes: int, num_chunks: int) -> list[tuple[int, int]]:
    """``num_chunks`` contiguous ranges of near-equal size; ``num_chunks`` must be in ``[1, num_nodes]``."""
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or not 1 <= num_chunks <= num_nodes:
        fix = "raise it to at least 1" if isinstance(num_chunks, int) and num_chunks < 1 else (
            f"lower it to at most num_nodes={num_nodes}" if isinstance(num_chunks, int) else "give a whole number")
        raise ValueError(f"system.num_chunks={num_chunks!r} must be an integer in [1, num_nodes={num_nodes}]; "
                         f"{fix} (each chunk holds at least one destination vertex)")
    edges = torch.linspace(0, num_nodes, num_chunks + 1).round().long().tolist()
    return list(zip(edges[:-1], edges[1:]))


def index_bytes(num_nodes: int, num_edges: int) -> int:
    return 4 if max(num_nodes + 1, num_edges) < 2**31 else 8  # as build_chunks chooses its index dtype


def graph_bytes(rows: int, edges: int, halo: int, attention: bool, index: int) -> int:
    """``Chunk.nbytes()`` from its sizes: ``index``-byte index arrays, int64 halo ids, fp32 edge weights (attention:
    self positions instead). Tested against ``engine.chunks.build_chunks``: a change there fails a test."""
    weights = 0 if attention else 4 * edges
    return index * (rows + 1 + 5 * edges + halo + 1 + (rows if attention else 0)) + 8 * halo + weights


def chunk_stats(rowptr: torch.Tensor, col: torch.Tensor, attention: bool, counts) -> dict[int, dict[str, int]]:
    """Exact ``Problem`` chunk statistics for each P in ``counts``, from the CSR the model aggregates over (after
    reordering and normalisation, as the engine builds it): one pass over the edges per P."""
    n = rowptr.numel() - 1
    index = index_bytes(n, col.numel())
    out = {}
    for count in sorted({int(c) for c in counts if 1 <= int(c) <= n}):
        rows, halos, edges, total = [], [], [], 0
        for start, stop in chunk_bounds(n, count):
            e0, e1 = int(rowptr[start]), int(rowptr[stop])
            halo = int(torch.unique(col[e0:e1]).numel())
            rows.append(stop - start), halos.append(halo), edges.append(e1 - e0)
            total += graph_bytes(stop - start, e1 - e0, halo, attention, index)
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
                      "graph_bytes": count * graph_bytes(rows, math.ceil(e / count), halo, problem.attention,
                                                         index_bytes(n, e))}
    return out


def problem_for(problem: Problem, stats: dict[str, int], count: int) -> Problem:
    """``problem`` at P = ``count`` with chunk statistics ``stats``; at another P its disk block sums are
    estimated (``estimate_disk_blocks``)."""
    other = replace(problem, num_chunks=count, **stats)
    return other if count == problem.num_chunks else replace(other, **estimate_disk_blocks(problem, other))


def estimate_disk_blocks(problem: Problem, other: Problem) -> dict:
    """``other``'s (the same graph at another P) disk block sums from ``problem``'s measured ones. A gather moves
    every coalescing unit (``GAP_BYTES`` + a row) that one of its halo rows falls in: with halos spread uniformly
    over the file (a chunk's halo a share f of the rows, c rows per unit) that is ``N x row x (1 - (1 - f)^c)`` per
    chunk, scaled to match the measured bytes at ``problem``'s P (which captures the ordering's locality) and kept
    between the halo rows themselves and a whole file per chunk. Per-edge buffers: near-equal edge ranges."""
    n = problem.num_nodes

    def uniform(p: Problem, row: int) -> float:
        share = min(1.0, p.sum_halo_rows / p.num_chunks / max(n, 1))
        per_unit = (blocks.GAP_BYTES + row) / row
        return p.num_chunks * n * row * (1 - (1 - share) ** per_unit)

    table = []
    for row, measured in problem.disk_halo_bytes:
        estimate = measured / max(uniform(problem, row), 1.0) * uniform(other, row)
        low, high = other.sum_halo_rows * row, other.num_chunks * blocks.aligned(n * row)
        table.append((row, int(min(max(estimate, low), high))))
    return {"disk_halo_bytes": tuple(table), "disk_edge_bytes": None}
