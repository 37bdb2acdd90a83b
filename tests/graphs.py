"""Small graphs that exercise the corner cases every system must get right, shared by the parity tests.

``tricky_graph`` has isolated vertices, vertices with out-edges but no in-edges, two high-degree hubs (one
receiving from almost everyone, one sending to almost everyone) and directed edges without their reverse.
"""

from __future__ import annotations

import torch

from flexgnn_core.data.clean import build_csr
from flexgnn_core.spec import Graph


def tricky_graph(num_nodes: int = 48, num_features: int = 7, num_classes: int = 4, seed: int = 0,
                 directed: bool = True) -> Graph:
    g = torch.Generator().manual_seed(seed)
    n = num_nodes
    isolated = {n - 1, n - 2}  # no edges at all
    sources_only = {n - 3, n - 4}  # out-edges, no in-edges
    body = [v for v in range(n) if v not in isolated]
    src, dst = [], []
    for _ in range(3 * n):  # random body edges (duplicates and self-loops included: cleaning must drop them)
        u, v = (int(t) for t in torch.randint(0, len(body), (2,), generator=g))
        src.append(body[u]); dst.append(body[v])
    hub_in, hub_out = 0, 1
    for v in body:
        src.append(v); dst.append(hub_in)  # hub_in receives from everyone
        src.append(hub_out); dst.append(v)  # hub_out sends to everyone
    src_t, dst_t = torch.tensor(src), torch.tensor(dst)
    keep = torch.tensor([d not in sources_only for d in dst])
    rowptr, col = build_csr(src_t[keep], dst_t[keep], n, symmetrize=not directed)
    x = torch.randn(n, num_features, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    y[n - 5] = -1  # one unlabelled vertex, in no split
    perm = torch.randperm(n, generator=g)
    perm = perm[perm != n - 5]
    masks = [torch.zeros(n, dtype=torch.bool) for _ in range(3)]
    masks[0][perm[: n // 2]] = True
    masks[1][perm[n // 2: 3 * n // 4]] = True
    masks[2][perm[3 * n // 4:]] = True
    return Graph(name=f"tricky{n}", rowptr=rowptr, col=col, x=x, y=y, train_mask=masks[0], val_mask=masks[1],
                 test_mask=masks[2], num_classes=num_classes, provenance={"source": "tests/graphs.py", "seed": seed})
