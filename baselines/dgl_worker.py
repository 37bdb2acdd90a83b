"""DGL full-graph training worker: the half of the DGL baseline that runs inside the pinned DGL environment.

    <dgl-env>/bin/python -m baselines.dgl_worker JOB_DIR      (repository root on PYTHONPATH)

``baselines/dgl_fullgraph.py`` (main environment) writes ``JOB_DIR/job.json`` (model, train, graph directory) and
``JOB_DIR/params.npz`` (the shared initial parameters); this worker trains DGL's own layers on the whole graph on
one device in the shared timed loop and writes ``result.json`` (the run record), ``final_params.npz`` and the
predictions of the last and the best-validation evaluation (``pred_final.npy``, ``pred_best_val.npy``, which the main
environment scores again with OGB's ``Evaluator`` on OGB graphs: this environment has no ``ogb``). The device
is ``baselines.dgl_device.choose_device``'s: on a CUDA machine with PyPI's CPU-only DGL, ``train.device=auto`` trains
on the CPU with ``extra.device_fallback`` saying why.

Layers and how the shared PyG-named parameters map onto them (exact: every DGL parameter is one shared tensor):

- GCN: ``GraphConv`` on the graph with one self-loop per vertex; ``weight [in, out]`` = ``lin.weight`` transposed.
  DGL's ``norm='both'`` scales a source by its *out*-degree, PyG by its *in*-degree; they agree when every vertex
  has equal in- and out-degree (undirected graphs), and then the classic ``norm='both'`` path runs. Otherwise the
  PyG weights ``deg_in(u)^-1/2 deg_in(v)^-1/2`` are passed as ``edge_weight`` with ``norm='none'``.
- SAGE: ``SAGEConv('mean')``: ``fc_neigh.weight`` = ``lin_l.weight``, ``fc_self.weight`` = ``lin_r.weight`` and
  ``fc_self.bias`` = ``lin_l.bias`` (DGL 2.1 keeps the bias on the root linear; the sum is the same).
- GIN: ``GINConv(Sequential(Linear, ReLU, Linear), "sum", init_eps=0, learn_eps=False)`` (it adds the vertex
  itself): ``apply_func.0`` / ``apply_func.2`` = ``nn.0`` / ``nn.2``.
- GAT: ``GATConv`` with self-loops, slope 0.2: ``fc`` = ``lin``, ``attn_l`` = ``att_src``, ``attn_r`` = ``att_dst``.
  Hidden layers flatten the heads (same head-major order as PyG) and use DGL's bias; the last layer averages the
  heads and adds one bias after the mean (DGL's per-head bias would split PyG's bias into ``heads`` copies whose
  Adam updates differ), so there that layer is built with ``bias=False`` plus an ``out_bias`` parameter.

Dropout: ``F.dropout`` is replaced by ``flexgnn_core.dropout``'s masks (keyed by seed, epoch, layer and global ids),
the input and hidden ones between the layers and GAT's attention one in place of ``GATConv.attn_drop`` (on the
softmax's output, per edge of ``graph.edges()`` and head), so DGL drops what every other system drops. Weight decay
is torch's Adam's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import dgl
import numpy as np
import torch
import torch.nn.functional as F
from dgl.nn import GATConv, GINConv, GraphConv, SAGEConv
from torch import Tensor, nn

from baselines.dgl_device import choose_device
from flexgnn_core import dropout
from flexgnn_core.data.storage import load_graph
from flexgnn_core.evaluate import Evaluation, predictions
from flexgnn_core.loop import synchronize, timed_training
from flexgnn_core.spec import Graph, ModelSpec, TrainSpec


def to_dgl_graph(graph: Graph) -> dgl.DGLGraph:
    """Our CSR by destination as a DGLGraph with edges ``col[e] -> dst`` (no self-loops added here)."""
    dst = torch.repeat_interleave(torch.arange(graph.num_nodes), graph.in_degree())
    return dgl.graph((graph.col.clone(), dst), num_nodes=graph.num_nodes)


class EdgeDropout(nn.Module):
    """``GATConv.attn_drop`` replaced: ``flexgnn_core.dropout``'s attention mask for the edges ``graph.edges()``
    (global ids) on ``a`` [E, heads, 1]; ``key = (seed, epoch, layer, src, dst)`` is set before each training call
    (None: nothing dropped)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.key: tuple | None = None

    def forward(self, a: Tensor) -> Tensor:
        if not self.training or self.key is None or self.p == 0:
            return a
        seed, epoch, layer, src, dst = self.key
        keep = dropout.edge_keep(seed, epoch, layer, src, dst, a.shape[1], self.p)
        return dropout.apply(a, keep.unsqueeze(-1), self.p)


