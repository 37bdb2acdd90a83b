"""GraphSAGE (Hamilton et al., NeurIPS 2017), PyG ``SAGEConv`` semantics (mean aggregation, root weight).

``H'_v = mean_{u in N_in(v)} H_u W_l^T + b_l + H_v W_r^T``; a vertex without in-edges aggregates zeros. Parameters
per layer: ``lin_l.weight`` [out, in], ``lin_l.bias`` [out], ``lin_r.weight`` [out, in]. ReLU between layers.
"""

from __future__ import annotations

from torch import Tensor

from flexgnn_core.models.base import GNNModel, Params
from flexgnn_core.norm import mean_norm_csr


class SAGE(GNNModel):
    name = "sage"
    first_weight = "lin_l.weight"
    self_rows = True

    def layer_params(self, spec, d_in, d_out, last):
        return {"lin_l.weight": (d_out, d_in), "lin_l.bias": (d_out,), "lin_r.weight": (d_out, d_in)}

    def aggregation(self, rowptr, col):
        return rowptr, col, mean_norm_csr(rowptr, col)

    def post(self, p: Params, x: Tensor, h_self: Tensor, transformed: bool, last: bool) -> Tensor:
        z = (x if transformed else x @ p["lin_l.weight"].t()) + p["lin_l.bias"]
        return z + h_self @ p["lin_r.weight"].t()

    def post_backward(self, p, x, h_self, transformed, last, g, need_x, need_self):
        grads = {"lin_l.bias": g.sum(0), "lin_r.weight": g.t() @ h_self}
        d_self = g @ p["lin_r.weight"] if need_self else None
        if transformed:
            return (g if need_x else None), d_self, grads
        grads["lin_l.weight"] = g.t() @ x
        return (g @ p["lin_l.weight"] if need_x else None), d_self, grads

    def post_flops(self, d_in, d_out, transformed, first):
        # the root weight: h W_r^T forward; dW_r and (but in layer 0) dh backward
        return 2.0 * d_in * d_out, 2.0 * d_in * d_out * (1 + (not first))

    def pyg_conv(self, spec, d_in, d_out, last):
        from torch_geometric.nn import SAGEConv

        return SAGEConv(d_in, d_out, aggr="mean", root_weight=True)

    def reference_layer(self, adj, h, p, last):
        mean = adj / adj.sum(dim=1, keepdim=True).clamp(min=1)
        return mean @ h @ p["lin_l.weight"].T + p["lin_l.bias"] + h @ p["lin_r.weight"].T


MODEL = SAGE()
