"""Train one GNN with one system on one graph and record it: ``python -m harness [overrides]``.

Measures per-epoch training time (warm-up excluded, median reported), accuracy and peak memory of a full-graph
run, so that systems (pyg, flexgnn, ddp, dgl) can be compared on the same graph, model and initial weights.
Examples::

    python -m harness                                  # pyg, 2-layer GCN, synthetic 20k nodes, 30 epochs
    python -m harness system=pyg model=gat dataset.avg_degree=20 train.epochs=100 hardware.device=cpu
    python -m harness +sweep=speedup                   # systems x models x densities, one MLflow parent run
    python -m harness +sweep=planner                   # every flexgnn planner x models x densities x budgets

The last line on stdout is the run record as compact JSON; everything else (logs, progress) goes to stderr.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from harness.config import ConfigError, conf_dir
from harness.record import dumps
from harness.run import run
from harness.systems import SystemUnavailable

USER_ERRORS = (ConfigError, SystemUnavailable, ValueError, OSError)  # bad input: the message says what to fix


def main(cfg: DictConfig) -> str:
    """Run one job; returns the record's status (ok, skipped, infeasible), which a sweep's progress shows."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        record = run(cfg)
    except USER_ERRORS as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra marks the job failed, runs the rest of the sweep, then exits non-zero
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(dumps(record), flush=True)
    return record["status"]


def cli() -> None:
    try:
        path = conf_dir()
    except ConfigError as error:
        sys.exit(f"error: {error}")
    hydra.main(version_base="1.3", config_path=str(path), config_name="config")(main)()


if __name__ == "__main__":
    cli()
