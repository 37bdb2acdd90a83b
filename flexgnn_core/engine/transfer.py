"""Host -> device copies through pinned staging the tier store owns, and the clock of prefetches (issue 18).

Why staging and not ``pin_memory()``: torch's caching host allocator rounds each pinned block up to a power of two
and keeps it for the life of the process, so page-locked memory reached up to 2x what the host tier accounts and
was carried into the next run's peak; and copies from unpinned memory block the calling thread, so the prefetch
clock measured nothing on CUDA. Here host-tier buffers stay ordinary memory (exactly the bytes the plan accounts);
rows bound for the device are gathered into a pinned *slot* (plain pages registered with ``cudaHostRegister``,
exactly ``slot_bytes``, unregistered when the store closes) and copied to the device asynchronously on the calling
thread's current stream. Each slot has an event marking its last copy; the next gather into that slot waits on
that event alone, never on the whole device. A slot is taken for one read and given back, so there are as many as
threads that read at once (the compute thread and the prefetch thread: two). Reads larger than a slot go in
slot-sized pieces. The slots are host memory the store holds (``counters``) from first use to close.

``staged=False`` (CPU): the rows go straight into the new tensor (one copy: a real copy, so offloading costs on CPU
too). A CPU test passes ``staged=True`` to run the piece and slot logic without CUDA (no registration, no events).

``StreamClock``: the prefetch overlap counters (``fetch_s``, ``wait_s``). On CPU a wall clock around the fetch in
its thread and around the compute thread's wait. On CUDA copies are asynchronous, so host clocks say when work was
queued, not done: there a fetch is timed by events on the side stream around it, and a wait by events on the
compute stream before the compute thread waits for the fetch and after the compute stream waits on the fetch's
event (the time the compute stream stood still for it). Event pairs are read (``settle``) when the counters are.

Not yet run on a GPU (none was lent when this was written, 2026-12-01; results/LOG.md): the CUDA branches here
follow PyTorch's documented stream and event semantics and are exercised by ``pytest -m gpu`` and
``bench/gpu_check.py`` when a GPU is lent. Also left for then: a host-placed graph's chunk blocks still reach the
device by blocking copies from pageable memory (``Engine._chunk``, outside the fetch clock: slower, not wrong).
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor


class _Slot:
    def __init__(self, memory: Tensor, event) -> None:
        self.memory, self.event = memory, event


class PinnedPool:
    """Pinned staging slots of ``slot_bytes`` each, owned by one ``TierStore`` (see the module docstring)."""

    def __init__(self, device: torch.device, hold: Callable[[int], None], release: Callable[[int], None],
                 slot_bytes: int, staged: bool | None = None) -> None:
        self.device, self.slot_bytes = device, int(slot_bytes)
        self.staged = device.type == "cuda" if staged is None else staged
        self.pinned = device.type == "cuda"  # registered pages and events only where CUDA is there to use them
        self._hold, self._release = hold, release
        self._free: list[_Slot] = []
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        return len(self._slots) * self.slot_bytes

    @contextmanager
    def _slot(self) -> Iterator[_Slot]:
        with self._lock:
            slot = self._free.pop() if self._free else None
        if slot is None:
            memory = torch.zeros(self.slot_bytes // 4, dtype=torch.float32)
            event = None
            if self.pinned:
                _check(torch.cuda.cudart().cudaHostRegister(memory.data_ptr(), self.slot_bytes, 0))
                event = torch.cuda.Event()
            slot = _Slot(memory, event)
            with self._lock:
                self._slots.append(slot)
            self._hold(self.slot_bytes)
        try:
            yield slot
        finally:
            with self._lock:
                self._free.append(slot)

    def to_device(self, rows: int, shape: tuple[int, ...], fill: Callable[[int, int, Tensor], None]) -> Tensor:
        """A new ``[rows, *shape]`` fp32 tensor on the device; ``fill(start, stop, out)`` writes host rows
        ``[start, stop)`` into ``out`` (a slot's memory, or the new tensor itself when not staged)."""
        out = torch.empty((rows, *shape), dtype=torch.float32, device=self.device)
        if not self.staged or rows == 0:
            fill(0, rows, out)
            return out
        width = math.prod(shape)
        per = self.slot_bytes // (4 * max(width, 1))
        if per < 1:
            raise ValueError(f"a row of {width} floats does not fit the {self.slot_bytes}-byte pinned staging slot; "
                             "the store's staging_bytes must hold one row of the widest buffer")
        stream = torch.cuda.current_stream(self.device) if self.pinned else None
        with self._slot() as slot:
            for start in range(0, rows, per):
                stop = min(rows, start + per)
                if slot.event is not None:
                    slot.event.synchronize()  # the slot's previous copy has left it (that copy only)
                piece = slot.memory[: (stop - start) * width].view(stop - start, *shape)
                fill(start, stop, piece)
                out[start:stop].copy_(piece, non_blocking=self.pinned)
                if slot.event is not None:
                    slot.event.record(stream)
        return out

    def close(self) -> None:
        """Unregister and drop every slot (their copies are waited for first)."""
        with self._lock:
            slots, self._slots, self._free = self._slots, [], []
        for slot in slots:
            if slot.event is not None:
                slot.event.synchronize()
                _check(torch.cuda.cudart().cudaHostUnregister(slot.memory.data_ptr()))
            self._release(self.slot_bytes)


def _check(error) -> None:
    code = int(getattr(error, "value", error))
    if code != 0:
        raise RuntimeError(f"CUDA error {code} ({error}) while (un)registering pinned staging memory")


READ_EVERY = 1024  # event pairs kept unread at most about twice this (each pair is two CUDA events)


class StreamClock:
    """Marks and spans of the prefetch overlap counters (see the module docstring): ``mark(stream)`` is a wall
    clock reading on CPU, a recorded timing event on CUDA; ``add(kind, start, end)`` adds the span to ``fetch``
    or ``wait`` at once (CPU) or when ``settle`` reads the events (CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.events = device.type == "cuda"
        self.seconds: dict[str, float] = {"fetch": 0.0, "wait": 0.0}  # and any other kind added
        self._pending: list[tuple[str, object, object]] = []
        self._lock = threading.Lock()

    def mark(self, stream=None):
        if not self.events:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def add(self, kind: str, start, end) -> None:
        with self._lock:
            if not self.events:
                self.seconds[kind] = self.seconds.get(kind, 0.0) + end - start
                return
            self._pending.append((kind, start, end))
            old = self._pending[:READ_EVERY] if len(self._pending) >= 2 * READ_EVERY else []  # long done by now
            del self._pending[:len(old)]
        self._read(old)

    def settle(self) -> dict[str, float]:
        """Read the events recorded so far (waiting for their spans to end) into the totals; returns them."""
        with self._lock:
            pending, self._pending = self._pending, []
        self._read(pending)
        return dict(self.seconds)

    def _read(self, pending: list) -> None:
        for kind, start, end in pending:
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000.0
            with self._lock:
                self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds
