"""Per-chunk kernels of the FlexGNN engine: GAT attention and its backward, activations, loss.

Everything works on one chunk's local graph (``flexgnn_core.chunks.Chunk``): destination rows ``[0, rows)``,
source rows ``[0, H)`` of the halo, edges ``src_local -> dst_local`` sorted by destination. The formulas follow
PyG's ``GATConv`` and ``torch_geometric.utils.softmax`` exactly (leaky slope 0.2, max-shifted exponentials,
``+1e-16`` in the denominator), so chunked results equal the whole-graph ones to fp32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flexgnn_core.chunks import Chunk

NEGATIVE_SLOPE = 0.2


def long_index(index: Tensor) -> Tensor:
    """``index`` as int64 for ``index_add_``: with the blocks' int32 indices it is about 12x slower on CPU
    (1.9 vs 23.7 ms for 440k edges x 2 heads; results/LOG.md, 2026-11-28), while gathers take int32 at full speed."""
    return index if index.dtype == torch.int64 else index.long()


def gat_scores(chunk: Chunk, t_halo: Tensor, att_src: Tensor, att_dst: Tensor) -> Tensor:
    """Raw attention logits ``s = a_src[u] + a_dst[v]`` per edge and head, ``[E_c, heads]`` (before LeakyReLU)."""
    a_src = (t_halo * att_src).sum(-1)
    a_dst = (t_halo.index_select(0, chunk.self_pos) * att_dst).sum(-1)
    return a_src.index_select(0, chunk.src_local) + a_dst.index_select(0, chunk.dst_local)


def edge_softmax(chunk: Chunk, scores: Tensor) -> Tensor:
    """Softmax of LeakyReLU(scores) over each destination's in-edges, per head."""
    logits = F.leaky_relu(scores, NEGATIVE_SLOPE)
    lengths = chunk.crow[1:] - chunk.crow[:-1]  # every row has its self-loop, so no segment is empty
    row_max = torch.segment_reduce(logits, "max", lengths=lengths, axis=0)
    exp = (logits - row_max.index_select(0, chunk.dst_local)).exp()
    row_sum = torch.segment_reduce(exp, "sum", lengths=lengths, axis=0) + 1e-16
    return exp / row_sum.index_select(0, chunk.dst_local)


def gat_aggregate(chunk: Chunk, alpha: Tensor, t_halo: Tensor) -> Tensor:
    """``out[v, k] = sum_e alpha[e, k] t_halo[u, k]``: one sparse CSR product per head, ``[rows, heads, C]``."""
    heads = t_halo.shape[1]
    return torch.stack([torch.sparse.mm(chunk.matrix(alpha[:, k].contiguous()), t_halo[:, k]) for k in range(heads)],
                       dim=1)


def gat_backward(chunk: Chunk, t_halo: Tensor, alpha: Tensor, scores: Tensor, d_out: Tensor, att_src: Tensor,
                 att_dst: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of one chunk's GAT aggregation: ``(d_t_halo [H, heads, C], d_att_src, d_att_dst)``.

    ``d_out`` is the gradient of the per-head output ``[rows, heads, C]``.
    """
    heads = t_halo.shape[1]
    src, dst = chunk.src_local, chunk.dst_local
    lengths = chunk.crow[1:] - chunk.crow[:-1]  # edges are sorted by destination: per-row sums are segments
    d_t = torch.stack([torch.sparse.mm(chunk.matrix_t(alpha[:, k].contiguous()), d_out[:, k]) for k in range(heads)],
                      dim=1)
    # d_alpha[e, k] = <d_out[v, k], t_halo[u, k]>: a sampled dense-dense product on the block's pattern, which
    # never materialises the [E, C] per-edge messages (20x faster than gathering both sides here).
    d_alpha = torch.stack([torch.sparse.sampled_addmm(chunk.matrix(alpha[:, k].contiguous()), d_out[:, k].contiguous(),
                                                      t_halo[:, k].t(), beta=0.0).values() for k in range(heads)],
                          dim=1)
    weighted = alpha * d_alpha
    row_dot = torch.segment_reduce(weighted, "sum", lengths=lengths, axis=0)
    d_logits = weighted - alpha * row_dot.index_select(0, dst)
    d_scores = d_logits * torch.where(scores > 0, 1.0, NEGATIVE_SLOPE)
    d_a_src = torch.zeros(t_halo.shape[0], heads, device=alpha.device).index_add_(0, long_index(src), d_scores)
    d_a_dst = torch.segment_reduce(d_scores, "sum", lengths=lengths, axis=0)
    t_self = t_halo.index_select(0, chunk.self_pos)
    d_att_src = (d_a_src.unsqueeze(-1) * t_halo).sum(0, keepdim=True)
    d_att_dst = (d_a_dst.unsqueeze(-1) * t_self).sum(0, keepdim=True)
    d_t += d_a_src.unsqueeze(-1) * att_src
    d_t.index_add_(0, long_index(chunk.self_pos), d_a_dst.unsqueeze(-1) * att_dst)
    return d_t, d_att_src, d_att_dst


def activate(kind: str, z: Tensor) -> Tensor:
    return F.elu(z) if kind == "gat" else torch.relu(z)


def activation_grad(kind: str, out: Tensor, grad: Tensor) -> Tensor:
    """Gradient through ReLU / ELU from the activation's *output* (no pre-activation needs to be stored):
    ReLU' = [out > 0]; ELU' = 1 where out > 0 else exp(z) = out + 1."""
    if kind == "gat":
        return torch.where(out > 0, grad, grad * (out + 1))
    return grad * (out > 0)


def loss_and_grad(logits: Tensor, y: Tensor, mask: Tensor, num_train: int) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy over the chunk's training rows and d(mean loss)/d(logits) for all its rows."""
    grad = torch.zeros_like(logits)
    if not bool(mask.any()):
        return logits.new_zeros(()), grad
    picked, labels = logits[mask], y[mask]
    loss_sum = F.cross_entropy(picked, labels, reduction="sum")
    prob = torch.softmax(picked, dim=-1)
    prob[torch.arange(labels.numel(), device=logits.device), labels] -= 1
    grad[mask] = prob / num_train
    return loss_sum, grad
