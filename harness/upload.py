"""Bring run records into an MLflow store that did not get them: ``python -m harness.upload [PATH...]``.

When the tracking server cannot be reached, a run keeps its JSON record on disk and marks it pending: a side file
``<record>.upload`` next to it (``{"state": "pending", "reason": ...}``). This command reads records (files, or
directories searched for them; default ``runs/records``, ``runs/sweeps`` and ``runs/hydra`` under
``$FLEXGNN_RUNS_DIR``) and, for each one the store lacks, creates its run (or completes the one it began:
params, metrics, ``record.json``, status), under its sweep's parent run; then it closes the parent runs of sweeps that
ended while the server was away, from their ``sweep_result.json`` (``harness.sweep``).

Idempotent: a record is found on the server by its run id, else by its id tag (``flexgnn.record``); one whose run
is there with its final status is left alone, and logging a record again adds nothing (``harness.tracking``). Each
record handled is marked ``{"state": "uploaded", "uri": ..., "run_id": ...}`` so the next call skips it cheaply.
The store is ``--uri``, else ``$MLFLOW_TRACKING_URI``, else the default sqlite store of the runs directory.
The last line on stdout is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from harness.record import record_id, redact, utc_iso, utc_now, write_json
from harness.tracking import RECORD_TAG, Store, unreachable

MARKER_SUFFIX = ".upload"
FINAL_STATUS = {"ok": "FINISHED", "infeasible": "FINISHED", "oom": "FINISHED", "failed": "FAILED",
                "killed": "KILLED"}  # skipped jobs have no MLflow run


def marker_of(record_path: Path) -> Path:
    return Path(record_path).with_name(Path(record_path).name + MARKER_SUFFIX)


def _write_marker(record_path: Path, content: dict[str, Any]) -> None:
    path = marker_of(record_path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**content, "utc": utc_iso(utc_now())}, indent=1) + "\n")
    os.replace(tmp, path)


def mark_pending(record_path: Path, reason: str) -> None:
    """Mark the record at ``record_path`` as not (fully) in its MLflow store, and why."""
    _write_marker(record_path, {"state": "pending", "reason": redact(str(reason))[:2000]})


def read_marker(record_path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(marker_of(record_path).read_text())
    except (OSError, ValueError):
        return None


def find_records(paths: list[Path]) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """Record id -> its copies (path, record): the stable record and the job directory's are one record."""
    found: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    files = sorted({f for p in paths for f in ([p] if p.is_file() else p.rglob("*.json"))})
    for path in files:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and "schema_version" in record and "config" in record and record.get("utc_time"):
            found.setdefault(record_id(record), []).append((path, record))
    return found


def _sweep_dir(path: Path, record: dict[str, Any]) -> Path | None:
    job_dir = Path((record.get("paths") or {}).get("job_dir") or path.parent)
    return job_dir.parent if (job_dir.parent / "sweep.json").exists() else None


