"""One benchmark run: validate the config, load the graph, train with the chosen system, record and index it.

``run(cfg)`` is what ``python -m harness`` calls for each job, and what tests call directly. Order matters for
bad input: the config is validated and the system imported before anything is recorded; once an MLflow run
exists, any failure marks it FAILED with the error, writes a ``status: failed`` record into the job's own
directory, and re-raises (a non-zero exit); Ctrl-C and SIGTERM (``harness.signals``) do the same with KILLED and
``status: killed``. Earlier records and runs are never touched. Inside a sweep, two outcomes
are results rather than failures, recorded so the sweep goes on: a system unavailable here (``status: skipped``,
no MLflow run) and a flexgnn plan that does not fit its budget (``status: infeasible`` with the reason, no
result; its MLflow run is tagged ``status=infeasible`` and finished). Under ``hardware.memory_cap`` the load and the
training run in a capped child process (``harness/capped.py``), and a job that runs out of memory under the cap
is a result too, in single runs as in sweeps: ``status: oom``, its MLflow run tagged ``status=oom`` and finished.
A result is recorded under ``signals.deferred()`` (a SIGTERM waits until it is written whole), and the job
directory's ``record.json`` last, after the stable record and the MLflow run: a resumed sweep (``resume=true``,
``harness.resume``) reuses a job only when it is there.
"""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness import capped as capping
from harness import record as records
from harness import resume, signals
from harness.config import ConfigError, Settings, validate
from harness.job import train_job
from harness.naming import run_name, source_tags
from harness.systems import SystemUnavailable, get_train_fn, preflight
from harness.tracking import OFFLINE_HINT, PARENT_ID_FILE, RECORD_TAG, Store, open_store, resolve_uri, unreachable
from harness.upload import mark_pending

RECORDS_SUBDIR = "records"
log = logging.getLogger("harness")  # stderr and the job's harness.log under Hydra; stdout stays the record


