"""Which device the DGL worker trains on: a pure decision, testable without DGL and without a GPU.

PyPI's DGL for Linux is a CPU-only build (dgl 2.1.0; the last CUDA builds on PyPI are ``dgl-cu111`` 0.6.1 of 2021,
for Python <= 3.9: results/LOG.md, 2026-12-01), and CUDA builds are published only outside the package registries.
So on a CUDA machine ``train.device=auto`` (which picks the GPU for every other system) cannot give DGL the GPU.
Rather than crash, or put a CPU number unmarked into a GPU table, the worker then trains on the CPU and says so: the
record's ``result.device`` is ``cpu`` and ``result.extra.device_fallback`` holds the reason; the summary table
notes it and computes no speed-up against a baseline that ran on another device. An explicit ``cuda`` request with
a CPU-only DGL is an error naming the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceChoice:
    """``device``: where DGL trains (``cpu``, ``cuda``, ``cuda:N``); ``fallback``: why that is not the device
    ``train.device`` would mean for the other systems (None when it is)."""

    device: str
    fallback: str | None = None


def choose_device(requested: str, *, cuda_available: bool, dgl_has_cuda: bool) -> DeviceChoice:
    """The device for ``train.device=requested`` given whether torch sees a GPU and whether this DGL can use it.

    ``dgl_has_cuda`` is False for a CPU-only DGL build (PyPI's) and for a CUDA build on a machine without a GPU.
    """
    if requested == "auto":
        if not cuda_available:
            return DeviceChoice("cpu")
        if dgl_has_cuda:
            return DeviceChoice("cuda")
        return DeviceChoice("cpu", "train.device=auto found a CUDA GPU, but this DGL build is CPU-only (PyPI's dgl "
                                   "wheels are); DGL trained on the CPU, so its times are CPU times")
    if requested.startswith("cuda"):
        if not cuda_available:
            raise ValueError(f"config field 'hardware.device': {requested!r} but CUDA is not available here. Fix: "
                             "hardware.device=auto or cpu")
        if not dgl_has_cuda:
            raise ValueError(f"config field 'hardware.device': {requested!r} but this DGL build is CPU-only (PyPI's "
                             "dgl wheels are). Fix: hardware.device=auto (DGL then trains on the CPU and the record "
                             "says so) or cpu, or install a CUDA build of dgl 2.1.0 into the DGL environment")
        return DeviceChoice(requested)
    if requested != "cpu":
        raise ValueError(f"config field 'hardware.device': got {requested!r}. Fix: auto, cpu, cuda or cuda:N")
    return DeviceChoice("cpu")
