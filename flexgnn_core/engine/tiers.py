"""Tier storage for whole-graph intermediates, with every byte counter in one place.

- ``device``: CUDA when present, else CPU memory (accounted apart from host so that plans are checked here too).
- ``host``: CPU memory (plain: exactly the accounted bytes). Reads copy the rows to the device (a real copy on CPU
  too); on CUDA through the store's pinned staging slots, asynchronously (``engine.transfer``).
- ``disk``: one file per column block of a buffer (``plan.blocks.column_blocks``: at most 64 floats of each row;
  ``engine.buffers``) in a private working directory (``diskfile.RowFile``: explicit positioned I/O,
  ``O_DIRECT`` where the file system takes it, space reserved up front), removed when the store closes (also on
  error or Ctrl-C: the store is a context manager and registers an ``atexit`` fallback). The disk tier's staging
  buffers (``staging_bytes`` each, one per thread that touches the disk) are host memory, accounted as such.

``TierStore.counters`` holds current and peak bytes per tier, bytes per link (``h2d``, ``d2h``: the rows a plan
moves; ``disk_read``, ``disk_write``: the whole blocks the disk tier's system calls move, ``plan.blocks``; the
simulator predicts all four exactly), each disk file's own total (``disk_actual``, a cross-check) and the prefetch
overlap times. Counters are updated under
a lock: prefetch threads read too.
``TierStore.behind`` writes a disk buffer's rows on a write-behind thread (one write in flight; a read of those
rows waits for it), so the compute thread does not stand still for the disk.
``TierStore.prefetched`` runs a pass's fetches one chunk ahead in a background thread when they read off-device
tiers, on CUDA on the store's one side stream (one stream for the store's life: each new stream would bring cuBLAS
a new workspace for the matmuls a fetch runs), ordered after the compute stream's work by an event recorded when
the fetch is submitted (what the fetch reads was queued before then), and timed by events (``StreamClock``).
"""

from __future__ import annotations

import atexit
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from flexgnn_core import workdirs
from flexgnn_core.engine.buffers import Buffer
from flexgnn_core.engine.diskfile import Staging
from flexgnn_core.engine.transfer import PinnedPool, StreamClock
from flexgnn_core.plan.problem import MAX_STAGING_BYTES, STAGING_THREADS
from flexgnn_core.spec import TIERS

STORE_LINKS = ("h2d", "d2h", "disk_read", "disk_write")


