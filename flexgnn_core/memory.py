"""Peak-memory measurement shared by every system, so one run never inherits another's peak.

Device: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. Host: the process peak resident set
(``VmHWM``), reset through ``/proc/self/clear_refs`` (Linux) so that runs in one process (Hydra multirun, tests) are
measured separately; where the reset is unavailable the value is the process-lifetime peak and is flagged.

A hard device cap: ``cap_device_memory`` makes a device budget the CUDA caching allocator's limit in this process
(``torch.cuda.set_per_process_memory_fraction``), so an allocation past it raises ``torch.OutOfMemoryError``
instead of succeeding; the harness sets ``$FLEXGNN_DEVICE_CAP_BYTES`` for every process of a capped job.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass, field

import torch

from flexgnn_core import machine

DEVICE_CAP_ENV = "FLEXGNN_DEVICE_CAP_BYTES"


def _reset_host_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # "5" resets the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def host_peak_bytes() -> int:
    peak = machine.status_bytes(("VmHWM",)).get("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class PeakMemoryMeter:
    """``with PeakMemoryMeter(device) as meter: ...`` then ``meter.peak_bytes`` -> {"device": .., "host": ..}."""

    device: torch.device
    peak_bytes: dict[str, int | None] = field(default_factory=dict)
    host_reset: bool = False

    def __enter__(self) -> "PeakMemoryMeter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.host_reset = _reset_host_peak()
        return self

    def __exit__(self, *exc) -> None:
        device_peak = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            device_peak = int(torch.cuda.max_memory_allocated(self.device))
        self.peak_bytes = {"device": device_peak, "host": host_peak_bytes()}


class TrainingPeak:
    """Peak memory over the training epochs only, the same window for every system (``loop.timed_training`` opens
    it around each epoch's step and closes it after the device is synchronised): preprocessing, loading and
    evaluation between epochs are outside it, what is resident through training (graph, features, buffers,
    parameters, optimiser state) is inside. ``peak_bytes``: {"device": max over epochs of
    ``torch.cuda.max_memory_allocated`` after a reset at the epoch's start (None off CUDA), "host": max over epochs
    of ``VmHWM`` after a reset (the process peak since its start where ``host_reset`` is False)}.

    Nothing here touches CUDA before the first window opens: by then the caller (a DDP rank) has set its device,
    so no context is made on GPU 0 by the meter (the harness no longer meters around the system)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.device_peak: int | None = None
        self.host_peak = 0
        self.host_reset = True

    def open(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.host_reset = _reset_host_peak() and self.host_reset

    def close(self) -> None:
        if self.device.type == "cuda":
            self.device_peak = max(self.device_peak or 0, int(torch.cuda.max_memory_allocated(self.device)))
        self.host_peak = max(self.host_peak, host_peak_bytes())

    @property
    def peak_bytes(self) -> dict[str, int | None]:
        return {"device": self.device_peak, "host": self.host_peak or None}


def release_cublas_workspaces(device: torch.device) -> int | None:
    """Free the cuBLAS / cuBLASLt workspaces torch holds per (handle, stream) on ``device`` and return their bytes
    (the drop in ``memory_allocated``); None off CUDA or where this torch cannot clear them. They come from the
    caching allocator (32 MiB each on sm90), so ``max_memory_allocated`` counts them although no plan places them:
    a device budget is compared with the peak less these bytes. They are made again on the next matmul."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if device.type != "cuda" or clear is None:
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    clear()
    return int(before - torch.cuda.memory_allocated(device))


def device_memory_fraction(budget_bytes: int, total_bytes: int) -> float:
    """``budget_bytes`` as the share of a device's ``total_bytes`` that the allocator may hold (at most 1)."""
    if budget_bytes <= 0 or total_bytes <= 0:
        raise ValueError(f"a device cap needs a positive budget and device size, got {budget_bytes} of {total_bytes}")
    return min(1.0, budget_bytes / total_bytes)


def cap_device_memory(device: torch.device, budget_bytes: int | None = None) -> float | None:
    """Limit this process's CUDA allocator on ``device`` to ``budget_bytes`` (default ``$FLEXGNN_DEVICE_CAP_BYTES``).

    Returns the fraction set, or None where nothing is capped (no budget, or not a CUDA device)."""
    if budget_bytes is None and os.environ.get(DEVICE_CAP_ENV):
        budget_bytes = int(os.environ[DEVICE_CAP_ENV])
    if budget_bytes is None or device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    fraction = device_memory_fraction(budget_bytes, torch.cuda.get_device_properties(index).total_memory)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction
