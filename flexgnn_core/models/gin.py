"""GIN (Xu et al., "How Powerful are Graph Neural Networks?", ICLR 2019), PyG ``GINConv`` semantics.

``H'_v = MLP((1 + eps) H_v + sum_{u in N_in(v)} H_u)`` with ``eps = 0`` fixed (``train_eps=False``) and the MLP
``Linear(in, out) -> ReLU -> Linear(out, out)`` (PyG's ``GINConv(nn=Sequential(...))``). The sum with the vertex
itself is one aggregation over the graph with a self-loop of weight ``1 + eps`` per vertex. Parameters per layer:
``nn.0.weight`` [out, in], ``nn.0.bias`` [out], ``nn.2.weight`` [out, out], ``nn.2.bias`` [out]. ReLU between
layers.

The first linear map commutes with the aggregation, but the MLP's ReLU needs the aggregate itself in backward, so
the engine always aggregates first (``affine_post = False``); its backward is autograd over ``post``, which
recomputes the MLP forward per chunk (counted in ``post_flops``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flexgnn_core.models.base import GNNModel, Params
from flexgnn_core.norm import add_self_loops_csr

EPS = 0.0


class GIN(GNNModel):
    name = "gin"
    first_weight = "nn.0.weight"
    affine_post = False

    def layer_params(self, spec, d_in, d_out, last):
        return {"nn.0.weight": (d_out, d_in), "nn.0.bias": (d_out,), "nn.2.weight": (d_out, d_out),
                "nn.2.bias": (d_out,)}

    def aggregation(self, rowptr, col):
        rowptr, col = add_self_loops_csr(rowptr, col)
        return rowptr, col, torch.ones(col.numel(), dtype=torch.float32)  # 1 + EPS on the self-loop: EPS = 0

    def post(self, p: Params, x: Tensor, h_self, transformed: bool, last: bool) -> Tensor:
        hidden = (x if transformed else x @ p["nn.0.weight"].t()) + p["nn.0.bias"]
        return torch.relu(hidden) @ p["nn.2.weight"].t() + p["nn.2.bias"]

    def post_flops(self, d_in, d_out, transformed, first):
        # forward: the second linear; backward (autograd): the MLP again, then dW2 and the hidden gradient
        recompute = 2.0 * d_in * d_out * (not transformed) + 2.0 * d_out * d_out
        return 2.0 * d_out * d_out, recompute + 4.0 * d_out * d_out

    def pyg_conv(self, spec, d_in, d_out, last):
        from torch_geometric.nn import GINConv

        mlp = torch.nn.Sequential(torch.nn.Linear(d_in, d_out), torch.nn.ReLU(), torch.nn.Linear(d_out, d_out))
        conv = GINConv(mlp, eps=EPS, train_eps=False)
        conv.register_buffer("eps", conv.eps.detach().clone(), persistent=False)  # a constant, not a parameter
        return conv

    def reference_layer(self, adj, h, p, last):
        summed = (adj + (1 + EPS) * torch.eye(adj.shape[0])) @ h
        hidden = torch.relu(summed @ p["nn.0.weight"].T + p["nn.0.bias"])
        return hidden @ p["nn.2.weight"].T + p["nn.2.bias"]


MODEL = GIN()
