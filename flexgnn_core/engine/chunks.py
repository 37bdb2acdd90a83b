"""Destination chunks: the unit of work of the FlexGNN engine (each one a ``kernels.Block``).

The destination vertices are cut into ``P`` contiguous ranges, after an optional locality-improving reordering
(METIS through ``pymetis``, or reverse Cuthill-McKee through scipy), so that each chunk's in-edges touch few
distinct source rows. Per chunk we keep the in-edge block twice: with global source columns (used when the layer
input is fully resident on the device, no gather needed) and with compact halo columns (used when the needed
source rows must be fetched from host or disk), plus the halo block's transpose for the backward scatter-add.

Reordering relabels vertices; ``Reordering.perm[new] = old``, so per-vertex results map back with ``perm``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flexgnn_core.plan.chunking import chunk_bounds

REORDERINGS = ("none", "rcm", "metis")
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")  # torch's one-off note


@dataclass(frozen=True)
class Reordering:
    perm: Tensor  # [N] new -> old
    inverse: Tensor  # [N] old -> new
    method: str

    @property
    def identity(self) -> bool:
        """Nothing moves (``none``, a tiny graph, or METIS with one part): the graph's arrays serve as they are."""
        return self.method == "none" or torch.equal(self.perm, torch.arange(self.perm.numel()))


def reorder(rowptr: Tensor, col: Tensor, method: str, num_parts: int, row_bytes: int = 0) -> Reordering:
    """A vertex relabelling that puts vertices with shared neighbourhoods next to each other.

    ``metis`` cuts into ``max(num_parts, locality_parts(n, row_bytes))`` parts, numbered in order: with ``row_bytes``
    (the widest aggregated row) a part's rows fit in a few MiB of cache, so that a CSR product's gathers inside a
    part hit cache (on the 200k x 4M synthetic graph, 128 features: 16 parts 52-61% of copy bandwidth, 8 parts 41%,
    48 parts 44%, none 18-28%; results/LOG.md 2026-12-02).
    """
    n = rowptr.numel() - 1
    num_parts = max(num_parts, locality_parts(n, row_bytes))
    if method not in REORDERINGS:
        raise ValueError(f"reorder='{method}' is unknown; valid: {', '.join(REORDERINGS)}")
    if method == "none" or n <= 2:
        perm = torch.arange(n)
    elif method == "rcm":
        import scipy.sparse as sp
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        adj = sp.csr_matrix((np.ones(col.numel(), dtype=np.int8), col.numpy(), rowptr.numpy()), shape=(n, n))
        perm = torch.from_numpy(reverse_cuthill_mckee((adj + adj.T).tocsr(), symmetric_mode=True).astype(np.int64))
    else:
        import pymetis
        import scipy.sparse as sp

        adj = sp.csr_matrix((np.ones(col.numel(), dtype=np.int8), col.numpy(), rowptr.numpy()), shape=(n, n))
        sym = (adj + adj.T).tocsr()
        if num_parts < 2 or sym.nnz == 0:
            perm = torch.arange(n)
        else:
            _, parts = pymetis.part_graph(num_parts, pymetis.CSRAdjacency(sym.indptr, sym.indices))
            perm = torch.from_numpy(np.argsort(np.asarray(parts), kind="stable").astype(np.int64))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)
    return Reordering(perm=perm, inverse=inverse, method=method)


LOCALITY_BYTES = 6 * 2**20  # rows of one METIS part: measured best near 6 MiB (16 parts of 12.5k x 512 B)


