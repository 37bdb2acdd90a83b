"""Sweep bookkeeping that works under any Hydra launcher: counts, progress, the parent MLflow run and the tables are
computed from the job records (``<sweep dir>/<job>/record.json``), not from callbacks in one process.

Under Hydra's basic launcher every job runs in the launching process; under joblib (``hydra/launcher=joblib``) and
submitit (``submitit_local``, ``submitit_slurm``) jobs run in other processes or on other machines, where the
launcher's ``on_job_end`` runs (or, for a job that is killed, never does). So:

- the launching process opens the sweep's parent MLflow run and plans the core slots (``harness.cores``);
- every job writes its record into its job directory, a job that fails without one gets a ``status: failed``
  record from ``on_job_end`` wherever that runs, and its MLflow run names the parent (``mlflow_parent_run_id.txt``);
- progress lines come from the records that appear: from ``on_job_end`` when jobs run in this process, else from
  a thread that watches the sweep directory;
- when the launcher returns (or a job's failure ends the multirun: ``finish_running``), the counts by status (jobs
  with no record are ``lost``), ``harness.report.write_reports`` and the parent run's status come from the records;
  the outcome is also written to ``sweep_result.json``, from which ``python -m harness.upload`` closes a parent run
  that the tracking server could not be told about.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from harness import cores
from harness.record import build_record, utc_iso, utc_now, write_json
from harness.resume import REUSABLE, write_sweep_file
from harness.tracking import OFFLINE_HINT, PARENT_ID_FILE, Store, open_store, unreachable

JOB_RECORD = "record.json"
RESULT_FILE = "sweep_result.json"
WATCH_S = 1.0  # how often the launching process looks for new records while jobs run elsewhere
BAD = ("failed", "killed", "lost")
log = logging.getLogger("harness")


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


def job_records(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Job directory name -> its record (an unreadable one counts as a failed job)."""
    found = {}
    for path in sorted(Path(sweep_dir).glob(f"*/{JOB_RECORD}")):
        try:
            found[path.parent.name] = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            found[path.parent.name] = {"status": "failed", "error": f"unreadable record {path}: {error}"}
    return found


def tally(records: dict[str, dict[str, Any]], total: int | None) -> dict[str, int]:
    """Jobs by record status; ``lost``: jobs of the sweep that left no record (killed with SIGKILL, a lost node)."""
    counts: dict[str, int] = {}
    for record in records.values():
        counts[str(record.get("status"))] = counts.get(str(record.get("status")), 0) + 1
    if total and total > len(records):
        counts["lost"] = total - len(records)
    return counts


def close_parent(store: Store, run_id: str, result: dict[str, Any], sweep_dir: Path) -> None:
    """Tell the parent run how its sweep ended (tables, counts, status); idempotent, so ``harness.upload`` repeats it
    for a sweep whose server was unreachable at the end."""
    for name in result["tables"]:
        store.client.log_artifact(run_id, str(Path(sweep_dir) / name))
    counts = result["counts"]
    store.client.set_tag(run_id, "failed_jobs", str(sum(counts.get(state, 0) for state in BAD)))
    for state, count in counts.items():
        if state != "ok":
            store.client.set_tag(run_id, f"{state}_jobs", str(count))
    if not result["timing_comparable"]:
        store.client.set_tag(run_id, "timing_comparable", "false")
    if result.get("error"):
        store.client.set_tag(run_id, "error", result["error"][:5000])
    elif "error" in store.client.get_run(run_id).data.tags:  # e.g. the orphan closer's, while the server was away
        store.client.delete_tag(run_id, "error")
    if result.get("planner"):
        store.log_summary(run_id, {f"planner/{k}": v for k, v in result["planner"].items()})
    store.client.set_terminated(run_id, status=result["status"])


def _failure_record(config: DictConfig, job_return: Any) -> dict[str, Any]:
    """The record of a job that failed before ``harness.run`` could write one (e.g. a config error)."""
    error = job_return._return_value  # the exception: ``return_value`` would raise it
    task = OmegaConf.to_container(config, resolve=False)
    task.pop("hydra", None)
    record = build_record(config=task, settings=None, graph_stats=None, result=None, started=utc_now(),
                          status="failed", error=f"{type(error).__name__}: {error}",
                          overrides=list(job_return.overrides or []))
    for key, path in (("system", "system.name"), ("model", "model.kind"), ("dataset", "dataset.name")):
        record[key] = OmegaConf.select(config, path, default=None, throw_on_resolution_failure=False)
    return record