def _hydra_job() -> dict[str, Any]:
    """The Hydra job's output dir, overrides and sweep's parent MLflow run (empty outside ``@hydra.main``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hydra = HydraConfig.get()
    job = {"output_dir": Path(hydra.runtime.output_dir), "overrides": list(hydra.overrides.task),
           "multirun": hydra.mode == RunMode.MULTIRUN}
    if job["multirun"]:
        parent_file = Path(hydra.sweep.dir) / PARENT_ID_FILE
        job["parent_run_id"] = parent_file.read_text().strip() if parent_file.exists() else None
    return job


def _takes(system_name: str) -> tuple[str, ...]:
    from harness.config import HARDWARE_OPTIONS
    from harness.systems import hardware_keys

    keys = hardware_keys(system_name)
    return tuple(key for key, option in HARDWARE_OPTIONS.items() if option in keys)


def _secondary_rank(settings: Settings) -> bool:
    """A torchrun rank other than 0 of a system that joins torchrun's world (``system.launch=env``)."""
    return settings.system_options.get("launch") == "env" and int(os.environ.get("RANK", "0")) != 0


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the job described by ``cfg`` (a composed ``conf/config.yaml``); return its record."""
    started = records.utc_now()
    settings = validate(cfg)
    try:
        from flexgnn_core.spec import resolve_device

        resolve_device(settings.train.device)
    except ValueError as error:
        raise ConfigError(f"config field 'hardware.device': {error}") from None
    config = OmegaConf.to_container(cfg, resolve=True)
    job = _hydra_job()
    for key in settings.ignored_hardware:
        log.warning("%s is set but system %s does not use it (it takes %s); use hardware.memory_cap for a hard "
                    "cap on any system", key, settings.system_name,
                    ", ".join(f"hardware.{k}" for k in _takes(settings.system_name)) or "no hardware keys")
    git = records.git_info()
    if job.get("multirun") and cfg.get("resume"):
        done = resume.completed_record(job["output_dir"], config, git["commit"])
        if done is not None:
            log.info("reused: %s is complete for this config at commit %s", job["output_dir"] / "record.json",
                     git["commit"])
            return {**done, "reused": True}
    common = dict(config=config, settings=settings, started=started, overrides=job.get("overrides"), git=git,
                  tracking=None)  # what every record of this job shares; tracking is set once MLflow has a run
    try:
        train_fn = get_train_fn(settings.system_name)
        preflight(settings.system_name, settings.system_options)
    except SystemUnavailable as error:
        if not job.get("multirun"):  # a single run fails; a sweep records the job as skipped and goes on
            raise
        skipped = records.build_record(graph_stats=None, result=None, status="skipped", error=str(error), **common)
        records.write_json(job["output_dir"] / "record.json", skipped, overwrite=True)
        log.warning("skipped: %s", error)
        return skipped
    cap = capping.prepare(settings)  # None without hardware.memory_cap; fails here if nothing can cap memory
    if _secondary_rank(settings):  # under torchrun every rank runs the harness: rank 0 alone records
        graph_stats, result = train_job(settings, train_fn)
        return records.build_record(graph_stats=graph_stats, result=result, status="ok", **common)
    config_yaml = records.redact(OmegaConf.to_yaml(cfg, resolve=True))
    runs_dir = Path(cfg.runs_dir)
    name = run_name(settings.system_name, config)
    store, offline = open_store(cfg.mlflow, runs_dir) if cfg.mlflow.enabled else (None, None)
    run_id = None
    if store:
        tags = {"system": settings.system_name, "model": settings.model.kind, "dataset": settings.dataset_name,
                "commit": git["commit"], "dirty": git["dirty"], **source_tags(git), RECORD_TAG: records.record_id(
                    {"utc_time": records.utc_iso(started), "system": settings.system_name,
                     "model": settings.model.kind, "dataset": settings.dataset_name})}
        try:
            run_id = store.start_run(name, tags, job.get("parent_run_id"))
        except Exception as error:
            if not unreachable(error):
                raise
            store, offline = None, f"{type(error).__name__}: {error}"
    if offline:
        log.warning("MLflow tracking server unreachable (%s): this run's record is kept on disk. %s", offline,
                    OFFLINE_HINT)
    tracking = {"tracking_uri": store.uri, "experiment_id": store.experiment_id, "run_id": run_id,
                "parent_run_id": job.get("parent_run_id")} if store else None
    if offline:  # what an upload needs: the sweep's parent run, if it has one
        tracking = {"tracking_uri": resolve_uri(cfg.mlflow, runs_dir), "experiment_id": None, "run_id": None,
                    "parent_run_id": job.get("parent_run_id"), "unreachable": offline}
    common["tracking"] = tracking
    try:
        graph_stats, result = cap.train(config) if cap else train_job(settings, train_fn)
        if result["status"] == "infeasible" and not job.get("multirun"):  # a single run fails, naming the minimum
            raise ValueError(result["reason"])
    except capping.OutOfMemory as error:
        return _record_oom(error, common, job, runs_dir, store, run_id, config_yaml)
    except BaseException as error:
        _record_failure(error, common, job, store, run_id)
        raise
    if result["status"] == "infeasible":  # in a sweep, "this plan cannot fit this budget" is a result
        return _record_infeasible(result, common, job, runs_dir, store, run_id, config_yaml)
    with signals.deferred():  # a SIGTERM now waits: the result is recorded whole (files and MLflow) or not at all
        record = records.build_record(graph_stats=graph_stats, result=result, status="ok", **common)
        if cap:
            record["memory_cap"] = records.jsonable(cap.facts)
        stable = _write(record, runs_dir, job)
        _index(record, stable, store, run_id, config_yaml)
        _write_job_record(record, job)
    median, best = result["median_epoch_s"], result.get("best_val")
    log.info("done: median epoch %s, val acc %.4f, test acc %.4f%s, host peak %.0f MiB; record %s%s",
             "n/a" if median is None else f"{median:.4f} s", result["accuracy"].get("val", float("nan")),
             result["accuracy"].get("test", float("nan")),
             "" if best is None else f"; at best val (epoch {best['epoch']}, val {best['val']:.4f}): test acc "
             f"{best['test']:.4f}", (result["peak_bytes"].get("host") or 0) / 2**20, stable,
             f", MLflow run {run_id}" if run_id else "")
    return record


def _write(record: dict[str, Any], runs_dir: Path, job: dict[str, Any]) -> Path:
    """The record into ``<runs_dir>/records/`` (never overwritten); returns its path. The job directory's copy
    follows once MLflow has the run (``_write_job_record``)."""
    stable = runs_dir / RECORDS_SUBDIR / records.record_filename(record)
    record["paths"] = {"record": str(stable.resolve()),
                       "job_dir": str(job["output_dir"].resolve()) if "output_dir" in job else None}
    records.write_json(stable, record)
    return stable


def _write_job_record(record: dict[str, Any], job: dict[str, Any]) -> None:
    if "output_dir" in job:
        records.write_json(job["output_dir"] / "record.json", record, overwrite=True)


def _index(record: dict[str, Any], path: Path, store: Store | None, run_id: str | None, config_yaml: str,
           tags: dict[str, str] | None = None) -> None:
    """Log ``record`` (written at ``path``) on its MLflow run and close the run FINISHED. When the tracking server
    cannot be reached, now or since the run began, the record is marked for ``python -m harness.upload`` instead and
    the job goes on: nothing is lost. Any other failure marks the run FAILED and raises."""
    unsent = (record.get("tracking") or {}).get("unreachable")
    if store is None:
        if unsent:
            mark_pending(path, unsent)
        return
    try:
        store.log_record(run_id, record, config_yaml)
        for key, value in (tags or {}).items():
            store.client.set_tag(run_id, key, value[:5000])
        store.client.set_terminated(run_id, status="FINISHED")
    except BaseException as error:
        if isinstance(error, Exception) and unreachable(error):
            log.warning("MLflow tracking server unreachable while logging run %s (%s): the record %s is kept on "
                        "disk. %s", run_id, error, path, OFFLINE_HINT)
            mark_pending(path, f"{type(error).__name__}: {error}")
            return
        store.fail_run(run_id, error, status=_close_status(error))
        raise


def _close_status(error: BaseException) -> str:
    """KILLED for Ctrl-C or SIGTERM (``harness.signals``, then told that the cleanup has begun), else FAILED."""
    if isinstance(error, KeyboardInterrupt):
        signals.acknowledge()
        return "KILLED"
    return "FAILED"


def _record_failure(error: BaseException, common: dict[str, Any], job: dict[str, Any], store: Store | None,
                    run_id: str | None) -> None:
    """A ``status: failed`` (or ``killed``) record in the job's directory only, and the MLflow run marked FAILED
    (or KILLED)."""
    status = "killed" if _close_status(error) == "KILLED" else "failed"
    failed = records.build_record(graph_stats=None, result=None, status=status,
                                  error=f"{type(error).__name__}: {error}", **common)
    failed["error_traceback"] = records.redact("".join(traceback.format_exception(error)))
    _write_job_record(failed, job)
    path = job["output_dir"] / "record.json" if "output_dir" in job else None
    unsent = (common.get("tracking") or {}).get("unreachable")
    if store:
        try:
            store.fail_run(run_id, error, status=_close_status(error))
        except Exception as failure:
            if not unreachable(failure):
                raise
            unsent = f"{type(failure).__name__}: {failure}"
            log.warning("MLflow tracking server unreachable: run %s is not marked %s. %s", run_id, status, OFFLINE_HINT)
    if unsent and path is not None:
        mark_pending(path, unsent)


def _record_infeasible(result: dict[str, Any], common: dict[str, Any], job: dict[str, Any], runs_dir: Path,
                       store: Store | None, run_id: str | None, config_yaml: str) -> dict[str, Any]:
    """A sweep's job whose plan does not fit: a ``status: infeasible`` record (the reason, no result) kept like an
    ok one, since "this solver cannot fit this budget" is a result; its MLflow run tagged and finished."""
    record = records.build_record(graph_stats=None, result=None, status="infeasible", error=result["reason"],
                                  **common)
    record["plan"] = records.jsonable(result["plan"])  # what the solver proposed, with the budget it had to fit
    return _keep_outcome(record, job, runs_dir, store, run_id, config_yaml)


def _record_oom(error: capping.OutOfMemory, common: dict[str, Any], job: dict[str, Any], runs_dir: Path,
                store: Store | None, run_id: str | None, config_yaml: str) -> dict[str, Any]:
    """A job that did not fit under ``hardware.memory_cap``: a ``status: oom`` record (the cap, the meters, what it
    asked for; no result) kept like an ok one; its MLflow run tagged ``status=oom`` and finished."""
    record = records.build_record(graph_stats=None, result=None, status="oom", error=str(error), **common)
    record["memory_cap"] = records.jsonable(error.facts)
    return _keep_outcome(record, job, runs_dir, store, run_id, config_yaml)


def _keep_outcome(record: dict[str, Any], job: dict[str, Any], runs_dir: Path, store: Store | None,
                  run_id: str | None, config_yaml: str) -> dict[str, Any]:
    """Write and index a record whose status is a result without training numbers (infeasible, oom), uninterrupted
    by SIGTERM; its MLflow run is tagged with the status and error."""
    status, error = record["status"], str(record["error"])
    with signals.deferred():
        stable = _write(record, runs_dir, job)
        _index(record, stable, store, run_id, config_yaml, {"status": status, "error": error})
        _write_job_record(record, job)
    log.warning("%s: %s", status, error)
    return record
