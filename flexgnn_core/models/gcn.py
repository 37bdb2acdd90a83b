"""GCN (Kipf & Welling, ICLR 2017), PyG ``GCNConv`` semantics.

``H' = D^-1/2 (A + I) D^-1/2 H W^T + b`` with ``D`` the in-degree counted with the self-loop; edge ``u -> v``
weighs ``deg(u)^-1/2 deg(v)^-1/2`` (``flexgnn_core.norm.gcn_norm_csr``, PyG's ``gcn_norm``). Parameters per layer:
``lin.weight`` [out, in], ``bias`` [out]. ReLU between layers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flexgnn_core.models.base import GNNModel, Params
from flexgnn_core.norm import gcn_norm_csr


class GCN(GNNModel):
    name = "gcn"

    def layer_params(self, spec, d_in, d_out, last):
        return {"lin.weight": (d_out, d_in), "bias": (d_out,)}

    def aggregation(self, rowptr, col):
        return gcn_norm_csr(rowptr, col)

    def post(self, p: Params, x: Tensor, h_self, transformed: bool, last: bool) -> Tensor:
        return (x if transformed else x @ p["lin.weight"].t()) + p["bias"]

    def post_backward(self, p, x, h_self, transformed, last, g, need_x, need_self):
        grads = {"bias": g.sum(0)}
        if transformed:
            return (g if need_x else None), None, grads
        grads["lin.weight"] = g.t() @ x
        return (g @ p["lin.weight"] if need_x else None), None, grads

    def pyg_conv(self, spec, d_in, d_out, last):
        from torch_geometric.nn import GCNConv

        return GCNConv(d_in, d_out, normalize=False)  # normalised once by pyg_normalize

    def pyg_normalize(self, adj, num_nodes):
        from torch_geometric.nn.conv.gcn_conv import gcn_norm

        if isinstance(adj, Tensor) and adj.layout == torch.sparse_csr:
            return gcn_norm(adj, None, num_nodes, add_self_loops=True)[0], None
        return gcn_norm(adj, None, num_nodes, add_self_loops=True)

    def pyg_call(self, conv, x, adj, edge_weight):
        return conv(x, adj, edge_weight)

    def reference_layer(self, adj, h, p, last):
        a_hat = adj + torch.eye(adj.shape[0])
        d_inv_sqrt = a_hat.sum(dim=1).pow(-0.5)
        return (d_inv_sqrt[:, None] * a_hat * d_inv_sqrt[None, :]) @ h @ p["lin.weight"].T + p["bias"]


MODEL = GCN()
