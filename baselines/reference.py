"""A plain-torch, dense, obviously-correct reference of the model semantics in ``flexgnn_core/spec.py``.

Used only by tests, as a check independent of PyG: every layer is written with a dense ``[N, N]`` adjacency
(``A[v, u] = 1`` for an edge ``u -> v``), so a small graph can be verified by eye. Dropout is not modelled
(it draws random numbers that no two implementations share); use ``model.dropout == 0`` with it.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from flexgnn_core.spec import Graph, ModelSpec


def dense_adjacency(graph: Graph) -> Tensor:
    """``A[v, u] = 1`` for every edge ``u -> v`` (rows are destinations, like our CSR)."""
    n = graph.num_nodes
    adj = torch.zeros(n, n, dtype=torch.float32)
    dst = torch.repeat_interleave(torch.arange(n), graph.in_degree())
    adj[dst, graph.col] = 1.0
    return adj


def gcn_layer(adj: Tensor, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``D^-1/2 (A + I) D^-1/2 H W^T + b`` with ``D`` the in-degree counted with the self-loop."""
    a_hat = adj + torch.eye(adj.shape[0])
    d_inv_sqrt = a_hat.sum(dim=1).pow(-0.5)
    return (d_inv_sqrt[:, None] * a_hat * d_inv_sqrt[None, :]) @ h @ weight.T + bias


def sage_layer(adj: Tensor, h: Tensor, weight_l: Tensor, bias_l: Tensor, weight_r: Tensor) -> Tensor:
    """``mean_{u in N_in(v)} H_u W_l^T + b_l + H_v W_r^T``; a vertex without in-edges aggregates zeros."""
    mean = adj / adj.sum(dim=1, keepdim=True).clamp(min=1)
    return mean @ h @ weight_l.T + bias_l + h @ weight_r.T


def gat_layer(adj: Tensor, h: Tensor, weight: Tensor, att_src: Tensor, att_dst: Tensor, bias: Tensor,
              concat: bool) -> Tensor:
    """Multi-head attention over ``N_in(v) + {v}``: ``softmax_u LeakyReLU_0.2(a_s . W h_u + a_d . W h_v)``."""
    n, heads, channels = adj.shape[0], att_src.shape[1], att_src.shape[2]
    z = (h @ weight.T).view(n, heads, channels)
    score_src = (z * att_src).sum(dim=-1)  # [N, heads]
    score_dst = (z * att_dst).sum(dim=-1)
    scores = F.leaky_relu(score_dst[:, None, :] + score_src[None, :, :], 0.2)  # [dst, src, heads]
    neighbours = (adj + torch.eye(n)) > 0
    scores = scores.masked_fill(~neighbours[:, :, None], float("-inf"))
    alpha = torch.softmax(scores, dim=1)
    out = torch.einsum("vuh,uhc->vhc", alpha, z)
    out = out.reshape(n, heads * channels) if concat else out.mean(dim=1)
    return out + bias


def forward(graph: Graph, model: ModelSpec, params: Mapping[str, Tensor]) -> Tensor:
    """Logits ``[N, C]`` of ``model`` with ``params`` (named like ``flexgnn_core.models.param_shapes``)."""
    if model.dropout != 0:
        raise ValueError(f"reference.forward models no dropout; got model.dropout={model.dropout}, use 0")
    adj = dense_adjacency(graph)
    h = graph.x.to(torch.float32)
    for i in range(model.num_layers):
        p = lambda name: params[f"convs.{i}.{name}"]  # noqa: E731
        last = i == model.num_layers - 1
        if model.kind == "gcn":
            h = gcn_layer(adj, h, p("lin.weight"), p("bias"))
        elif model.kind == "sage":
            h = sage_layer(adj, h, p("lin_l.weight"), p("lin_l.bias"), p("lin_r.weight"))
        else:
            h = gat_layer(adj, h, p("lin.weight"), p("att_src"), p("att_dst"), p("bias"), concat=not last)
        if not last:
            h = F.elu(h) if model.kind == "gat" else F.relu(h)
    return h


def loss(graph: Graph, model: ModelSpec, params: Mapping[str, Tensor]) -> Tensor:
    """Mean cross-entropy over the training vertices."""
    logits = forward(graph, model, params)
    return F.cross_entropy(logits[graph.train_mask], graph.y[graph.train_mask])


def train_losses(graph: Graph, model: ModelSpec, params: Mapping[str, Tensor], epochs: int) -> list[float]:
    """Per-epoch losses of full-graph Adam(lr) training from ``params`` (copied, never modified)."""
    weights = {name: value.detach().clone().requires_grad_(True) for name, value in params.items()}
    optimizer = torch.optim.Adam(list(weights.values()), lr=model.lr)
    losses = []
    for _ in range(epochs):
        optimizer.zero_grad()
        value = loss(graph, model, weights)
        value.backward()
        optimizer.step()
        losses.append(value.item())
    return losses
