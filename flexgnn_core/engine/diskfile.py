"""The disk tier's storage: a ``[rows, width]`` fp32 array in a file, moved with explicit positioned I/O.

Rows live back to back in one file per buffer, its size reserved up front (``workdirs.reserve``: a full disk is an
error naming ``hardware.disk_dir``, never a SIGBUS). Every access is ``os.preadv`` / ``os.pwritev`` through a
page-aligned staging buffer per thread (``Staging``, sized by the plan), opened with ``O_DIRECT`` where the file system takes it,
so bytes really go to and come from the device instead of the page cache (which would also be charged to a memory
cap); where ``O_DIRECT`` is refused (tmpfs, some network file systems) the file is buffered and each written range
is dropped from the cache with ``posix_fadvise(DONTNEED)`` after ``fdatasync``. The mode is in ``mode``.

Alignment: ``O_DIRECT`` transfers whole ``ALIGN``-byte blocks. Every operation moves the groups of rows and the
aligned spans around them that ``plan.blocks`` defines (one rule with the simulator): a read moves the span, a write
first reads the span's partial first and last blocks (read-modify-write), an add reads and writes the span. Each
system call's bytes go to ``on_move`` (the tier store's ``disk_read`` / ``disk_write`` counters, which the simulator
predicts exactly and ``/proc/self/io`` confirms) and to ``actual`` (this file's own total).
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from flexgnn_core.plan.blocks import ALIGN, aligned, range_spans, spans, window
from flexgnn_core.plan.problem import MAX_STAGING_BYTES


class Staging(threading.local):
    """One page-aligned buffer of ``size`` bytes per thread (anonymous mmap memory is page-aligned, as O_DIRECT
    requires); ``size`` comes from the plan (``plan.problem.staging_bytes``)."""

    def __init__(self, size: int = MAX_STAGING_BYTES) -> None:
        self.size = size
        self.memory = mmap.mmap(-1, size)
        self.floats = np.frombuffer(self.memory, dtype=np.float32)


class RowFile:
    """``rows`` x ``width`` float32 in ``path``; reads return new tensors, writes and adds take CPU tensors.
    ``on_move(kind, nbytes)`` hears every system call's bytes (``kind``: "read" or "write")."""

    def __init__(self, path: Path, rows: int, width: int, staging: Staging | None = None, direct: bool = True,
                 on_move: Callable[[str, int], None] | None = None):
        self.staging = staging if staging is not None else Staging()
        self.path, self.rows, self.width = Path(path), rows, width
        self.row_bytes = width * 4
        self.window = window(self.staging.size, self.row_bytes)  # a row too wide for the staging buffer fails here
        self.nbytes = rows * self.row_bytes
        self.file_bytes = aligned(self.nbytes)  # whole blocks: an O_DIRECT transfer never stops mid-block
        flags = os.O_RDWR | os.O_CLOEXEC
        self.fd, self.mode = None, "buffered"
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.fd, self.mode = os.open(self.path, flags | os.O_DIRECT), "direct"
                os.preadv(self.fd, [memoryview(self.staging.memory)[:ALIGN]], 0)  # some file systems refuse only here
            except OSError:
                if self.fd is not None:
                    os.close(self.fd)
                self.fd, self.mode = None, "buffered"
        if self.fd is None:
            self.fd = os.open(self.path, flags)
        self.actual = {"read": 0, "write": 0}
        self.on_move = on_move
        self.lock = threading.Lock()  # one transfer at a time per file: a read-modify-write is not interleaved

    # ---- system calls ----------------------------------------------------------------------------------------
    def _moved(self, kind: str, nbytes: int) -> None:
        self.actual[kind] += nbytes
        if self.on_move is not None:
            self.on_move(kind, nbytes)

    def _read(self, a0: int, a1: int, at: int = 0) -> None:
        """Bytes ``[a0, a1)`` of the file into the staging buffer from its byte ``at``."""
        done = os.preadv(self.fd, [memoryview(self.staging.memory)[at: at + a1 - a0]], a0)
        if done != a1 - a0:
            raise OSError(f"disk tier: short read of {self.path} ({done} of {a1 - a0} bytes at {a0})")
        self._moved("read", done)

    def _write(self, a0: int, a1: int) -> None:
        done = os.pwritev(self.fd, [memoryview(self.staging.memory)[: a1 - a0]], a0)
        if done != a1 - a0:
            raise OSError(f"disk tier: short write to {self.path} ({done} of {a1 - a0} bytes at {a0}); the disk "
                          "may be full")
        self._moved("write", done)
        if self.mode == "buffered":  # leave nothing of it in the page cache (on tmpfs this is a no-op)
            os.fdatasync(self.fd)
            os.posix_fadvise(self.fd, a0, a1 - a0, os.POSIX_FADV_DONTNEED)

    def _read_partial(self, a0: int, a1: int, first_byte: int, end_byte: int) -> None:
        """Before writing rows ``[first_byte, end_byte)`` of span ``[a0, a1)``: read the blocks they cover in
        part (``plan.blocks.partial_blocks``), so the write keeps the neighbouring rows."""
        if first_byte != a0 or (a1 - a0 == ALIGN and end_byte != a1):
            self._read(a0, a0 + ALIGN)
        if end_byte != a1 and a1 - a0 > ALIGN:
            self._read(a1 - ALIGN, a1, at=a1 - a0 - ALIGN)

    def _rows(self, a0: int, first_row: int, count: int) -> np.ndarray:
        """Rows ``first_row ..`` of the span starting at byte ``a0``, as a ``[count, width]`` view of the staging."""
        offset = (first_row * self.row_bytes - a0) // 4
        return self.staging.floats[offset: offset + count * self.width].reshape(count, self.width)

    # ---- the buffer's operations ---------------------------------------------------------------------------
    def read_range(self, start: int, stop: int, out: np.ndarray | None = None) -> Tensor | None:
        """Rows ``[start, stop)``: a new tensor, or into ``out`` (a ``[stop - start, width]`` array, e.g. a column
        block of a wider one; then None)."""
        result = None if out is not None else torch.empty(stop - start, self.width)
        target = out if out is not None else result.numpy()
        with self.lock:
            for lo, hi, a0, a1 in zip(*(v.tolist() for v in range_spans(start, stop, self.row_bytes, self.window))):
                self._read(a0, a1)
                target[lo - start: hi - start] = self._rows(a0, lo, hi - lo)
        return result

    @staticmethod
    def _sorted(index: Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Row ids in ascending order, and the order that sorted them (None when they already were)."""
        rows = index.numpy().astype(np.int64, copy=False)
        if rows.size < 2 or bool((rows[1:] >= rows[:-1]).all()):
            return rows, None
        order = np.argsort(rows, kind="stable")
        return rows[order], order

    def read_index(self, index: Tensor, out: np.ndarray | None = None) -> Tensor | None:
        """Rows ``index`` in its order: a new tensor, or into ``out`` (``[len(index), width]``; then None)."""
        rows, order = self._sorted(index)
        result = None if out is not None else torch.empty(rows.size, self.width)
        final = out if out is not None else result.numpy()
        target = final if order is None else np.empty((rows.size, self.width), dtype=np.float32)
        with self.lock:
            for first, last, a0, a1 in zip(*(v.tolist() for v in spans(rows, self.row_bytes, self.window))):
                self._read(a0, a1)
                ids = rows[first: last + 1]
                target[first: last + 1] = self._rows(a0, ids[0], ids[-1] - ids[0] + 1)[ids - ids[0]]
        if order is not None:
            final[order] = target
        return result

    def write_range(self, start: int, rows: Tensor, add: bool = False) -> None:
        """Rows ``[start, start + len(rows))`` = ``rows`` (or ``+= rows``)."""
        source = rows.detach().cpu().numpy()
        stop = start + source.shape[0]
        with self.lock:
            for lo, hi, a0, a1 in zip(*(v.tolist() for v in range_spans(start, stop, self.row_bytes, self.window))):
                if add:
                    self._read(a0, a1)
                else:
                    self._read_partial(a0, a1, lo * self.row_bytes, hi * self.row_bytes)
                block = self._rows(a0, lo, hi - lo)
                if add:
                    block += source[lo - start: hi - start]
                else:
                    block[:] = source[lo - start: hi - start]
                self._write(a0, a1)

    def add_index(self, index: Tensor, rows: Tensor) -> None:
        """``self[index] += rows`` for distinct ``index``: each group of nearby rows read, added to, written back."""
        ids_all, order = self._sorted(index)
        source = rows.detach().cpu().numpy()
        source = source if order is None else source[order]
        with self.lock:
            for first, last, a0, a1 in zip(*(v.tolist() for v in spans(ids_all, self.row_bytes, self.window))):
                self._read(a0, a1)
                ids = ids_all[first: last + 1]
                self._rows(a0, ids[0], ids[-1] - ids[0] + 1)[ids - ids[0]] += source[first: last + 1]
                self._write(a0, a1)

    def zero(self) -> None:
        with self.lock:
            self.staging.floats[:] = 0
            step = self.staging.size - self.staging.size % ALIGN
            for a0 in range(0, self.file_bytes, step):
                self._write(a0, min(a0 + step, self.file_bytes))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
