"""Native CPU kernels: the engine's CSR aggregation in C++ (``spmm.cpp``), built on first use, with a fallback.

``csr_mm`` is the one entry point: ``out[r, h, :] = sum_j values[j, h] * x[col[j], h, :]`` over the CSR rows of
``crow`` / ``col``. On CPU float32 tensors it runs the C++ kernel (register-blocked rows, prefetched gathers,
AVX-512 / AVX2 / baseline code picked at load time; about 2-3x torch.sparse.mm's speed on this 2-core box,
results/LOG.md 2026-12-02); everywhere else (CUDA, other dtypes, no compiler) it runs ``torch.sparse.mm`` per head,
the engine's former path. Both sum each row's entries in column order, so they agree to fp32 rounding (the C++
build may fuse multiply-adds: about 1e-7 relative).

The kernel is compiled by ``torch.utils.cpp_extension.load`` (a C++ compiler and ninja are needed; ``pip install
ninja`` provides ninja) into torch's extension cache (``$TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``), once per machine and source version: about 45 s here. A failed build is reported
once, as a warning that names the cause, and the fallback is used. ``FLEXGNN_NATIVE=0`` turns the kernel off.
A build killed part-way leaves torch's lock file in the build directory, and every later load would wait on it
without a word; a lock older than ``STALE_LOCK_S`` (far longer than a build) is removed first, with a warning.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

ENV = "FLEXGNN_NATIVE"
NAME = "flexgnn_native_spmm"
STALE_LOCK_S = 600.0  # a build takes about 45 s here; a lock this old belongs to a build that was killed
_SOURCE = Path(__file__).with_name("spmm.cpp")
_lock = threading.Lock()
_state: dict = {}  # "module": the loaded extension or None; "why": the reason it is None


def enabled() -> bool:
    """Whether the C++ kernel may be used (``FLEXGNN_NATIVE`` is not ``0``)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def load():
    """The compiled extension (building it on first use), or None with ``why()`` saying why not."""
    if not enabled():
        return None
    if "module" in _state:  # every product asks: no lock once decided
        return _state["module"]
    with _lock:
        if "module" not in _state:
            try:
                from torch.utils.cpp_extension import load as build

                _clear_stale_build_lock()
                _state["module"] = build(name=NAME, sources=[str(_SOURCE)],
                                         extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
                                         verbose=False)
            except Exception as error:  # no compiler, no ninja, a read-only cache: the fallback still works
                _state["module"] = None
                lines = str(error).strip().splitlines()
                _state["why"] = f"{type(error).__name__}: {lines[-1] if lines else ''}"
                warnings.warn(f"flexgnn native CPU kernel unavailable ({_state['why']}); aggregation falls back to "
                              "torch.sparse.mm (about 2-3x slower on CPU). Install a C++ compiler and ninja "
                              f"(pip install ninja) to build it, or set {ENV}=0 to silence this.", RuntimeWarning,
                              stacklevel=2)
    return _state["module"]


def _clear_stale_build_lock() -> None:
    """``clear_stale_lock`` on this kernel's build directory, found with a private torch helper: best effort, so a
    torch without that helper still builds (and waits on a stale lock as before) instead of losing the kernel."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        build_dir = Path(_get_build_directory(NAME, verbose=False))
    except (ImportError, AttributeError, TypeError, OSError):
        return
    clear_stale_lock(build_dir)


def clear_stale_lock(build_dir: Path, now: float | None = None) -> bool:
    """Remove ``build_dir/lock`` when it is older than ``STALE_LOCK_S`` (its build was killed); True if removed."""
    lock = build_dir / "lock"
    try:
        age = (time.time() if now is None else now) - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < STALE_LOCK_S:
        return False
    lock.unlink(missing_ok=True)
    warnings.warn(f"flexgnn native CPU kernel: removed a stale build lock {lock} ({age:.0f} s old: its build was "
                  "killed); building again", RuntimeWarning, stacklevel=2)
    return True


def why() -> str | None:
    """Why the kernel is not in use, or None when it is (or has not been needed yet)."""
    if not enabled():
        return f"{ENV}=0"
    return _state.get("why")


def describe() -> str:
    """What ``csr_mm`` runs on CPU: ``"native"`` or ``"torch.sparse.mm (<reason>)"``, for records."""
    return "native" if load() is not None else f"torch.sparse.mm ({why()})"


def _usable(crow: Tensor, col: Tensor, values: Tensor, x: Tensor) -> bool:
    """CPU float32 operands that autograd does not need to track (the kernel has no backward of its own: inside a
    ``torch.autograd.Function`` such as DDP's ``BlockSpMM`` grad mode is off, and the kernel runs)."""
    tracked = torch.is_grad_enabled() and (x.requires_grad or values.requires_grad)
    return (x.device.type == "cpu" and x.dtype == torch.float32 and values.dtype == torch.float32
            and crow.dtype in (torch.int32, torch.int64) and col.dtype in (torch.int32, torch.int64)
            and not tracked and load() is not None)


# The C++ product as a torch operator, ``torch.ops.flexgnn.csr_spmm``, so that dispatch modes (the gate's op
# counter) and the profiler see it like an aten op. A plain ``Library`` registration: ``csr_mm`` costs about 13 us a
# call with it (the pybind call alone 1 us), with ``torch.library.custom_op`` 34 us (measured on this box).
_LIBRARY = torch.library.Library("flexgnn", "DEF")
_LIBRARY.define("csr_spmm(Tensor crow, Tensor col, Tensor values, Tensor x, int heads) -> Tensor")
_LIBRARY.impl("csr_spmm", lambda crow, col, values, x, heads: load().csr_spmm(crow, col, values, x, heads), "CPU")


def csr_mm(crow: Tensor, col: Tensor, values: Tensor, x: Tensor, width: int | None = None) -> Tensor:
    """The CSR matrix (``crow``, ``col``, ``values``) times ``x``.

    ``values`` is ``[E]`` with ``x`` ``[width, F]`` (result ``[rows, F]``), or ``[E, H]`` per head with ``x``
    ``[width, H, C]`` (result ``[rows, H, C]``). ``width`` (the number of columns) defaults to ``x.shape[0]``.
    """
    rows, width = crow.numel() - 1, x.shape[0] if width is None else width
    heads = 1 if values.dim() == 1 else values.shape[1]
    if _usable(crow, col, values, x):
        flat = x.reshape(x.shape[0], math.prod(x.shape[1:])).contiguous()
        out = torch.ops.flexgnn.csr_spmm(crow.contiguous(), col.contiguous(), values.contiguous(), flat, heads)
        return out.view(rows, *x.shape[1:])
    if values.dim() == 1:
        matrix = torch.sparse_csr_tensor(crow, col, values, size=(rows, width), check_invariants=False)
        return torch.sparse.mm(matrix, x)
    return torch.stack([torch.sparse.mm(torch.sparse_csr_tensor(crow, col, values[:, k].contiguous(),
                                                                size=(rows, width), check_invariants=False), x[:, k])
                        for k in range(heads)], dim=1)
