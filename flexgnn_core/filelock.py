"""An exclusive lock between the processes of one machine (``flock`` on a lock file, so a dead holder releases it),
with a timeout whose error names the file, so that a hung holder is found instead of waited on forever. Used by the
calibration cache (one process measures at a time) and the harness's MLflow store (opened by one process at a
time)."""

from __future__ import annotations

import contextlib
import fcntl
import time
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def exclusive(path: Path, timeout_s: float, what: str = "lock") -> Iterator[None]:
    """Hold ``path`` exclusively; after ``timeout_s`` of waiting raise ``TimeoutError`` (an ``OSError``) naming
    ``what`` and the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{what} {path} held by another process for more than {timeout_s:.0f} s. "
                                       f"Fix: find it (`fuser {path}`) and end it if it hangs") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
