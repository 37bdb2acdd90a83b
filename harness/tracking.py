"""MLflow indexing of run records: one run per job, one parent run per sweep, failures marked FAILED.

The store is explicit everywhere: ``mlflow.tracking_uri`` from the config, else ``$MLFLOW_TRACKING_URI``, else a
sqlite file ``<runs_dir>/mlflow.db`` (MLflow's own default silently changes when an old ``./mlruns`` exists).
Artifacts go next to a sqlite store (``mlartifacts/``), set on the experiment so nothing lands in the cwd.
Everything goes through an explicit ``MlflowClient``: no global active run, nothing printed on stdout.

Concurrent runs share one store safely: it is opened (and, when new, created and migrated by MLflow) under a file
lock, since MLflow's schema migration is not safe to run twice at once. Every run is tagged with its host, pid and
the process's start time; opening the store closes as KILLED this host's RUNNING runs whose process is gone (a
SIGKILL, the out-of-memory killer, a lost node), so no run stays RUNNING forever.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from flexgnn_core import spec
from flexgnn_core.workdirs import is_running, process_started
from harness.filelock import exclusive
from harness.record import redact

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
PARENT_ID_FILE = "mlflow_parent_run_id.txt"
_MAX_PARAM_CHARS = 6000
OWNER_TAGS = ("flexgnn.host", "flexgnn.pid", "flexgnn.pid_started")  # which process a run belongs to
LOCK_TIMEOUT_S = 600.0
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces), where training runs are hidden
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
log = logging.getLogger("harness")


def default_uri(runs_dir: Path) -> str:
    return f"sqlite:///{(Path(runs_dir) / 'mlflow.db').resolve()}"


def resolve_uri(mlflow_cfg: Any, runs_dir: Path) -> str:
    return mlflow_cfg.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(runs_dir)


def artifact_location(uri: str, runs_dir: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return (Path(runs_dir) / "mlartifacts").resolve().as_uri()


@dataclass
class Store:
    """An MLflow tracking store and the experiment runs go to."""

    client: Any
    experiment_id: str
    uri: str

    @classmethod
    def open(cls, mlflow_cfg: Any, runs_dir: Path) -> "Store":
        from mlflow.tracking import MlflowClient  # importing mlflow sets its loggers' levels: quiet them after

        for name in ("alembic", "mlflow"):  # migrations and store notices: warnings only, and never on stdout
            logging.getLogger(name).setLevel(logging.WARNING)

        uri = resolve_uri(mlflow_cfg, runs_dir)
        name = mlflow_cfg.get("experiment") or "flexgnn-bench"
        with exclusive(_lock_path(uri, runs_dir), LOCK_TIMEOUT_S):  # create, migrate, add the experiment: one at a time
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                location = artifact_location(uri, runs_dir, mlflow_cfg.get("artifact_location"))
                experiment_id = client.create_experiment(name, artifact_location=location)
            else:
                experiment_id = experiment.experiment_id
            if (experiment is None or experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND):
                client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        store = cls(client=client, experiment_id=experiment_id, uri=uri)
        store.close_orphaned_runs()
        return store

    def start_run(self, name: str, tags: dict[str, Any], parent_run_id: str | None = None) -> str:
        tags = {key: str(value) for key, value in {**tags, **owner_tags()}.items() if value is not None}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def reopen_run(self, run_id: str) -> None:
        """Mark a finished or killed run RUNNING again, owned by this process (a resumed sweep's parent)."""
        for key, value in owner_tags().items():
            self.client.set_tag(run_id, key, str(value))
        if "error" in self.client.get_run(run_id).data.tags:  # why it stopped last time
            self.client.delete_tag(run_id, "error")
        self.client.update_run(run_id, status="RUNNING")

    def fail_run(self, run_id: str, error: BaseException, status: str = "FAILED") -> None:
        message = redact(f"{type(error).__name__}: {error}")
        self.client.set_tag(run_id, "error", message[:5000])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "error.txt"
            path.write_text(message + "\n\n" + redact("".join(traceback.format_exception(error))))
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status=status)

    def close_orphaned_runs(self) -> list[str]:
        """Close as KILLED this host's RUNNING runs whose process is gone; returns their ids."""
        host = socket.gethostname().replace("'", "")
        running = self.client.search_runs([self.experiment_id], max_results=5000, filter_string=(
            f"attributes.status = 'RUNNING' and tags.`{OWNER_TAGS[0]}` = '{host}'"))
        closed = []
        for found in running:
            tags = found.data.tags
            try:
                pid, started = int(tags[OWNER_TAGS[1]]), float(tags[OWNER_TAGS[2]])
            except (KeyError, ValueError):
                continue
            if is_running(pid, started):
                continue
            self.client.set_tag(found.info.run_id, "error", f"process {pid} on {host} ended without closing this "
                                "run (killed, e.g. SIGKILL or out of memory); closed by a later run")
            self.client.set_terminated(found.info.run_id, status="KILLED")
            closed.append(found.info.run_id)
        if closed:
            log.warning("closed %d orphaned RUNNING MLflow run(s) as KILLED: %s", len(closed), ", ".join(closed))
        return closed

    def log_record(self, run_id: str, record: dict[str, Any], config_yaml: str) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        params = [Param(key, _param_value(value)) for key, value in flatten(record["config"]).items()
                  if value is not None]  # unset (null) stays absent, not the string "null"
        metrics = [Metric(key, value, now, step) for key, value, step in metrics_of(record)]
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start:start + 100])
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
        from harness.record import dumps

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "record.json").write_text(dumps(record, indent=2) + "\n")
            (Path(tmp) / "config.yaml").write_text(config_yaml)
            plan = (record.get("result") or {}).get("plan") or record.get("plan")  # ran, or did not fit
            if plan is not None:
                (Path(tmp) / "plan.json").write_text(dumps(plan, indent=2) + "\n")
            self.client.log_artifacts(run_id, tmp)

    def log_summary(self, run_id: str, values: dict[str, Any]) -> None:
        """Summary numbers (step 0) on a run, e.g. a sweep's parent; unknown (None) values are left out."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, 0) for key, value in values.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)


def owner_tags() -> dict[str, Any]:
    return dict(zip(OWNER_TAGS, (socket.gethostname(), os.getpid(), process_started(os.getpid()))))


def _lock_path(uri: str, runs_dir: Path) -> Path:
    """Next to a sqlite store (``<db>.lock``), else in ``<runs_dir>`` (one machine's runs on a server store)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):] + ".lock")
    return Path(runs_dir) / ".mlflow-store.lock"


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"hidden": 128}}`` -> ``{"model.hidden": 128}`` (lists stay values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def metrics_of(record: dict[str, Any]) -> list[tuple[str, float, int]]:
    """``(name, value, step)``: per-epoch loss and time (step = epoch), then summary values (step 0)."""
    result = record.get("result") or {}
    rows: list[tuple[str, Any, int]] = []
    for epoch, (loss, seconds) in enumerate(zip(result.get("epoch_losses", []), result.get("epoch_times_s", []))):
        rows += [(spec.TRAIN_LOSS, loss, epoch), (spec.EPOCH_TIME_S, seconds, epoch)]
    for split, accuracy in (result.get("accuracy") or {}).items():
        rows.append((f"{split}/acc", accuracy, 0))
    best = result.get("best_val")  # train.select=best_val: the epoch of best validation accuracy
    if best:
        rows += [(f"{split}/acc_at_best_val", best[split], 0) for split in ("train", "val", "test")]
        rows.append(("train/best_val_epoch", best["epoch"], 0))
    for epoch, accuracy in enumerate(result.get("epoch_val_acc") or []):
        rows.append(("val/epoch_acc", accuracy, epoch))
    rows.append((spec.EPOCH_MEDIAN_S, result.get("median_epoch_s"), 0))
    planning = {"solve": spec.PLAN_SOLVE_S, "calibrate": spec.PLAN_CALIBRATE_S}  # apart from the run's own times
    for name, seconds in (result.get("timings_s") or {}).items():
        rows.append((planning.get(name, f"time/{name}_s"), seconds, 0))
    peak = result.get("peak_bytes") or {}
    rows += [(spec.DEVICE_PEAK_BYTES, peak.get("device"), 0), (spec.HOST_PEAK_BYTES, peak.get("host"), 0)]
    cap = record.get("memory_cap") or {}  # hardware.memory_cap: the kernel's meter of the whole job (oom runs too)
    rows += [("mem/job_peak_bytes", cap.get("peak_bytes"), 0), ("mem/memory_cap_bytes", cap.get("cap_bytes"), 0)]
    for tier, size in (result.get("tier_peak_bytes") or {}).items():
        rows.append((f"mem/{tier}_accounted_peak_bytes", size, 0))
    for link, size in (result.get("io_bytes") or {}).items():
        rows.append((f"io/{link}_bytes", size, 0))
    extra = result.get("extra") or {}  # a planning system's prediction and the budget it planned for
    rows += [("plan/predicted_epoch_s", extra.get("predicted_epoch_s"), 0),
             ("mem/device_budget_bytes", extra.get("device_budget_bytes"), 0)]
    return [(name, float(value), step) for name, value, step in rows
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)]


