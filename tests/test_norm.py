"""The edge normalisations (``flexgnn_core.norm``) in row blocks: bit for bit the whole-graph sort they replace, and
no temporary the size of the graph's edges (issue 10's loading floor: the sort held ~7 edge-sized int64 arrays)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flexgnn_core.engine.chunks import relabel_csr, reorder
from flexgnn_core.norm import add_self_loops_csr, gcn_norm_csr, row_blocks


def sorted_self_loops(rowptr, col):
    """The former whole-graph version: append the loops, argsort every edge by (row, column)."""
    n = rowptr.numel() - 1
    deg = rowptr[1:] - rowptr[:-1]
    dst = torch.cat([torch.repeat_interleave(torch.arange(n), deg), torch.arange(n)])
    src = torch.cat([col.long(), torch.arange(n)])
    order = torch.argsort(dst * n + src)
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(deg + 1, 0)]), src[order]


def csr(n: int, e: int, seed: int, self_loops: bool = False, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    src, dst = torch.randint(0, n, (e,), generator=g), torch.randint(0, n, (e,), generator=g)
    if not self_loops:
        src, dst = src[src != dst], dst[src != dst]
    key = torch.unique(dst * n + src)
    rowptr = torch.zeros(n + 1, dtype=torch.int64)
    rowptr[1:] = torch.cumsum(torch.bincount(key // n, minlength=n), 0)
    return rowptr.to(dtype), (key % n).to(dtype)


@pytest.mark.parametrize("block", [1, 7, 100, 1 << 22])
@pytest.mark.parametrize("case", [(1000, 8000, False, torch.int64), (500, 6000, True, torch.int64),
                                  (400, 3000, False, torch.int32), (300, 0, False, torch.int64),
                                  (1, 0, False, torch.int64)])
def test_blocks_give_the_sorted_result_bit_for_bit(block, case, monkeypatch):
    n, e, loops, dtype = case
    rowptr, col = csr(n, e, seed=n + e, self_loops=loops, dtype=dtype)
    monkeypatch.setattr(row_blocks, "__defaults__", (block,))
    want_rowptr, want_col = sorted_self_loops(rowptr.long(), col.long())
    got_rowptr, got_col = add_self_loops_csr(rowptr, col)
    assert torch.equal(got_rowptr, want_rowptr) and torch.equal(got_col, want_col)
    assert got_rowptr.dtype == got_col.dtype == torch.int64
    deg = (want_rowptr[1:] - want_rowptr[:-1]).float().pow(-0.5)
    want_values = deg[want_col] * deg[torch.repeat_interleave(torch.arange(n), want_rowptr[1:] - want_rowptr[:-1])]
    assert torch.equal(gcn_norm_csr(rowptr, col)[2], want_values)


def test_row_blocks_cover_every_row_once_within_the_edge_limit():
    rowptr, _ = csr(2000, 30000, seed=3)
    rowptr[1000:] += 500  # one row of 500 edges: a block of its own, over the limit
    blocks = list(row_blocks(rowptr, 64))
    assert blocks[0][0] == 0 and blocks[-1][1] == 2000 and all(b == c for (_, b), (c, _) in zip(blocks, blocks[1:]))
    sizes = [int(rowptr[b] - rowptr[a]) for a, b in blocks]
    assert all(size <= 64 or b - a == 1 for size, (a, b) in zip(sizes, blocks)) and max(sizes) > 500


class Sizes(TorchDispatchMode):
    """The largest tensor each op returned."""

    def __init__(self):
        super().__init__()
        self.largest: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                name = func.overloadpacket.__name__
                self.largest[name] = max(self.largest.get(name, 0), t.numel())
        return out


def test_no_temporary_is_the_size_of_the_graph(monkeypatch):
    n, e = 3000, 60000
    rowptr, col = csr(n, e, seed=5)
    edges = int(col.numel())
    monkeypatch.setattr(row_blocks, "__defaults__", (1000,))
    with Sizes() as sizes:
        gcn_norm_csr(rowptr, col)
    results = {"empty"} | {name for name in sizes.largest if name.endswith("_")}  # made, then written in place
    temporaries = {name: size for name, size in sizes.largest.items() if name not in results}
    assert max(temporaries.values()) <= max(1000, n + 1) < edges, temporaries


def test_the_identity_relabels_nothing_and_copies_nothing():
    rowptr, col = csr(500, 4000, seed=7)
    for method in ("none", "metis"):  # METIS with one part: no cut
        order = reorder(rowptr, col, method, 1)
        assert order.identity
        got = relabel_csr(rowptr, col, order)
        assert got[0] is rowptr and got[1] is col
    order = reorder(rowptr, col, "rcm", 1)
    assert not order.identity and relabel_csr(rowptr, col, order)[1] is not col
