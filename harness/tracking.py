"""MLflow indexing of run records: one run per job, one parent run per sweep, failures marked FAILED.

The store is explicit everywhere: ``mlflow.tracking_uri`` from the config, else ``$MLFLOW_TRACKING_URI``, else a
sqlite file ``<runs_dir>/mlflow.db`` (MLflow's own default silently changes when an old ``./mlruns`` exists).
Artifacts go next to a sqlite store (``mlartifacts/``), set on the experiment so nothing lands in the cwd.
Everything goes through an explicit ``MlflowClient``: no global active run, nothing printed on stdout.

Concurrent runs share one store safely: a sqlite store is opened (and, when new, created and migrated by MLflow)
under a file lock, since MLflow's schema migration is not safe to run twice at once. Every run is tagged with its
host, pid and the process's start time; opening the store closes as KILLED this host's RUNNING runs whose process
is gone (a SIGKILL, the out-of-memory killer, a lost node), so no run stays RUNNING forever.

A tracking server (``MLFLOW_TRACKING_URI=http://HOST:PORT``, the store for clusters: README) needs no lock (its
database serialises writers) and keeps artifacts where the server says. Requests to it are retried briefly when it
is busy or away (``HTTP_RETRY_DEFAULTS``: about 7 s; MLflow's own variables override them); a server that cannot
be reached (``unreachable``) does not fail a job: the record stays on disk, marked for ``python -m harness.upload``.
Metrics carry the record's finish time as their timestamp, so logging a record twice (an upload after a partial
one) adds nothing: MLflow drops a metric identical in key, value, step and timestamp.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexgnn_core import spec
from flexgnn_core.filelock import exclusive
from flexgnn_core.workdirs import is_running, process_started
from harness.record import redact

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# MLflow's defaults retry an unreachable server for about four minutes per request; a job waits about 7 s, then
# keeps its record on disk (an upload brings it in later).
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
for _name, _value in HTTP_RETRY_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
OFFLINE_HINT = "Upload it when the server is back: python -m harness.upload runs/records runs/sweeps"
RECORD_TAG = "flexgnn.record"  # the record's id (harness.record.record_id): finds a run again on any server
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


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def artifact_location(uri: str, runs_dir: Path, explicit: str | None) -> str | None:
    """Where a new experiment's artifacts go: ``explicit``, else next to a sqlite store, else ``<runs_dir>``; None
    for a tracking server (its ``--artifacts-destination`` / ``--default-artifact-root`` decides)."""
    if explicit:
        return explicit
    if is_server(uri):
        return None
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
        lock = contextlib.nullcontext() if is_server(uri) else exclusive(_lock_path(uri, runs_dir), LOCK_TIMEOUT_S)
        with lock:  # create, migrate, add the experiment: one at a time
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
        """Params, metrics and artifacts of ``record``; idempotent (metrics are stamped with its finish time)."""
        from mlflow.entities import Metric, Param

        now = record_time_ms(record)
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


def record_time_ms(record: dict[str, Any]) -> int:
    """The record's finish time in ms since the epoch (now for a record without one)."""
    from datetime import datetime, timezone

    stamp = record.get("finished_utc_time") or record.get("utc_time")
    try:
        moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return int(time.time() * 1000)
    return int(moment.timestamp() * 1000)


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the tracking server could not be reached or stayed busy after
    MLflow's retries, rather than that a request was wrong."""
    import requests

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                              requests.exceptions.RetryError)):
            return True
        error = error.__cause__ or error.__context__
    return False


def open_store(mlflow_cfg: Any, runs_dir: Path) -> tuple[Store | None, str | None]:
    """``(store, None)``, or ``(None, why)`` when the tracking server cannot be reached (any other error raises)."""
    try:
        return Store.open(mlflow_cfg, runs_dir), None
    except Exception as error:
        if not unreachable(error):
            raise
        return None, f"{type(error).__name__}: {error}"


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
