"""Dropout in the chunked engine: the masks of ``flexgnn_core.dropout`` made for exactly the rows and edges a chunk
step touches, in forward and again in backward, never stored.

The engine works in reordered vertex ids; masks are keyed by the user's ids (``Reordering.perm[new] = old``), so a
chunk at any P, a DDP rank and whole-graph PyG draw the same entries. Where each mask applies:

- input dropout: on every read of ``h0`` (the features; the buffer itself is never changed): the halo rows a
  chunk aggregates or transforms, its own rows (SAGE's root weight, the transform pass, ``dW`` in backward);
- hidden dropout: on the rows written to ``h{l}`` (``l >= 1``, so every later read sees the dropped values) and on
  the gradient read back through them in backward;
- attention dropout: on ``alpha`` of a chunk's edges after the softmax (``att{l}`` keeps the undropped softmax).

``epoch`` is None outside training (evaluation): nothing is dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flexgnn_core import dropout
from flexgnn_core.engine.chunks import Chunk
from flexgnn_core.spec import ModelSpec


class Dropping:
    """Masks of one engine run. ``epoch`` keys them (set per training epoch; None = evaluation, no dropout)."""

    def __init__(self, spec: ModelSpec, perm: Tensor, seed: int, attention: bool, device: torch.device) -> None:
        self.rates = [spec.input_rate] + [spec.dropout] * (spec.num_layers - 1)  # of each layer's input
        self.attention_rate = spec.attention_rate if attention else 0.0
        self.seed = seed
        self.perm = perm.to(device)  # new id -> the user's id
        self.epoch: int | None = None

    def on_input(self, layer: int) -> bool:
        """Whether layer ``layer``'s input is dropped now."""
        return self.epoch is not None and self.rates[layer] > 0

    def on_attention(self) -> bool:
        return self.epoch is not None and self.attention_rate > 0

    def rows(self, layer: int, ids: Tensor | slice, h: Tensor) -> Tensor:
        """``h`` (rows of layer ``layer``'s input with new ids ``ids``: a tensor or a slice) with its mask applied
        (a new tensor; ``h`` is left as is)."""
        if not self.on_input(layer):
            return h
        old = self.perm[ids] if isinstance(ids, slice) else self.perm[ids.to(self.perm.device).long()]
        return dropout.nodes(h, old, self.rates[layer], self.seed, self.epoch, layer)

    def gradient(self, layer: int, ids: slice, g: Tensor) -> Tensor:
        """The gradient through layer ``layer``'s input dropout: the same mask and scale on ``g``."""
        return self.rows(layer, ids, g)

    def undropped(self, layer: int, stored: Tensor) -> Tensor:
        """The activation's output from the stored (dropped and scaled) rows, on the kept entries (what an
        activation's gradient needs; dropped entries have a zero gradient anyway)."""
        if not self.on_input(layer):
            return stored
        return stored / dropout.scale_of(self.rates[layer])

    def edges(self, layer: int, chunk: Chunk, heads: int) -> Tensor | None:
        """The attention factor ``keep * scale`` [E_c, heads] of a chunk's edges, or None when not dropping."""
        if not self.on_attention():
            return None
        src = self.perm[chunk.src_global.long()]
        dst = self.perm[chunk.start + chunk.dst_local.long()]
        keep = dropout.edge_keep(self.seed, self.epoch, layer, src, dst, heads, self.attention_rate)
        return keep.to(torch.float32) * dropout.scale_of(self.attention_rate)
