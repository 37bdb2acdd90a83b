"""Dropout masks that every system draws identically: a counter-based hash, not a random generator's stream.

``torch.nn.functional.dropout`` draws from a generator whose stream depends on the device, the library, the order of
calls and how the rows are split, so a chunked engine, a partitioned DDP rank and whole-graph PyG or DGL would drop
different entries and their losses would part after the first epoch. Here a mask entry is a pure function of what
it drops:

- node dropout (inputs and hidden layers): entry ``(v, j)`` of layer ``l``'s input in epoch ``e`` is kept iff
  ``hash(seed, e, l, v, j) >= p * 2^32``, with ``v`` the vertex's *global* id in the user's graph (before any
  reordering or partitioning) and ``j`` the feature column;
- attention dropout (GAT, on ``alpha`` after the softmax, as PyG's ``GATConv``): entry ``(edge, k)`` of layer ``l``
  is kept iff ``hash(seed, e, l, src, dst, k) >= p * 2^32``, an edge named by its global (source, destination) ids
  (self-loops are ``(v, v)``), so whatever order or subset of edges a system holds, the same edge draws the same.

Kept entries are scaled by ``1 / (1 - p)`` (``apply``: ``h * keep * scale``, the same product everywhere, and its
gradient ``g * keep * scale``). Rows of one vertex never depend on other rows, so any system can make the mask of
exactly the rows or edges it holds, as often as it needs them (the engine makes a chunk's mask in forward and again
in backward and stores none).

The hash is 32-bit arithmetic carried in int64 tensors: every value stays in ``[0, 2^32)`` and every product below
``2^63`` (``_mul32``), so no step overflows and the bits are the same on any device and any torch version (the DGL
worker's torch 2.2.1 included). The mixer is Chris Wellons' ``lowbias32`` (xor-shift-multiply, full avalanche);
keys are chained through it (``_mix``). Vertex ids must be below ``2^32``. Masks are made in blocks of
``BLOCK_ELEMENTS`` entries so the int64 temporaries stay small (about 16 bytes per entry of a block).
"""

from __future__ import annotations

import torch
from torch import Tensor

M32 = 0xFFFFFFFF
BLOCK_ELEMENTS = 1 << 18  # entries per block of mask generation: its int64 temporaries are ~4 MiB
NODE, EDGE = 0x6E6F6465, 0x65646765  # stream tags ("node", "edge"): node and edge masks never share keys
_COLUMN, _HEAD = 0x61C88647, 0x2545F491  # odd constants spreading column and head indices before mixing


def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2^32`` for ``x`` in ``[0, 2^32)`` with every intermediate below ``2^63`` (in place on ``x``):
    for ``c >= 2^31``, ``x * c = x * (c - 2^31) + x * 2^31`` and ``x * 2^31 mod 2^32 = (x & 1) << 31``."""
    if c < 2**31:
        return x.mul_(c).bitwise_and_(M32)
    low = (x & 1) << 31
    return x.mul_(c - 2**31).add_(low).bitwise_and_(M32)


def _mix_(x: Tensor) -> Tensor:
    """``lowbias32`` in place on int64 values in ``[0, 2^32)``: a bijection of 32-bit words."""
    x ^= x >> 16
    _mul32(x, 0x7FEB352D)
    x ^= x >> 15
    _mul32(x, 0x846CA68B)
    x ^= x >> 16
    return x


def _mix(value: int) -> int:
    """``lowbias32`` of one Python integer (the same function as ``_mix_``)."""
    value &= M32
    value ^= value >> 16
    value = (value * 0x7FEB352D) & M32
    value ^= value >> 15
    value = (value * 0x846CA68B) & M32
    return value ^ (value >> 16)


def stream_key(seed: int, epoch: int, layer: int, tag: int) -> int:
    """The 32-bit key of one mask: ``seed`` (any integer), epoch, layer and the stream tag chained through ``_mix``."""
    key = _mix(tag)
    for part in (seed & M32, (seed >> 32) & M32, epoch, layer):
        key = _mix(key ^ _mix(part))
    return key


def threshold(p: float) -> int:
    """An entry is kept iff its hash ``>= threshold(p)``: a share ``1 - p`` of the 32-bit words."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {p}")
    return int(round(p * 2**32))


def _check_ids(ids: Tensor, what: str) -> Tensor:
    ids = ids.to(torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > M32):
        raise ValueError(f"dropout: {what} ids must be in [0, 2^32), got {int(ids.min())}..{int(ids.max())}")
    return ids


def _index_keys(count: int, spread: int, key: int, device: torch.device) -> Tensor:
    """Keys of the columns (or heads) ``0..count-1`` under ``key``: ``mix((j * spread mod 2^32) ^ key)``."""
    index = torch.arange(count, dtype=torch.int64, device=device)
    return _mix_(index.mul_(spread).bitwise_and_(M32).bitwise_xor_(key))


def _keep_grid(row_keys: Tensor, col_keys: Tensor, p: float) -> Tensor:
    """``keep[r, j] = mix(row_keys[r] + col_keys[j]) >= threshold(p)``, made in row blocks."""
    rows, width = row_keys.numel(), col_keys.numel()
    keep = torch.empty(rows, width, dtype=torch.bool, device=row_keys.device)
    step = max(1, BLOCK_ELEMENTS // max(width, 1))
    limit = threshold(p)
    for start in range(0, rows, step):
        block = row_keys[start:start + step, None] + col_keys[None, :]
        block.bitwise_and_(M32)
        torch.ge(_mix_(block), limit, out=keep[start:start + step])
    return keep


def node_keep(seed: int, epoch: int, layer: int, ids: Tensor, width: int, p: float) -> Tensor:
    """Bool ``[len(ids), width]``: which entries of layer ``layer``'s input rows (global vertex ``ids``) epoch
    ``epoch`` keeps; on ``ids``' device."""
    ids = _check_ids(ids, "vertex")
    key = stream_key(seed, epoch, layer, NODE)
    return _keep_grid(_mix_(ids ^ key), _index_keys(width, _COLUMN, key, ids.device), p)


def edge_keep(seed: int, epoch: int, layer: int, src: Tensor, dst: Tensor, heads: int, p: float) -> Tensor:
    """Bool ``[E, heads]``: which attention entries of the edges ``src -> dst`` (global ids) epoch ``epoch``
    keeps in layer ``layer``."""
    src, dst = _check_ids(src, "source"), _check_ids(dst, "destination")
    key = stream_key(seed, epoch, layer, EDGE)
    edge_keys = _mix_(_mix_(dst ^ key) ^ src)
    return _keep_grid(edge_keys, _index_keys(heads, _HEAD, key, src.device), p)


def scale_of(p: float) -> float:
    return 1.0 / (1.0 - p)


def apply(h: Tensor, keep: Tensor, p: float) -> Tensor:
    """``h`` with dropped entries zeroed and kept ones scaled by ``1 / (1 - p)`` (also the gradient's formula:
    ``apply(g, keep, p)``). Differentiable: autograd's gradient is the same product."""
    return h * (keep.to(h.dtype) * scale_of(p))


def nodes(h: Tensor, ids: Tensor, p: float, seed: int, epoch: int, layer: int) -> Tensor:
    """Node dropout of rows ``h`` [R, F] of vertices ``ids`` [R] (global ids); ``h`` itself when ``p == 0``."""
    if p == 0:
        return h
    return apply(h, node_keep(seed, epoch, layer, ids.to(h.device), h.shape[1], p), p)
