"""The one starting point every system shares: parameter names, shapes and seeded initial values.

Names follow the PyG baseline's ``state_dict`` (``convs.{i}.<param>``), so the PyG model loads them directly and
every other system maps them onto its own layout. Weights are Xavier-uniform (as FlexGNN's release), biases zero;
all values come from one ``torch.Generator`` seeded with ``seed``, so the same seed gives bit-identical weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flexgnn_core.spec import ModelSpec


def param_shapes(model: ModelSpec, in_dim: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` in a fixed order; Linear weights are ``[out, in]`` like ``torch.nn.Linear``."""
    dims = model.dims(in_dim, num_classes)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(model.num_layers):
        fan_in, fan_out = dims[i], dims[i + 1]
        p = f"convs.{i}."
        if model.kind == "gcn":
            shapes[p + "lin.weight"] = (fan_out, fan_in)
            shapes[p + "bias"] = (fan_out,)
        elif model.kind == "sage":
            shapes[p + "lin_l.weight"] = (fan_out, fan_in)
            shapes[p + "lin_l.bias"] = (fan_out,)
            shapes[p + "lin_r.weight"] = (fan_out, fan_in)
        else:  # gat
            last = i == model.num_layers - 1
            channels = fan_out if last else fan_out // model.heads
            shapes[p + "lin.weight"] = (model.heads * channels, fan_in)
            shapes[p + "att_src"] = (1, model.heads, channels)
            shapes[p + "att_dst"] = (1, model.heads, channels)
            shapes[p + "bias"] = (fan_out,)
    return shapes


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


def masked_accuracy(logits: Tensor, y: Tensor, masks: dict[str, Tensor]) -> dict[str, float]:
    """Accuracy per split from full-graph logits ``[N, C]`` (any device)."""
    pred = logits.argmax(dim=-1).cpu()
    y = y.cpu()
    return {split: float((pred[mask.cpu()] == y[mask.cpu()]).float().mean()) for split, mask in masks.items()}
