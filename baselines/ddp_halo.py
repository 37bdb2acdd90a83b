"""Partition-parallel pieces of the DDP baseline: vertex partitions, per-rank shards, the halo exchange and the layers.

The scheme is the NeutronStar "dependency communication" / CAGNET-1D family (REFERENCE.md section 2): rank ``r`` owns
a set of destination vertices with their features, labels and in-edges. Before each layer's aggregation it fetches
the *halo*, the rows of the previous layer's output that its in-edges read from other ranks, with one
``all_to_all_single`` (per-peer counts; gloo and NCCL both support it). The backward pass sends the halo gradients
back to their owners with the reverse ``all_to_all_single`` and adds them into the owners' gradients.

Local index space of a rank: owned vertices first (``0 .. n_own-1``, ascending global id), then halo rows grouped by
owner rank and sorted by global id within each owner, which is exactly the order ``all_to_all_single`` delivers them.
The sender computes the same order from the same global edge list, so no index lists travel at run time.

Each layer exchanges at the narrower of its input and output widths: GCN and SAGE transform first
(``A (H W^T) = (A H) W^T``) when that shrinks the rows; GAT always transforms first (attention needs ``H W^T``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from flexgnn_core.norm import add_self_loops_csr, gcn_norm_csr, mean_norm_csr
from flexgnn_core.spec import Graph

PARTITIONS = ("metis", "contiguous")


def partition_vertices(graph: Graph, world_size: int, method: str, seed: int = 0) -> Tensor:
    """Owner rank of every vertex, int64 [N]. ``metis``: pymetis k-way on the symmetrised graph (minimises the edge
    cut, hence halo traffic); ``contiguous``: equal ranges of vertex ids (what a graph without locality gets)."""
    n = graph.num_nodes
    if method not in PARTITIONS:
        raise ValueError(f"system.partition='{method}' is unknown; valid: {', '.join(PARTITIONS)}")
    if world_size == 1:
        return torch.zeros(n, dtype=torch.int64)
    if method == "contiguous" or graph.num_edges == 0:
        return torch.arange(n, dtype=torch.int64) * world_size // n
    import pymetis

    from flexgnn_core.data.clean import build_csr

    dst = torch.repeat_interleave(torch.arange(n), graph.in_degree())
    xadj, adjncy = build_csr(graph.col, dst, n, symmetrize=True)
    options = pymetis.Options(seed=seed)
    if hasattr(pymetis, "CSRAdjacency"):  # pymetis >= 2025.2; the xadj/adjncy keywords are deprecated there
        result = pymetis.part_graph(world_size, pymetis.CSRAdjacency(xadj.numpy(), adjncy.numpy()), options=options)
    else:
        result = pymetis.part_graph(world_size, xadj=xadj.numpy(), adjncy=adjncy.numpy(), options=options)
    membership = result[1]
    return torch.as_tensor(np.asarray(membership, dtype=np.int64))


def aggregation_csr(graph: Graph, kind: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """The global CSR each model aggregates over: GCN with self-loops and symmetric weights (global degrees), SAGE
    with mean weights, GAT with self-loops (weights come from attention)."""
    if kind == "gcn":
        return gcn_norm_csr(graph.rowptr, graph.col)
    if kind == "sage":
        return graph.rowptr, graph.col, mean_norm_csr(graph.rowptr, graph.col)
    rowptr, col = add_self_loops_csr(graph.rowptr, graph.col)
    return rowptr, col, None


@dataclass
class Shard:
    """Everything rank ``rank`` trains on. Local rows: owned then halo (see the module docstring)."""

    rank: int
    world_size: int
    owned: Tensor  # global ids [n_own]
    x: Tensor
    y: Tensor
    masks: dict[str, Tensor]
    rowptr: Tensor  # [n_own + 1] over owned destinations
    col: Tensor  # local source index in [0, n_own + n_halo)
    weight: Tensor | None
    halo: Tensor  # global ids [n_halo] in receive order
    recv_counts: list[int]
    send_index: Tensor  # local owned rows to send, grouped by destination rank
    send_counts: list[int]
    num_train_global: int
    num_classes: int

    @property
    def num_owned(self) -> int:
        return int(self.owned.numel())

    def stats(self) -> dict:
        return {"rank": self.rank, "num_owned": self.num_owned, "num_halo": int(self.halo.numel()),
                "num_local_edges": int(self.col.numel()), "num_send_rows": int(self.send_index.numel()),
                "num_train": int(self.masks["train"].sum())}


def _rows_of(rowptr: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Edge ids of the given CSR rows, in row order, and the rows' local row pointer."""
    counts = rowptr[rows + 1] - rowptr[rows]
    local_rowptr = torch.zeros(rows.numel() + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=local_rowptr[1:])
    offsets = torch.repeat_interleave(rowptr[rows] - local_rowptr[:-1], counts)
    return offsets + torch.arange(int(local_rowptr[-1])), local_rowptr


