"""Sparse kernels shared by the FlexGNN engine and the DDP baseline: block products, GAT attention, loss.

Everything works on a *block*: destination rows ``[0, rows)`` of a CSR sorted by destination, whose columns index
``width`` local source rows (a chunk's halo in the engine, a rank's owned-then-halo rows in DDP). A block has

- ``crow`` [rows + 1], ``src_local`` [E] (local source column), ``dst_local`` [E] (destination row per edge),
- its transpose ``t_crow`` [width + 1], ``t_col`` [E] and ``t_perm`` [E] (edge id of each transposed entry),
- ``self_pos`` [rows]: the local column of each destination row itself (graphs with self-loops, i.e. GAT),
- ``rows`` and ``width``.

The formulas follow PyG's ``GATConv`` and ``torch_geometric.utils.softmax`` exactly (LeakyReLU slope 0.2,
max-shifted exponentials, ``+1e-16`` in the denominator), so chunked or partitioned results equal the whole-graph
ones to fp32 rounding. ``BlockSpMM`` and ``GatAttention`` wrap the same kernels for autograd (DDP).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from flexgnn_core import native

NEGATIVE_SLOPE = 0.2


class Block(Protocol):
    crow: Tensor
    src_local: Tensor
    dst_local: Tensor
    t_crow: Tensor
    t_col: Tensor
    t_perm: Tensor
    self_pos: Tensor | None

    @property
    def rows(self) -> int: ...

    @property
    def width(self) -> int: ...


def long_index(index: Tensor) -> Tensor:
    """``index`` as int64 for ``index_add_``: with the blocks' int32 indices it is about 12x slower on CPU
    (1.9 vs 23.7 ms for 440k edges x 2 heads; results/LOG.md, 2026-11-28), while gathers take int32 at full speed."""
    return index if index.dtype == torch.int64 else index.long()


def csr(block: Block, values: Tensor) -> Tensor:
    """The block as a sparse CSR ``[rows, width]`` with ``values`` per edge."""
    return torch.sparse_csr_tensor(block.crow, block.src_local, values, size=(block.rows, block.width),
                                   check_invariants=False)


def spmm(block: Block, values: Tensor, x: Tensor) -> Tensor:
    """``A x`` for the block's weighted adjacency: ``[rows, F]`` from ``x`` [width, F], or per head ``[rows, H, C]``
    from values [E, H] and ``x`` [width, H, C] (``native.csr_mm``: the C++ kernel on CPU, ``torch.sparse.mm``
    elsewhere)."""
    return native.csr_mm(block.crow, block.src_local, values, x, block.width)


def spmm_t(block: Block, values: Tensor, g: Tensor) -> Tensor:
    """``A^T g``: the source rows' share of the gradient, ``[width, F]`` from ``g`` [rows, F] (per head as in
    ``spmm``)."""
    return native.csr_mm(block.t_crow, block.t_col, values.index_select(0, block.t_perm), g, block.rows)


# ---- GAT attention ---------------------------------------------------------------------------------------------
def gat_scores(block: Block, t: Tensor, att_src: Tensor, att_dst: Tensor) -> Tensor:
    """Raw attention logits ``s = a_src[u] + a_dst[v]`` per edge and head, ``[E, heads]`` (before LeakyReLU);
    ``t`` is the block's source rows ``[width, heads, C]``."""
    a_src = (t * att_src).sum(-1)
    a_dst = (t.index_select(0, block.self_pos) * att_dst).sum(-1)
    return a_src.index_select(0, block.src_local) + a_dst.index_select(0, block.dst_local)


def edge_softmax(block: Block, scores: Tensor) -> Tensor:
    """Softmax of LeakyReLU(scores) over each destination's in-edges, per head."""
    logits = F.leaky_relu(scores, NEGATIVE_SLOPE)
    lengths = block.crow[1:] - block.crow[:-1]  # every row has its self-loop, so no segment is empty
    row_max = torch.segment_reduce(logits, "max", lengths=lengths, axis=0)
    exp = (logits - row_max.index_select(0, block.dst_local)).exp()
    row_sum = torch.segment_reduce(exp, "sum", lengths=lengths, axis=0) + 1e-16
    return exp / row_sum.index_select(0, block.dst_local)


def gat_aggregate(block: Block, alpha: Tensor, t: Tensor) -> Tensor:
    """``out[v, k] = sum_e alpha[e, k] t[u, k]``: all heads in one CSR product, ``[rows, heads, C]``."""
    return spmm(block, alpha, t)


