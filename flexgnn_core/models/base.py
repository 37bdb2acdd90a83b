"""What a GNN model declares once, for every system and the planner to read (STYLE #4: a new layer is one module).

A model module in ``flexgnn_core/models/`` defines ``MODEL = SomeModel()``, a ``GNNModel``; the registry
(``flexgnn_core.models``) finds it by its file. One layer ``l`` of an L-layer model maps ``h`` [N, d] to ``z``
[N, o] in two parts that every system shares:

- the **aggregation** over the model's CSR (``aggregation``: self-loops and fixed edge weights, or GAT's attention):
  ``x = A h``, or with the first linear map applied before it (transform first) ``x = A (h W^T)``;
- the **post** part on rows, ``z = post(p, x, h_self, transformed, last)`` (bias, root weight, an MLP, the mean
  over heads). ``post_backward`` gives its gradients; the default differentiates ``post`` with autograd, and a
  model may write it by hand (GCN, SAGE, GAT do: it avoids recomputing ``post`` in backward).

Families: ``linear`` (fixed edge weights; the first weight commutes with the aggregation) and ``attention``
(GAT: per-edge weights from the transformed rows, always transform first). Traits the planner and the cost model
read: ``self_rows`` (post reads the layer's own input rows, e.g. SAGE's root weight), ``affine_post`` (post is
affine in ``x``, so its backward never needs ``x`` itself once the first weight is applied: transform first is
allowed in the engine), and ``post_flops`` (dense work of post beyond the first weight).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from flexgnn_core.spec import ModelSpec

Params = Mapping[str, Tensor]  # one layer's parameters by suffix, e.g. {"lin.weight": ..., "bias": ...}


class GNNModel:
    """Base of every model; subclasses set the class attributes and implement the methods marked below."""

    name: str = ""
    family: str = "linear"  # "linear" | "attention"
    activation: str = "relu"  # between layers: "relu" | "elu" (flexgnn_core.kernels.activate)
    first_weight: str = "lin.weight"  # suffix of the linear map applied first (commutes with the aggregation)
    self_rows: bool = False
    affine_post: bool = True
    pyg_path: str = "csr"  # PyG baseline's fastest exact input: csr | edgeindex | edge_index

    # ---- shapes and validation ------------------------------------------------------------------------------
    def validate(self, spec: ModelSpec) -> None:
        """Raise ``ValueError`` naming ``model.<field>`` when ``spec`` does not fit this model."""

    def layer_params(self, spec: ModelSpec, d_in: int, d_out: int, last: bool) -> dict[str, tuple[int, ...]]:
        """``{suffix: shape}`` of one layer in a fixed order (Linear weights ``[out, in]``); implement."""
        raise NotImplementedError

    def transform_width(self, heads: int, d_out: int, last: bool) -> int:
        """Width of ``h W^T`` for the first weight (GAT: heads x channels per head)."""
        return d_out

    # ---- aggregation and post -------------------------------------------------------------------------------
    def aggregation(self, rowptr: Tensor, col: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The CSR this model aggregates over (by destination) with its edge weights (None: attention); implement."""
        raise NotImplementedError

    def post(self, p: Params, x: Tensor, h_self: Tensor | None, transformed: bool, last: bool) -> Tensor:
        """``z`` rows from the aggregated rows ``x`` (``h_self``: the layer's input rows when ``self_rows``)."""
        raise NotImplementedError

    def post_backward(self, p: Params, x: Tensor | None, h_self: Tensor | None, transformed: bool, last: bool,
                      g: Tensor, need_x: bool, need_self: bool
                      ) -> tuple[Tensor | None, Tensor | None, dict[str, Tensor]]:
        """``(d_x, d_h_self, {suffix: grad})`` of ``post`` for output gradient ``g``; ``d_x`` / ``d_h_self`` only
        when ``need_x`` / ``need_self`` (else None). The first weight's gradient is left out when ``transformed``
        (the engine's transform pass owns it). ``x`` may be None only for an ``affine_post`` model transformed."""
        names = [name for name in p if not (transformed and name == self.first_weight)]
        need_self = need_self and h_self is not None
        with torch.enable_grad():
            leaves = {name: p[name].detach().requires_grad_(name in names) for name in p}
            x_leaf = x.detach().requires_grad_(need_x)
            self_leaf = None if h_self is None else h_self.detach().requires_grad_(need_self)
            z = self.post(leaves, x_leaf, self_leaf, transformed, last)
            inputs = [leaves[name] for name in names] + [x_leaf] * need_x + [self_leaf] * need_self
            grads = torch.autograd.grad(z, inputs, g, allow_unused=True)
        out = {name: (grad if grad is not None else torch.zeros_like(p[name])) for name, grad in zip(names, grads)}
        d_x = grads[len(names)] if need_x else None
        d_self = grads[len(names) + need_x] if need_self else None
        return d_x, d_self, out

    def post_flops(self, d_in: int, d_out: int, transformed: bool, first: bool) -> tuple[float, float]:
        """Dense FLOPs per row of ``post`` forward and backward beyond the first weight's own products (which the
        cost model charges by order); the default autograd backward recomputes ``post`` forward."""
        return 0.0, 0.0

    # ---- the PyG baseline and the dense reference -----------------------------------------------------------
    def pyg_conv(self, spec: ModelSpec, d_in: int, d_out: int, last: bool) -> torch.nn.Module:
        """The PyG layer with exactly this semantics, whose ``state_dict`` has ``layer_params``' names; implement."""
        raise NotImplementedError

    def pyg_normalize(self, adj: Any, num_nodes: int) -> tuple[Any, Tensor | None]:
        """PyG's own normalisation of the adjacency, done once in preprocessing: ``(adj, edge_weight)``."""
        return adj, None

    def pyg_call(self, conv: torch.nn.Module, x: Tensor, adj: Any, edge_weight: Tensor | None) -> Tensor:
        return conv(x, adj)

    def reference_layer(self, adj: Tensor, h: Tensor, p: Params, last: bool) -> Tensor:
        """The layer on a dense ``adj`` [N, N] (``adj[v, u] = 1`` for an edge u -> v, no self-loops): obviously
        correct plain torch, for tests; implement."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, family={self.family!r})"