def _grouped_unique(owner: Tensor, ids: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Unique (owner, id) pairs sorted by owner then id."""
    key = torch.unique(owner * num_nodes + ids)
    return key // num_nodes, key % num_nodes


def build_shard(graph: Graph, parts: Tensor, rank: int, world_size: int,
                csr: tuple[Tensor, Tensor, Tensor | None]) -> Shard:
    """Rank ``rank``'s shard from the global graph, its partition and the model's aggregation CSR."""
    n = graph.num_nodes
    rowptr, col, weight = csr
    owned = torch.nonzero(parts == rank).flatten()
    edge_ids, local_rowptr = _rows_of(rowptr, owned)
    src = col[edge_ids]
    remote = parts[src] != rank
    halo_owner, halo = _grouped_unique(parts[src[remote]], src[remote], n)
    recv_counts = torch.bincount(halo_owner, minlength=world_size).tolist()
    global_to_local = torch.full((n,), -1, dtype=torch.int64)
    global_to_local[owned] = torch.arange(owned.numel())
    global_to_local[halo] = owned.numel() + torch.arange(halo.numel())
    # What the peers need from us: sources we own of edges into vertices they own (their halo, same order).
    all_dst = torch.repeat_interleave(torch.arange(n), rowptr[1:] - rowptr[:-1])
    out = (parts[col] == rank) & (parts[all_dst] != rank)
    send_peer, send_global = _grouped_unique(parts[all_dst[out]], col[out], n)
    train_mask = graph.train_mask[owned]
    return Shard(
        rank=rank, world_size=world_size, owned=owned, x=graph.x[owned].clone(), y=graph.y[owned].clone(),
        masks={"train": train_mask, "val": graph.val_mask[owned], "test": graph.test_mask[owned]},
        rowptr=local_rowptr, col=global_to_local[src], weight=None if weight is None else weight[edge_ids],
        halo=halo, recv_counts=recv_counts, send_index=global_to_local[send_global],
        send_counts=torch.bincount(send_peer, minlength=world_size).tolist(),
        num_train_global=int(graph.train_mask.sum()), num_classes=graph.num_classes)


@dataclass
class CommCounters:
    """Bytes and seconds spent in collectives by this rank (halo exchanges and all-reduces)."""

    device: torch.device
    sent_bytes: int = 0
    recv_bytes: int = 0
    allreduce_bytes: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)

    def snapshot(self) -> dict:
        return {"sent_bytes": self.sent_bytes, "recv_bytes": self.recv_bytes,
                "allreduce_bytes": self.allreduce_bytes, "comm_s": self.seconds}

    def timed(self, fn, *args, **kwargs):
        # On CUDA the collectives are asynchronous: synchronise so the time is the collective's, not queued work's.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return result

    def all_reduce(self, tensor: Tensor) -> Tensor:
        if dist.is_initialized() and dist.get_world_size() > 1:
            self.allreduce_bytes += tensor.numel() * tensor.element_size()
            self.timed(dist.all_reduce, tensor)
        return tensor


def _all_to_all(output: Tensor, inp: Tensor, out_counts: list[int], in_counts: list[int],
                counters: CommCounters) -> None:
    row_bytes = inp[0:1].numel() * inp.element_size() if inp.dim() > 1 else inp.element_size()
    counters.sent_bytes += sum(in_counts) * row_bytes
    counters.recv_bytes += sum(out_counts) * row_bytes
    counters.timed(dist.all_to_all_single, output, inp.contiguous(), out_counts, in_counts)


class HaloExchange(torch.autograd.Function):
    """Forward: owned rows ``[n_own, F]`` -> halo rows ``[n_halo, F]`` fetched from their owners.
    Backward: halo gradients go back to their owners and are summed into the owned rows' gradient."""

    @staticmethod
    def forward(ctx, h: Tensor, shard: Shard, counters: CommCounters) -> Tensor:
        ctx.shard, ctx.counters, ctx.num_owned = shard, counters, h.shape[0]
        send = h[shard.send_index.to(h.device)]
        recv = h.new_empty((int(shard.halo.numel()),) + tuple(h.shape[1:]))
        _all_to_all(recv, send, shard.recv_counts, shard.send_counts, counters)
        return recv

    @staticmethod
    def backward(ctx, grad_halo: Tensor):
        shard = ctx.shard
        send_index = shard.send_index.to(grad_halo.device)
        back = grad_halo.new_empty((int(send_index.numel()),) + tuple(grad_halo.shape[1:]))
        _all_to_all(back, grad_halo.contiguous(), shard.send_counts, shard.recv_counts, ctx.counters)
        grad = grad_halo.new_zeros((ctx.num_owned,) + tuple(grad_halo.shape[1:]))
        return grad.index_add_(0, send_index, back), None, None


def with_halo(h: Tensor, shard: Shard, counters: CommCounters) -> Tensor:
    """``[n_own + n_halo, F]``: the owned rows followed by the fetched halo rows (no collective when R = 1)."""
    if shard.world_size == 1:
        return h
    return torch.cat([h, HaloExchange.apply(h, shard, counters)])


class SpMM(torch.autograd.Function):
    """``A @ X`` with a constant sparse CSR ``A``; backward ``A^T @ dY`` with a precomputed transpose."""

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, a_t: Tensor) -> Tensor:
        ctx.a_t = a_t
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return torch.sparse.mm(ctx.a_t, grad.contiguous()), None, None


