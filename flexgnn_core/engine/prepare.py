"""The first step of a FlexGNN run: graph and model -> chunks and the planning ``Problem`` (STYLE #4b).

``prepare`` reorders the vertices (optional), builds the CSR the model aggregates over (its own self-loops and
edge weights), cuts it into P destination chunks and states the job as a ``Problem`` for the solvers. Nothing
here plans or measures; ``rechunk`` cuts the same prepared graph at another P (a solver that picks P).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Mapping

from torch import Tensor

from flexgnn_core import models
from flexgnn_core.engine.chunks import Chunk, Reordering, build_chunks, relabel_csr, reorder
from flexgnn_core.plan import Budgets, Problem, blocks, layer_orders, transform_width
from flexgnn_core.plan.chunking import chunk_bounds
from flexgnn_core.plan.problem import staging_bytes
from flexgnn_core.spec import Graph, ModelSpec


@dataclass
class Prepared:
    """A graph ready for the engine: relabelled features and labels, the model's CSR, its chunks, the Problem."""

    spec: ModelSpec
    order: Reordering
    rowptr: Tensor
    col: Tensor
    values: Tensor | None
    chunks: list[Chunk]
    x: Tensor  # [N, F] in the new vertex order (the caller's tensor itself when nothing is reordered)
    y: Tensor
    masks: dict[str, Tensor]
    problem: Problem
    seconds: float  # time spent preparing (reordering, normalising, chunking)

    @property
    def num_nodes(self) -> int:
        return self.problem.num_nodes


def dropout_flags(spec: ModelSpec) -> dict[str, bool]:
    """What the planner must know of ``spec``'s dropout (``Problem.input_dropout`` etc.)."""
    attention = models.get(spec.kind).family == "attention"
    return {"input_dropout": spec.input_rate > 0, "hidden_dropout": spec.num_layers > 1 and spec.dropout > 0,
            "attention_dropout": attention and spec.attention_rate > 0}


def problem_of(spec: ModelSpec, dims: tuple[int, ...], chunks: list[Chunk], num_edges: int,
               params_bytes: int, budgets: Budgets, order_rule: str) -> Problem:
    """The ``Problem`` of these chunks (statistics measured on them) under ``budgets``."""
    problem = Problem(
        kind=spec.kind, dims=dims, heads=spec.heads, num_nodes=chunks[-1].stop, num_edges=num_edges,
        num_chunks=len(chunks), max_chunk_rows=max(c.rows for c in chunks),
        max_halo_rows=max(c.width for c in chunks), max_chunk_edges=max(c.num_edges for c in chunks),
        sum_halo_rows=sum(c.width for c in chunks), graph_bytes=sum(c.nbytes() for c in chunks),
        param_bytes=params_bytes, device_budget_bytes=budgets.device_budget_bytes,
        host_budget_bytes=budgets.host_budget_bytes, order_rule=order_rule, **dropout_flags(spec))
    layer_orders(problem)  # an unknown order rule fails here, naming the valid ones
    return dataclasses.replace(problem, **disk_blocks(problem, chunks))


def disk_blocks(problem: Problem, chunks: list[Chunk]) -> dict:
    """The disk tier's graph-dependent block sums of these chunks (``Problem.disk_halo_bytes``,
    ``disk_edge_bytes``: what ``plan.blocks`` moves for every chunk's halo, and for every chunk's edge range)."""
    staging = staging_bytes(problem)
    widths = list(problem.dims) + [transform_width(problem, layer) for layer in range(problem.num_layers)]
    halos = [chunk.halo.numpy() for chunk in chunks]
    table = tuple((row, blocks.gather_bytes(halos, row, blocks.window(staging, row)))
                  for row in blocks.row_widths(widths))
    edges = None
    if problem.attention:
        row = 4 * problem.heads
        edges = blocks.range_moves([(c.edge_start, c.edge_start + c.num_edges) for c in chunks], row,
                                   blocks.window(staging, row))
    return {"disk_halo_bytes": table, "disk_edge_bytes": edges}


def prepare(graph: Graph, spec: ModelSpec, params: Mapping[str, Tensor], num_chunks: int, reordering: str = "none",
            order_rule: str = "auto", budgets: Budgets = Budgets()) -> Prepared:
    """Reorder, normalise and chunk ``graph`` for ``spec`` at P = ``num_chunks``; state the Problem."""
    start = time.perf_counter()
    model = models.check(spec)
    chunk_bounds(graph.num_nodes, num_chunks)  # bad P fails before any work, naming the valid range
    dims = tuple(spec.dims(graph.num_features, graph.num_classes))
    order = reorder(graph.rowptr, graph.col, reordering, num_chunks, row_bytes=max(dims) * graph.x.element_size())
    rowptr, col = relabel_csr(graph.rowptr, graph.col, order)
    rowptr, col, values = model.aggregation(rowptr, col)
    attention = model.family == "attention"
    chunks = build_chunks(rowptr, col, values, num_chunks, self_loops=attention)
    perm = order.perm
    identity = order.identity
    x = graph.x if identity else graph.x[perm].contiguous()  # no copy of the features when nothing moves
    y = graph.y if identity else graph.y[perm]
    masks = {split: (m if identity else m[perm]) for split, m in
             (("train", graph.train_mask), ("val", graph.val_mask), ("test", graph.test_mask))}
    param_bytes = sum(p.numel() * 4 for p in params.values())
    problem = problem_of(spec, dims, chunks, int(col.numel()), param_bytes, budgets, order_rule)
    return Prepared(spec=spec, order=order, rowptr=rowptr, col=col, values=values, chunks=chunks, x=x, y=y,
                    masks=masks, problem=problem, seconds=time.perf_counter() - start)


def rechunk(prepared: Prepared, num_chunks: int) -> Prepared:
    """The same prepared graph cut into ``num_chunks`` chunks (the reordering is kept), with its Problem."""
    start = time.perf_counter()
    attention = prepared.problem.attention
    chunks = build_chunks(prepared.rowptr, prepared.col, prepared.values, num_chunks, self_loops=attention)
    old = prepared.problem
    budgets = Budgets(old.device_budget_bytes, old.host_budget_bytes)
    problem = problem_of(prepared.spec, old.dims, chunks, old.num_edges, old.param_bytes, budgets, old.order_rule)
    return dataclasses.replace(prepared, chunks=chunks, problem=problem,
                               seconds=prepared.seconds + time.perf_counter() - start)
