"""SIGTERM takes Ctrl-C's path: what `timeout`, Slurm, Kubernetes and systemd send to stop a job ends it cleanly.

Python turns SIGINT into ``KeyboardInterrupt``, on which the harness removes the disk tier, stops DDP ranks, marks
the MLflow run KILLED and writes a ``status: "killed"`` record; SIGTERM's default action ends the process at once
and leaves all of that behind. Inside ``sigterm_as_interrupt()`` SIGTERM raises ``Terminated`` (a
``KeyboardInterrupt``) in the main thread instead.

A signal handler's exception can land in a finalizer (a ``__del__`` or weakref callback run by the garbage
collector), where Python prints "Exception ignored" and drops it; the run would go on as if nothing happened. So
until the code that cleans up says it has the exception (``acknowledge()``), a helper thread sends SIGTERM to the
main thread again every ``RESEND_S``; after that, further SIGTERMs are ignored so that the cleanup finishes.
Inside ``deferred()`` (a finished run writing its record and closing its MLflow run) SIGTERM waits until the block
ends, so a result is recorded whole or not at all. SIGKILL, which a supervisor sends after its grace period, cannot
be caught: the next run reaps what it leaves (``flexgnn_core.workdirs``, ``harness.tracking.Store``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

RESEND_S = 1.0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises ``KeyboardInterrupt``."""


_acknowledged = threading.Event()
_resending = threading.Event()
_deferring = threading.Event()
_pending = threading.Event()
_received = threading.Event()  # a SIGTERM reached this process inside the block, raised or deferred


def acknowledge() -> None:
    """The interrupt reached code that cleans up: stop re-sending, ignore further SIGTERMs."""
    _acknowledged.set()


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """The shell's code for a process ended by the signal: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def _resend(main_thread_id: int) -> None:
    while not _acknowledged.wait(RESEND_S):
        signal.pthread_kill(main_thread_id, signal.SIGTERM)


def received() -> bool:
    """Whether a SIGTERM arrived inside ``sigterm_as_interrupt()``: the process is being stopped, whatever exception
    it ends with (code that catches ``Exception`` can turn the interrupt into another one on its way out)."""
    return _received.is_set()


def _terminate(signum: int, frame: object) -> None:
    _received.set()
    if _acknowledged.is_set():
        return  # cleaning up already
    if _deferring.is_set():
        _pending.set()
        return
    if not _resending.is_set():
        _resending.set()
        threading.Thread(target=_resend, args=(threading.main_thread().ident,), daemon=True).start()
    raise Terminated("SIGTERM")


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """SIGTERM inside the block is raised when it ends (the block is not nested)."""
    _deferring.set()
    try:
        yield
    finally:
        _deferring.clear()
    if _pending.is_set() and not _acknowledged.is_set():
        _pending.clear()
        raise Terminated("SIGTERM")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` in the main thread inside the block (``sigterm_as_interrupt.handler``)."""
    _acknowledged.clear()
    _resending.clear()
    _pending.clear()
    _received.clear()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        _acknowledged.set()  # ends a resending thread
        signal.signal(signal.SIGTERM, previous)


sigterm_as_interrupt.handler = _terminate  # what is installed, so a job can tell whether its process has it