def gat_backward(block: Block, t: Tensor, alpha: Tensor, scores: Tensor, d_out: Tensor, att_src: Tensor,
                 att_dst: Tensor, drop: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of one block's GAT aggregation: ``(d_t [width, heads, C], d_att_src, d_att_dst)``, where
    ``d_out`` is the gradient of the per-head output ``[rows, heads, C]``; ``drop`` [E, heads] is the attention
    dropout factor (keep x scale) the forward weighted the messages with (``alpha * drop``), or None."""
    heads = t.shape[1]
    src, dst = block.src_local, block.dst_local
    lengths = block.crow[1:] - block.crow[:-1]  # edges are sorted by destination: per-row sums are segments
    weights = alpha if drop is None else alpha * drop
    d_t = spmm_t(block, weights, d_out)
    # d_alpha[e, k] = <d_out[v, k], t[u, k]>: a sampled dense-dense product on the block's pattern, which never
    # materialises the [E, C] per-edge messages (20x faster than gathering both sides here).
    d_alpha = torch.stack([torch.sparse.sampled_addmm(csr(block, alpha[:, k].contiguous()), d_out[:, k].contiguous(),
                                                      t[:, k].t(), beta=0.0).values() for k in range(heads)], dim=1)
    if drop is not None:
        d_alpha = d_alpha * drop
    weighted = alpha * d_alpha
    row_dot = torch.segment_reduce(weighted, "sum", lengths=lengths, axis=0)
    d_logits = weighted - alpha * row_dot.index_select(0, dst)
    # LeakyReLU's own backward: the same products as ``d_logits * where(scores > 0, 1, slope)`` (identical bits),
    # without materialising the factor (0.23 vs 6.2 ms for 220k x 4, one thread; results/LOG.md 2026-12-01)
    d_scores = torch.ops.aten.leaky_relu_backward(d_logits, scores, NEGATIVE_SLOPE, False)
    d_a_src = torch.zeros(t.shape[0], heads, device=alpha.device).index_add_(0, long_index(src), d_scores)
    d_a_dst = torch.segment_reduce(d_scores, "sum", lengths=lengths, axis=0)
    t_self = t.index_select(0, block.self_pos)
    d_att_src = torch.einsum("nh,nhc->hc", d_a_src, t).unsqueeze(0)  # no [width, heads, C] product in between
    d_att_dst = torch.einsum("nh,nhc->hc", d_a_dst, t_self).unsqueeze(0)
    d_t += d_a_src.unsqueeze(-1) * att_src
    d_t.index_add_(0, long_index(block.self_pos), d_a_dst.unsqueeze(-1) * att_dst)
    return d_t, d_att_src, d_att_dst


# ---- activations and loss --------------------------------------------------------------------------------------
def activate(name: str, z: Tensor) -> Tensor:
    return F.elu(z) if name == "elu" else torch.relu(z)


def activation_grad(name: str, out: Tensor, grad: Tensor) -> Tensor:
    """Gradient through ReLU / ELU from the activation's *output* (no pre-activation needs to be stored):
    ReLU' = [out > 0]; ELU' = 1 where out > 0 else exp(z) = out + 1."""
    if name == "elu":
        return out.clamp(max=0).add_(1).mul_(grad)  # 1 * grad where out > 0, else (out + 1) * grad: same bits
    return grad * (out > 0)


def loss_and_grad(logits: Tensor, y: Tensor, mask: Tensor, num_train: int) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy over the rows' training vertices and d(mean loss)/d(logits) for all rows."""
    grad = torch.zeros_like(logits)
    if not bool(mask.any()):
        return logits.new_zeros(()), grad
    picked, labels = logits[mask], y[mask]
    loss_sum = F.cross_entropy(picked, labels, reduction="sum")
    prob = torch.softmax(picked, dim=-1)
    prob[torch.arange(labels.numel(), device=logits.device), labels] -= 1
    grad[mask] = prob / num_train
    return loss_sum, grad


# ---- autograd wrappers (DDP trains with autograd over these same kernels) ---------------------------------------
class BlockSpMM(torch.autograd.Function):
    """``A x`` with constant edge weights; backward ``A^T dy`` through the block's precomputed transpose."""

    @staticmethod
    def forward(ctx, x: Tensor, block: Block, values: Tensor) -> Tensor:
        ctx.block, ctx.values = block, values
        return spmm(block, values, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return spmm_t(ctx.block, ctx.values, grad.contiguous()), None, None


class GatAttention(torch.autograd.Function):
    """GAT message passing over a block: ``t`` [width, heads, C] -> ``[rows, heads, C]`` with the kernels above;
    backward is ``gat_backward`` (nothing per edge but the attention itself is kept). ``drop`` [E, heads]: the
    attention dropout factor on alpha after the softmax, or None."""

    @staticmethod
    def forward(ctx, t: Tensor, att_src: Tensor, att_dst: Tensor, block: Block, drop: Tensor | None = None) -> Tensor:
        scores = gat_scores(block, t, att_src, att_dst)
        alpha = edge_softmax(block, scores)
        ctx.save_for_backward(t, alpha, scores, att_src, att_dst)
        ctx.block, ctx.drop = block, drop
        return gat_aggregate(block, alpha if drop is None else alpha * drop, t.contiguous())

    @staticmethod
    def backward(ctx, d_out: Tensor):
        t, alpha, scores, att_src, att_dst = ctx.saved_tensors
        d_t, d_att_src, d_att_dst = gat_backward(ctx.block, t, alpha, scores, d_out.contiguous(), att_src, att_dst,
                                                 ctx.drop)
        return d_t, d_att_src, d_att_dst, None, None
