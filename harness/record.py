"""The JSON run record: one self-describing file per run (schema in results/README.md).

A record holds the resolved config, what ran, graph statistics, the ``RunResult`` (per-epoch losses and times,
peak memory, bytes per link, timings, accuracy, plan), the machine, library versions, git commit and UTC time.
Unknown values are ``null``, never ``inf``/``NaN``; credentials in URIs are masked; files are written atomically and
never overwritten, so a failing run cannot damage a record written earlier.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from flexgnn_core.spec import SCHEMA_VERSION

LIBRARIES = ("torch", "torch_geometric", "numpy", "scipy", "ogb", "hydra-core", "omegaconf", "mlflow", "dgl")
REPO_ROOT = Path(__file__).resolve().parent.parent


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def utc_iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def jsonable(value: Any) -> Any:
    """Plain JSON values: non-finite floats -> None, tensors/numpy scalars -> Python numbers, paths -> str."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # torch / numpy scalars and small arrays
        return jsonable(value.tolist())
    return str(value)


# A password in a URI (scheme://user:password@host) or a secret query parameter (?password=..., &token=...).
_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*):[^\s/@]+@")
_SECRET_PARAMETER = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|token|access_token|secret|api_key|apikey)=)"
                               r"[^&;\s]+", re.IGNORECASE)
REDACTED = "***"


def redact(value: Any) -> Any:
    """``value`` with credentials in every string masked: ``postgresql://user:pw@host/db`` -> ``user:***@``."""
    if isinstance(value, str):
        value = _URI_PASSWORD.sub(rf"\g<head>:{REDACTED}@", value)
        return _SECRET_PARAMETER.sub(rf"\g<head>{REDACTED}", value)
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def machine_info() -> dict[str, Any]:
    """The host, and what this job had of it: its CPU affinity, torch's thread count and, in a sweep whose jobs run
    side by side, its core slot (``harness.cores``: whether its timing is comparable with the others')."""
    import psutil
    import torch

    from harness.cores import current

    cpu_model = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as handle:
            cpu_model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                             cpu_model)
    except OSError:
        pass
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"name": props.name, "memory_bytes": int(props.total_memory)})
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_logical_cores": os.cpu_count(),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "torch_threads": torch.get_num_threads(),  # intra-op threads of the launching process (DDP ranks split them)
        "ram_bytes": int(psutil.virtual_memory().total),
        "gpus": gpus,
        "cuda": torch.version.cuda,
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "sweep_slot": current(),
    }


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_info(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` for the checkout the harness runs from."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), *args], capture_output=True,
                                  text=True, timeout=10)  # read-only: never refresh the index
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def build_record(*, config: dict[str, Any], settings: Any, graph_stats: dict[str, Any] | None,
                 result: dict[str, Any] | None, started: datetime, status: str, error: str | None = None,
                 overrides: list[str] | None = None, tracking: dict[str, Any] | None = None,
                 git: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble a record (``result`` is ``RunResult.to_json()`` with the harness's load time and peak memory);
    credentials in URIs (a tracking URI, the command line) are masked."""
    return redact(jsonable({
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "error": error,
        "utc_time": utc_iso(started),
        "finished_utc_time": utc_iso(utc_now()),
        "system": settings.system_name if settings else None,
        "model": settings.model.kind if settings else None,
        "dataset": settings.dataset_name if settings else None,
        "overrides": overrides or [],
        "config": config,
        "graph": graph_stats,
        "result": result,
        "machine": machine_info(),
        "versions": library_versions(),
        "git": git if git is not None else git_info(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "tracking": tracking,
    }))


def record_filename(record: dict[str, Any]) -> str:
    stamp = record["utc_time"].replace("-", "").replace(":", "").replace(".", "")
    dataset = str(record.get("dataset") or "none").replace("/", "_")
    return f"{stamp}_{record.get('system')}_{record.get('model')}_{dataset}.json"


def record_id(record: dict[str, Any]) -> str:
    """A record's identity (its file name without ``.json``): the same for its copies in ``runs/records/`` and in the
    job directory, known from the job's start; MLflow runs carry it as tag ``flexgnn.record``."""
    return record_filename(record)[: -len(".json")]


def dumps(record: dict[str, Any], indent: int | None = None) -> str:
    separators = (",", ":") if indent is None else None
    return json.dumps(record, indent=indent, separators=separators, allow_nan=False, sort_keys=False)


def write_json(path: Path, record: dict[str, Any], overwrite: bool = False) -> Path:
    """Write atomically (temp file + rename); refuse to replace an existing record unless ``overwrite``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"run record {path} exists already; records are never overwritten")
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".record-", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(handle, 0o666 & ~umask)  # mkstemp makes 0600; a record is an ordinary file
    with os.fdopen(handle, "w") as out:
        out.write(dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_records(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(Path(path).read_text()) for path in paths]