def _csr(rowptr: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the ops used here are stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(rowptr, col, values, shape, check_invariants=False)


@dataclass
class LocalGraph:
    """The shard's edges on the training device: CSR over owned destinations ``[n_own, n_own + n_halo]`` and its
    transpose (edge ``perm_t[k]`` of the CSR is entry ``k`` of the transpose), plus the edge endpoints."""

    rowptr: Tensor
    col: Tensor
    rowptr_t: Tensor
    col_t: Tensor
    perm_t: Tensor
    src: Tensor
    dst: Tensor
    num_owned: int
    num_all: int
    a: Tensor | None = None  # constant weights (GCN, SAGE) as sparse CSR, and the transpose
    a_t: Tensor | None = None

    @classmethod
    def build(cls, shard: Shard, device: torch.device) -> "LocalGraph":
        n_own, n_all = shard.num_owned, shard.num_owned + int(shard.halo.numel())
        dst = torch.repeat_interleave(torch.arange(n_own), shard.rowptr[1:] - shard.rowptr[:-1])
        perm_t = torch.argsort(shard.col * max(n_own, 1) + dst)
        rowptr_t = torch.zeros(n_all + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(shard.col, minlength=n_all), 0, out=rowptr_t[1:])
        graph = cls(rowptr=shard.rowptr, col=shard.col, rowptr_t=rowptr_t, col_t=dst[perm_t], perm_t=perm_t,
                    src=shard.col, dst=dst, num_owned=n_own, num_all=n_all)
        graph = cls(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in vars(graph).items()})
        if shard.weight is not None:
            weight = shard.weight.to(device)
            graph.a, graph.a_t = graph.sparse(weight), graph.sparse_t(weight)
        return graph

    def sparse(self, values: Tensor) -> Tensor:
        return _csr(self.rowptr, self.col, values, (self.num_owned, self.num_all))

    def sparse_t(self, values: Tensor) -> Tensor:
        return _csr(self.rowptr_t, self.col_t, values[self.perm_t], (self.num_all, self.num_owned))

    def aggregate(self, h_all: Tensor) -> Tensor:
        return SpMM.apply(h_all, self.a, self.a_t)


