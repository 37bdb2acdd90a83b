"""The disk tier's storage: a ``[rows, width]`` fp32 array in a file, moved with explicit positioned I/O.

Rows live back to back in one file per buffer, its size reserved up front (``workdirs.reserve``: a full disk is an
error naming ``hardware.disk_dir``, never a SIGBUS). Every access is ``os.preadv`` / ``os.pwritev`` through a
page-aligned staging buffer per thread (``Staging``, sized by the plan), opened with ``O_DIRECT`` where the file system takes it,
so bytes really go to and come from the device instead of the page cache (which would also be charged to a memory
cap); where ``O_DIRECT`` is refused (tmpfs, some network file systems) the file is buffered and each written range
is dropped from the cache with ``posix_fadvise(DONTNEED)`` after ``fdatasync``. The mode is in ``mode``.

Alignment: ``O_DIRECT`` transfers whole ``ALIGN``-byte blocks, so a range of rows moves the aligned span around it
and a write of a partial block first reads that block (read-modify-write). Gathers and scatter-adds of sorted row
indices (a chunk's halo) coalesce into spans: rows whose blocks lie within ``GAP_BYTES`` of each other share one
transfer. ``actual`` counts the bytes the system calls moved, which ``/proc/self/io`` confirms; the tier counters
(``Counters.links``) count the rows the plan asked for, which is what the simulator predicts.
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flexgnn_core.plan.problem import ALIGN, MAX_STAGING_BYTES
GAP_BYTES = 64 * 2**10  # sorted rows closer than this are read or written in one transfer


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


class Staging(threading.local):
    """One page-aligned buffer of ``size`` bytes per thread (anonymous mmap memory is page-aligned, as O_DIRECT
    requires); ``size`` comes from the plan (``plan.problem.staging_bytes``)."""

    def __init__(self, size: int = MAX_STAGING_BYTES) -> None:
        self.size = size
        self.memory = mmap.mmap(-1, size)
        self.floats = np.frombuffer(self.memory, dtype=np.float32)


class RowFile:
    """``rows`` x ``width`` float32 in ``path``; reads return new tensors, writes and adds take CPU tensors."""

    def __init__(self, path: Path, rows: int, width: int, staging: Staging | None = None, direct: bool = True):
        self.staging = staging if staging is not None else Staging()
        if width * 4 + 2 * ALIGN > self.staging.size:
            raise ValueError(f"disk tier: a row of {width} floats exceeds the {self.staging.size}-byte staging buffer")
        self.path, self.rows, self.width = Path(path), rows, width
        self.row_bytes = width * 4
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
        self.lock = threading.Lock()  # one transfer at a time per file: a read-modify-write is not interleaved

    # ---- spans ---------------------------------------------------------------------------------------------
    def _pieces(self, start: int, stop: int):
        """Rows ``[start, stop)`` in pieces ``(a0, a1, lo, hi)``: rows ``[lo, hi)`` inside the aligned span
        ``[a0, a1)``, each span at most the staging buffer (neighbouring spans may share a block)."""
        per_piece = max(1, (self.staging.size - 2 * ALIGN) // self.row_bytes)
        for lo in range(start, stop, per_piece):
            hi = min(stop, lo + per_piece)
            first = lo * self.row_bytes
            yield first - first % ALIGN, aligned(hi * self.row_bytes), lo, hi

    def _groups(self, index: np.ndarray):
        """Sorted row ids cut into runs whose spans lie within ``GAP_BYTES`` and fit the staging buffer."""
        if index.size == 0:
            return []
        starts = index * self.row_bytes
        cut = np.flatnonzero(np.diff(starts) > GAP_BYTES + self.row_bytes) + 1
        runs, limit = [], self.staging.size - 2 * ALIGN
        for run in np.split(np.arange(index.size), cut):
            begin = 0
            while begin < run.size:  # a run longer than the buffer is cut again
                end = begin + 1
                base = starts[run[begin]] - starts[run[begin]] % ALIGN
                while end < run.size and starts[run[end]] + self.row_bytes - base <= limit:
                    end += 1
                runs.append(run[begin:end])
                begin = end
        return runs

    def _read(self, a0: int, a1: int) -> np.ndarray:
        view = memoryview(self.staging.memory)[: a1 - a0]
        done = os.preadv(self.fd, [view], a0)
        if done != a1 - a0:
            raise OSError(f"disk tier: short read of {self.path} ({done} of {a1 - a0} bytes at {a0})")
        self.actual["read"] += done
        return self.staging.floats[: (a1 - a0) // 4]

    def _write(self, a0: int, a1: int) -> None:
        done = os.pwritev(self.fd, [memoryview(self.staging.memory)[: a1 - a0]], a0)
        if done != a1 - a0:
            raise OSError(f"disk tier: short write to {self.path} ({done} of {a1 - a0} bytes at {a0}); the disk "
                          "may be full")
        self.actual["write"] += done
        if self.mode == "buffered":  # leave nothing of it in the page cache (on tmpfs this is a no-op)
            os.fdatasync(self.fd)
            os.posix_fadvise(self.fd, a0, a1 - a0, os.POSIX_FADV_DONTNEED)

    def _rows_in(self, floats: np.ndarray, a0: int, first_row: int, count: int) -> np.ndarray:
        """Rows ``first_row ..`` of the span starting at byte ``a0``, as a ``[count, width]`` view of the staging."""
        offset = (first_row * self.row_bytes - a0) // 4
        return floats[offset: offset + count * self.width].reshape(count, self.width)

    # ---- the buffer's operations ---------------------------------------------------------------------------
    def read_range(self, start: int, stop: int) -> Tensor:
        out = torch.empty(stop - start, self.width)
        target = out.numpy()
        with self.lock:
            for a0, a1, lo, hi in self._pieces(start, stop):
                floats = self._read(a0, a1)
                target[lo - start: hi - start] = self._rows_in(floats, a0, lo, hi - lo)
        return out

    @staticmethod
    def _sorted(index: Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Row ids in ascending order, and the order that sorted them (None when they already were)."""
        rows = index.numpy().astype(np.int64, copy=False)
        if rows.size < 2 or bool((rows[1:] >= rows[:-1]).all()):
            return rows, None
        order = np.argsort(rows, kind="stable")
        return rows[order], order

    def read_index(self, index: Tensor) -> Tensor:
        rows, order = self._sorted(index)
        out = torch.empty(rows.size, self.width)
        target = out.numpy() if order is None else np.empty((rows.size, self.width), dtype=np.float32)
        with self.lock:
            for run in self._groups(rows):
                ids = rows[run]
                a0 = ids[0] * self.row_bytes - ids[0] * self.row_bytes % ALIGN
                a1 = aligned((ids[-1] + 1) * self.row_bytes)
                floats = self._read(a0, a1)
                block = self._rows_in(floats, a0, ids[0], ids[-1] - ids[0] + 1)
                target[run] = block[ids - ids[0]]
        if order is not None:
            out.numpy()[order] = target
        return out

    def write_range(self, start: int, rows: Tensor, add: bool = False) -> None:
        """Rows ``[start, start + len(rows))`` = ``rows`` (or ``+= rows``): partial blocks are read first."""
        source = rows.detach().cpu().numpy()
        stop = start + source.shape[0]
        with self.lock:
            for a0, a1, lo, hi in self._pieces(start, stop):
                head, tail = lo * self.row_bytes != a0, hi * self.row_bytes != a1
                if add or head or tail:
                    floats = self._read(a0, a1)
                else:
                    floats = self.staging.floats[: (a1 - a0) // 4]
                block = self._rows_in(floats, a0, lo, hi - lo)
                if add:
                    block += source[lo - start: hi - start]
                else:
                    block[:] = source[lo - start: hi - start]
                self._write(a0, a1)

    def add_index(self, index: Tensor, rows: Tensor) -> None:
        """``self[index] += rows`` for distinct ``index``: each run of nearby rows read, added to, written back."""
        ids_all, order = self._sorted(index)
        source = rows.detach().cpu().numpy()
        source = source if order is None else source[order]
        with self.lock:
            for run in self._groups(ids_all):
                ids = ids_all[run]
                a0 = ids[0] * self.row_bytes - ids[0] * self.row_bytes % ALIGN
                a1 = aligned((ids[-1] + 1) * self.row_bytes)
                floats = self._read(a0, a1)
                block = self._rows_in(floats, a0, ids[0], ids[-1] - ids[0] + 1)
                block[ids - ids[0]] += source[run]
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
