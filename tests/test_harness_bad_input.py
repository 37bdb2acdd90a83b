"""Bad input: every case fails with an error naming the field and the fix, exits non-zero, and leaves what was
recorded before (record files, MLflow runs) exactly as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.config import ConfigError
from harness.run import run
from graphs import tricky_graph

CONFIG_CASES = [  # (override, the field the error must name)
    ("dataset.num_nodes=0", "dataset.num_nodes"),
    ("dataset.num_nodes=-5", "dataset.num_nodes"),
    ("dataset.avg_degree=-1", "dataset.avg_degree"),
    ("dataset.num_features=0", "dataset.num_features"),
    ("model.hidden=0", "model.hidden"),
    ("model.num_layers=-1", "model.num_layers"),
    ("train.epochs=0", "train.epochs"),
    ("hardware.device_budget_bytes=-1GB", "hardware.device_budget_bytes"),
    ("hardware.host_budget_bytes=lots", "hardware.host_budget_bytes"),
    ("hardware.device=tpu", "hardware.device"),
    ("system.name=nonesuch", "system.name"),
    ("dataset.name=nonesuch", "dataset.name"),
    ("model.kind=nonesuch", "model.kind"),
]


@pytest.mark.parametrize(("override", "field"), CONFIG_CASES)
def test_config_errors_name_the_field_before_anything_is_recorded(compose, harness_dirs, override, field):
    with pytest.raises(ConfigError, match=rf"'?{field.replace('.', '[.]')}") as caught:
        run(compose(["+debug=fast", override]))
    assert "Fix" in str(caught.value) or "valid" in str(caught.value)
    assert not harness_dirs.runs_dir.exists() and not (harness_dirs.root / "mlflow.db").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_config_error(compose):
    with pytest.raises(ConfigError, match="hardware.device.*CUDA is not available"):
        run(compose(["+debug=fast", "hardware.device=cuda"]))


def test_entry_point_exits_nonzero_with_the_message(run_harness, harness_dirs):
    unknown = run_harness("system=nonesuch")
    assert unknown.returncode != 0 and unknown.stdout == ""
    assert "Could not find 'system/nonesuch'" in unknown.stderr and "\tpyg" in unknown.stderr
    negative = run_harness("+debug=fast", "dataset.num_nodes=0")
    assert negative.returncode != 0 and negative.stdout == ""
    assert "error: config field 'dataset.num_nodes'" in negative.stderr
    # Hydra made its job directory (configs, log); no record and no MLflow store were written.
    assert not (harness_dirs.runs_dir / "records").exists() and not (harness_dirs.root / "mlflow.db").exists()
    assert not list(harness_dirs.runs_dir.rglob("record.json"))


def _saved_graph(directory, edit=None):
    """A real on-disk graph (tricky_graph through save_graph); ``edit(arrays)`` then rewrites one array in place,
    same dtype and shape, so only the content check can catch it."""
    from flexgnn_core.data.storage import save_graph

    save_graph(tricky_graph(num_nodes=48), directory)
    if edit is not None:
        name, change = edit
        array = np.load(directory / f"{name}.npy")
        change(array)
        np.save(directory / f"{name}.npy", array)
    return directory


def _truncate(directory, name):
    path = directory / f"{name}.npy"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_bad_data_fails_the_run_and_keeps_earlier_records(compose, harness_dirs, mlflow_client, tmp_path):
    good = run(compose(["+debug=fast"]))
    (record_path,) = (harness_dirs.runs_dir / "records").glob("*.json")
    record_bytes = record_path.read_bytes()
    good_run = mlflow_client.get_run(good["tracking"]["run_id"])

    truncated = _saved_graph(tmp_path / "truncated")
    _truncate(truncated, "x")
    cases = {  # name: (dataset overrides, what the error must say)
        "ogb files missing offline": (["dataset=ogbn-arxiv", f"dataset.root={tmp_path / 'no_ogb_here'}"],
                                      str(tmp_path / "no_ogb_here")),
        "truncated on-disk graph": (["dataset=saved", f"dataset.path={truncated}"], "x.npy"),
        "features with NaN": (["dataset=saved", f"dataset.path={_saved_graph(tmp_path / 'nan', ('x', lambda a: a.__setitem__((3, 2), np.nan)))}"],  # noqa: E501
                              "'x'"),
        "edge index out of range": (["dataset=saved", f"dataset.path={_saved_graph(tmp_path / 'col', ('col', lambda a: a.__setitem__(0, 10**6)))}"],  # noqa: E501
                                    "'col'"),
        "labels out of range": (["dataset=saved", f"dataset.path={_saved_graph(tmp_path / 'y', ('y', lambda a: a.__setitem__(0, 99)))}"],  # noqa: E501
                                "'y'"),
    }
    for case, (overrides, expected) in cases.items():
        with pytest.raises(Exception) as caught:
            run(compose(["+debug=fast", *overrides]))
        assert expected in str(caught.value), f"{case}: {caught.value}"
        assert "Fix" in str(caught.value) or "download" in str(caught.value), f"{case}: {caught.value}"

    # Nothing recorded earlier changed; each failure is its own FAILED run with the error on it.
    assert [p.name for p in (harness_dirs.runs_dir / "records").glob("*.json")] == [record_path.name]
    assert record_path.read_bytes() == record_bytes and json.loads(record_bytes) == good
    experiment = mlflow_client.get_experiment_by_name("flexgnn-bench")
    runs = {r.info.run_id: r for r in mlflow_client.search_runs([experiment.experiment_id])}
    assert runs.pop(good_run.info.run_id).data.metrics == good_run.data.metrics
    assert len(runs) == len(cases) and all(r.info.status == "FAILED" and r.data.tags["error"] for r in runs.values())
    assert mlflow_client.get_run(good_run.info.run_id).info.status == "FINISHED"
