"""What a run is called and where it came from, in MLflow: readable run names and MLflow's own source tags."""

from __future__ import annotations

import getpass
from typing import Any

from harness.claims import label_of


def _size(value: Any) -> str:
    return f"{value / 1e6:g}M" if value >= 10**6 else f"{value / 1e3:g}k" if value >= 10**3 else str(value)


def run_name(system: str, config: dict[str, Any]) -> str:
    """``flexgnn[hongtu_like] gcn synthetic 300k d20 cap 1GiB``: the variant, model, graph (size and density for a
    synthetic graph) and the memory cap, so runs read apart in the MLflow table."""
    dataset = config.get("dataset") or {}
    graph = str(dataset.get("name"))
    if dataset.get("num_nodes"):
        graph += f" {_size(dataset['num_nodes'])}"
    if dataset.get("avg_degree"):
        graph += f" d{dataset['avg_degree']:g}"
    cap = (config.get("hardware") or {}).get("memory_cap")
    model = (config.get("model") or {}).get("kind")
    return " ".join([label_of({"system": system, "config": config}), str(model), graph]
                    + ([f"cap {cap}"] if cap is not None else []))


def source_tags(git: dict[str, Any]) -> dict[str, Any]:
    """MLflow's source tags (the UI's Source and User columns), which a run made with ``MlflowClient`` lacks."""
    tags = {"mlflow.source.name": "python -m harness", "mlflow.source.type": "LOCAL", "mlflow.user": _user()}
    if git.get("commit"):
        tags["mlflow.source.git.commit"] = git["commit"]
    return tags


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return None
