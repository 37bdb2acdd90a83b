"""A sweep made of named grids: Hydra's basic sweeper runs one cartesian product; this runs several, one after
another, as one multirun (one sweep directory, one parent MLflow run, one summary).

    defaults:
      - override /hydra/sweeper: grids
    hydra:
      mode: MULTIRUN
      sweeper:
        grids:
          in_memory: {system: "pyg,flexgnn", model: "gcn,sage"}
          capped: {system: pyg, hardware.memory_cap: 1GiB, dataset.num_nodes: "100000,300000"}

Each grid is a basic-sweeper ``params`` mapping (``key: a,b,c`` sweeps, ``key: value`` fixes), expanded as the
basic sweeper does (the last key varies fastest); every job also gets ``+grid=<name>``, so its record says which
grid it belongs to. Command-line overrides apply to every grid and win over the grid's own values (``+debug=fast``
or ``dataset.num_nodes=2000`` shrink the whole sweep; ``system=pyg,dgl`` replaces every grid's systems).
``hydra.sweeper.only=in_memory`` (or ``[in_memory,capped]``) runs only the grids named. The order of jobs is fixed by the config, so job numbers, and with them the job
directories a resumed sweep (``resume=true``) reuses, are the same every time.
"""


import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

GRID_KEY = "grid"  # each job's config gets grid=<name>
log = logging.getLogger(__name__)


@dataclass
class GridsSweeperConf:
    _target_: str = "hydra_plugins.flexgnn_grids.grids_sweeper.GridsSweeper"
    max_batch_size: Optional[int] = None
    grids: Dict[str, Any] = field(default_factory=dict)
    only: Optional[Any] = None  # a grid name or a list of them: run only these


ConfigStore.instance().store(group="hydra/sweeper", name="grids", node=GridsSweeperConf, provider="flexgnn-bench")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value


def grid_overrides(grids: Any, arguments: List[str], only: Any = None) -> Dict[str, List[str]]:
    """Grid name -> its override strings: the grid's params, ``+grid=<name>``, then the command line's."""
    grids, only = _plain(grids), _plain(only)
    if not grids:
        raise ValueError("hydra.sweeper.grids is empty: give at least one grid (a mapping of key: values)")
    chosen = None if only is None else {str(name) for name in ([only] if isinstance(only, str) else only)}
    if chosen is not None and not chosen <= set(map(str, grids)):
        raise ValueError(f"hydra.sweeper.only={only}: no grid named {sorted(chosen - set(map(str, grids)))}; "
                         f"this sweep's grids are {sorted(map(str, grids))}")
    found = {}
    for name, params in grids.items():
        if params is None or (chosen is not None and str(name) not in chosen):  # left out
            continue
        if not isinstance(params, dict):
            raise ValueError(f"hydra.sweeper.grids.{name} must be a mapping of key: values, got {params!r}")
        found[str(name)] = ([f"{key}={value}" for key, value in params.items()] + [f"+{GRID_KEY}={name}"]
                            + list(arguments))
    return found


def expand(grids: Any, arguments: List[str], only: Any = None) -> List[List[str]]:
    """Every job's overrides, grid after grid (no Hydra context needed: used to count jobs too)."""
    parser = OverridesParser.create()
    jobs: List[List[str]] = []
    for strings in grid_overrides(grids, arguments, only).values():
        (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(strings), None)
        jobs += batch
    return jobs


class GridsSweeper(BasicSweeper):
    """The basic sweeper over a list of named grids (module docstring)."""

    def __init__(self, max_batch_size: Optional[int] = None, grids: Optional[Dict[str, Any]] = None,
                 only: Any = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=None)
        self.grids, self.only = grids or {}, only

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs: List[List[str]] = []
        for name, strings in grid_overrides(self.grids, arguments, self.only).items():
            (batch,) = self.split_arguments(parser.parse_overrides(strings), None)
            log.info("grid %s: %d jobs", name, len(batch))
            jobs += batch
        size = self.max_batch_size or len(jobs) or 1
        self.overrides = [jobs[start:start + size] for start in range(0, len(jobs), size)]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, first = [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=first)
            for result in results:
                _ = result.return_value  # a failed job raises here, as in the basic sweeper
            first += len(batch)
            returns.append(results)
        return returns
