"""Edge normalisations shared by every system that aggregates over our CSR (FlexGNN engine, DDP baseline).

They reproduce PyG's semantics exactly on a cleaned graph (no self-loops, no duplicates):
``GCNConv``/``gcn_norm`` (one self-loop per vertex, symmetric in-degree norm), ``SAGEConv`` mean (1 / in-degree,
no self-loop) and ``GATConv``'s self-loops. All functions take and return CPU or device tensors alike.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

BLOCK_EDGES = 1 << 22  # rows are normalised in blocks of about this many edges (see ``row_blocks``)


def row_blocks(rowptr: Tensor, max_edges: int = BLOCK_EDGES) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges ``[a, b)`` of at most ``max_edges`` edges each (a longer row is a block of its own), so
    that per-edge temporaries scale with a block, not with the graph: the whole-graph versions of the functions
    below held about 7 edge-sized int64 arrays at once (an argsort of every edge), ~0.9 GB at 15M edges, more than
    a capped job's room (issue 10's loading floor)."""
    n = rowptr.numel() - 1
    a = 0
    while a < n:
        b = int(torch.searchsorted(rowptr, rowptr[a] + max_edges, right=True)) - 1
        b = min(n, max(b, a + 1))
        yield a, b
        a = b


def add_self_loops_csr(rowptr: Tensor, col: Tensor) -> tuple[Tensor, Tensor]:
    """Insert one self-loop per vertex into a cleaned CSR, keeping each row's columns sorted.

    No sort: in row ``r`` the entries with a column above ``r`` move one place right, and the loop takes the place
    after those at or below ``r`` (the order a sort by (row, column) gives, ties included). Row blocks bound the
    temporaries (``row_blocks``)."""
    n = rowptr.numel() - 1
    device = rowptr.device
    new_rowptr = rowptr.to(torch.int64) + torch.arange(n + 1, device=device)
    new_col = torch.empty(col.numel() + n, dtype=torch.promote_types(col.dtype, torch.int64), device=device)
    for a, b in row_blocks(rowptr):
        e0, e1 = int(rowptr[a]), int(rowptr[b])
        rows = torch.arange(a, b, device=device)
        deg = (rowptr[a + 1:b + 1] - rowptr[a:b]).to(torch.int64)
        dst = torch.repeat_interleave(rows, deg)
        block = col[e0:e1]
        after = block > dst  # these move one place right, past the loop
        new_col[torch.arange(e0, e1, device=device) + dst + after] = block.to(new_col.dtype)
        moved = torch.zeros(b - a, dtype=torch.int64, device=device).index_add_(0, dst - a, after.to(torch.int64))
        new_col[new_rowptr[a:b] + deg - moved] = rows
    return new_rowptr, new_col


def gcn_norm_csr(rowptr: Tensor, col: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """CSR with self-loops and per-edge weights ``deg(src)^-1/2 * deg(dst)^-1/2`` (deg = in-degree + 1), computed
    in row blocks (``row_blocks``)."""
    rowptr, col = add_self_loops_csr(rowptr, col)
    deg = rowptr[1:] - rowptr[:-1]
    deg_inv_sqrt = deg.to(torch.float32).pow(-0.5)
    values = torch.empty(col.numel(), dtype=torch.float32, device=col.device)
    for a, b in row_blocks(rowptr):
        e0, e1 = int(rowptr[a]), int(rowptr[b])
        torch.mul(deg_inv_sqrt[col[e0:e1]], torch.repeat_interleave(deg_inv_sqrt[a:b], deg[a:b]),
                  out=values[e0:e1])
    return rowptr, col, values


def mean_norm_csr(rowptr: Tensor, col: Tensor) -> Tensor:
    """Per-edge weights ``1 / in-degree(dst)`` for SAGE's mean aggregation (rows without in-edges stay zero)."""
    deg = rowptr[1:] - rowptr[:-1]
    weight = 1.0 / deg.clamp(min=1).to(torch.float32)
    return torch.repeat_interleave(weight, deg)
