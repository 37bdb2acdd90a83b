"""Checks every loader shares, so that bad input is a named error before anything large is allocated or trained.

- ``npy_size_problem``: a ``.npy`` header declaring more data than the file holds (a header saying 23 TiB would
  otherwise be a MemoryError, or a bus error once memory-mapped).
- ``overlapping_splits``: vertices in two of train / val / test (validation accuracy would be inflated).
- ``class_count_problem``: a class count above the vertex count (a label of 10^12 would make a 10^12-wide
  output layer).

Importable in the DGL worker's environment (numpy < 2, torch 2.2): numpy and torch only.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Mapping

import numpy as np
from torch import Tensor

SPLITS = ("train_mask", "val_mask", "test_mask")


def npy_header(handle) -> tuple[tuple[int, ...], np.dtype] | None:
    """``(shape, dtype)`` from the ``.npy`` header at the start of the open binary file ``handle`` (left just past
    the header); None for a format version this code does not parse."""
    version = np.lib.format.read_magic(handle)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        return None
    shape, _, dtype = read_header(handle)
    return tuple(shape), dtype


def npy_size_problem(path: str | Path) -> str | None:
    """None if ``path`` holds at least the data bytes its ``.npy`` header declares; else what is wrong."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            header = npy_header(handle)
            if header is None:
                return None  # another format version: np.load judges it
            shape, dtype = header
            offset = handle.tell()
    except (ValueError, OSError, EOFError, SyntaxError):
        return None  # not a readable header: np.load reports it
    if dtype.hasobject:
        return None  # refused by np.load(allow_pickle=False) with its own message
    declared = math.prod(shape) * dtype.itemsize
    present = path.stat().st_size - offset
    if declared > present:
        return (f"its header declares shape {tuple(shape)} of {dtype} ({declared} bytes) but the file holds "
                f"{present} bytes of data (truncated or corrupt)")
    return None


def overlapping_splits(masks: Mapping[str, Tensor]) -> list[tuple[str, str, int]]:
    """``(split_a, split_b, shared_vertices)`` for every pair of boolean masks that share vertices."""
    return [(a, b, shared) for (a, mask_a), (b, mask_b) in itertools.combinations(masks.items(), 2)
            if (shared := int((mask_a & mask_b).sum())) > 0]


def class_count_problem(num_classes: int, num_nodes: int, max_label: int | None = None) -> str | None:
    """A class count (the output width) above the vertex count, unless the labels use that many (``max_label``
    given: a declared count, which may exceed a small sample's vertices, as 40 arxiv classes on 30 vertices)."""
    limit = num_nodes if max_label is None else max(num_nodes, max_label + 1)
    if num_classes > limit:
        used = "" if max_label is None else f" and labels up to {max_label}"
        return f"{num_classes} classes for {num_nodes} vertices{used}"
    return None
