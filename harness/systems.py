"""The literal registry of training systems: name -> "module:function", imported only when chosen.

Every entry implements ``flexgnn_core.spec.TrainFn``. Imports are lazy so that a machine without DGL (or without
a GPU stack a system needs) still runs every other system, and says clearly why the missing one is unavailable.
A system module declares the hardware-group keys it understands in ``HARDWARE_KEYS`` (none when absent); the
harness passes it those and only those. ``NATIVE_KERNELS = True`` says it runs ``flexgnn_core.native``, which the
harness builds before a capped job starts (``harness.capped``).
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from flexgnn_core.spec import SystemUnavailable, TrainFn
from harness.errors import ConfigError

__all__ = ["SYSTEMS", "SystemUnavailable", "calibrate", "get_train_fn", "hardware_keys", "preflight", "uses_native"]

SYSTEMS = {
    "pyg": "baselines.pyg_fullgraph:train",
    "flexgnn": "flexgnn_core.system:train",
    "ddp": "baselines.ddp_fullgraph:train",
    "dgl": "baselines.dgl_fullgraph:train",
}


def _module(name: str) -> tuple[Any, str]:
    if name not in SYSTEMS:
        raise ConfigError(f"config field 'system.name': unknown system {name!r}; valid: {', '.join(SYSTEMS)}. "
                          "Fix: system=<one of those>")
    module_name, function_name = SYSTEMS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        hint = " (DGL needs its own pinned environment; see README)" if name == "dgl" else ""
        raise SystemUnavailable(f"system '{name}' is unavailable on this machine: importing {module_name} failed "
                                f"with {type(error).__name__}: {error}{hint}. Fix: install what it needs, or "
                                f"choose another system ({', '.join(s for s in SYSTEMS if s != name)})") from error
    return module, function_name


def get_train_fn(name: str) -> TrainFn:
    """The ``train`` function of system ``name``; unknown or unimportable systems raise with the reason."""
    module, function_name = _module(name)
    return getattr(module, function_name)


def hardware_keys(name: str) -> tuple[str, ...]:
    """The hardware-group keys system ``name`` takes as options (its module's ``HARDWARE_KEYS``)."""
    return tuple(getattr(_module(name)[0], "HARDWARE_KEYS", ()))


def uses_native(name: str) -> bool:
    """Whether system ``name`` runs the C++ kernels of ``flexgnn_core.native`` (its module's ``NATIVE_KERNELS``)."""
    return bool(getattr(_module(name)[0], "NATIVE_KERNELS", False))


def calibrate(name: str, options: Mapping[str, Any], device: Any) -> tuple[dict[str, Any], float]:
    """The harness's calibration step (STYLE #4b): a system that plans with measured rates exports
    ``calibrate_options(options, device) -> options`` (flexgnn: this machine's cached calibration, measured when
    absent, passed on as ``hardware``); returns the options and the seconds it took (0 for other systems)."""
    import time

    step = getattr(_module(name)[0], "calibrate_options", None)
    if step is None:
        return dict(options), 0.0
    start = time.perf_counter()
    calibrated = step(options, device)
    return calibrated, time.perf_counter() - start


def preflight(name: str, options: Mapping[str, Any]) -> None:
    """Run the system's own ``preflight(options)`` if it has one (e.g. DGL checks its pinned environment), so an
    unavailable system fails before any data is loaded; it raises ``SystemUnavailable`` with the fix."""
    check = getattr(_module(name)[0], "preflight", None)
    if check is not None:
        check(options)
