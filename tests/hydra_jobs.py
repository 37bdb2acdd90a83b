"""Run ``harness.run.run`` in-process as Hydra runs a job: with Hydra's job config set (output dir, overrides,
mode), so that job records and sweep behaviour (resume) are exercised without starting a process per job."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Iterator

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write


@contextlib.contextmanager
def hydra_job(compose, overrides: list[str], output_dir: Path, sweep_dir: Path | None = None) -> Iterator[DictConfig]:
    """Yield the task config of a job composed from ``overrides`` whose Hydra output dir is ``output_dir``; with
    ``sweep_dir`` it is a multirun job of that sweep (as Hydra's basic launcher sets it up)."""
    full = compose(overrides, return_hydra_config=True)
    with read_write(full.hydra), open_dict(full.hydra):
        full.hydra.runtime.output_dir = str(output_dir)
        full.hydra.overrides.task = list(overrides)
        if sweep_dir is not None:
            full.hydra.mode = RunMode.MULTIRUN
            full.hydra.sweep.dir = str(sweep_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    task = copy.deepcopy(full)
    with read_write(task), open_dict(task):
        del task["hydra"]
    HydraConfig.instance().set_config(full)
    try:
        yield task
    finally:
        HydraConfig.instance().cfg = None