class DGLNet(nn.Module):
    """GCN / SAGE / GAT from DGL's layers with the exact semantics of ``flexgnn_core.spec``.

    Args:
        model: architecture (kind, layers, hidden, heads, dropout).
        in_dim: input feature width ``F``.
        num_classes: output width ``C``.
        gcn_norm: GraphConv's ``norm``: ``"both"`` (DGL's own, exact when in-degree equals out-degree everywhere)
            or ``"none"`` with PyG's weights passed as ``edge_weight`` (see ``prepare_graph``).
        seed: the dropout masks' seed (``TrainSpec.seed``).

    Shapes: ``graph`` with N vertices (self-loops added for GCN and GAT), ``x`` [N, F], optional ``edge_weight``
    [E]; ``epoch`` keys the dropout masks; output logits [N, C]. ``param_map`` ties every parameter to its shared
    (PyG) name.
    """

    def __init__(self, model: ModelSpec, in_dim: int, num_classes: int, gcn_norm: str = "both", seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.seed = seed
        self.rates = [model.input_rate] + [model.dropout] * (model.num_layers - 1)  # of each layer's input
        self._edges: tuple[Tensor, Tensor] | None = None
        dims = model.dims(in_dim, num_classes)
        self.convs = nn.ModuleList()
        for i in range(model.num_layers):
            last = i == model.num_layers - 1
            if model.kind == "gcn":
                conv = GraphConv(dims[i], dims[i + 1], norm=gcn_norm, weight=True, bias=True)
            elif model.kind == "sage":
                conv = SAGEConv(dims[i], dims[i + 1], "mean", bias=True)
            elif model.kind == "gin":  # sum with the vertex itself (eps 0, fixed), then Linear -> ReLU -> Linear
                mlp = nn.Sequential(nn.Linear(dims[i], dims[i + 1]), nn.ReLU(), nn.Linear(dims[i + 1], dims[i + 1]))
                conv = GINConv(mlp, "sum", init_eps=0.0, learn_eps=False)
            else:
                channels = dims[i + 1] if last else dims[i + 1] // model.heads
                conv = GATConv(dims[i], channels, model.heads, negative_slope=0.2, bias=not last)
                conv.attn_drop = EdgeDropout(model.attention_rate)
            self.convs.append(conv)
        self.out_bias = nn.Parameter(torch.zeros(num_classes)) if model.kind == "gat" else None

    def param_map(self) -> dict[str, tuple[nn.Parameter, bool]]:
        """``{shared name: (DGL parameter, stored transposed)}`` covering every trainable parameter once."""
        mapping: dict[str, tuple[nn.Parameter, bool]] = {}
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            p = f"convs.{i}."
            if self.model.kind == "gcn":
                mapping[p + "lin.weight"] = (conv.weight, True)
                mapping[p + "bias"] = (conv.bias, False)
            elif self.model.kind == "gin":
                for index in (0, 2):
                    mapping[p + f"nn.{index}.weight"] = (conv.apply_func[index].weight, False)
                    mapping[p + f"nn.{index}.bias"] = (conv.apply_func[index].bias, False)
            elif self.model.kind == "sage":
                mapping[p + "lin_l.weight"] = (conv.fc_neigh.weight, False)
                mapping[p + "lin_l.bias"] = (conv.fc_self.bias, False)
                mapping[p + "lin_r.weight"] = (conv.fc_self.weight, False)
            else:
                mapping[p + "lin.weight"] = (conv.fc.weight, False)
                mapping[p + "att_src"] = (conv.attn_l, False)
                mapping[p + "att_dst"] = (conv.attn_r, False)
                mapping[p + "bias"] = (self.out_bias if i == last else conv.bias, False)
        return mapping

    def load_shared(self, params: dict[str, Tensor]) -> None:
        mapping = self.param_map()
        if set(mapping) != set(params):
            raise ValueError(f"params: names {sorted(params)} do not match the DGL model's {sorted(mapping)}; "
                             "build them with flexgnn_core.models.init_params for the same ModelSpec")
        covered = {id(param) for param, _ in mapping.values()}
        unmapped = [name for name, param in self.named_parameters() if id(param) not in covered]
        if unmapped:
            raise RuntimeError(f"DGL parameters {unmapped} have no shared counterpart; the mapping is incomplete")
        with torch.no_grad():
            for name, (param, transposed) in mapping.items():
                value = params[name].t() if transposed else params[name]
                if value.shape != param.shape:
                    raise ValueError(f"params['{name}']: shape {tuple(params[name].shape)} does not fit DGL's "
                                     f"{tuple(param.shape)} (transposed={transposed})")
                param.copy_(value)

    def shared_params(self) -> dict[str, Tensor]:
        return {name: (param.t() if transposed else param) for name, (param, transposed) in self.param_map().items()}

    def forward(self, graph: dgl.DGLGraph, x: Tensor, edge_weight: Tensor | None = None, epoch: int = 0) -> Tensor:
        h = x
        last = len(self.convs) - 1
        ids = torch.arange(graph.num_nodes(), device=x.device)
        for i, conv in enumerate(self.convs):
            if self.training:
                h = dropout.nodes(h, ids, self.rates[i], self.seed, epoch, i)
            if self.model.kind == "gcn":
                h = conv(graph, h, edge_weight=edge_weight)
            elif self.model.kind in ("sage", "gin"):
                h = conv(graph, h)
            else:
                if self._edges is None:
                    self._edges = graph.edges()
                conv.attn_drop.key = (self.seed, epoch, i, *self._edges)
                h = conv(graph, h)  # [N, heads, channels]
                h = h.mean(dim=1) + self.out_bias if i == last else h.flatten(1)
            if i < last:
                h = F.elu(h) if self.model.kind == "gat" else F.relu(h)
        return h


def prepare_graph(graph: Graph, kind: str, device: torch.device) -> tuple[dgl.DGLGraph, Tensor | None, str]:
    """The DGLGraph the model runs on, the GCN edge weights (or None) and which GCN normalisation path runs."""
    g = to_dgl_graph(graph)
    if kind in ("gcn", "gat"):
        g = dgl.add_self_loop(g)  # the graph is cleaned (no self-loops), so this adds exactly one per vertex
    g = g.to(device)  # a CUDA device only where dgl_has_cuda() said this build can use it
    if kind != "gcn":
        return g, None, "none"
    in_deg, out_deg = g.in_degrees(), g.out_degrees()
    if bool(torch.equal(in_deg, out_deg)):
        return g, None, "both"
    deg_inv_sqrt = in_deg.to(torch.float32).pow(-0.5)
    src, dst = g.edges()
    return g, deg_inv_sqrt[src] * deg_inv_sqrt[dst], "none"


def dgl_has_cuda() -> bool:
    """Whether this DGL build can use a CUDA GPU here: False for PyPI's CPU-only build (its GPU device API is
    absent, which DGL reports as a device that does not exist) and on machines without a GPU."""
    return bool(torch.cuda.is_available() and dgl.ndarray.gpu(0).exist)


def run_job(job_dir: Path) -> None:
    job = json.loads((job_dir / "job.json").read_text())
    model = ModelSpec(**job["model"])
    train = TrainSpec(**{**job["train"], "progress": False})  # the worker's output is captured, not a terminal
    choice = choose_device(train.device, cuda_available=torch.cuda.is_available(), dgl_has_cuda=dgl_has_cuda())
    device = torch.device(choice.device)
    if choice.fallback:
        print(f"dgl worker: {choice.fallback}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    graph = load_graph(job["graph_dir"], allow_empty=True)  # the harness checked the graph it wrote here
    load_s = time.perf_counter() - start
    with np.load(job_dir / "params.npz") as stored:
        params = {name: torch.from_numpy(stored[name].copy()) for name in stored.files}

    # the memory window is the training epochs (loop.timed_training), the same for every system
    start = time.perf_counter()
    g, edge_weight, gcn_norm = prepare_graph(graph, model.kind, device)
    net = DGLNet(model, graph.num_features, graph.num_classes, gcn_norm=gcn_norm, seed=train.seed).to(device)
    net.load_shared(params)
    x, y = graph.x.to(device), graph.y.to(device)
    train_idx = graph.train_mask.nonzero().view(-1).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=model.lr, weight_decay=model.weight_decay)
    synchronize(device)
    preprocess_s = time.perf_counter() - start

    def step(epoch: int) -> float:
        net.train()
        optimizer.zero_grad(set_to_none=True)
        logits = net(g, x, edge_weight, epoch=epoch)
        loss = F.cross_entropy(logits[train_idx], y[train_idx])
        loss.backward()
        optimizer.step()
        return loss.item()

    def evaluate() -> Tensor:
        net.eval()
        with torch.no_grad():
            return predictions(net(g, x, edge_weight))

    result = timed_training(system="dgl", train=train, device=device, step=step, evaluate=evaluate,
                            evaluation=Evaluation.of(graph, allow_fallback=True), final_params=net.shared_params,
                            timings_s={"worker_load": load_s, "preprocess": preprocess_s},
                            extra={"dgl_version": dgl.__version__, "torch_version": torch.__version__,
                                   "gcn_norm": gcn_norm if model.kind == "gcn" else None,
                                   "python": sys.executable, "device_requested": train.device,
                                   "device_fallback": choice.fallback})
    np.savez(job_dir / "final_params.npz", **{name: value.numpy() for name, value in result.final_params.items()})
    if result.best_params is not None:
        np.savez(job_dir / "best_params.npz", **{name: value.numpy() for name, value in result.best_params.items()})
    for which, pred in (result.predictions or {}).items():
        np.save(job_dir / f"pred_{which}.npy", pred.numpy())
    (job_dir / "result.json").write_text(json.dumps(result.to_json()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m baselines.dgl_worker JOB_DIR")
    run_job(Path(sys.argv[1]))
