"""The harness end to end: a run writes its record and indexes it in a real MLflow store; a sweep nests its jobs."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest

from flexgnn_core import spec
from harness.record import dumps, jsonable
from harness.run import run


def test_run_writes_a_complete_record_and_indexes_it(compose, harness_dirs, mlflow_client):
    record = run(compose(["+debug=fast", "train.epochs=4", "train.seed=5"]))
    assert record["status"] == "ok" and record["schema_version"] == spec.SCHEMA_VERSION
    assert (record["system"], record["model"], record["dataset"]) == ("pyg", "gcn", "synthetic")
    result = record["result"]
    assert len(result["epoch_losses"]) == len(result["epoch_times_s"]) == 4 and result["warmup_epochs"] == 1
    assert result["median_epoch_s"] == statistics.median(result["epoch_times_s"][1:])
    assert set(result["accuracy"]) == {"train", "val", "test"}
    assert result["peak_bytes"]["host"] > 0 and result["timings_s"]["load"] > 0
    assert record["graph"]["num_nodes"] == 2000 and record["config"]["train"]["seed"] == 5
    assert record["machine"]["cpu_logical_cores"] >= 1 and record["versions"]["torch"].startswith("2.")
    assert record["git"]["commit"] is None or len(record["git"]["commit"]) == 40
    # The stable copy is the same record, byte for byte what dumps() gives, and strict JSON.
    stable = harness_dirs.runs_dir / "records"
    (path,) = stable.glob("*.json")
    assert json.loads(path.read_text()) == record
    run_info = mlflow_client.get_run(record["tracking"]["run_id"])
    assert run_info.info.status == "FINISHED"
    assert run_info.data.tags["system"] == "pyg" and run_info.data.tags["dataset"] == "synthetic"
    assert run_info.data.params["model.hidden"] == "128" and run_info.data.params["train.epochs"] == "4"
    assert run_info.data.metrics[spec.VAL_ACC] == pytest.approx(result["accuracy"]["val"])
    assert run_info.data.metrics[spec.EPOCH_MEDIAN_S] == pytest.approx(result["median_epoch_s"])
    history = mlflow_client.get_metric_history(run_info.info.run_id, spec.TRAIN_LOSS)
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert [m.value for m in history] == pytest.approx(result["epoch_losses"])
    artifacts = {a.path for a in mlflow_client.list_artifacts(run_info.info.run_id)}
    assert {"record.json", "config.yaml"} <= artifacts

    # Tables are a pure step over record files.
    from harness.report import main as report

    report([str(stable), "--out", str(harness_dirs.root / "tables")])
    (row,) = csv.DictReader((harness_dirs.root / "tables" / "summary.csv").open())
    assert float(row["median_epoch_s"]) == result["median_epoch_s"] and float(row["speedup_vs_pyg"]) == 1.0
    assert int(row["num_edges"]) == record["graph"]["num_edges"] and row["status"] == "ok"


def test_entry_point_prints_the_record_last_and_mlflow_lists_it(run_harness, harness_dirs, mlflow_client):
    done = run_harness("+debug=fast", "model=gat")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert (record["system"], record["model"], record["status"]) == ("pyg", "gat", "ok")
    assert record["tracking"]["tracking_uri"] == harness_dirs.uri  # $MLFLOW_TRACKING_URI wins over the default
    job_dir = harness_dirs.runs_dir / "hydra"
    (job_record,) = job_dir.glob("*/record.json")
    assert json.loads(job_record.read_text()) == record
    experiment = mlflow_client.get_experiment_by_name("flexgnn-bench")
    (found,) = mlflow_client.search_runs([experiment.experiment_id])
    assert found.info.run_id == record["tracking"]["run_id"] and found.info.status == "FINISHED"
    assert found.data.metrics[spec.TEST_ACC] == pytest.approx(record["result"]["accuracy"]["test"])
    assert experiment.artifact_location.startswith((harness_dirs.root / "mlartifacts").as_uri())


def test_tiny_speedup_sweep_nests_jobs_under_one_parent(run_harness, harness_dirs, mlflow_client):
    # DGL's pinned environment is made absent and not to be created: a sweep records those jobs as skipped (with
    # the fix) and goes on.
    harness_dirs.env["FLEXGNN_DGL_ENV"] = str(harness_dirs.root / "no-dgl-env")
    harness_dirs.env["FLEXGNN_DGL_AUTO_INSTALL"] = "0"
    done = run_harness("+sweep=speedup", "+debug=fast", "hydra.sweeper.only=in_memory", "system=pyg,dgl",
                       "model=gcn,sage", "dataset.avg_degree=3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""  # a sweep prints progress and tables on stderr, not every job's record
    (sweep_dir,) = (harness_dirs.runs_dir / "sweeps").iterdir()
    records = [json.loads(path.read_text()) for path in sorted(sweep_dir.glob("*/record.json"))]
    assert "pyg                      gcn" in done.stderr  # the final compact table
    assert sorted((r["system"], r["model"], r["status"]) for r in records) == [
        ("dgl", "gcn", "skipped"), ("dgl", "sage", "skipped"), ("pyg", "gcn", "ok"), ("pyg", "sage", "ok")]
    ran = [r for r in records if r["status"] == "ok"]
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert sorted((row["system"], row["model"]) for row in rows) == [
        ("dgl", "gcn"), ("dgl", "sage"), ("pyg", "gcn"), ("pyg", "sage")]
    assert all(float(row["speedup_vs_pyg"]) == 1.0 for row in rows if row["system"] == "pyg")  # pyg vs itself
    assert all("make_dgl_env.sh" in row["note"] for row in rows if row["system"] == "dgl")
    parent_id = (sweep_dir / "mlflow_parent_run_id.txt").read_text().strip()
    experiment = mlflow_client.get_experiment_by_name("flexgnn-bench")
    runs = mlflow_client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(runs) == 3 and len(children) == 2  # skipped jobs leave no MLflow run
    assert {r.info.run_id for r in children} == {r["tracking"]["run_id"] for r in ran}
    assert mlflow_client.get_run(parent_id).info.status == "FINISHED"
    assert {a.path for a in mlflow_client.list_artifacts(parent_id)} == {"summary.csv", "summary.md"}
    assert "sweep [####################] 4/4" in done.stderr


def test_single_run_of_an_unavailable_system_fails_with_the_fix(run_harness, harness_dirs):
    harness_dirs.env["FLEXGNN_DGL_ENV"] = str(harness_dirs.root / "no-dgl-env")
    harness_dirs.env["FLEXGNN_DGL_AUTO_INSTALL"] = "0"
    done = run_harness("+debug=fast", "system=dgl")
    assert done.returncode == 1 and "make_dgl_env.sh" in done.stderr
    assert not (harness_dirs.runs_dir / "records").exists()


def test_records_hold_no_inf_or_nan():
    record = jsonable({"a": math.inf, "b": [1.0, math.nan], "c": {"d": -math.inf}, "e": 2})
    assert record == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 2}
    assert json.loads(dumps(record)) == record
    with pytest.raises(ValueError):
        dumps({"x": math.nan})


@pytest.mark.slow  # 20 s: torchrun, 2 ranks, each importing the harness; CI runs the slow set
def test_under_torchrun_only_rank_zero_records(harness_dirs, mlflow_client):
    """``torchrun -m harness system=ddp system.launch=env``: every rank trains, one record and one MLflow run."""
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node=2", "-m", "harness", "system=ddp",
                           "system.launch=env", "+debug=fast"], cwd=Path(__file__).resolve().parents[1],
                          env=harness_dirs.env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 2 and records[0]["result"]["epoch_losses"] == records[1]["result"]["epoch_losses"]
    assert len(list((harness_dirs.runs_dir / "records").glob("*.json"))) == 1
    experiment = mlflow_client.get_experiment_by_name("flexgnn-bench")
    assert len(mlflow_client.search_runs([experiment.experiment_id])) == 1
