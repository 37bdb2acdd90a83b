"""Edge normalisations shared by every system that aggregates over our CSR (FlexGNN engine, DDP baseline).

They reproduce PyG's semantics exactly on a cleaned graph (no self-loops, no duplicates):
``GCNConv``/``gcn_norm`` (one self-loop per vertex, symmetric in-degree norm), ``SAGEConv`` mean (1 / in-degree,
no self-loop) and ``GATConv``'s self-loops. All functions take and return CPU or device tensors alike.
"""

from __future__ import annotations

import torch
from torch import Tensor


def add_self_loops_csr(rowptr: Tensor, col: Tensor) -> tuple[Tensor, Tensor]:
    """Insert one self-loop per vertex into a cleaned CSR, keeping each row's columns sorted."""
    n = rowptr.numel() - 1
    device = rowptr.device
    deg = rowptr[1:] - rowptr[:-1]
    dst = torch.repeat_interleave(torch.arange(n, device=device), deg)
    all_dst = torch.cat([dst, torch.arange(n, device=device)])
    all_src = torch.cat([col, torch.arange(n, device=device)])
    order = torch.argsort(all_dst * n + all_src)
    new_rowptr = torch.zeros(n + 1, dtype=torch.int64, device=device)
    torch.cumsum(deg + 1, dim=0, out=new_rowptr[1:])
    return new_rowptr, all_src[order]


def gcn_norm_csr(rowptr: Tensor, col: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """CSR with self-loops and per-edge weights ``deg(src)^-1/2 * deg(dst)^-1/2`` (deg = in-degree + 1)."""
    rowptr, col = add_self_loops_csr(rowptr, col)
    deg = (rowptr[1:] - rowptr[:-1]).to(torch.float32)
    deg_inv_sqrt = deg.pow(-0.5)
    dst = torch.repeat_interleave(torch.arange(rowptr.numel() - 1, device=rowptr.device), rowptr[1:] - rowptr[:-1])
    return rowptr, col, deg_inv_sqrt[col] * deg_inv_sqrt[dst]


def mean_norm_csr(rowptr: Tensor, col: Tensor) -> Tensor:
    """Per-edge weights ``1 / in-degree(dst)`` for SAGE's mean aggregation (rows without in-edges stay zero)."""
    deg = rowptr[1:] - rowptr[:-1]
    weight = 1.0 / deg.clamp(min=1).to(torch.float32)
    return torch.repeat_interleave(weight, deg)
