"""What the disk tier moves, in whole blocks: one rule shared by the engine's files and the simulator.

A disk buffer is rows of ``row_bytes`` back to back in a file of whole ``ALIGN``-byte blocks (``O_DIRECT`` moves
nothing smaller). Any sorted set of rows it moves (a chunk's row range, a chunk's halo, a chunk's edge range for a
per-edge buffer) is cut into groups: consecutive rows stay in one group while they start in the same ``window``
of the file (the staging buffer less one row and one block: a group's span always fits the staging buffer) and lie
within ``GAP_BYTES`` of the previous row (nearby rows share one system call). Each group moves the aligned span
around it:

- a read moves the span;
- a write moves the span, after reading the span's first and last block when the group covers them only in part
  (read-modify-write keeps the neighbours' rows);
- an add (``+=``) reads and writes the span;
- zeroing writes the whole file.

``spans`` is what ``engine.diskfile.RowFile`` executes; ``range_moves`` and ``gather_bytes`` are what
``plan.simulate`` charges (``Problem.disk_halo_bytes`` and ``Problem.disk_edge_bytes`` hold the graph-dependent
sums, measured on the chunks by ``engine.prepare``), so the disk link counters the engine records are the bytes its
system calls moved, and the simulator predicts them exactly.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

ALIGN = 4096
GAP_BYTES = 64 * 2**10  # sorted rows closer than this are moved in one transfer
# A disk buffer wider than this is stored as column blocks of at most this many floats, one file each (FlexGNN's
# release manages memory in blocks of 64 feature columns too): a column pass (``plan.simulate.column_passes``) reads
# or writes one block of every row with one sequential sweep of one file.
COLUMN_BLOCK = 64


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def window(staging_bytes: int, row_bytes: int) -> int:
    """The file window one group stays in: a span (window + a row's overhang + a block) fits ``staging_bytes``."""
    size = (staging_bytes - row_bytes - ALIGN) // ALIGN * ALIGN
    if size < ALIGN:
        raise ValueError(f"disk tier: a row of {row_bytes} bytes needs a staging buffer of at least "
                         f"{row_bytes + 2 * ALIGN} bytes (it has {staging_bytes})")
    return size


def spans(ids: np.ndarray, row_bytes: int, window_bytes: int) -> tuple[np.ndarray, ...]:
    """Groups of the sorted row ids ``ids``: ``(first, last, a0, a1)`` arrays, rows ``ids[first[g]..last[g]]``
    inside the aligned byte span ``[a0[g], a1[g])``."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    starts = ids * row_bytes
    step = np.diff(starts)
    cut = (step > GAP_BYTES + row_bytes) | (np.diff(starts // window_bytes) != 0)
    first = np.concatenate(([0], np.flatnonzero(cut) + 1))
    last = np.concatenate((first[1:] - 1, [ids.size - 1]))
    a0 = starts[first] - starts[first] % ALIGN
    a1 = -(-(starts[last] + row_bytes) // ALIGN) * ALIGN
    return first, last, a0, a1


def range_spans(start: int, stop: int, row_bytes: int, window_bytes: int) -> tuple[np.ndarray, ...]:
    """``spans`` of the contiguous rows ``[start, stop)`` as ``(lo, hi, a0, a1)``: rows ``[lo[g], hi[g])``,
    computed from the window boundaries alone (equal to ``spans(np.arange(start, stop), ...)``)."""
    if stop <= start:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    first_window, last_window = start * row_bytes // window_bytes, (stop - 1) * row_bytes // window_bytes
    inner = np.arange(first_window + 1, last_window + 1, dtype=np.int64) * window_bytes
    cuts = -(-inner // row_bytes)  # the first row starting in each later window
    lo = np.concatenate(([start], cuts)).astype(np.int64)
    hi = np.concatenate((cuts, [stop])).astype(np.int64)
    a0 = lo * row_bytes - lo * row_bytes % ALIGN
    a1 = -(-(hi * row_bytes) // ALIGN) * ALIGN
    return lo, hi, a0, a1


def partial_blocks(first_byte: np.ndarray, end_byte: np.ndarray, a0: np.ndarray, a1: np.ndarray) -> np.ndarray:
    """Bytes a write of rows ``[first_byte, end_byte)`` in span ``[a0, a1)`` reads first: its first and last block
    where the rows cover them only in part (one block when the span is one block)."""
    head, tail = first_byte != a0, end_byte != a1
    one = (a1 - a0) == ALIGN
    return np.where(one, (head | tail) * ALIGN, (head.astype(np.int64) + tail) * ALIGN)


def range_moves(bounds: Iterable[tuple[int, int]], row_bytes: int, window_bytes: int) -> tuple[int, int]:
    """``(span_bytes, partial_bytes)`` of one pass over the ranges ``bounds`` (a read moves the first, a write the
    first and reads the second)."""
    total = partial = 0
    for start, stop in bounds:
        lo, hi, a0, a1 = range_spans(start, stop, row_bytes, window_bytes)
        total += int((a1 - a0).sum())
        partial += int(partial_blocks(lo * row_bytes, hi * row_bytes, a0, a1).sum())
    return total, partial


def gather_bytes(halos: Iterable[np.ndarray], row_bytes: int, window_bytes: int) -> int:
    """Bytes one gather (or one scatter-add's read, or its write) of every halo in ``halos`` moves."""
    total = 0
    for ids in halos:
        _, _, a0, a1 = spans(ids, row_bytes, window_bytes)
        total += int((a1 - a0).sum())
    return total


def column_blocks(width: int) -> list[tuple[int, int]]:
    """The ``[c0, c1)`` column blocks a disk buffer of ``width`` floats per row is stored as (one file each)."""
    return [(c0, min(width, c0 + COLUMN_BLOCK)) for c0 in range(0, max(int(width), 1), COLUMN_BLOCK)]


def row_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """The distinct row sizes in bytes of the disk files of fp32 buffers with these widths (their column blocks)."""
    return tuple(sorted({4 * (c1 - c0) for w in widths for c0, c1 in column_blocks(int(w))}))
