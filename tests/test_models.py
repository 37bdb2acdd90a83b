"""The shared starting point: seeded initial parameters, their names and shapes, and that PyG loads them."""

from __future__ import annotations

import pytest
import torch

from baselines.pyg_fullgraph import PygGNN
from flexgnn_core.models import init_params, param_shapes
from flexgnn_core.spec import ModelSpec

MODELS = [ModelSpec(kind="gcn", num_layers=2, hidden=16), ModelSpec(kind="sage", num_layers=3, hidden=16),
          ModelSpec(kind="gat", num_layers=2, hidden=16, heads=4), ModelSpec(kind="gat", num_layers=3, hidden=12,
                                                                              heads=3)]
IN_DIM, NUM_CLASSES = 7, 5


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.kind}{m.num_layers}")
def test_same_seed_is_bit_identical_and_seeds_differ(model):
    first = init_params(model, IN_DIM, NUM_CLASSES, seed=3)
    again = init_params(model, IN_DIM, NUM_CLASSES, seed=3)
    other = init_params(model, IN_DIM, NUM_CLASSES, seed=4)
    assert list(first) == list(again) == list(other)
    for name in first:
        assert torch.equal(first[name], again[name]), name
    weights = [name for name in first if not name.endswith("bias")]
    assert weights and all(not torch.equal(first[name], other[name]) for name in weights)
    for name in first:  # biases start at zero, weights are Xavier-uniform within their bound
        value = first[name]
        assert value.dtype == torch.float32 and value.device.type == "cpu"
        if name.endswith("bias"):
            assert not value.any(), name
        else:
            bound = (6.0 / (value.shape[-1] + value.shape[-2])) ** 0.5
            assert value.abs().max() <= bound and value.std() > bound / 4, name


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.kind}{m.num_layers}")
def test_shapes_follow_the_architecture(model):
    params = init_params(model, IN_DIM, NUM_CLASSES, seed=0)
    shapes = param_shapes(model, IN_DIM, NUM_CLASSES)
    assert {name: tuple(value.shape) for name, value in params.items()} == shapes
    first, last = "convs.0.", f"convs.{model.num_layers - 1}."
    weight = "lin_l.weight" if model.kind == "sage" else "lin.weight"
    assert shapes[first + weight][1] == IN_DIM
    if model.kind == "gat":  # hidden: heads x hidden//heads concatenated; last: heads x classes, averaged
        assert shapes[first + "att_src"] == (1, model.heads, model.hidden // model.heads)
        assert shapes[last + weight] == (model.heads * NUM_CLASSES, model.hidden)
        assert shapes[last + "bias"] == (NUM_CLASSES,)
    else:
        assert shapes[last + weight] == (NUM_CLASSES, model.hidden)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.kind}{m.num_layers}")
def test_pyg_model_loads_shared_params_strictly(model):
    params = init_params(model, IN_DIM, NUM_CLASSES, seed=1)
    net = PygGNN(model, IN_DIM, NUM_CLASSES)
    state = net.state_dict()
    assert set(state) == set(params)
    assert {name: tuple(value.shape) for name, value in state.items()} == param_shapes(model, IN_DIM, NUM_CLASSES)
    net.load_state_dict(params, strict=True)
    for name, value in net.state_dict().items():
        assert torch.equal(value, params[name]), name


def test_pyg_model_rejects_params_of_another_architecture():
    params = init_params(ModelSpec(kind="gcn", hidden=16), IN_DIM, NUM_CLASSES, seed=0)
    with pytest.raises(RuntimeError, match="state_dict"):
        PygGNN(ModelSpec(kind="sage", hidden=16), IN_DIM, NUM_CLASSES).load_state_dict(params, strict=True)
