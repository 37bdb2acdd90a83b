"""One whole-graph intermediate on one tier (``Buffer``), the rows and column blocks a step reads and writes.

The tiers, their byte counters and the store that owns every buffer are ``engine.tiers``'s; a buffer counts each
transfer it makes there (``h2d`` / ``d2h``; on disk its files count the blocks their system calls move).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flexgnn_core import workdirs
from flexgnn_core.engine.diskfile import RowFile, aligned
from flexgnn_core.kernels import long_index
from flexgnn_core.plan import blocks


def _select(data: Tensor, index: Tensor | slice) -> Tensor:
    """Rows of ``data``: a view for a range, ``index_select`` for an index tensor (on CPU 3-5x faster than
    ``data[index]``'s advanced indexing for the halo gathers chunks do; results/LOG.md, 2026-11-28). The index
    follows the data's device: a chunk kept on the host (graph placed off the device) still reads device-resident
    rows (CUDA's ``index_select`` refuses a CPU index for CUDA data)."""
    if isinstance(index, slice):
        return data[index]
    return torch.index_select(data, 0, _on(index, data.device))


def _on(index: Tensor, device: torch.device) -> Tensor:
    return index if index.device == device else index.to(device, non_blocking=True)


class Buffer:
    """A ``[rows, *shape]`` fp32 array on one tier; rows are read, written and scatter-added by index or range, and
    whole column blocks (``columns``: ``plan.blocks.column_blocks`` of the row width) read, written or added by a
    column pass. On disk each column block is its own file (``files``), so a column block is one sequential sweep
    and a row range one transfer per file."""

    def __init__(self, store, name: str, shape: tuple[int, ...], tier: str):  # store: its engine.tiers.TierStore
        self.store, self.name, self.shape, self.tier = store, name, shape, tier
        self.nbytes = int(np.prod(shape)) * 4
        self.width = int(np.prod(shape[1:]))
        self.columns = blocks.column_blocks(self.width)
        self.data, self.files = None, []
        self.pending: list[tuple[int, int, object]] = []  # write-behind writes of rows [start, stop) (disk tier)
        if tier == "device":
            self.data = torch.zeros(shape, dtype=torch.float32, device=store.device)
        elif tier == "host":
            self.data = torch.zeros(shape, dtype=torch.float32)  # rows go to the device through pinned slots
        else:
            sizes = [aligned(shape[0] * (c1 - c0) * 4) for c0, c1 in self.columns]
            split = len(self.columns) > 1
            label = f"{name} ({len(sizes)} column block files {name}.c*.f32)" if split else None
            for j, (c0, c1) in enumerate(self.columns):
                path = store.disk_path(f"{name}.c{j}" if split else name)
                try:  # allocated now: a full disk is this error, naming the whole buffer's bytes
                    workdirs.reserve(path, sizes[j], label=label, need=sum(sizes))
                    self.files.append(RowFile(path, shape[0], c1 - c0, store.staging,
                                              on_move=lambda kind, n: store.counters.moved(f"disk_{kind}", n)))
                except workdirs.DiskFull:
                    store.close()
                    raise
                except OSError as error:
                    store.close()
                    raise OSError(f"disk tier: cannot create {self.nbytes} bytes at {path} ({error}); set disk_dir "
                                  "to a writable directory with enough free space") from error
            store.uses_disk()
            store.disk_modes.update(f.mode for f in self.files)
        store.counters.hold(tier, self.nbytes)

    def row_bytes(self, rows: int) -> int:
        return rows * (self.nbytes // max(self.shape[0], 1))

    def settle(self, start: int | None = None, stop: int | None = None) -> None:
        """Wait for this buffer's pending write-behind writes (those overlapping rows ``[start, stop)``, or all)."""
        if not self.pending:
            return
        with self.store.pending_lock:
            waits = [f for a, b, f in self.pending if start is None or (a < stop and start < b)]
        for future in waits:
            future.result()
        with self.store.pending_lock:
            self.pending = [entry for entry in self.pending if not entry[2].done()]

    def _disk_read(self, index: Tensor | slice) -> Tensor:
        """Rows ``index`` of every column block file, side by side: a new ``[count, width]`` CPU tensor."""
        ranged = isinstance(index, slice)
        if len(self.files) == 1:
            file = self.files[0]
            return file.read_range(index.start, index.stop) if ranged else file.read_index(index)
        out = torch.empty(index.stop - index.start if ranged else index.numel(), self.width)
        target = out.numpy()
        for file, (c0, c1) in zip(self.files, self.columns):
            if ranged:
                file.read_range(index.start, index.stop, out=target[:, c0:c1])
            else:
                file.read_index(index, out=target[:, c0:c1])
        return out

    def _to_device(self, rows: Tensor) -> Tensor:
        """CPU rows fresh from the disk to the device (through a pinned slot on CUDA)."""
        if self.store.device.type == "cpu":
            return rows
        return self.store.pinned.to_device(rows.shape[0], tuple(rows.shape[1:]),
                                           lambda a, b, out: out.copy_(rows[a:b]))

    def read(self, index: Tensor | slice) -> Tensor:
        """Rows ``index`` as a device tensor (a copy unless the buffer is on the device and index is a range)."""
        counters, device = self.store.counters, self.store.device
        if self.tier == "device":
            return _select(self.data, index)
        if isinstance(index, Tensor):
            index = index.cpu()
        if self.tier == "disk":  # the read lands in new memory: that is the transfer, on CPU and to a pinned stage
            self.settle(*((index.start, index.stop) if isinstance(index, slice) else ()))
            rows = self._disk_read(index).view(-1, *self.shape[1:])  # (the files counted their blocks: disk_read)
            counters.moved("h2d", rows.numel() * 4)
            return self._to_device(rows)
        if device.type == "cpu" and not self.store.pinned.staged:
            rows = _select(self.data, index)
            counters.moved("h2d", rows.numel() * 4)
            return rows.clone()  # the host -> device copy, real on CPU too so that offload costs show
        count = index.stop - index.start if isinstance(index, slice) else index.numel()
        counters.moved("h2d", count * (self.nbytes // max(self.shape[0], 1)))
        if isinstance(index, slice):
            fill = lambda a, b, out: out.copy_(self.data[index.start + a:index.start + b])  # noqa: E731
        else:
            fill = lambda a, b, out: torch.index_select(self.data, 0, index[a:b], out=out)  # noqa: E731
        return self.store.pinned.to_device(count, self.shape[1:], fill)

    def write(self, index: slice, rows: Tensor) -> None:
        if self.tier == "device":
            self.data[index] = rows
            return
        self.store.counters.moved("d2h", rows.numel() * 4)
        if self.tier == "disk":  # on the write-behind thread (the step's rows are not changed after this)
            flat = rows.reshape(rows.shape[0], self.width).cpu()

            def write_files() -> None:
                for file, (c0, c1) in zip(self.files, self.columns):
                    file.write_range(index.start, flat[:, c0:c1])

            self.store.behind(self, index.start, index.stop, write_files)
            return
        self.data[index].copy_(rows)  # from the device: waits for the current stream only

    def add(self, index: Tensor | slice, rows: Tensor) -> None:
        """``self[index] += rows`` (indices sorted and distinct); off-device a read-modify-write of those rows."""
        if isinstance(index, Tensor) and index.numel() == self.shape[0]:
            index = slice(0, self.shape[0])  # sorted distinct indices covering every row: a plain add
        if self.tier != "device":
            self.store.counters.moved("d2h", rows.numel() * 4)
            rows = rows.cpu()
            index = index.cpu() if isinstance(index, Tensor) else index
        if self.tier == "disk":
            self.settle()
            flat = rows.reshape(rows.shape[0], self.width)
            for file, (c0, c1) in zip(self.files, self.columns):
                if isinstance(index, slice):
                    file.write_range(index.start, flat[:, c0:c1], add=True)
                else:
                    file.add_index(index, flat[:, c0:c1])
        elif isinstance(index, slice):
            self.data[index] += rows
        else:
            self.data.index_add_(0, long_index(_on(index, self.data.device)), rows)

    # ---- column blocks (a column pass: every row, one block of columns) ----------------------------------------
    def read_columns(self, j: int) -> Tensor:
        """Column block ``j`` of every row as a new contiguous ``[rows, c1 - c0]`` device tensor."""
        c0, c1 = self.columns[j]
        flat = None if self.data is None else self.data.view(self.shape[0], self.width)
        if self.tier == "device":
            return flat[:, c0:c1].contiguous()
        self.store.counters.moved("h2d", self.shape[0] * (c1 - c0) * 4)
        if self.tier == "disk":
            self.settle()
            return self._to_device(self.files[j].read_range(0, self.shape[0]))
        if self.store.device.type == "cpu" and not self.store.pinned.staged:
            return flat[:, c0:c1].contiguous()
        return self.store.pinned.to_device(self.shape[0], (c1 - c0,),
                                           lambda a, b, out: out.copy_(flat[a:b, c0:c1]))

    def write_columns(self, j: int, block: Tensor, add: bool = False) -> None:
        """Column block ``j`` of every row ``= block`` (or ``+= block``)."""
        c0, c1 = self.columns[j]
        if self.tier != "device":
            self.store.counters.moved("d2h", block.numel() * 4)
        if self.tier == "disk":
            self.settle()
            self.files[j].write_range(0, block.cpu(), add=add)
            return
        target = self.data.view(self.shape[0], self.width)[:, c0:c1]
        if add:
            target += block.to(target.device)
        else:
            target.copy_(block)

    def zero_(self) -> None:
        if self.tier == "disk":
            self.settle()
            for file in self.files:
                file.zero()
            return
        self.data.zero_()

    def free(self) -> None:
        with self.store.pending_lock:
            pending, self.pending = [f for _, _, f in self.pending], []
        for future in pending:  # wait for them, whatever they raised (a failed write raised at its settle)
            future.exception()
        self.store.counters.release(self.tier, self.nbytes)
        for file in self.files:
            for kind, nbytes in file.actual.items():
                self.store.counters.disk_actual[kind] += nbytes
            file.close()
        self.data, self.files = None, []
