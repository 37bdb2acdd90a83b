"""Working directories owned by one process, reaped by the next run once their owner is dead; disk reservations.

A run killed with SIGKILL (or by the out-of-memory killer) cannot remove what it wrote: the disk tier's
memory-mapped buffers, a DDP job's shard files. So each such directory holds ``.owner.json`` naming its process
(host, pid and the process's start time, so that a reused pid is not taken for the owner), and ``make_owned``
first removes the directories with the same prefix in the same parent whose owner is gone. Directories without
that file (made by other tools or older versions) and directories of other hosts (a shared file system) are never
touched. ``reap_multiprocessing_leftovers`` does the same for the ``pymp-*`` folders Python's multiprocessing
leaves behind a killed parent (the forkserver's socket), judged by whether any process still has the socket.

``reserve`` allocates a file's blocks up front (``posix_fallocate``), so that a full file system is an error at
allocation, naming the directory and the bytes, instead of a SIGBUS when a memory map writes into a hole.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Iterator

import psutil

OWNER_FILE = ".owner.json"


class DiskFull(OSError):
    """A reservation that the file system cannot hold; the message names the directory, the bytes and the fix."""


def process_started(pid: int) -> float | None:
    """The start time of a living process ``pid`` (None if it is gone or a zombie)."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.Error:
        return None


def is_running(pid: int, started: float) -> bool:
    """Whether the process that had ``pid`` and started at ``started`` still runs (a reused pid does not count)."""
    now_started = process_started(pid)
    return now_started is not None and abs(now_started - started) < 0.5


def owner_alive(directory: Path) -> bool | None:
    """True / False for a directory with an owner file of this host; None when it cannot be told (keep it)."""
    try:
        owner = json.loads((Path(directory) / OWNER_FILE).read_text())
        pid, started, host = int(owner["pid"]), float(owner["started"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname():
        return None
    return is_running(pid, started)


def reap(parent: str | Path, prefix: str) -> list[Path]:
    """Remove the ``prefix*`` directories in ``parent`` whose owner process is dead; returns the removed ones."""
    removed = []
    try:
        candidates = [p for p in Path(parent).iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return removed
    for path in candidates:
        if owner_alive(path) is False:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def make_owned(parent: str | Path | None, prefix: str) -> Path:
    """A new directory ``<parent>/<prefix>XXXX`` owned by this process (``parent`` None = the temp directory),
    after reaping the dead owners' directories with the same prefix there."""
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    reap(parent, prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    owner = {"pid": os.getpid(), "started": process_started(os.getpid()), "host": socket.gethostname()}
    (path / OWNER_FILE).write_text(json.dumps(owner) + "\n")
    return path


def _bound_unix_sockets() -> set[str] | None:
    """Paths of the Unix sockets some process of this network namespace holds (Linux); None elsewhere."""
    try:
        with open("/proc/net/unix") as table:
            next(table)
            return {fields[7] for fields in (line.split() for line in table) if len(fields) >= 8}
    except OSError:
        return None


def reap_multiprocessing_leftovers(parent: str | Path | None = None) -> list[Path]:
    """Remove this user's ``pymp-*`` folders in ``parent`` (default: the temp directory) that hold only
    ``listener-*`` sockets no process holds any more: what a SIGKILLed multiprocessing parent leaves behind."""
    bound = _bound_unix_sockets()
    if bound is None:
        return []
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        candidates = [p for p in parent.glob("pymp-*") if p.is_dir() and p.stat().st_uid == os.getuid()]
    except OSError:
        return removed
    for path in candidates:
        try:
            entries = list(path.iterdir())
            dead = entries and all(e.name.startswith("listener-") and stat.S_ISSOCK(e.lstat().st_mode)
                                   and str(e) not in bound for e in entries)
        except OSError:
            continue
        if dead:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def reserve(path: str | Path, nbytes: int, setting: str = "hardware.disk_dir", label: str | None = None,
            need: int | None = None) -> None:
    """Create ``path`` with ``nbytes`` allocated on disk, or raise ``DiskFull`` naming ``setting`` and the bytes
    (``need`` bytes for ``label`` when the file is one of several that together hold one thing)."""
    path = Path(path)
    with open(path, "wb") as handle:
        try:
            if nbytes > 0 and hasattr(os, "posix_fallocate"):
                os.posix_fallocate(handle.fileno(), 0, nbytes)
            else:  # no reservation on this OS: a sparse file, as before
                handle.truncate(nbytes)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            path.unlink(missing_ok=True)
            free = shutil.disk_usage(path.parent).free
            need = nbytes if need is None else need
            full = DiskFull(f"{setting}: cannot reserve {need} bytes for {label or path.name} in {path.parent} "
                            f"({os.strerror(error.errno)}; {free} bytes free). Fix: point {setting} at a file system "
                            f"with at least {need} more bytes free, or give the plan more device or host budget "
                            "so less goes to disk")
            full.errno = error.errno
            raise full from None


@contextlib.contextmanager
def owned_dir(parent: str | Path | None, prefix: str) -> Iterator[Path]:
    """``make_owned`` for the duration of a ``with`` block, removed at its end (on error and Ctrl-C too)."""
    path = make_owned(parent, prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
