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

DEVICE_CAP_ENV = "FLEXGNN_DEVICE_CAP_BYTES"


def _reset_host_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # "5" resets the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def host_peak_bytes() -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
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