class SweepCallback(Callback):
    """The sweep's parent MLflow run, progress and end-of-sweep bookkeeping from the records (module docstring).
    A resumed sweep (``resume=true``, ``harness.resume``) reopens its parent run; an interrupted one (Ctrl-C,
    SIGTERM in the launching process) has it closed as KILLED by ``close_interrupted``."""

    running: "SweepCallback | None" = None  # the sweep of this process, for close_interrupted / finish_running

    def __init__(self) -> None:
        self.store: Store | None = None
        self.parent_run_id: str | None = None
        self.total: int | None = None
        self.sweep_dir: Path | None = None
        self.launcher_pid: int | None = None
        self.finished = False
        self.started = time.perf_counter()
        self.before: dict[str, int] = {}  # job dir -> record mtime when this launch started (a resumed sweep)
        self.done: set[str] = set()
        self.earlier: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with Hydra's context into joblib's and submitit's workers: plain values, no client or thread."""
        return {key: getattr(self, key) for key in ("parent_run_id", "total", "sweep_dir", "launcher_pid")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()
        self.__dict__.update(state)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.launcher_pid = os.getpid()
        parent_file = self.sweep_dir / PARENT_ID_FILE
        resumed = bool(config.get("resume")) and (self.sweep_dir / "sweep.json").exists()
        write_sweep_file(self.sweep_dir, config.hydra.overrides.task, utc_iso(utc_now()))
        self.total = count_jobs(config)
        self.started = time.perf_counter()
        (self.sweep_dir / RESULT_FILE).unlink(missing_ok=True)  # a resumed sweep ends anew
        for name, record in job_records(self.sweep_dir).items():
            self.before[name] = (self.sweep_dir / name / JOB_RECORD).stat().st_mtime_ns
            if record.get("status") in REUSABLE:
                self.done.add(name)  # complete from an earlier launch: counted as done from the start
        self.earlier = {name: self.before[name] for name in self.done}  # reused if its record is unchanged at the end
        plan = cores.plan_for(cores.parallel_jobs(config.hydra.get("launcher"), self.total), cores.available_cores())
        cores.write_plan(self.sweep_dir, plan)
        SweepCallback.running = self
        if config.mlflow.enabled:
            earlier = parent_file.read_text().strip() if resumed and parent_file.exists() else None
            self._open_parent(config, earlier or None)
        if config.get("resume") and not resumed:
            print("resume: no earlier sweep of this command in this runs_dir; starting a new one", file=sys.stderr)
        at_once = f", {plan['parallel_jobs']} at once" if (plan["parallel_jobs"] or 1) > 1 else ""
        print(f"sweep: {self.total or '?'} jobs into {self.sweep_dir}{at_once}"
              f"{f' (resumed: {len(self.done)} complete jobs are reused)' if resumed else ''}", file=sys.stderr,
              flush=True)
        if not plan["comparable"]:
            print(f"sweep: timings are NOT comparable: {plan['note']}", file=sys.stderr, flush=True)
        if plan["parallel_jobs"] != 1:  # jobs run in other processes: watch their records appear
            self._watcher = threading.Thread(target=self._watch, name="sweep-progress", daemon=True)
            self._watcher.start()

    def _open_parent(self, config: DictConfig, earlier: str | None) -> None:
        """The sweep's parent run: reopened when resumed, else new (its id in ``mlflow_parent_run_id.txt`` for the
        jobs); none, with a warning, when the tracking server cannot be reached (the upload makes one later)."""
        self.store, offline = open_store(config.mlflow, Path(config.runs_dir))
        try:
            if self.store and earlier and self._reopen(earlier):
                self.parent_run_id = earlier
            elif self.store:
                from harness.naming import source_tags
                from harness.record import git_info

                self.parent_run_id = self.store.start_run(
                    f"sweep-{self.sweep_dir.name}", {"kind": "sweep", "sweep_dir": self.sweep_dir.resolve(),
                                                      "num_jobs": self.total, **source_tags(git_info())})
                (self.sweep_dir / PARENT_ID_FILE).write_text(self.parent_run_id + "\n")
        except Exception as error:
            if not unreachable(error):
                raise
            self.store, offline = None, f"{type(error).__name__}: {error}"
        if offline:
            log.warning("MLflow tracking server unreachable (%s): the sweep has no parent run; records are kept on "
                        "disk. %s", offline, OFFLINE_HINT)

    def _reopen(self, run_id: str) -> bool:
        try:
            self.store.reopen_run(run_id)
        except Exception as error:  # deleted, or in another store: the resumed sweep gets a new parent run
            if unreachable(error):
                raise
            log.warning("resume: cannot reopen parent run %s (%s); starting a new parent run", run_id, error)
            return False
        return True

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if self.sweep_dir is None:  # Hydra calls on_job_end for single runs too; only sweeps are tracked here
            return
        if job_return.status == JobStatus.FAILED:  # a job that failed before writing its record gets one
            job_dir = Path(config.hydra.runtime.output_dir)
            if not (job_dir / JOB_RECORD).exists():
                write_json(job_dir / JOB_RECORD, _failure_record(config, job_return), overwrite=True)
        if os.getpid() == self.launcher_pid:  # in the launching process: its progress line now
            if job_return.status != JobStatus.FAILED and job_return.return_value == "reused":
                self._line("reused", " ".join(job_return.overrides or []))
            self._poll()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish()

    @classmethod
    def finish_running(cls) -> None:
        """End this process's sweep from its records if the launcher did not (a failed job ends Hydra's multirun
        with the job's exception before ``on_multirun_end``)."""
        if cls.running is not None:
            cls.running._finish()

    @classmethod
    def close_interrupted(cls, interrupt: BaseException) -> None:
        """Ctrl-C or SIGTERM ended this process's sweep between or inside jobs: its parent run becomes KILLED."""
        sweep = cls.running
        if sweep is not None:
            sweep._finish(interrupt=interrupt)

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_S):
            self._poll()

    def _line(self, state: str, overrides: str) -> None:
        if self.total:
            filled = min(20, round(20 * len(self.done) / self.total))
            progress = f"[{'#' * filled}{'.' * (20 - filled)}] {len(self.done)}/{self.total}"
        else:  # another sweeper's syntax: the total is unknown, so no bar
            progress = f"{len(self.done)}/?"
        print(f"sweep {progress} {time.perf_counter() - self.started:.0f}s  {state}: {overrides}", file=sys.stderr,
              flush=True)

    def _poll(self) -> None:
        """A progress line for every job record written since this launch started."""
        with self._lock:
            for path in sorted(self.sweep_dir.glob(f"*/{JOB_RECORD}")):
                name = path.parent.name
                try:
                    mtime = path.stat().st_mtime_ns
                    if self.before.get(name) == mtime:
                        continue
                    record = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue  # being replaced right now: the next poll reads it
                self.before[name] = mtime
                self.done.add(name)
                self._line(str(record.get("status")).upper() if record.get("status") in BAD else
                           str(record.get("status")), " ".join(record.get("overrides") or []))

    def _compare(self) -> None:
        """Speed-ups, parity and claims into MLflow, the final tables onto stderr (``harness.comparisons``)."""
        from harness.comparisons import end_of_sweep

        try:
            end_of_sweep(self.store, self.parent_run_id, self.sweep_dir)
        except Exception as failure:
            if not unreachable(failure):
                raise
            log.warning("MLflow tracking server unreachable: the sweep's comparisons are not logged (%s). %s",
                        failure, OFFLINE_HINT)

    def _finish(self, interrupt: BaseException | None = None) -> None:
        if self.finished or self.sweep_dir is None:
            return
        self.finished = True
        SweepCallback.running = None
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self._poll()
        records = job_records(self.sweep_dir)
        counts = tally(records, self.total)
        for name, mtime in self.earlier.items():  # a resumed sweep's jobs that were complete already: reused
            path = self.sweep_dir / name / JOB_RECORD
            if path.exists() and path.stat().st_mtime_ns == mtime:
                status = str(records[name].get("status"))
                counts[status] -= 1
                counts["reused"] = counts.get("reused", 0) + 1
        counts = {state: count for state, count in counts.items() if count}
        tables, planner = [], None
        if interrupt is None:
            from harness.report import write_reports

            tables, planner = write_reports(sorted(self.sweep_dir.glob(f"*/{JOB_RECORD}")), self.sweep_dir)
            self._compare()
        plan = cores.read_plan(self.sweep_dir) or {"comparable": True}
        status = "KILLED" if interrupt is not None else "FAILED" if any(counts.get(s) for s in BAD) else "FINISHED"
        error = (f"interrupted ({type(interrupt).__name__}) after {len(records)} of {self.total or '?'} jobs; resume "
                 "with resume=true") if interrupt is not None else None
        result = {"status": status, "total": self.total, "counts": counts, "error": error,
                  "tables": [Path(p).name for p in tables], "planner": planner,
                  "timing_comparable": plan["comparable"], "timing_note": plan.get("note"),
                  "parent_run_id": self.parent_run_id, "closed_in_mlflow": False, "finished_utc": utc_iso(utc_now())}
        if self.store and self.parent_run_id:
            try:
                close_parent(self.store, self.parent_run_id, result, self.sweep_dir)
                result["closed_in_mlflow"] = True
            except Exception as failure:
                if not unreachable(failure):
                    raise
                log.warning("MLflow tracking server unreachable: parent run %s is not closed (%s). %s",
                            self.parent_run_id, failure, OFFLINE_HINT)
        write_json(self.sweep_dir / RESULT_FILE, result, overwrite=True)
        if interrupt is not None:
            return
        outcome = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()) if state not in BAD)
        bad = ", ".join(f"{counts[state]} {state}" for state in BAD if counts.get(state)) or "0 failed"
        print(f"sweep done: {outcome or '0 ok'}, {bad}; tables and plots in {', '.join(str(p) for p in tables)}",
              file=sys.stderr, flush=True)
        if not plan["comparable"]:
            print(f"sweep: timings are NOT comparable ({plan['note']}); the summary marks them", file=sys.stderr,
                  flush=True)
        if planner is not None:
            from harness.report_planner import summary_line

            print(f"planner: {summary_line(planner)}", file=sys.stderr, flush=True)
