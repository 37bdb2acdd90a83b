"""The model registry and the one starting point every system shares: parameter names, shapes, seeded values.

Every module in this package that defines ``MODEL`` (a ``base.GNNModel``) is a model, registered under its
``name``: adding a model is adding its module (``gin.py`` is the worked example). ``get(kind)`` returns it,
``names()`` lists them.

Parameter names follow the PyG baseline's ``state_dict`` (``convs.{i}.<suffix>``), so the PyG model loads them
directly and every other system maps them onto its own layout. Weights are Xavier-uniform (as FlexGNN's release),
biases zero; all values come from one ``torch.Generator`` seeded with ``seed``, so the same seed gives
bit-identical weights.
"""

from __future__ import annotations

import functools
import importlib
import math
import pkgutil
from typing import Mapping

import torch
from torch import Tensor

from flexgnn_core.models.base import GNNModel
from flexgnn_core.spec import ModelSpec

__all__ = ["GNNModel", "get", "names", "check", "param_shapes", "layer_view", "init_params"]


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, GNNModel]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        model = getattr(importlib.import_module(f"{__name__}.{info.name}"), "MODEL", None)
        if isinstance(model, GNNModel):
            found[model.name] = model
    return found


def names() -> tuple[str, ...]:
    return tuple(sorted(_registry()))


def get(kind: str) -> GNNModel:
    """The model named ``kind``; an unknown name raises ``ValueError`` listing the registered ones."""
    models = _registry()
    if kind not in models:
        raise ValueError(f"model.kind '{kind}' is unknown; valid: {', '.join(sorted(models))}")
    return models[kind]


def check(spec: ModelSpec) -> GNNModel:
    """``spec`` validated against its model (known kind, model-specific constraints); returns the model."""
    model = get(spec.kind)
    if model.family != "attention" and spec.attention_dropout:
        raise ValueError(f"model.attention_dropout={spec.attention_dropout} applies to attention models only (model "
                         f"'{spec.kind}' has no attention); leave it null or 0")
    model.validate(spec)
    return model


def param_shapes(model: ModelSpec, in_dim: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` in a fixed order; Linear weights are ``[out, in]`` like ``torch.nn.Linear``."""
    kind = check(model)
    dims = model.dims(in_dim, num_classes)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(model.num_layers):
        last = i == model.num_layers - 1
        for suffix, shape in kind.layer_params(model, dims[i], dims[i + 1], last).items():
            shapes[f"convs.{i}.{suffix}"] = tuple(shape)
    return shapes


def layer_view(params: Mapping[str, Tensor], layer: int) -> dict[str, Tensor]:
    """Layer ``layer``'s parameters by suffix (``{"lin.weight": params["convs.0.lin.weight"], ...}``)."""
    prefix = f"convs.{layer}."
    return {name[len(prefix):]: value for name, value in params.items() if name.startswith(prefix)}


def _glorot(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    fan_in, fan_out = shape[-1], shape[-2]  # Linear [out, in]; attention [1, heads, channels] as PyG's glorot
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1) * bound


def init_params(model: ModelSpec, in_dim: int, num_classes: int, seed: int) -> dict[str, Tensor]:
    """Seeded initial parameters on CPU, fp32. Same arguments => bit-identical tensors, on any machine."""
    generator = torch.Generator().manual_seed(int(seed))
    params: dict[str, Tensor] = {}
    for name, shape in param_shapes(model, in_dim, num_classes).items():
        if name.endswith("bias"):
            params[name] = torch.zeros(shape, dtype=torch.float32)
        else:
            params[name] = _glorot(shape, generator)
    return params
