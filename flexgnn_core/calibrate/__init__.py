"""Calibrate the cost model on this machine, or pick a datasheet profile of a known GPU server for what-ifs.

``measure()`` runs short microbenchmarks (a few seconds at the default sizes) and returns a ``cost.Hardware``:

- aggregation: ``torch.sparse.mm`` of a random CSR matrix (average degree 8) with dense features of a few widths;
  the rate is edges x width per second, the median over the sizes;
- dense matmul FLOP/s on a tall-skinny product (the shape of a GNN transform);
- elementwise memory bandwidth (ReLU: one read and one write);
- links: host -> device is a gather of random rows into a device tensor (what a halo fetch does), device -> host
  a contiguous copy into host memory (pinned on CUDA); on CPU both are copies between two CPU buffers;
- disk: writing a temporary file with fsync, then reading it back, with the disk tier's own I/O (``O_DIRECT`` where
  the file system takes it: the device's rate, not the page cache's);
- per chunk step overhead: the time of one tiny chunk step (a small sparse product, a gather and a matmul);
- halo gathers: a gather of random rows and a scatter-add back on the device (chunks do both with halo rows);
- GAT's edge softmax per edge and head (what recomputing attention costs);
- dropout masks (``flexgnn_core.dropout``) made and applied per entry;
- copy/compute overlap (CUDA): a pinned copy and matmuls on two streams, timed apart and together
  (``micro.copy_compute_overlap``; on CPU recorded as not measured there, and the engine probe measures it);
- engine probe (``probe.engine_probe``): small engine runs correct what microbenchmarks miss: the aggregation and the
  other compute rates and the engine's per-step overhead (three all-device GCN runs: two densities, two P), the
  prefetch overlap on CPU (hidden over fetch time of an all-host run), the host links, and GAT's attention rates
  per edge and per edge and head (two head counts).

``load_or_measure()`` caches the result as JSON under ``$FLEXGNN_CACHE_DIR`` (default ``~/.cache/flexgnn-bench``),
in a file named by a fingerprint of the machine (CPU model, cores, torch threads, torch version, device); ``force=True``
measures again. The file is written atomically, and measured by one process at a time (``measuring``: a lock next to
it), so the parallel jobs of a sweep on one machine calibrate once: the others wait, then read its file.
``profile(name)`` returns datasheet values (not measurements) of known GPUs and links.

Layout: ``micro`` (microbenchmarks), ``probe`` (engine probes and fits), ``profiles`` (datasheets); this module
measures, caches and loads. Calibration is a step of its own (STYLE #4b): solvers never call it.

Command: ``python -m flexgnn_core.calibrate [--force] [--device cuda]`` prints the rates as JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

from flexgnn_core.calibrate import micro
from flexgnn_core.calibrate.probe import engine_probe
from flexgnn_core.calibrate.profiles import DISKS, GPUS, LINKS, PROFILES, profile
from flexgnn_core.filelock import exclusive
from flexgnn_core.plan.cost import Hardware

__all__ = ["CACHE_ENV", "SCHEMA", "DISKS", "GPUS", "LINKS", "PROFILES", "cache_path", "fingerprint",
           "load_or_measure", "measure", "measuring", "profile"]

CACHE_ENV = "FLEXGNN_CACHE_DIR"
MEASURE_LOCK_TIMEOUT_S = 900.0  # a measurement takes seconds; a holder this slow is hung
# 8: disk rates through the tier's own I/O (7 read the page cache); 7: dropout masks; 6: per-transfer latency;
# 5: engine step overhead, GAT softmax; 4: halo gathers; 3: link bytes
SCHEMA = 8


def measure(device: str | torch.device = "cpu", scale: float = 1, probe: bool = True,
            notes: dict | None = None) -> Hardware:
    """Microbenchmark this machine (``scale`` multiplies the problem sizes; 1 takes a few seconds on 2 CPU cores),
    then correct the rates with a short engine run (``probe``). ``notes`` (a dict) receives how the overlap was
    obtained (``overlap``: measured on CUDA by ``micro.copy_compute_overlap``, "not measured" by it on CPU)."""
    device = torch.device(device)
    overlap, how = micro.copy_compute_overlap(device, int(16_000_000 * scale))
    if notes is not None:
        notes["overlap"] = {"value": overlap, "method": how}
    rows = int(20_000 * scale)
    h2d, d2h = micro.links(device, int(2_000_000 * scale))
    disk_read, disk_write = micro.disk(int(32 * 2**20 * scale))
    hw = Hardware(name=f"measured-{fingerprint(device)['device']}",
                  agg_edge_width_per_s=micro.aggregation(device, rows), matmul_flop_per_s=micro.matmul(device, rows),
                  memory_bytes_per_s=micro.memory(device, int(4_000_000 * scale)),
                  h2d_bytes_per_s=h2d, d2h_bytes_per_s=d2h, disk_read_bytes_per_s=disk_read,
                  disk_write_bytes_per_s=disk_write, step_overhead_s=micro.step_overhead(device),
                  gather_bytes_per_s=micro.gather(device, int(8_000_000 * scale)),  # past the caches
                  gat_softmax_edge_head_per_s=micro.softmax(device, rows),
                  dropout_mask_per_s=micro.dropout_masks(device, rows),
                  overlap=0.0 if overlap is None else overlap, source="measured")
    if not probe:
        return hw
    hw, _ = engine_probe(hw, device, int(20_000 * scale))
    return hw


# ---- cache -----------------------------------------------------------------------------------------------------
def fingerprint(device: torch.device) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    from flexgnn_core import native

    return {"cpu": cpu, "cores": str(os.cpu_count()), "threads": str(torch.get_num_threads()),
            "torch": torch.__version__, "device": name,
            "spmm": native.describe() if device.type == "cpu" else "cuda"}  # the product the rates were measured on


def cache_path(device: torch.device) -> Path:
    folder = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "flexgnn-bench")
    key = hashlib.sha256(json.dumps(fingerprint(device), sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"calibration-{key}.json"


def _cached(path: Path) -> Hardware | None:
    try:
        record = json.loads(path.read_text())
        if record.get("schema") == SCHEMA:
            return Hardware.from_json(record["hardware"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError):
        pass  # a corrupt or foreign cache file: measure again and overwrite it
    return None


@contextlib.contextmanager
def measuring(path: Path, timeout_s: float = MEASURE_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold ``<cache file>.lock`` (``flock``, so a dead holder releases it) while this process measures: parallel jobs
    of a sweep on one machine wait for the one measuring instead of each measuring (and skewing each other)."""
    with exclusive(path.with_suffix(".lock"), timeout_s, "calibration lock"):
        yield


def load_or_measure(device: str | torch.device | None = None, force: bool = False, scale: float = 1) -> Hardware:
    """This machine's rates from the cache, measured (and cached) when absent, stale in schema, or ``force``."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = cache_path(device)
    if not force and (hw := _cached(path)) is not None:
        return hw
    with measuring(path):
        if not force and (hw := _cached(path)) is not None:  # another process measured while this one waited
            return hw
        notes: dict = {}
        hw = measure(device, scale, notes=notes)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"schema": SCHEMA, "fingerprint": fingerprint(device), "measured_utc": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "hardware": hw.to_json(), **notes}
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".calibration-", suffix=".tmp")
        with os.fdopen(handle, "w") as out:  # atomic: a reader sees the old file or the new one, never half of one
            out.write(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return hw
