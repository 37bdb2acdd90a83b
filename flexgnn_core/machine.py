"""What this machine holds for a run: memory available now (RAM, a control group's limit, GPU memory), its cores,
and the process's own I/O counters.

``memory_room()`` is the memory a run may still take: the least of the kernel's ``MemAvailable`` and, when this
process runs in a memory-limited control group (a container, ``hardware.memory_cap``, a Slurm job), the group's
limit minus its usage; minus a margin kept free (5% of the bound, at least ``MIN_MARGIN`` = 320 MiB) for what no
plan accounts (allocator slack, autograd's temporaries, the evaluation pass, Python objects, thread stacks: measured
in capped CPU runs at 100-260 MiB of anonymous memory above the engine's tally, results/LOG.md 2026-12-02; with
256 MiB a quarter-cap GCN run with column passes was OOM-killed once in three and peaked at 0.98 of its cap). Clean
file pages are not counted as used: the kernel drops them before it kills anything (a memory-mapped graph's pages,
page cache charged to the group), so a group's usage is read less its reclaimable page cache (``memory.stat``: file
less shmem, dirty and writeback pages) and a cap is compared with the memory this process holds that cannot be
dropped (``held_bytes``: RssAnon + RssShmem). ``release_free_heap()`` first hands memory the allocator holds but no
longer uses back to the kernel, so the reading is what the run really holds. ``FLEXGNN_MEMORY_ROOM_BYTES`` overrides
the reading (tests and what-if runs: a machine made to look small). On CUDA ``device_room()`` is the free device
memory minus the same margin. ``process_io()`` reads ``/proc/self/io``: bytes this process made the storage devices
read and write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

ROOM_ENV = "FLEXGNN_MEMORY_ROOM_BYTES"
MIN_MARGIN = 320 * 2**20


@dataclass(frozen=True)
class Room:
    """Bytes a run may still allocate (``bytes``, after ``margin_bytes``), and where the bound came from."""

    bytes: int
    margin_bytes: int
    source: str

    def describe(self) -> str:
        return f"{self.bytes / 2**30:.2f} GiB ({self.source}, {self.margin_bytes / 2**20:.0f} MiB kept free)"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text in ("max", "") else int(text)


def _stat(path: Path) -> dict[str, int]:
    try:
        return {key: int(value) for key, value in (line.split() for line in path.read_text().splitlines())}
    except (OSError, ValueError):
        return {}


def reclaimable_cache(stat: dict[str, int], v1: bool = False) -> int:
    """Page cache a memory group may drop instead of failing (clean, not tmpfs): from its ``memory.stat``."""
    if v1:
        cache, shmem = stat.get("total_cache", stat.get("cache", 0)), stat.get("total_shmem", stat.get("shmem", 0))
        busy = stat.get("total_dirty", stat.get("dirty", 0)) + stat.get("total_writeback", stat.get("writeback", 0))
    else:
        cache, shmem = stat.get("file", 0), stat.get("shmem", 0)
        busy = stat.get("file_dirty", 0) + stat.get("file_writeback", 0)
    return max(0, cache - shmem - busy)


def cgroup_room(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory control group's limit minus its usage for this process (v2, then v1), or None if unlimited; its
    reclaimable page cache (``reclaimable_cache``) is not counted as usage."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if hierarchy == "0" and controllers == "":  # cgroup v2: walk up, the tightest limit holds
            node = root / rel if (root / "cgroup.controllers").exists() else root / "unified" / rel
            while True:
                limit, usage = _read_int(node / "memory.max"), _read_int(node / "memory.current")
                if limit is not None and usage is not None:
                    usage -= reclaimable_cache(_stat(node / "memory.stat"))
                    best = min(best, limit - usage) if best is not None else limit - usage
                if node in (root, root / "unified") or node == node.parent:
                    break
                node = node.parent
        elif "memory" in controllers.split(","):  # cgroup v1
            node = root / "memory" / rel
            while True:
                limit = _read_int(node / "memory.limit_in_bytes")
                usage = _read_int(node / "memory.usage_in_bytes")
                if limit is not None and usage is not None and limit < 2**60:  # v1 says "unlimited" as ~2^63
                    usage -= reclaimable_cache(_stat(node / "memory.stat"), v1=True)
                    best = min(best, limit - usage) if best is not None else limit - usage
                if node == root / "memory" or node == node.parent:
                    break
                node = node.parent
    return best


def release_free_heap() -> bool:
    """glibc's ``malloc_trim(0)``: freed heap pages go back to the kernel (after loading or generating a graph, the
    allocator may sit on hundreds of MB of freed temporaries that count as resident). False where unavailable."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def status_bytes(keys: tuple[str, ...], status: Path = Path("/proc/self/status")) -> dict[str, int]:
    """The fields ``keys`` of ``/proc/self/status`` (given there in kB) in bytes; those it lacks are left out, and
    where it cannot be read the result is empty."""
    fields = {}
    try:
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in keys:
                fields[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return fields


def held_bytes(status: Path = Path("/proc/self/status")) -> int:
    """Resident memory of this process that the kernel cannot drop: ``RssAnon`` + ``RssShmem`` (mapped file pages,
    e.g. a memory-mapped graph, are left out: they are read again on demand). Where /proc lacks them, the RSS."""
    fields = status_bytes(("RssAnon", "RssShmem"), status)
    if len(fields) == 2:
        return fields["RssAnon"] + fields["RssShmem"]
    import psutil

    return int(psutil.Process().memory_info().rss)


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_room(cap_bytes: int | None = None) -> Room:
    """Memory this process may still take, after the margin: see the module docstring. ``cap_bytes``: a cap the
    caller knows (``hardware.memory_cap``) on top of what the kernel says."""
    if os.environ.get(ROOM_ENV):
        value = int(os.environ[ROOM_ENV])
        return Room(value, 0, f"${ROOM_ENV}")
    candidates = {"MemAvailable": mem_available(), "memory cgroup": cgroup_room()}
    if cap_bytes is not None:
        release_free_heap()
        candidates["hardware.memory_cap"] = cap_bytes - held_bytes()
    known = {name: value for name, value in candidates.items() if value is not None}
    if not known:
        import psutil

        known = {"psutil": int(psutil.virtual_memory().available)}
    source = min(known, key=known.get)
    bound = max(0, known[source])
    margin = max(MIN_MARGIN, bound // 20)
    return Room(max(0, bound - margin), margin, source)


def device_room(device: torch.device) -> Room | None:
    """Free memory on a CUDA device after the margin (None on CPU: there "device" is host memory)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    margin = max(MIN_MARGIN, free // 20)
    return Room(max(0, free - margin), margin, f"free on {torch.cuda.get_device_name(device)}")


def process_io() -> dict[str, int] | None:
    """``read_bytes`` / ``write_bytes`` this process caused at the storage layer so far (Linux), else None."""
    try:
        values = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
        return {"read_bytes": int(values["read_bytes"]), "write_bytes": int(values["write_bytes"])}
    except (OSError, KeyError, ValueError):
        return None


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a job's share of a node)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