@dataclass
class Counters:
    current: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TIERS})
    peak: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TIERS})
    links: dict[str, int] = field(default_factory=lambda: {k: 0 for k in STORE_LINKS})
    disk_actual: dict[str, int] = field(default_factory=lambda: {"read": 0, "write": 0})  # closed files' totals
    clock: StreamClock = field(default_factory=lambda: StreamClock(torch.device("cpu")), repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def fetch_s(self) -> float:  # time spent fetching ahead (in the prefetch thread; on CUDA on the side stream)
        return self.clock.settle()["fetch"]

    @property
    def wait_s(self) -> float:  # time the compute thread (on CUDA: the compute stream) waited for a prefetch
        return self.clock.settle()["wait"]

    def hold(self, tier: str, nbytes: int) -> None:
        with self.lock:
            self.current[tier] += nbytes
            self.peak[tier] = max(self.peak[tier], self.current[tier])

    def release(self, tier: str, nbytes: int) -> None:
        with self.lock:
            self.current[tier] -= nbytes

    def moved(self, link: str, nbytes: int) -> None:
        with self.lock:
            self.links[link] += nbytes

    @property
    def hidden_s(self) -> float:
        seconds = self.clock.settle()
        return max(seconds["fetch"] - seconds["wait"], 0.0)


class TierStore:
    """Owns every buffer and the disk working directory. ``with TierStore(device, disk_dir) as store: ...``."""

    def __init__(self, device: torch.device, disk_dir: str | None = None,
                 staging_bytes: int = MAX_STAGING_BYTES):
        self.device = device
        self.staging = Staging(staging_bytes)  # per thread, made on first use in each thread that touches disk
        self.counters = Counters()
        self.buffers: dict[str, Buffer] = {}
        self._disk_parent = disk_dir
        self._workdir: Path | None = None
        self._staging_held = 0
        self.disk_modes: set[str] = set()  # "direct" (O_DIRECT) or "buffered", per disk buffer made
        self.counters.clock = StreamClock(device)
        self.pinned = PinnedPool(device, lambda n: self.counters.hold("host", n),
                                 lambda n: self.counters.release("host", n), self.staging.size)
        self._stream = None  # the one side stream of this store (CUDA), made on first prefetch
        self._writer: ThreadPoolExecutor | None = None  # the write-behind thread, made on the first disk row write
        self._last_write = None
        self.pending_lock = threading.Lock()
        atexit.register(self.close)

    def behind(self, buffer: Buffer, start: int, stop: int, write: Callable[[], None]) -> None:
        """Run ``write`` (rows ``[start, stop)`` of disk buffer ``buffer``) on the write-behind thread, so the disk
        write overlaps the next step's compute. One write is in flight at most (its rows are held until it is
        done: a chunk's rows, inside the step's working set); writes run in the order given; a read, add, column
        access or zeroing of the buffer waits for its pending writes first (``Buffer.settle``)."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flexgnn-write")
        if self._last_write is not None:
            self._last_write.result()  # the previous write is done (and raised, had it failed)
        future = self._writer.submit(write)
        with self.pending_lock:
            buffer.pending.append((start, stop, future))
        self._last_write = future

    def flush(self) -> None:
        """Wait for every write-behind write (a pass's end: counters and files are then complete)."""
        for buffer in list(self.buffers.values()):
            buffer.settle()

    def uses_disk(self) -> None:
        """The first disk buffer brings the disk tier's staging buffers (host memory, one per thread)."""
        if not self._staging_held:
            self._staging_held = STAGING_THREADS * self.staging.size
            self.counters.hold("host", self._staging_held)

    def disk_actual(self) -> dict[str, int]:
        """Bytes the disk tier's system calls moved so far (whole aligned blocks), open and closed files."""
        live = [f.actual for b in self.buffers.values() for f in b.files]
        return {kind: self.counters.disk_actual[kind] + sum(a[kind] for a in live) for kind in ("read", "write")}

    def disk_path(self, name: str) -> Path:
        if self._workdir is None:
            parent = self._disk_parent
            try:
                self._workdir = workdirs.make_owned(parent, prefix="flexgnn-")  # reaps dead runs' dirs
            except OSError as error:
                raise OSError(f"disk tier: disk_dir={parent!r} is not writable ({error}); set disk_dir to a "
                              "writable directory") from error
        return self._workdir / f"{name}.f32"

    @property
    def workdir(self) -> Path | None:
        return self._workdir

    def alloc(self, name: str, shape: tuple[int, ...], tier: str) -> Buffer:
        if tier not in TIERS:
            raise ValueError(f"tier '{tier}' for '{name}' is unknown; valid: {', '.join(TIERS)}")
        buffer = Buffer(self, name, tuple(int(s) for s in shape), tier)
        self.buffers[name] = buffer
        return buffer

    def track(self, *tensors: Tensor) -> int:
        """Account device working tensors of one step; returns their bytes (pass to ``untrack`` after)."""
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        self.counters.hold("device", nbytes)
        return nbytes

    def untrack(self, nbytes: int) -> None:
        self.counters.release("device", nbytes)

    def fresh(self, *tensors: Tensor) -> list[Tensor]:
        """The tensors that are new device memory (not views of a device-resident buffer), for accounting."""
        owned = {b.data.untyped_storage().data_ptr() for b in self.buffers.values() if b.tier == "device"}
        return [t for t in tensors if isinstance(t, Tensor) and t.untyped_storage().data_ptr() not in owned]

    def moved_bytes(self) -> int:
        with self.counters.lock:
            return sum(self.counters.links.values())

    def side_stream(self):
        """The store's one side stream on CUDA (None elsewhere): prefetches of every pass run on it."""
        if self._stream is None and self.device.type == "cuda":
            self._stream = torch.cuda.Stream(self.device)
        return self._stream

    def prefetched(self, items: Sequence[Any], fetch: Callable[[Any], dict],
                   prefetch: bool = True) -> Iterator[tuple[Any, dict]]:
        """``(item, fetch(item))`` in order. The first fetch runs here; when it moved bytes over a link (what it
        reads lives off the device) and ``prefetch`` is on, each next item's fetch runs in a worker thread while
        the caller computes on this one (on CUDA on the store's side stream, so copies overlap kernels); the time
        fetches took, the time the caller waited and so the time hidden are counted (``StreamClock``). What a fetch
        returns is device working memory while held (``fresh``: the tensors that are new memory, not buffer
        views)."""
        if not items:
            return
        stream = self.side_stream()
        compute = torch.cuda.current_stream(self.device) if stream is not None else None
        clock = self.counters.clock
        before, start = self.moved_bytes(), clock.mark(compute)
        first = fetch(items[0])
        background = prefetch and len(items) > 1 and self.moved_bytes() > before
        if background:  # the first fetch has nothing to hide behind: all of it is waited for
            end = clock.mark(compute)
            clock.add("fetch", start, end)
            clock.add("wait", start, end)
        if not background:
            for i, item in enumerate(items):
                fetched = first if i == 0 else fetch(item)
                held = self.track(*self.fresh(*fetched.values()))
                yield item, fetched
                self.untrack(held)
            return

        def timed(item: Any, ready) -> tuple[dict, int, Any]:
            torch.set_num_threads(1)  # this thread's own OpenMP setting: its copies leave the cores to the compute
            if stream is None:
                begin = clock.mark()
                out = fetch(item)
                clock.add("fetch", begin, clock.mark())
                return out, self.track(*self.fresh(*out.values())), None
            with torch.cuda.stream(stream):
                stream.wait_event(ready)  # read only what the compute stream had queued when this was submitted
                begin = clock.mark(stream)
                out = fetch(item)
                done = clock.mark(stream)
            clock.add("fetch", begin, done)
            return out, self.track(*self.fresh(*out.values())), done  # in flight counts as device memory

        with ThreadPoolExecutor(max_workers=1) as pool:
            future = None
            for i, item in enumerate(items):
                if i == 0:
                    fetched, held = first, self.track(*self.fresh(*first.values()))
                else:
                    waiting = clock.mark(compute)  # before this thread waits: a host wait stalls the stream too
                    fetched, held, done = future.result()
                    if stream is not None:
                        compute.wait_event(done)  # the compute stream, not this thread, waits for the copies
                        for value in fetched.values():  # memory made on the side stream, used on compute's
                            if isinstance(value, Tensor) and value.is_cuda:
                                value.record_stream(compute)
                    clock.add("wait", waiting, clock.mark(compute))
                if i + 1 < len(items):
                    future = pool.submit(timed, items[i + 1], clock.mark(compute) if stream is not None else None)
                yield item, fetched
                self.untrack(held)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)  # a failed write raised at its settle; here only its end is awaited
            self._writer, self._last_write = None, None
        self.pinned.close()
        for buffer in list(self.buffers.values()):
            if buffer.data is not None or buffer.files:
                buffer.free()
        self.buffers.clear()
        if self._staging_held:
            self.counters.release("host", self._staging_held)
            self._staging_held = 0
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        atexit.unregister(self.close)

    def __enter__(self) -> "TierStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