def locality_parts(num_nodes: int, row_bytes: int) -> int:
    """METIS parts whose rows of ``row_bytes`` take about ``LOCALITY_BYTES`` each (1 without a row size)."""
    return max(1, -(-num_nodes * row_bytes // LOCALITY_BYTES))


def relabel_csr(rowptr: Tensor, col: Tensor, order: Reordering) -> tuple[Tensor, Tensor]:
    """The same cleaned graph with vertex ``old`` renamed ``order.inverse[old]``; columns stay sorted per row. The
    identity returns the arrays themselves: relabelling copies and sorts every edge (~1.1 GB of temporaries at 15M
    edges, the loading floor of a capped job; results/LOG.md 2026-12-01)."""
    if order.identity:
        return rowptr, col
    n = rowptr.numel() - 1
    deg = rowptr[1:] - rowptr[:-1]
    new_deg = deg[order.perm]
    new_rowptr = torch.zeros(n + 1, dtype=torch.int64)
    torch.cumsum(new_deg, 0, out=new_rowptr[1:])
    # Gather each new row's edges from the old row, then relabel and sort the sources within the row.
    starts = torch.repeat_interleave(rowptr[:-1][order.perm] - new_rowptr[:-1], new_deg)
    old_pos = torch.arange(col.numel()) + starts
    new_src = order.inverse[col[old_pos]]
    dst = torch.repeat_interleave(torch.arange(n), new_deg)
    key = torch.argsort(dst * n + new_src)
    return new_rowptr, new_src[key]


@dataclass
class Chunk:
    """The in-edge block of destination rows ``[start, stop)`` (edges sorted by destination, then source)."""

    start: int
    stop: int
    edge_start: int  # offset of this chunk's edges in the whole-graph edge order
    crow: Tensor  # [rows + 1] local row pointer
    src_global: Tensor  # [E_c] source vertex ids
    src_local: Tensor  # [E_c] positions in ``halo``
    dst_local: Tensor  # [E_c] destination row within the chunk
    halo: Tensor  # [H] sorted distinct sources this chunk reads
    values: Tensor | None  # [E_c] edge weights (None for GAT: attention is computed)
    t_crow: Tensor  # [H + 1] transposed block: rows = halo sources
    t_col: Tensor  # [E_c] destination row per transposed entry
    t_perm: Tensor  # [E_c] edge index of each transposed entry (reorders per-edge values)
    self_pos: Tensor | None  # [rows] position of each destination row in ``halo`` (graphs with self-loops)

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def width(self) -> int:
        return int(self.halo.numel())

    @property
    def num_edges(self) -> int:
        return int(self.src_global.numel())

    def nbytes(self) -> int:
        tensors = [self.crow, self.src_global, self.src_local, self.dst_local, self.halo, self.t_crow, self.t_col,
                   self.t_perm] + [t for t in (self.values, self.self_pos) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device) -> "Chunk":
        moved = {name: (getattr(self, name).to(device) if isinstance(getattr(self, name), Tensor) else
                        getattr(self, name)) for name in self.__dataclass_fields__}
        return Chunk(**moved)


def build_chunks(rowptr: Tensor, col: Tensor, values: Tensor | None, num_chunks: int,
                 self_loops: bool) -> list[Chunk]:
    """Cut a (normalised) CSR by destination into ``num_chunks`` blocks with halo indices and transposes;
    ``self_loops``: the graph has one per vertex and each block records where its rows sit in its halo (GAT)."""
    # int32 indices halve the blocks' bytes (torch's CSR kernels and indexing take them) when ids fit.
    index_dtype = torch.int32 if max(rowptr.numel(), col.numel()) < 2**31 else torch.int64
    chunks = []
    for start, stop in chunk_bounds(rowptr.numel() - 1, num_chunks):
        e0, e1 = int(rowptr[start]), int(rowptr[stop])
        crow = rowptr[start:stop + 1] - e0
        src = col[e0:e1]
        halo, src_local = torch.unique(src, sorted=True, return_inverse=True)
        dst_local = torch.repeat_interleave(torch.arange(stop - start), crow[1:] - crow[:-1])
        t_perm = torch.argsort(src_local * (stop - start) + dst_local)
        t_crow = torch.zeros(halo.numel() + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(src_local, minlength=halo.numel()), 0, out=t_crow[1:])
        self_pos = torch.searchsorted(halo, torch.arange(start, stop)) if self_loops else None
        small = lambda t: None if t is None else t.to(index_dtype)  # noqa: E731
        chunks.append(Chunk(start=start, stop=stop, edge_start=e0, crow=small(crow), src_global=small(src),
                            src_local=small(src_local), dst_local=small(dst_local), halo=halo,
                            values=None if values is None else values[e0:e1].contiguous(), t_crow=small(t_crow),
                            t_col=small(dst_local[t_perm]), t_perm=small(t_perm), self_pos=small(self_pos)))
    return chunks
