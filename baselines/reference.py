"""A plain-torch, dense, obviously-correct reference of the model semantics in ``flexgnn_core/spec.py``.

Used only by tests, as a check independent of PyG: every layer is written with a dense ``[N, N]`` adjacency
(``A[v, u] = 1`` for an edge ``u -> v``) in its model's module (``GNNModel.reference_layer``), so a small graph
can be verified by eye. Dropout is not modelled here (the systems' shared masks are checked against each other in
tests/test_dropout_exact.py); use ``model.dropout == 0`` with it. Weight decay is (Adam's, as every system's).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from flexgnn_core import models
from flexgnn_core.kernels import activate
from flexgnn_core.spec import Graph, ModelSpec


def dense_adjacency(graph: Graph) -> Tensor:
    """``A[v, u] = 1`` for every edge ``u -> v`` (rows are destinations, like our CSR)."""
    n = graph.num_nodes
    adj = torch.zeros(n, n, dtype=torch.float32)
    dst = torch.repeat_interleave(torch.arange(n), graph.in_degree())
    adj[dst, graph.col] = 1.0
    return adj


def forward(graph: Graph, model: ModelSpec, params: Mapping[str, Tensor]) -> Tensor:
    """Logits ``[N, C]`` of ``model`` with ``params`` (named like ``flexgnn_core.models.param_shapes``)."""
    if model.dropout != 0 or model.input_rate != 0 or model.attention_rate != 0:
        raise ValueError(f"reference.forward models no dropout; got model.dropout={model.dropout}, input_dropout="
                         f"{model.input_dropout}, attention_dropout={model.attention_dropout}; use 0")
    adj = dense_adjacency(graph)
    kind = models.check(model)
    h = graph.x.to(torch.float32)
    for i in range(model.num_layers):
        last = i == model.num_layers - 1
        h = kind.reference_layer(adj, h, models.layer_view(params, i), last)  # the model's own dense formula
        if not last:
            h = activate(kind.activation, h)
    return h


def loss(graph: Graph, model: ModelSpec, params: Mapping[str, Tensor]) -> Tensor:
    """Mean cross-entropy over the training vertices."""
    logits = forward(graph, model, params)
    return F.cross_entropy(logits[graph.train_mask], graph.y[graph.train_mask])


def train_losses(graph: Graph, model: ModelSpec, params: Mapping[str, Tensor], epochs: int) -> list[float]:
    """Per-epoch losses of full-graph Adam(lr, weight_decay) training from ``params`` (copied, never modified)."""
    weights = {name: value.detach().clone().requires_grad_(True) for name, value in params.items()}
    optimizer = torch.optim.Adam(list(weights.values()), lr=model.lr, weight_decay=model.weight_decay)
    losses = []
    for _ in range(epochs):
        optimizer.zero_grad()
        value = loss(graph, model, weights)
        value.backward()
        optimizer.step()
        losses.append(value.item())
    return losses
