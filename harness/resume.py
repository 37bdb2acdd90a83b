"""Resuming a sweep: the identical sweep command plus ``resume=true`` continues where the last one stopped.

- Where it writes: ``sweep_dir`` (the resolver behind ``hydra.sweep.dir`` in ``conf/config.yaml``) returns, with
  ``resume=true``, the newest directory under ``<runs_dir>/sweeps/`` whose ``sweep.json`` holds the same
  command-line overrides (``resume=`` aside); otherwise, or when there is none, a new directory named by the start
  time to the microsecond (two sweeps started in the same second never share one).
- What it reuses: a job whose ``record.json`` in that directory is complete (status ``ok``, ``infeasible`` or ``oom``) for the
  same resolved config and the same git commit (uncommitted changes are not compared). Everything else (failed,
  killed, skipped, cut short before its record, another config or commit) runs again and replaces the record.
  ``harness.run`` writes the job directory's record last, after the stable record and the MLflow run are complete,
  so a job interrupted half-way has none and is rerun, never half-counted.
- The sweep's parent MLflow run is reopened (``harness.tracking.SweepCallback``) and closed with the summary of all
  its jobs, reused and new.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

SWEEP_FILE = "sweep.json"  # in each sweep directory: the command's overrides and the start time
REUSABLE = ("ok", "infeasible", "oom")  # results; failed, killed and skipped jobs run again
_chosen: dict[tuple[str, str], str] = {}  # one answer per sweep: its jobs re-resolve the directory with their own
# overrides, and the stamp (Hydra's cached ${now:}) is the same for all jobs of one sweep


def command_overrides(overrides: Iterable[Any]) -> list[str]:
    """The sweep command's overrides that define it: sorted, without ``resume=``."""
    return sorted(str(o) for o in overrides if str(o).split("=", 1)[0].lstrip("+~") != "resume")


def sweep_dir(parent: str, stamp: str, resume: bool, overrides: Iterable[Any]) -> str:
    """OmegaConf resolver ``${sweep_dir:PARENT,STAMP,RESUME,OVERRIDES}``: see the module docstring."""
    key = (str(parent), str(stamp))
    if key not in _chosen:
        previous = latest_sweep(Path(parent), command_overrides(overrides)) if resume else None
        _chosen[key] = str(previous if previous is not None else Path(parent) / str(stamp))
    return _chosen[key]


def latest_sweep(parent: Path, overrides: list[str]) -> Path | None:
    """The most recently started sweep directory in ``parent`` made by a command with these overrides."""
    found = []
    for path in parent.glob(f"*/{SWEEP_FILE}"):
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("overrides") == overrides:
            found.append((str(meta.get("started", "")), path.parent.name, path.parent))
    return max(found)[2] if found else None


def write_sweep_file(directory: Path, overrides: Iterable[Any], started: str) -> None:
    """Mark ``directory`` as made by this command, unless it already is (a resumed sweep keeps its start)."""
    path = directory / SWEEP_FILE
    if not path.exists():
        path.write_text(json.dumps({"overrides": command_overrides(overrides), "started": started}, indent=1) + "\n")


def _comparable(config: Any) -> Any:
    from harness.record import jsonable, redact

    config = json.loads(json.dumps(redact(jsonable(config))))  # as a record stores it
    if isinstance(config, dict):
        config.pop("resume", None)
    return config


def completed_record(job_dir: Path, config: dict[str, Any], commit: str | None) -> dict[str, Any] | None:
    """The job's stored record if it is complete and made by this config at this commit, else None (run it)."""
    try:
        record = json.loads((Path(job_dir) / "record.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") not in REUSABLE or commit is None:
        return None
    if (record.get("git") or {}).get("commit") != commit or _comparable(record.get("config")) != _comparable(config):
        return None
    return record
