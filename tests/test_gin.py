"""GIN, added as one module (``flexgnn_core/models/gin.py``): its own semantics checked here, and every generic
test (the PyG reference, the FlexGNN exactness grid over every solver, the links, DDP, DGL, the planner) picks it
up from the registry.

Tolerances as everywhere: 1e-5 relative on losses (fp32, different summation orders), 1e-6 absolute on values.
"""

from __future__ import annotations

import dataclasses

import torch

from baselines import pyg_fullgraph, reference
from flexgnn_core import models, system
from flexgnn_core.engine import prepare
from flexgnn_core.models import init_params, param_shapes
from flexgnn_core.data.synthetic import make_synthetic
from flexgnn_core.plan import layer_orders
from flexgnn_core.spec import Graph, ModelSpec, TrainSpec
from graphs import tricky_graph

MODEL = ModelSpec(kind="gin", num_layers=2, hidden=8)


def test_gin_is_registered_with_pygs_parameter_names():
    assert "gin" in models.names() and models.get("gin").affine_post is False
    assert param_shapes(MODEL, 7, 4) == {"convs.0.nn.0.weight": (8, 7), "convs.0.nn.0.bias": (8,),
                                         "convs.0.nn.2.weight": (8, 8), "convs.0.nn.2.bias": (8,),
                                         "convs.1.nn.0.weight": (4, 8), "convs.1.nn.0.bias": (4,),
                                         "convs.1.nn.2.weight": (4, 4), "convs.1.nn.2.bias": (4,)}
    net = pyg_fullgraph.PygGNN(MODEL, 7, 4)  # PyG's GINConv: eps is a constant, not in the state_dict
    net.load_state_dict(init_params(MODEL, 7, 4, seed=0), strict=True)


def test_gin_layer_by_hand():
    """Edge 0 -> 1, vertex 2 isolated, x = [1, 2, 3]: the sum with itself is [1, 3, 3]; identity-like MLP."""
    x = torch.tensor([[1.0], [2.0], [3.0]])
    mask = torch.tensor([True, True, True])
    graph = Graph(name="hand", rowptr=torch.tensor([0, 0, 1, 1]), col=torch.tensor([0]), x=x,
                  y=torch.tensor([0, 1, 0]), train_mask=mask, val_mask=mask, test_mask=mask, num_classes=2)
    one, zero = torch.ones(1, 1), torch.zeros(1)
    p = {"nn.0.weight": 2 * one, "nn.0.bias": -torch.ones(1), "nn.2.weight": one, "nn.2.bias": zero}
    out = models.get("gin").reference_layer(reference.dense_adjacency(graph), x, p, last=True)
    torch.testing.assert_close(out.view(-1), torch.tensor([1.0, 5.0, 5.0]))  # relu(2 s - 1)


def test_gin_always_aggregates_first_even_when_transform_first_is_asked():
    problem = prepare(tricky_graph(), ModelSpec(kind="gin", num_layers=3, hidden=32), {}, 4,
                             order_rule="transform_first").problem
    assert layer_orders(problem) == ("aggregate_first",) * 3


def test_gin_learns_standardised_features_and_pyg_returns_a_sane_result():
    """On hub-free synthetic data with standardised features (what GIN without BatchNorm needs: its sums grow with
    the degree), PyG's GIN lowers the loss every epoch and beats chance (4 classes: 0.25)."""
    graph = make_synthetic(num_nodes=300, avg_degree=5, num_features=8, num_classes=4, seed=0)
    x = (graph.x - graph.x.mean(0)) / graph.x.std(0) / 5
    graph = dataclasses.replace(graph, x=x.contiguous())
    model = ModelSpec(kind="gin", hidden=16, lr=0.02)
    params = init_params(model, graph.num_features, graph.num_classes, seed=0)
    spec = TrainSpec(epochs=30, warmup_epochs=2, progress=False, device="cpu")
    result = pyg_fullgraph.train(graph, model, params, spec, {})
    losses = result.epoch_losses
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.5 * losses[0]
    assert result.accuracy["train"] > 0.4 and result.extra["path"] == "csr"


def test_gin_trains_in_chunks_off_the_device_exactly_like_pyg(tmp_path):
    graph = tricky_graph()
    model = ModelSpec(kind="gin", num_layers=3, hidden=16, lr=0.05)
    params = init_params(model, graph.num_features, graph.num_classes, seed=1)
    spec = TrainSpec(epochs=5, warmup_epochs=0, progress=False, device="cpu")
    expected = pyg_fullgraph.train(graph, model, params, spec, {})
    result = system.train(graph, model, params, spec, {"policy": "all_disk", "num_chunks": 7, "print_plan": False,
                                                       "disk_dir": str(tmp_path)})
    torch.testing.assert_close(torch.tensor(result.epoch_losses), torch.tensor(expected.epoch_losses), rtol=1e-5,
                               atol=0)
    assert result.io_bytes["disk_read"] > 0 and expected.epoch_losses[-1] < expected.epoch_losses[0]
