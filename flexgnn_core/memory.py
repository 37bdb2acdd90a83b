"""Peak-memory measurement shared by every system, so one run never inherits another's peak.

Device: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. Host: the process peak resident set
(``VmHWM``), reset through ``/proc/self/clear_refs`` (Linux) so that runs in one process (Hydra multirun, tests) are
measured separately; where the reset is unavailable the value is the process-lifetime peak and is flagged.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass, field

import torch


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
