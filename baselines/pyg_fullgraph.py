"""PyG full-graph baseline: the whole graph on one device, PyG's GCNConv / SAGEConv / GATConv, best practice.

The baseline gets PyG's memory-efficient sparse path, as OGB's full-batch examples do. GCN and SAGE take a
``torch.sparse_csr_tensor`` ``adj_t`` (rows = destinations: our CSR as is) and aggregate with one
``torch.sparse.mm`` per layer instead of materialising an ``[E, F]`` message tensor; GCN's normalisation is PyG's
own ``gcn_norm`` (one self-loop per vertex, symmetric degree norm), computed once in preprocessing and shared by
every layer. GAT computes per-edge attention by definition; GATConv adds its self-loops in every layer and is
fastest on a plain ``edge_index``. The adjacency is built once, timed as ``timings_s["preprocess"]``.

``options``: ``path`` = ``auto`` (default: the fastest per model, its ``GNNModel.pyg_path``), or ``csr`` / ``edgeindex``
(PyG's ``EdgeIndex``, sorted by destination) / ``edge_index`` for every model. All paths are exact and agree
(tests/test_pyg_baseline.py); ``python bench/pyg_paths.py`` measures them side by side.

Known cost: torch.sparse CSR does not cache its transpose, so each backward ``torch.sparse.mm`` sorts the edges
again (about a third of a GCN epoch on CPU); torch-sparse's ``SparseTensor`` would cache it but needs a source
build, which the project does not require.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric import EdgeIndex

from flexgnn_core import dropout, models
from flexgnn_core.evaluate import Evaluation, predictions
from flexgnn_core.kernels import activate
from flexgnn_core.loop import synchronize, timed_training
from flexgnn_core.spec import Graph, ModelSpec, RunResult, TrainSpec, resolve_device

SYSTEM = "pyg"
PATHS = ("csr", "edgeindex", "edge_index")
# The fastest exact path per model is the model's own ``pyg_path``, measured with bench/pyg_paths.py
# (results/LOG.md, 2026-11-28): a CSR adj_t makes GCN and SAGE one torch.sparse.mm per layer; GATConv needs
# per-edge attention anyway and converts a sparse adj_t back to edge indices in every layer, so a plain
# edge_index is its fastest input.
DEFAULT_OPTIONS: dict[str, Any] = {"path": "auto"}


class PygGNN(torch.nn.Module):
    """Any registered model built from PyG's own layers (``GNNModel.pyg_conv``: GCNConv, SAGEConv, GATConv, ...)
    with the exact semantics of its ``flexgnn_core/models/<kind>.py``.

    Its ``state_dict`` has exactly the names and shapes of ``flexgnn_core.models.param_shapes``, so the shared
    initial parameters load with ``strict=True``. The adjacency is normalised once in preprocessing where the
    model asks for it (GCN: PyG's ``gcn_norm``; its layers then run with ``normalize=False``).

    Dropout (training mode only) is ``flexgnn_core.dropout``'s: the input and hidden masks keyed by
    ``(seed, epoch, layer, vertex, column)`` in place of ``F.dropout``, and for attention models the attention mask
    keyed by edge inside the conv (``attention_drop``), so every system drops the same entries.

    Args:
        model: architecture (kind, layers, hidden, heads, dropout rates).
        in_dim: input feature width ``F``.
        num_classes: output width ``C``.
        seed: the dropout masks' seed (``TrainSpec.seed``).

    Shapes: ``x`` [N, F], ``adj`` a sparse ``adj_t`` [N, N] or ``edge_index`` [2, E], optional ``edge_weight``
    [E]; ``epoch`` keys the masks; output logits [N, C].
    """

    def __init__(self, model: ModelSpec, in_dim: int, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        self.kind = models.check(model)
        self.rates = [model.input_rate] + [model.dropout] * (model.num_layers - 1)  # of each layer's input
        self.attention_rate = model.attention_rate if self.kind.family == "attention" else 0.0
        self.seed = seed
        dims = model.dims(in_dim, num_classes)
        self.convs = torch.nn.ModuleList(
            self.kind.pyg_conv(model, dims[i], dims[i + 1], i == model.num_layers - 1)
            for i in range(model.num_layers))

    def forward(self, x: Tensor, adj: Tensor, edge_weight: Tensor | None = None, epoch: int = 0) -> Tensor:
        ids = torch.arange(x.shape[0], device=x.device) if self.training and any(self.rates) else None
        for i, conv in enumerate(self.convs):
            if ids is not None:
                x = dropout.nodes(x, ids, self.rates[i], self.seed, epoch, i)
            if self.attention_rate:
                conv.attention_drop = (self.attention_rate, self.seed, epoch, i)
            x = self.kind.pyg_call(conv, x, adj, edge_weight)
            if i < len(self.convs) - 1:
                x = activate(self.kind.activation, x)
        return x


def parse_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``options`` over the defaults; unknown keys or values raise ``ValueError`` naming the valid ones."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"system 'pyg': unknown option(s) {unknown}; valid options: "
                         f"{', '.join(f'{k} (default {v!r})' for k, v in DEFAULT_OPTIONS.items())}")
    merged = {**DEFAULT_OPTIONS, **options}
    if merged["path"] not in ("auto",) + PATHS:
        raise ValueError(f"system 'pyg': option path={merged['path']!r} is unknown; valid: auto (the fastest per "
                         f"model: its pyg_path), {', '.join(PATHS)}")
    return merged


def csr_adjacency(graph: Graph, device: torch.device) -> Tensor:
    """Our CSR by destination is PyG's ``adj_t`` (row = destination, column = source) with unit values."""
    rowptr, col = graph.rowptr.to(device), graph.col.to(device)
    values = torch.ones(graph.num_edges, dtype=torch.float32, device=device)
    return torch.sparse_csr_tensor(rowptr, col, values, (graph.num_nodes, graph.num_nodes),
                                   check_invariants=False)  # the Graph container validated them


def build_adjacency(graph: Graph, kind: str, path: str, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The adjacency the layers consume, built once: ``(adj, edge_weight)``, normalised where the model says."""
    model = models.get(kind)
    if path == "csr":
        with warnings.catch_warnings():  # torch's one-off notes that sparse CSR is beta and unchecked
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
            return model.pyg_normalize(csr_adjacency(graph, device), graph.num_nodes)
    edge_index = graph.edge_index().to(device)  # in CSR order: sorted by destination
    edge_index, edge_weight = model.pyg_normalize(edge_index, graph.num_nodes)
    if path == "edge_index":
        return edge_index, edge_weight
    size = (graph.num_nodes, graph.num_nodes)
    if edge_weight is None:
        return EdgeIndex(edge_index, sparse_size=size, sort_order="col"), None
    edge_index, perm = EdgeIndex(edge_index, sparse_size=size).sort_by("col")  # normalising appended self-loops
    return edge_index, edge_weight[perm]


def train(graph: Graph, model: ModelSpec, params: Mapping[str, Tensor], train: TrainSpec,
          options: Mapping[str, Any]) -> RunResult:
    """Full-graph training of ``model`` on ``graph`` with PyG (the ``TrainFn`` of ``flexgnn_core.spec``)."""
    options = parse_options(options)
    path = models.check(model).pyg_path if options["path"] == "auto" else options["path"]
    device = resolve_device(train.device)

    start = time.perf_counter()
    adj, edge_weight = build_adjacency(graph, model.kind, path, device)
    x = graph.x.to(device)  # PyG never writes to x, so a read-only memory map on CPU is used as is
    y, train_idx = graph.y.to(device), graph.train_mask.nonzero().view(-1).to(device)
    synchronize(device)
    preprocess_s = time.perf_counter() - start

    net = PygGNN(model, graph.num_features, graph.num_classes, seed=train.seed).to(device)
    net.load_state_dict(dict(params), strict=True)  # copies: the caller's tensors stay untouched
    optimizer = torch.optim.Adam(net.parameters(), lr=model.lr, weight_decay=model.weight_decay)

    def step(epoch: int) -> float:
        net.train()
        optimizer.zero_grad(set_to_none=True)
        logits = net(x, adj, edge_weight, epoch=epoch)
        loss = F.cross_entropy(logits[train_idx], y[train_idx])
        loss.backward()
        optimizer.step()
        return loss.item()

    @torch.no_grad()
    def evaluate() -> Tensor:
        net.eval()
        return predictions(net(x, adj, edge_weight))

    return timed_training(
        system=SYSTEM, train=train, device=device, step=step, evaluate=evaluate, evaluation=Evaluation.of(graph),
        final_params=net.state_dict, timings_s={"preprocess": preprocess_s},
        extra={"path": path, "path_option": options["path"], "adjacency": adj_description(adj)},
    )


def adj_description(adj: Tensor) -> str:
    if adj.layout == torch.sparse_csr:
        return "torch.sparse_csr_tensor adj_t [N, N]"
    if isinstance(adj, EdgeIndex):
        return "torch_geometric.EdgeIndex [2, E] sorted by destination"
    return "edge_index [2, E] tensor"