def count_jobs(config: DictConfig) -> int | None:
    """Jobs a basic-sweeper multirun will launch (product of sweep choices); None when it cannot tell."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        grids = config.hydra.sweeper.get("grids")  # hydra_plugins/flexgnn_grids: a sweep of named grids
        if grids:
            from hydra_plugins.flexgnn_grids.grids_sweeper import expand

            return len(expand(grids, list(config.hydra.overrides.task), config.hydra.sweeper.get("only")))
        params = config.hydra.sweeper.get("params")  # None for a plain command-line multirun
        params = OmegaConf.to_container(params, resolve=False) if params else {}
        strings = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
        by_key = {o.get_key_element(): o for o in OverridesParser.create().parse_overrides(strings)}
        return math.prod(len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
                         for o in by_key.values())
    except Exception:  # another sweeper's syntax: progress then shows no total
        return None


class SweepCallback(Callback):
    """A parent MLflow run per multirun, sweep progress on stderr, and the tables and plots when the last job ends
    (``harness.report.write_reports``; the planner summary also as ``planner/...`` metrics on the parent run).
    A resumed sweep (``resume=true``, ``harness.resume``) reopens its parent run; an interrupted one (Ctrl-C,
    SIGTERM) has it closed as KILLED by ``close_interrupted``."""

    running: "SweepCallback | None" = None  # the sweep of this process, for close_interrupted

    def __init__(self) -> None:
        self.store: Store | None = None
        self.parent_run_id: str | None = None
        self.total: int | None = None
        self.done = self.failed = 0
        self.outcomes: dict[str, int] = {}  # jobs that returned, by record status: ok, skipped, infeasible
        self.finished = False
        self.sweep_dir: Path | None = None
        self.started = time.perf_counter()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from harness.record import utc_iso, utc_now
        from harness.resume import write_sweep_file

        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        parent_file = self.sweep_dir / PARENT_ID_FILE
        resumed = bool(config.get("resume")) and (self.sweep_dir / "sweep.json").exists()
        write_sweep_file(self.sweep_dir, config.hydra.overrides.task, utc_iso(utc_now()))
        self.total = count_jobs(config)
        self.started = time.perf_counter()
        SweepCallback.running = self
        if config.mlflow.enabled:
            self.store = Store.open(config.mlflow, Path(config.runs_dir))
            earlier = parent_file.read_text().strip() if resumed and parent_file.exists() else None
            if earlier and self._reopen(earlier):
                self.parent_run_id = earlier
            else:
                from harness.naming import source_tags
                from harness.record import git_info

                self.parent_run_id = self.store.start_run(
                    f"sweep-{self.sweep_dir.name}", {"kind": "sweep", "sweep_dir": self.sweep_dir.resolve(),
                                                      "num_jobs": self.total, **source_tags(git_info())})
                parent_file.write_text(self.parent_run_id + "\n")
        if config.get("resume") and not resumed:
            print("resume: no earlier sweep of this command in this runs_dir; starting a new one", file=sys.stderr)
        print(f"sweep: {self.total or '?'} jobs into {self.sweep_dir}"
              f"{' (resumed: complete jobs are reused)' if resumed else ''}", file=sys.stderr, flush=True)

    def _reopen(self, run_id: str) -> bool:
        try:
            self.store.reopen_run(run_id)
        except Exception as error:  # deleted, or in another store: the resumed sweep gets a new parent run
            log.warning("resume: cannot reopen parent run %s (%s); starting a new parent run", run_id, error)
            return False
        return True

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if self.sweep_dir is None:  # Hydra calls on_job_end for single runs too; only sweeps are tracked here
            return
        self.done += 1
        self.failed += job_return.status == JobStatus.FAILED
        overrides = " ".join(job_return.overrides or [])
        state = "FAILED" if job_return.status == JobStatus.FAILED else str(job_return.return_value or "ok")
        if job_return.status != JobStatus.FAILED:
            self.outcomes[state] = self.outcomes.get(state, 0) + 1
        if self.total:
            filled = min(20, round(20 * self.done / self.total))
            progress = f"[{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total}"
        else:  # another sweeper's syntax: the total is unknown, so no bar
            progress = f"{self.done}/?"
        print(f"sweep {progress} {time.perf_counter() - self.started:.0f}s  {state}: {overrides}", file=sys.stderr,
              flush=True)
        if self.total is not None and self.done >= self.total:
            self._finish()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish()

    @classmethod
    def close_interrupted(cls, interrupt: BaseException) -> None:
        """Ctrl-C or SIGTERM ended this process's sweep between or inside jobs: its parent run becomes KILLED."""
        sweep, cls.running = cls.running, None
        if sweep is None or sweep.finished:
            return
        sweep.finished = True
        if sweep.store and sweep.parent_run_id:
            sweep.store.client.set_tag(sweep.parent_run_id, "error", f"interrupted ({type(interrupt).__name__}) "
                                       f"after {sweep.done} of {sweep.total or '?'} jobs; resume with resume=true")
            sweep.store.client.set_terminated(sweep.parent_run_id, status="KILLED")

    def _finish(self) -> None:
        if self.finished or self.sweep_dir is None:
            return
        self.finished = True
        SweepCallback.running = None
        from harness.comparisons import end_of_sweep
        from harness.report import write_reports
        from harness.report_planner import summary_line

        tables, planner = write_reports(sorted(self.sweep_dir.glob("*/record.json")), self.sweep_dir)
        end_of_sweep(self.store, self.parent_run_id, self.sweep_dir)  # comparisons in MLflow, tables on stderr
        if self.store and self.parent_run_id:
            for path in tables:
                self.store.client.log_artifact(self.parent_run_id, str(path))
            self.store.client.set_tag(self.parent_run_id, "failed_jobs", str(self.failed))
            for state, count in self.outcomes.items():
                if state != "ok":
                    self.store.client.set_tag(self.parent_run_id, f"{state}_jobs", str(count))
            if planner is not None:
                self.store.log_summary(self.parent_run_id, {f"planner/{k}": v for k, v in planner.items()})
            self.store.client.set_terminated(self.parent_run_id, status="FAILED" if self.failed else "FINISHED")
        returned = ", ".join(f"{count} {state}" for state, count in sorted(self.outcomes.items()))
        print(f"sweep done: {returned or '0 ok'}, {self.failed} failed; tables and plots in "
              f"{', '.join(str(p) for p in tables)}", file=sys.stderr, flush=True)
        if planner is not None:
            print(f"planner: {summary_line(planner)}", file=sys.stderr, flush=True)
