"""An exclusive lock between the processes of one machine (``flock`` on a lock file), with a timeout whose error
names the file, so that a hung holder is found instead of waited on forever."""

from __future__ import annotations

import contextlib
import fcntl
import time
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def exclusive(path: Path, timeout_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError(f"lock {path} held by another process for more than {timeout_s:.0f} s. Fix: "
                                  f"find it (`fuser {path}`) and end it if it hangs") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
