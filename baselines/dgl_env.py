"""The DGL baseline's pinned environment: where it is, whether it is complete, and making it on first use.

DGL runs in its own environment (``baselines/dgl_fullgraph.py`` says why), made by ``scripts/make_dgl_env.sh``
from the pins in ``scripts/dgl_env_pins.txt``; the script writes a marker holding those pins after its import check
passes, so an environment without the marker, or made with other pins, counts as missing.

``ensure_python(env, auto_install=...)`` returns the environment's python. When the environment is missing and
auto-install is on (the default; off with ``system.auto_install=false`` or ``FLEXGNN_DGL_AUTO_INSTALL=0``), it runs
the script first, once per machine: a file lock beside the environment makes parallel jobs wait for the one that
creates it, the script's output goes to stderr line by line, and a failed creation (no network, no suitable
Python) raises ``DGLEnvironmentMissing`` with the script's last lines, which a sweep records as a skipped job. A
failure is not retried by the jobs that waited on it, nor again within the same process (a sweep's other DGL jobs
are skipped at once); a later run tries again.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from flexgnn_core.spec import SystemUnavailable

REPO_ROOT = Path(__file__).resolve().parents[1]
CREATE_SCRIPT = REPO_ROOT / "scripts" / "make_dgl_env.sh"
PINS_FILE = REPO_ROOT / "scripts" / "dgl_env_pins.txt"
DEFAULT_ENV_DIR = Path.home() / ".cache" / "flexgnn-bench" / "dgl-env"
ENV_MARKER = ".flexgnn-dgl-env-ok"  # written by the script after its import check passes; holds the pins
AUTO_INSTALL_VAR = "FLEXGNN_DGL_AUTO_INSTALL"
# Measured on 2026-12-01 (results/LOG.md); said before the download starts so that nobody waits blind.
EXPECTED_COST = "about 2.9 GB to download, 5.3 GB on disk; 3.3 min measured on 2 cores, longer on a slow link"
_TAIL_LINES = 25
_failed_here: dict[Path, str] = {}  # env -> why its creation failed in this process (not retried by this process)


class DGLEnvironmentMissing(SystemUnavailable):
    """The pinned DGL environment is absent or incomplete and was not made; the message says how to make it."""


def env_dir(chosen: str | os.PathLike | None = None) -> Path:
    """``chosen`` (the ``env_dir`` option), else ``$FLEXGNN_DGL_ENV``, else ``~/.cache/flexgnn-bench/dgl-env``."""
    return Path(chosen or os.environ.get("FLEXGNN_DGL_ENV") or DEFAULT_ENV_DIR).expanduser()


def create_command(env: Path) -> str:
    """The one command that creates the environment at ``env`` (run from the repository root)."""
    if env == DEFAULT_ENV_DIR and env_dir() == DEFAULT_ENV_DIR:
        return "bash scripts/make_dgl_env.sh"
    return f"FLEXGNN_DGL_ENV={shlex.quote(str(env))} bash scripts/make_dgl_env.sh"


def read_pins(pins_file: Path = PINS_FILE) -> str:
    """The pins as the script writes them into the marker: one line, space-separated, comments dropped."""
    lines = (line.split("#", 1)[0].strip() for line in pins_file.read_text().splitlines())
    return " ".join(line for line in lines if line)


def missing_reason(env: Path, pins: str) -> str | None:
    """Why ``env`` is not a usable environment for ``pins`` (None: it is)."""
    marker = env / ENV_MARKER
    if not (env / "bin" / "python").exists() or not marker.is_file():
        return f"missing or incomplete at {env} (no {ENV_MARKER})"
    made_with = marker.read_text().strip()
    if made_with != pins:
        return f"at {env} made with other pins ({made_with!r}; scripts/dgl_env_pins.txt now says {pins!r})"
    return None


def auto_install_enabled(option: bool | None) -> bool:
    """The ``auto_install`` option when set, else ``$FLEXGNN_DGL_AUTO_INSTALL`` (1/0, true/false, yes/no), else on."""
    if option is not None:
        return bool(option)
    value = os.environ.get(AUTO_INSTALL_VAR, "").strip().lower()
    if value in ("", "1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"environment variable {AUTO_INSTALL_VAR}={value!r}: expected 1 or 0 (true/false, yes/no); "
                     f"unset it to create the DGL environment on first use, or set it to 0 to never do so")


@contextmanager
def _locked(env: Path, stream: TextIO) -> Iterator[None]:
    lock_path = env.parent / f".{env.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[dgl-env] waiting for another process that is creating the DGL environment ({lock_path})",
                  file=stream, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_script(script: Path, env: Path, stream: TextIO) -> tuple[int, list[str]]:
    """Run the creation script, echoing each line to ``stream`` with the elapsed time; (exit code, last lines)."""
    start = time.perf_counter()
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    proc = subprocess.Popen(["bash", str(script)], cwd=REPO_ROOT, env={**os.environ, "FLEXGNN_DGL_ENV": str(env)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            bufsize=1)
    try:
        for line in proc.stdout:
            elapsed = int(time.perf_counter() - start)
            print(f"[dgl-env {elapsed // 60}:{elapsed % 60:02d}] {line.rstrip()}", file=stream, flush=True)
            tail.append(line.rstrip())
        return proc.wait(), list(tail)
    except BaseException:  # Ctrl-C or a crash here: do not leave pip running
        proc.kill()
        proc.wait()
        raise


def _create(env: Path, pins: str, reason: str, script: Path, stream: TextIO) -> None:
    print(f"[dgl-env] system=dgl needs its pinned environment, which is {reason}. Creating it now, once for this "
          f"machine ({EXPECTED_COST}) with: {create_command(env)}\n[dgl-env] Not wanted? Stop here and run with "
          f"system.auto_install=false or {AUTO_INSTALL_VAR}=0 (then DGL jobs are skipped).", file=stream, flush=True)
    start = time.perf_counter()
    code, tail = _run_script(script, env, stream)
    still_missing = missing_reason(env, pins)
    if code != 0 or still_missing:
        last = "\n".join(tail[-_TAIL_LINES:])
        raise DGLEnvironmentMissing(
            f"system=dgl: creating its pinned environment at {env} failed (exit code {code}"
            f"{'' if code else '; ' + str(still_missing)}) after {time.perf_counter() - start:.0f} s; its last "
            f"lines:\n{last}\nFix the cause (e.g. no network to PyPI), then run (from {REPO_ROOT}): "
            f"{create_command(env)}")
    print(f"[dgl-env] ready after {time.perf_counter() - start:.0f} s: {env}", file=stream, flush=True)


def ensure_python(env: Path, *, auto_install: bool, script: Path | None = None, pins_file: Path | None = None,
                  stream: TextIO | None = None) -> Path:
    """The python of the complete environment at ``env``, created first if missing and ``auto_install``.

    Raises ``DGLEnvironmentMissing`` naming the creation command when the environment is missing and
    ``auto_install`` is off, or when creating it failed (now, earlier in this process, or in the process this one
    waited for). ``script`` and ``pins_file`` default to ``CREATE_SCRIPT`` and ``PINS_FILE`` (tests pass stand-ins).
    """
    script, stream = script or CREATE_SCRIPT, stream or sys.stderr
    pins = read_pins(pins_file or PINS_FILE)
    reason = missing_reason(env, pins)
    if reason is None:
        return env / "bin" / "python"
    if not auto_install:
        raise DGLEnvironmentMissing(
            f"system=dgl runs in a pinned DGL environment (dgl 2.1.0 needs torch<=2.2.1), which is {reason}; "
            f"automatic creation is off (system.auto_install=false or {AUTO_INSTALL_VAR}=0). Create it with "
            f"(from {REPO_ROOT}; {EXPECTED_COST}): {create_command(env)}")
    if env in _failed_here:
        raise DGLEnvironmentMissing(f"{_failed_here[env]}\n(not retried in this process)")
    failure_file = env.parent / f".{env.name}.failed"
    waiting_since = time.time()
    with _locked(env, stream):
        reason = missing_reason(env, pins)  # the process we waited for may have made it
        if reason is None:
            return env / "bin" / "python"
        if failure_file.exists() and failure_file.stat().st_mtime >= waiting_since:
            _failed_here[env] = failure_file.read_text()
            raise DGLEnvironmentMissing(f"{_failed_here[env]}\n(the attempt this job waited for)")
        try:
            _create(env, pins, reason, script, stream)
        except DGLEnvironmentMissing as error:
            failure_file.write_text(str(error))
            _failed_here[env] = str(error)
            raise
        failure_file.unlink(missing_ok=True)
    return env / "bin" / "python"
