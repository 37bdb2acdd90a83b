"""The DDP baseline's options (``conf/system/ddp.yaml``) as a typed value, and the backend and device they imply."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from baselines.ddp_halo import PARTITIONS

HARDWARE_KEYS: tuple[str, ...] = ()  # hardware-group keys it takes (harness/systems.py): none, it has no budgets


@dataclasses.dataclass(frozen=True)
class DDPOptions:
    """``conf/system/ddp.yaml`` as a typed value; every field is validated with an error naming ``system.<key>``."""

    world_size: int = 2
    partition: str = "metis"
    backend: str = "auto"  # auto = nccl on CUDA, gloo on CPU
    timeout_s: float = 120.0  # collective timeout: a stuck peer fails the job after this long
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # None = pick a free port
    start_method: str = "forkserver"  # forkserver imports torch once per parent; spawn is the portable fallback
    launch: str = "spawn"  # spawn = train() starts the ranks; env = join a world started by torchrun
    cache_input_aggregation: bool = True  # layer 0's A X computed (and its halo fetched) once, not every epoch
    job_timeout_s: float | None = None  # whole-job limit (tests); None = none
    fail_rank: int | None = None  # fault injection: this rank fails ...
    fail_epoch: int = 0  # ... at the start of this epoch ...
    fail_mode: str = "raise"  # ... by raising, by exiting without a record ("exit"), or by hanging ("hang")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> "DDPOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names - {"name"})
        if unknown:
            raise ValueError(f"system.{unknown[0]} is not a ddp option; valid: {', '.join(sorted(names))}")
        return cls(**{k: v for k, v in options.items() if k in names})

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> None:
            raise ValueError(f"system.{key}={getattr(self, key)!r}: {why}")

        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            bad("world_size", "must be an integer >= 1 (the number of ranks, one device each)")
        if self.partition not in PARTITIONS:
            bad("partition", f"unknown; valid: {', '.join(PARTITIONS)}")
        if self.backend not in ("auto", "gloo", "nccl"):
            bad("backend", "unknown; valid: auto, gloo, nccl")
        if not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            bad("timeout_s", "must be a positive number of seconds")
        if self.master_port is not None and not (isinstance(self.master_port, int) and 0 < self.master_port < 65536):
            bad("master_port", "must be null (pick a free port) or a port number in 1..65535")
        if self.start_method not in ("forkserver", "spawn"):
            bad("start_method", "unknown; valid: forkserver, spawn")
        if self.launch not in ("spawn", "env"):
            bad("launch", "unknown; valid: spawn (train starts the ranks), env (inside torchrun)")
        if not isinstance(self.cache_input_aggregation, bool):
            bad("cache_input_aggregation", "must be true or false")
        if self.job_timeout_s is not None and self.job_timeout_s <= 0:
            bad("job_timeout_s", "must be null or a positive number of seconds")
        if self.fail_rank is not None and not 0 <= self.fail_rank < self.world_size:
            bad("fail_rank", f"must be null or a rank in [0, {self.world_size})")
        if self.fail_mode not in ("raise", "exit", "hang"):
            bad("fail_mode", "unknown; valid: raise, exit, hang")


def backend_for(opts: DDPOptions, device: torch.device) -> str:
    backend = opts.backend if opts.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("system.backend=nccl needs CUDA devices; use system.backend=gloo (or auto) on CPU")
    return backend


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    if device.type != "cuda":
        return device
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)
