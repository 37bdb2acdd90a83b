"""Train one GNN with one system on one graph and record it: ``python -m harness [overrides]``.

Measures per-epoch training time (warm-up excluded, median reported), accuracy and peak memory of a full-graph
run, so that systems (pyg, flexgnn, ddp, dgl) can be compared on the same graph, model and initial weights.
Examples::

    python -m harness                                  # pyg, 2-layer GCN, synthetic 20k nodes, 30 epochs
    python -m harness system=pyg model=gat dataset.avg_degree=20 train.epochs=100 hardware.device=cpu
    python -m harness +sweep=speedup                   # systems x models x densities, one MLflow parent run
    python -m harness +sweep=planner                   # every flexgnn planner x models x densities x budgets

The last line on stdout is the run record as compact JSON (single runs; a sweep writes each job's record to its
job directory and shows progress and the final tables); everything else (logs, progress) goes to stderr.
SIGTERM ends a run as Ctrl-C does (``harness.signals``): a ``status: "killed"`` record, the MLflow run (and a
sweep's parent run) KILLED, the disk tier removed; the exit code is 143 (130 for Ctrl-C). Jobs that a launcher runs
in other processes (``hydra/launcher=joblib``, ``submitit_local``, ``submitit_slurm``) handle SIGTERM the same way,
and in a sweep whose jobs run side by side each job is pinned to cores of its own (``harness.cores``).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

import hydra
from omegaconf import DictConfig

from baselines.ddp_supervise import end_process, under_torchrun
from harness import cores
from harness.config import ConfigError, conf_dir
from harness.record import dumps
from harness.run import run
from harness.signals import Terminated, acknowledge, exit_code, received, sigterm_as_interrupt
from harness.sweep import SweepCallback
from harness.systems import SystemUnavailable

USER_ERRORS = (ConfigError, SystemUnavailable, ValueError, OSError)  # bad input: the message says what to fix


def main(cfg: DictConfig) -> str:
    """Run one job; returns the record's status (ok, skipped, infeasible, or reused in a resumed sweep), which a
    sweep's progress shows."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        with _sigterm_in_worker(), cores.job_slot(Path(HydraConfig.get().sweep.dir) if multirun else None):
            record = run(cfg)
    except USER_ERRORS as error:
        if multirun:
            raise  # Hydra marks the job failed, runs the rest of the sweep, then exits non-zero
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if not multirun:  # a sweep's records are in their job directories; its terminal shows progress and tables
        print(dumps(record), flush=True)
    return "reused" if record.get("reused") else record["status"]


@contextlib.contextmanager
def _sigterm_in_worker() -> Iterator[None]:
    """SIGTERM as Ctrl-C in a job that a launcher runs in a process of its own (a joblib worker, submitit's job
    process, where ``cli`` did not run): a Slurm time limit or ``scancel`` records the job as killed."""
    if signal.getsignal(signal.SIGTERM) is sigterm_as_interrupt.handler or threading.current_thread() is not \
            threading.main_thread():  # the launching process has it already; a thread cannot set handlers
        yield
        return
    with sigterm_as_interrupt():
        yield


def cli() -> None:
    try:
        path = conf_dir()
    except ConfigError as error:
        sys.exit(f"error: {error}")
    with sigterm_as_interrupt():
        try:
            hydra.main(version_base="1.3", config_path=str(path), config_name="config")(main)()
        except BaseException as ended:  # SystemExit included: Hydra reports a job's exception and exits 1
            if not isinstance(ended, KeyboardInterrupt) and not received():
                raise
            acknowledge()  # a job in progress recorded itself as killed; a sweep's parent run is left
            interrupt = ended if isinstance(ended, KeyboardInterrupt) else Terminated("SIGTERM")
            if interrupt is not ended:  # the SIGTERM reached code that turned it into another exception
                print(f"SIGTERM arrived, and the run ended with {type(ended).__name__}: {ended}", file=sys.stderr)
            SweepCallback.close_interrupted(interrupt)
            print(f"interrupted by {'SIGTERM' if exit_code(interrupt) == 143 else 'Ctrl-C'}: a job in progress is "
                  "recorded as killed; a sweep continues with the same command and resume=true", file=sys.stderr)
            sys.exit(exit_code(interrupt))
        finally:  # a failed job ends Hydra's multirun before on_multirun_end: the sweep ends from its records here
            SweepCallback.finish_running()
    if under_torchrun():  # a rank of a gloo group: not through interpreter finalization (see end_process)
        end_process(0)


if __name__ == "__main__":
    cli()