class Uploader:
    """Uploads records into one store, finding or creating each sweep's parent run once."""

    def __init__(self, store: Store):
        self.store = store
        self.parents: dict[Path, str] = {}
        self.counts = {"uploaded": 0, "completed": 0, "present": 0, "already_marked": 0, "no_run": 0,
                       "parents_closed": 0}

    def _run(self, run_id: str | None) -> Any:
        """The active run ``run_id`` in this store, or None."""
        if not run_id:
            return None
        try:
            run = self.store.client.get_run(run_id)
        except Exception as error:
            if unreachable(error):
                raise
            return None  # not in this store
        return run if run.info.lifecycle_stage == "active" else None

    def find(self, record: dict[str, Any]) -> Any:
        run = self._run((record.get("tracking") or {}).get("run_id"))
        if run is None:
            found = self.store.client.search_runs([self.store.experiment_id], max_results=1,
                                                  filter_string=f"tags.`{RECORD_TAG}` = '{record_id(record)}'")
            run = found[0] if found else None
        return run

    def parent(self, record: dict[str, Any], sweep_dir: Path | None) -> str | None:
        """The record's sweep parent run in this store: the one it named, else the sweep's (found by its directory,
        or made now)."""
        if sweep_dir is None:
            return None
        if sweep_dir not in self.parents:
            named = (record.get("tracking") or {}).get("parent_run_id")
            run = self._run(named)
            if run is None:
                found = self.store.client.search_runs(
                    [self.store.experiment_id], max_results=1, filter_string=(
                        f"tags.kind = 'sweep' and tags.sweep_dir = '{sweep_dir.resolve()}'"))
                run = found[0] if found else None
            self.parents[sweep_dir] = run.info.run_id if run is not None else self.store.start_run(
                f"sweep-{sweep_dir.name}", {"kind": "sweep", "sweep_dir": sweep_dir.resolve(),
                                            "flexgnn.uploaded_utc": utc_iso(utc_now())})
        return self.parents[sweep_dir]

    def upload(self, copies: list[tuple[Path, dict[str, Any]]]) -> str:
        """Bring one record (all its copies are the same) into the store; returns what was done."""
        from omegaconf import OmegaConf

        path, record = copies[0]
        status = FINAL_STATUS.get(record.get("status"))
        uri = redact(self.store.uri)
        if status is None:
            return "no_run"
        if all((read_marker(p) or {}).get("state") == "uploaded" and read_marker(p).get("uri") == uri
               for p, _ in copies):
            return "already_marked"
        run, action = self.find(record), "present"
        if run is None or run.info.status != status:
            parent = self.parent(record, _sweep_dir(path, record))
            if run is None:
                action = "uploaded"
                name = f"{record.get('system')}-{record.get('model')}-{record.get('dataset')}"
                run_id = self.store.start_run(name, {
                    "system": record.get("system"), "model": record.get("model"), "dataset": record.get("dataset"),
                    "commit": (record.get("git") or {}).get("commit"), "dirty": (record.get("git") or {}).get("dirty"),
                    RECORD_TAG: record_id(record), "flexgnn.uploaded_utc": utc_iso(utc_now())}, parent)
            else:
                action, run_id = "completed", run.info.run_id
                if parent and "mlflow.parentRunId" not in run.data.tags:
                    self.store.client.set_tag(run_id, "mlflow.parentRunId", parent)
                if "error" in run.data.tags:  # e.g. "ended without closing this run" from the orphan closer
                    self.store.client.delete_tag(run_id, "error")
            self.store.log_record(run_id, record, OmegaConf.to_yaml(OmegaConf.create(record.get("config") or {})))
            if record.get("status") in ("infeasible", "oom"):
                self.store.client.set_tag(run_id, "status", record["status"])
            if record.get("error"):
                self.store.client.set_tag(run_id, "error", str(record["error"])[:5000])
            self.store.client.set_terminated(run_id, status=status)
            run = self.store.client.get_run(run_id)
        for copy, _ in copies:
            _write_marker(copy, {"state": "uploaded", "uri": uri, "run_id": run.info.run_id})
        return action

    def close_sweep(self, sweep_dir: Path) -> bool:
        """Close the parent run of a sweep that ended while the server was away (its ``sweep_result.json``)."""
        from harness.sweep import RESULT_FILE, close_parent

        path = sweep_dir / RESULT_FILE
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            return False  # still running, or its launching process died: the orphan closer handles its parent
        if result.get("closed_in_mlflow") and self._run(result.get("parent_run_id")) is not None:
            return False
        parent = self.parent({"tracking": {"parent_run_id": result.get("parent_run_id")}}, sweep_dir)
        close_parent(self.store, parent, result, sweep_dir)
        write_json(path, {**result, "parent_run_id": parent, "closed_in_mlflow": True}, overwrite=True)
        return True


def main(argv: list[str] | None = None) -> int:
    from omegaconf import OmegaConf

    parser = argparse.ArgumentParser(prog="python -m harness.upload", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="record files or directories searched recursively")
    parser.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else the runs dir's sqlite store)")
    parser.add_argument("--experiment", default="flexgnn-bench")
    args = parser.parse_args(argv)
    runs_dir = Path(os.environ.get("FLEXGNN_RUNS_DIR") or "runs")
    paths = args.paths or [p for p in (runs_dir / "records", runs_dir / "sweeps", runs_dir / "hydra") if p.exists()]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"error: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        store = Store.open(OmegaConf.create({"tracking_uri": args.uri, "experiment": args.experiment}), runs_dir)
    except Exception as error:
        if not unreachable(error):
            raise
        print(f"error: tracking server unreachable ({error}); nothing uploaded, records stay marked pending",
              file=sys.stderr)
        return 1
    uploader = Uploader(store)
    sweeps: set[Path] = set()
    for copies in find_records(paths).values():
        action = uploader.upload(copies)
        uploader.counts[action] += 1
        sweeps.update(s for s in (_sweep_dir(p, r) for p, r in copies) if s is not None)
        if action in ("uploaded", "completed"):
            print(f"{action}: {copies[0][0]}", file=sys.stderr)
    uploader.counts["parents_closed"] = sum(uploader.close_sweep(sweep) for sweep in sorted(sweeps))
    print(json.dumps({"tracking_uri": redact(store.uri), **uploader.counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