class AttentionSpMM(torch.autograd.Function):
    """``out[:, h] = A(alpha[:, h]) @ x[:, h]`` per head as sparse products, without the ``[E, heads, C]`` messages
    that a gather-scatter (PyG's ``GATConv``) keeps for backward. Backward: ``dx[:, h] = A(alpha[:, h])^T @ dout[:, h]``
    and ``dalpha[e, h] = <dout[dst_e, h], x[src_e, h]>`` as a sampled dense product (SDDMM), one head at a time."""

    @staticmethod
    def forward(ctx, alpha: Tensor, x_all: Tensor, graph: LocalGraph) -> Tensor:
        ctx.save_for_backward(alpha, x_all)
        ctx.graph = graph
        heads = alpha.shape[1]
        return torch.stack([torch.sparse.mm(graph.sparse(alpha[:, h].contiguous()), x_all[:, h].contiguous())
                            for h in range(heads)], dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        alpha, x_all = ctx.saved_tensors
        graph, heads = ctx.graph, alpha.shape[1]
        grad_x = grad_alpha = None
        if ctx.needs_input_grad[1]:
            grad_x = torch.stack([torch.sparse.mm(graph.sparse_t(alpha[:, h].contiguous()), grad[:, h].contiguous())
                                  for h in range(heads)], dim=1)
        if ctx.needs_input_grad[0]:
            pattern = graph.sparse(alpha[:, 0].contiguous())  # SDDMM: (dout @ x^T) sampled at the edges
            grad_alpha = torch.stack([torch.sparse.sampled_addmm(pattern, grad[:, h].contiguous(),
                                                                 x_all[:, h].t(), beta=0.0).values()
                                      for h in range(heads)], dim=1)
        return grad_alpha, grad_x, None


def gat_attention(z_all: Tensor, att_src: Tensor, att_dst: Tensor, graph: LocalGraph) -> Tensor:
    """PyG ``GATConv`` message passing over the local edges (self-loops included): ``[n_own, heads, C]``."""
    heads, channels = att_src.shape[1], att_src.shape[2]
    x_all = z_all.view(-1, heads, channels)
    a_src = (x_all * att_src).sum(-1)
    a_dst = (x_all[: graph.num_owned] * att_dst).sum(-1)
    e = F.leaky_relu(a_src[graph.src] + a_dst[graph.dst], 0.2)
    index = graph.dst.unsqueeze(-1).expand_as(e)
    e_max = torch.full((graph.num_owned, heads), float("-inf"), device=e.device)
    e_max = e_max.scatter_reduce(0, index, e.detach(), reduce="amax", include_self=True)
    e = (e - e_max[graph.dst]).exp()
    denom = torch.zeros(graph.num_owned, heads, device=e.device).index_add_(0, graph.dst, e)
    alpha = e / (denom[graph.dst] + 1e-16)  # PyG's softmax epsilon
    return AttentionSpMM.apply(alpha, x_all, graph)


def forward(kind: str, params: dict[str, Tensor], num_layers: int, x: Tensor, graph: LocalGraph, shard: Shard,
            counters: CommCounters, dropout: float = 0.0, training: bool = False,
            cache: dict[str, Tensor] | None = None) -> Tensor:
    """Logits of the owned rows ``[n_own, num_classes]``, exactly the model of ``flexgnn_core.spec``.

    ``cache`` (a dict kept across epochs) holds layer 0's aggregation ``A X`` when that layer aggregates first: the
    input features never change, so their halo exchange and SpMM happen once per job (NeutronStar's dependency
    caching for the input layer; FlexGNN reuses ``A_hat X`` the same way). Pass ``None`` to recompute every epoch.
    """
    h = x
    for i in range(num_layers):
        p = f"convs.{i}."
        if kind == "gat":
            z_all = with_halo(h @ params[p + "lin.weight"].t(), shard, counters)
            out = gat_attention(z_all, params[p + "att_src"], params[p + "att_dst"], graph)
            last = i == num_layers - 1
            h = (out.mean(dim=1) if last else out.flatten(1)) + params[p + "bias"]
        else:
            weight = params[p + ("lin.weight" if kind == "gcn" else "lin_l.weight")]
            if weight.shape[0] < weight.shape[1]:  # transform first: fewer columns to exchange and aggregate
                agg = graph.aggregate(with_halo(h @ weight.t(), shard, counters))
            elif i == 0 and cache is not None:
                if "input_aggregate" not in cache:
                    with torch.no_grad():
                        cache["input_aggregate"] = graph.aggregate(with_halo(h, shard, counters))
                agg = cache["input_aggregate"] @ weight.t()
            else:
                agg = graph.aggregate(with_halo(h, shard, counters)) @ weight.t()
            if kind == "gcn":
                h = agg + params[p + "bias"]
            else:
                h = agg + params[p + "lin_l.bias"] + h @ params[p + "lin_r.weight"].t()
        if i < num_layers - 1:
            h = F.elu(h) if kind == "gat" else F.relu(h)
            if dropout > 0:
                h = F.dropout(h, dropout, training=training)
    return h
