"""Partition-parallel pieces of the DDP baseline: vertex partitions, per-rank shards, the halo exchange and the layers.

The scheme is the NeutronStar "dependency communication" / CAGNET-1D family (REFERENCE.md section 2): rank ``r`` owns
a set of destination vertices with their features, labels and in-edges. Before each layer's aggregation it fetches
the *halo*, the rows of the previous layer's output that its in-edges read from other ranks, with one
``all_to_all_single`` (per-peer counts; gloo and NCCL both support it). The backward pass sends the halo gradients
back to their owners with the reverse ``all_to_all_single`` and adds them into the owners' gradients.

Local index space of a rank: owned vertices first (``0 .. n_own-1``, ascending global id), then halo rows grouped by
owner rank and sorted by global id within each owner, which is exactly the order ``all_to_all_single`` delivers them.
The sender computes the same order from the same global edge list, so no index lists travel at run time.

Each layer exchanges at the narrower of its input and output widths: linear-family models transform first
(``A (H W^T) = (A H) W^T``) when that shrinks the rows; attention models always transform first (attention needs
``H W^T``). The layers are the models' own (``flexgnn_core.models``: the aggregation CSR and the post part) over
the kernels the FlexGNN engine uses (``flexgnn_core.kernels``), differentiated by autograd.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from flexgnn_core import dropout, kernels, models
from flexgnn_core.engine.transfer import StreamClock
from flexgnn_core.spec import Graph, ModelSpec

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
    """The global CSR the model aggregates over (its own self-loops and weights, with global degrees)."""
    return models.get(kind).aggregation(graph.rowptr, graph.col)


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
    """Bytes and seconds spent in collectives by this rank (halo exchanges and all-reduces).

    Seconds: on CPU (gloo) a collective returns when it is done, so a wall clock around it is its time. On CUDA
    (NCCL) it is queued: the compute stream is made to wait for it, so timing events recorded on the current
    stream before and after it span the collective itself (waiting for peers included) without stopping the
    device around every collective; they are read when the counters are (``snapshot``, once per epoch)."""

    device: torch.device
    sent_bytes: int = 0
    recv_bytes: int = 0
    allreduce_bytes: int = 0
    history: list[dict] = field(default_factory=list)
    clock: StreamClock = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.clock = StreamClock(self.device)

    @property
    def seconds(self) -> float:
        return self.clock.settle().get("comm", 0.0)

    def snapshot(self) -> dict:
        return {"sent_bytes": self.sent_bytes, "recv_bytes": self.recv_bytes,
                "allreduce_bytes": self.allreduce_bytes, "comm_s": self.seconds}

    def timed(self, fn, *args, **kwargs):
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        start = self.clock.mark(stream)
        result = fn(*args, **kwargs)
        self.clock.add("comm", start, self.clock.mark(stream))
        return result

    def count_exchange(self, inp: Tensor, out_counts: list[int], in_counts: list[int]) -> None:
        """Bytes of one ``all_to_all_single``: rows sent and received times the row's bytes, taken from the shape
        (a rank that sends no rows still receives some: ``inp[0:1]`` would make its row 0 bytes)."""
        row_bytes = math.prod(inp.shape[1:]) * inp.element_size()
        self.sent_bytes += sum(in_counts) * row_bytes
        self.recv_bytes += sum(out_counts) * row_bytes

    def all_reduce(self, tensor: Tensor) -> Tensor:
        if dist.is_initialized() and dist.get_world_size() > 1:
            self.allreduce_bytes += tensor.numel() * tensor.element_size()
            self.timed(dist.all_reduce, tensor)
        return tensor


def _all_to_all(output: Tensor, inp: Tensor, out_counts: list[int], in_counts: list[int],
                counters: CommCounters) -> None:
    counters.count_exchange(inp, out_counts, in_counts)
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


@dataclass
class LocalGraph:
    """The shard's edges on the training device as a ``kernels.Block``: destinations are the owned rows, columns
    the local rows ``[0, n_own + n_halo)`` (owned first, so a destination's own column is its row: ``self_pos``),
    with the transpose and the model's constant edge weights (None for attention)."""

    crow: Tensor
    src_local: Tensor
    dst_local: Tensor
    t_crow: Tensor
    t_col: Tensor
    t_perm: Tensor
    self_pos: Tensor
    num_owned: int
    num_all: int
    values: Tensor | None = None
    src_global: Tensor | None = None  # [E] global id of each edge's source (attention dropout's edge identity)
    dst_global: Tensor | None = None  # [E] global id of each edge's destination

    @property
    def rows(self) -> int:
        return self.num_owned

    @property
    def width(self) -> int:
        return self.num_all

    @classmethod
    def build(cls, shard: Shard, device: torch.device) -> "LocalGraph":
        n_own, n_all = shard.num_owned, shard.num_owned + int(shard.halo.numel())
        dst = torch.repeat_interleave(torch.arange(n_own), shard.rowptr[1:] - shard.rowptr[:-1])
        perm_t = torch.argsort(shard.col * max(n_own, 1) + dst)
        rowptr_t = torch.zeros(n_all + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(shard.col, minlength=n_all), 0, out=rowptr_t[1:])
        local_to_global = torch.cat([shard.owned, shard.halo])
        graph = cls(crow=shard.rowptr, src_local=shard.col, dst_local=dst, t_crow=rowptr_t, t_col=dst[perm_t],
                    t_perm=perm_t, self_pos=torch.arange(n_own), num_owned=n_own, num_all=n_all,
                    values=shard.weight, src_global=local_to_global[shard.col], dst_global=shard.owned[dst])
        return cls(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in vars(graph).items()})

    def aggregate(self, h_all: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return kernels.BlockSpMM.apply(h_all, self, self.values)

    def attention(self, t_all: Tensor, att_src: Tensor, att_dst: Tensor, drop: Tensor | None = None) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return kernels.GatAttention.apply(t_all, att_src, att_dst, self, drop)


@dataclass(frozen=True)
class DropKey:
    """What keys one training pass's dropout masks (``flexgnn_core.dropout``): the seed and the epoch."""

    seed: int
    epoch: int


def forward(spec: ModelSpec, params: dict[str, Tensor], x: Tensor, graph: LocalGraph, shard: Shard,
            counters: CommCounters, drop: DropKey | None = None, cache: dict[str, Tensor] | None = None) -> Tensor:
    """Logits of the owned rows ``[n_own, num_classes]``, exactly the model of ``flexgnn_core.models``.

    ``drop`` (training passes) keys the dropout masks, made for the owned rows and local edges by their global ids
    and applied before the halo exchange, so a rank's halo rows arrive dropped exactly as their owner dropped them
    (None: evaluation, nothing dropped). ``cache`` (a dict kept across epochs) holds layer 0's aggregation ``A X``
    when that layer aggregates first: the input features never change, so their halo exchange and SpMM happen once
    per job (NeutronStar's dependency caching for the input layer; FlexGNN reuses ``A_hat X`` the same way). Pass
    ``None`` to recompute every epoch (required with input dropout: the dropped features change every epoch).
    """
    model = models.get(spec.kind)
    rates = [spec.input_rate] + [spec.dropout] * (spec.num_layers - 1)
    if cache is not None and drop is not None and rates[0] > 0:
        raise ValueError("the input aggregation cache is exact only without input dropout; pass cache=None")
    owned = shard.owned.to(x.device)
    h = x
    for i in range(spec.num_layers):
        p, last = models.layer_view(params, i), i == spec.num_layers - 1
        if drop is not None:
            h = dropout.nodes(h, owned, rates[i], drop.seed, drop.epoch, i)
        weight = p[model.first_weight]
        h_self = h if model.self_rows else None
        if model.family == "attention":
            t_all = with_halo(h @ weight.t(), shard, counters)
            heads = p["att_src"].shape[1]
            factor = None
            if drop is not None and spec.attention_rate > 0:
                keep = dropout.edge_keep(drop.seed, drop.epoch, i, graph.src_global, graph.dst_global, heads,
                                         spec.attention_rate)
                factor = keep.to(t_all.dtype) * dropout.scale_of(spec.attention_rate)
            out = graph.attention(t_all.view(t_all.shape[0], heads, -1), p["att_src"], p["att_dst"], factor)
            h = model.post(p, out, None, True, last)
        elif weight.shape[0] < weight.shape[1]:  # transform first: fewer columns to exchange and aggregate
            h = model.post(p, graph.aggregate(with_halo(h @ weight.t(), shard, counters)), h_self, True, last)
        else:
            if i == 0 and cache is not None:
                if "input_aggregate" not in cache:
                    with torch.no_grad():
                        cache["input_aggregate"] = graph.aggregate(with_halo(h, shard, counters))
                agg = cache["input_aggregate"]
            else:
                agg = graph.aggregate(with_halo(h, shard, counters))
            h = model.post(p, agg, h_self, False, last)
        if not last:
            h = kernels.activate(model.activation, h)
    return h
