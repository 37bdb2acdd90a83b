"""GAT (Velickovic et al., ICLR 2018), PyG ``GATConv`` semantics.

One self-loop per vertex, LeakyReLU slope 0.2, ``heads`` heads: ``alpha_vu = softmax_u LeakyReLU(a_src . W h_u +
a_dst . W h_v)``, ``out_v = sum_u alpha_vu W h_u`` per head. Hidden layers have ``hidden // heads`` channels per
head, concatenated; the last layer has ``num_classes`` channels per head, averaged over heads; bias after the
combination. Parameters per layer: ``lin.weight`` [heads x C, in], ``att_src`` / ``att_dst`` [1, heads, C],
``bias`` [out]. ELU between layers. The attention kernels live in ``flexgnn_core.kernels``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from flexgnn_core import dropout
from flexgnn_core.models.base import GNNModel, Params
from flexgnn_core.norm import add_self_loops_csr


class GAT(GNNModel):
    name = "gat"
    family = "attention"
    activation = "elu"
    pyg_path = "edge_index"  # GATConv needs per-edge attention anyway; a sparse adj_t is converted back each layer

    def validate(self, spec):
        if spec.hidden % spec.heads:
            raise ValueError(f"model.hidden={spec.hidden} must be divisible by model.heads={spec.heads} for GAT "
                             "(hidden layers concatenate heads of hidden // heads channels)")

    def channels(self, heads: int, d_out: int, last: bool) -> int:
        return d_out if last else d_out // heads

    def layer_params(self, spec, d_in, d_out, last):
        c = self.channels(spec.heads, d_out, last)
        return {"lin.weight": (spec.heads * c, d_in), "att_src": (1, spec.heads, c), "att_dst": (1, spec.heads, c),
                "bias": (d_out,)}

    def transform_width(self, heads, d_out, last):
        return heads * self.channels(heads, d_out, last)

    def aggregation(self, rowptr, col):
        rowptr, col = add_self_loops_csr(rowptr, col)
        return rowptr, col, None

    def post(self, p: Params, x: Tensor, h_self, transformed: bool, last: bool) -> Tensor:
        return (x.mean(dim=1) if last else x.flatten(1)) + p["bias"]  # x: [rows, heads, C] attention output

    def post_backward(self, p, x, h_self, transformed, last, g, need_x, need_self):
        heads = p["att_src"].shape[1]
        d_out = g.unsqueeze(1).expand(-1, heads, -1) / heads if last else g.view(g.shape[0], heads, -1)
        return d_out, None, {"bias": g.sum(0)}

    def pyg_conv(self, spec, d_in, d_out, last):
        return _dropping_gat_conv()(d_in, self.channels(spec.heads, d_out, last), heads=spec.heads, concat=not last,
                                    negative_slope=0.2, dropout=0.0, add_self_loops=True)

    def reference_layer(self, adj, h, p, last):
        n, heads, channels = adj.shape[0], p["att_src"].shape[1], p["att_src"].shape[2]
        z = (h @ p["lin.weight"].T).view(n, heads, channels)
        score_src = (z * p["att_src"]).sum(dim=-1)  # [N, heads]
        score_dst = (z * p["att_dst"]).sum(dim=-1)
        scores = F.leaky_relu(score_dst[:, None, :] + score_src[None, :, :], 0.2)  # [dst, src, heads]
        neighbours = (adj + torch.eye(n)) > 0
        alpha = torch.softmax(scores.masked_fill(~neighbours[:, :, None], float("-inf")), dim=1)
        out = torch.einsum("vuh,uhc->vhc", alpha, z)
        return (out.mean(dim=1) if last else out.reshape(n, heads * channels)) + p["bias"]


@functools.lru_cache(maxsize=1)
def _dropping_gat_conv() -> type:
    """PyG's ``GATConv`` whose attention dropout is ``flexgnn_core.dropout``'s edge mask (keyed by the global source
    and destination of each edge, self-loops included) instead of ``F.dropout``: the same place as GATConv's own
    dropout (alpha after the softmax, before weighting the messages), the same scaling. Set ``attention_drop`` to
    ``(p, seed, epoch, layer)`` before a training call (None: no dropout); GATConv's own ``dropout`` stays 0."""
    from torch_geometric.nn import GATConv

    class DroppingGATConv(GATConv):
        attention_drop: tuple[float, int, int, int] | None = None

        def message(self, x_j: Tensor, alpha: Tensor, edge_index_i: Tensor, edge_index_j: Tensor) -> Tensor:
            if self.training and self.attention_drop is not None:
                p, seed, epoch, layer = self.attention_drop
                keep = dropout.edge_keep(seed, epoch, layer, edge_index_j, edge_index_i, alpha.shape[1], p)
                alpha = dropout.apply(alpha, keep, p)
            return alpha.unsqueeze(-1) * x_j

    return DroppingGATConv


MODEL = GAT()
