"""Issue 16's done-when checks end to end through ``python -m harness ... hydra/launcher=...`` (slow: jobs run in
processes of their own, each importing torch; minutes on a loaded 2-core machine). The fast counterparts are in
``test_launchers.py``, ``test_ddp_torchrun.py`` and ``test_tracking_server.py``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from harness.tracking import PARENT_ID_FILE

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[1]


def _sweep(harness_dirs):
    (sweep_dir,) = (harness_dirs.runs_dir / "sweeps").iterdir()
    records = [json.loads(path.read_text()) for path in sorted(sweep_dir.glob("*/record.json"))]
    return sweep_dir, records


def _children(mlflow_client, parent_id: str) -> list:
    experiment = mlflow_client.get_experiment_by_name("flexgnn-bench")
    return [r for r in mlflow_client.search_runs([experiment.experiment_id])
            if r.data.tags.get("mlflow.parentRunId") == parent_id]


@pytest.mark.parametrize("launcher", [["hydra/launcher=submitit_local"],
                                      ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]], ids=["submitit", "joblib"])
def test_a_sweep_under_a_launcher_ends_with_its_records_parent_run_and_summary(cluster_extra, launcher, run_harness,
                                                                                harness_dirs, mlflow_client):
    done = run_harness("-m", "system=pyg,flexgnn", "model=gcn,sage", "+debug=fast", *launcher, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep_dir, records = _sweep(harness_dirs)
    assert sorted((r["system"], r["model"], r["status"]) for r in records) == [
        ("flexgnn", "gcn", "ok"), ("flexgnn", "sage", "ok"), ("pyg", "gcn", "ok"), ("pyg", "sage", "ok")]
    parent_id = (sweep_dir / PARENT_ID_FILE).read_text().strip()
    assert mlflow_client.get_run(parent_id).info.status == "FINISHED"
    children = _children(mlflow_client, parent_id)
    assert sorted(r.info.run_id for r in children) == sorted(r["tracking"]["run_id"] for r in records)
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert len(rows) == 4
    assert "sweep [####################] 4/4" in done.stderr and "sweep done: 4 ok, 0 failed" in done.stderr
    slots = [r["machine"]["sweep_slot"] for r in records]
    at_once = 2 if "joblib" in launcher[0] else 4
    assert all(slot["parallel_jobs"] == at_once for slot in slots)
    for record, slot in zip(records, slots):
        assert record["machine"]["cpu_affinity"] == slot["cores"]
        assert record["machine"]["torch_threads"] == len(slot["cores"])
    cores = json.loads((sweep_dir / "cores.json").read_text())["cores"]
    if at_once <= len(cores):  # every job had cores of its own: the slots' core sets are disjoint
        sets = [set(cores) for cores in {tuple(slot["cores"]) for slot in slots}]
        assert len(sets) == at_once and sum(map(len, sets)) == len(set().union(*sets))
        assert all(slot["comparable"] for slot in slots)
    else:  # more jobs at once than cores: said at the start and the end, and marked in the summary
        assert "timings are NOT comparable" in done.stderr
        assert all("not comparable" in row["note"] for row in rows)


def test_a_ddp_job_under_submitit_starts_its_ranks_with_torchrun(cluster_extra, run_harness, harness_dirs,
                                                                 mlflow_client):
    """One task (on Slurm it would hold R GPUs: hydra.launcher.gpus_per_task=R); torchrun starts R ranks inside it;
    on CPU they use gloo."""
    done = run_harness("-m", "system=ddp", "system.launch=torchrun", "system.world_size=2", "model=gcn",
                       "+debug=fast", "hydra/launcher=submitit_local", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep_dir, (record,) = _sweep(harness_dirs)
    assert record["status"] == "ok" and record["config"]["system"]["launch"] == "torchrun"
    extra = record["result"]["extra"]
    assert extra["world_size"] == 2 and extra["backend"] == "gloo" and len(set(extra["rank_pids"])) == 2
    parent_id = (sweep_dir / PARENT_ID_FILE).read_text().strip()
    assert [r.info.run_id for r in _children(mlflow_client, parent_id)] == [record["tracking"]["run_id"]]


def test_sigterm_to_a_submitit_job_records_it_as_killed(cluster_extra, harness_dirs):
    """What ``scancel`` sends: the job's process (submitit's, where the harness's CLI did not run) records the job as
    killed, and the launching process counts it from its record."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    sweep = subprocess.Popen([sys.executable, "-m", "harness", "-m", "+debug=fast", "train.epochs=400",
                              "hydra/launcher=submitit_local"], cwd=REPO_ROOT, env=harness_dirs.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline, job = time.monotonic() + 400, None
        while job is None and time.monotonic() < deadline:
            time.sleep(1)
            logs = list((harness_dirs.runs_dir / "sweeps").glob("*/.submitit/*/*_0_log.err"))
            started = logs and "epochs (1 warm-up)" in logs[0].read_text()
            job = next((p for p in psutil.Process(sweep.pid).children(recursive=True)
                        if "submitit.core._submit" in " ".join(p.cmdline())), None) if started else None
        assert job is not None, "the job did not start training"
        os.kill(job.pid, signal.SIGTERM)
        out, err = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    sweep_dir, (record,) = _sweep(harness_dirs)
    assert record["status"] == "killed" and "SIGTERM" in record["error"]
    assert "sweep done: 0 ok, 1 killed" in err
