"""Issue 13's done-when checks end to end through ``python -m harness`` (slow: each starts processes that import
torch and MLflow; the same behaviours are covered in-process by test_reliability_harness.py / _disk.py):

- three concurrent ``+debug=fast`` runs on a fresh runs dir: 3 records, 3 FINISHED MLflow runs;
- SIGTERM during an ``all_disk`` run: the disk dir empty, the MLflow run KILLED, a killed record;
- a 4-job multirun killed after its first record, rerun with ``resume=true``: only the remaining jobs train;
- a full file system under ``hardware.disk_dir``: a clear error instead of SIGBUS;
- a SIGKILLed DDP launcher's ``ddp_job_*`` and ``pymp-*`` reaped by the next job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _harness(env: dict, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", *overrides], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(condition, timeout_s: float = 300.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture
def fresh_env(tmp_path) -> tuple[dict, Path, str]:
    """A fresh runs dir with the default store inside it (no MLFLOW_TRACKING_URI)."""
    runs = tmp_path / "runs"
    env = {**os.environ, "FLEXGNN_RUNS_DIR": str(runs), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("FLEXGNN_CONF", None)
    return env, runs, f"sqlite:///{runs / 'mlflow.db'}"


def test_three_concurrent_fast_runs_on_a_fresh_runs_dir_all_finish(fresh_env):
    env, runs, uri = fresh_env
    processes = [_harness(env, "+debug=fast", f"train.seed={seed}") for seed in (1, 2, 3)]
    outputs = [p.communicate(timeout=900) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    assert len(list((runs / "records").glob("*.json"))) == 3
    job_records = sorted(runs.glob("hydra/*/record.json"))
    assert len(job_records) == 3  # one job directory each, even when started in the same second
    assert sorted(json.loads(p.read_text())["config"]["train"]["seed"] for p in job_records) == [1, 2, 3]
    client = _client(uri)
    experiment = client.get_experiment_by_name("flexgnn-bench")
    assert [r.info.status for r in client.search_runs([experiment.experiment_id])] == ["FINISHED"] * 3


def test_sigterm_during_an_all_disk_run_leaves_nothing_and_records_killed(fresh_env, tmp_path):
    env, runs, uri = fresh_env
    disk = tmp_path / "disk"
    process = _harness(env, "+debug=fast", "system=flexgnn", "planner=all_disk", "train.epochs=100000",
                       f"hardware.disk_dir={disk}")
    _wait_for(lambda: any(disk.glob("flexgnn-*/*.f32")) or process.poll() is not None, what="the disk tier")
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    assert list(disk.iterdir()) == []
    (job_record,) = runs.glob("hydra/*/record.json")
    record = json.loads(job_record.read_text())
    assert record["status"] == "killed" and record["error"] == "Terminated: SIGTERM"
    assert _client(uri).get_run(record["tracking"]["run_id"]).info.status == "KILLED"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_sweep_resumed_trains_only_the_remaining_jobs(fresh_env, stop):
    env, runs, uri = fresh_env
    command = ["-m", "+debug=fast", "train.seed=1,2,3,4"]
    first = _harness(env, *command)

    def first_job_recorded() -> bool:  # the job directory's record is written last: the job is complete
        return any(json.loads(p.read_text())["status"] == "ok" for p in runs.glob("sweeps/*/*/record.json"))

    _wait_for(lambda: first_job_recorded() or first.poll() is not None, what="the first record")
    first.send_signal(stop)
    _, first_err = first.communicate(timeout=120)
    assert first.returncode in (143, -signal.SIGKILL), first_err[-5000:]
    (sweep_dir,) = (runs / "sweeps").iterdir()
    done_before = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/record.json")
                   if json.loads(p.read_text())["status"] == "ok"}
    assert len(done_before) == 1

    second = _harness(env, *command, "resume=true")
    stdout, stderr = second.communicate(timeout=900)
    assert second.returncode == 0, stderr[-3000:]
    assert list((runs / "sweeps").iterdir()) == [sweep_dir]  # the same sweep directory, continued
    assert stderr.count("[harness][INFO] - reused: ") == 1 and "sweep done: 3 ok, 1 reused, 0 failed" in stderr
    records = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/record.json")}
    assert len(records) == 4 and {r["status"] for r in records.values()} == {"ok"}
    (reused_job,) = done_before
    assert records[reused_job] == done_before[reused_job]  # reused, not trained again
    assert len(list((runs / "records").glob("*.json"))) == 4  # 1 before, 3 now: nothing counted twice
    client = _client(uri)
    parent_id = (sweep_dir / "mlflow_parent_run_id.txt").read_text().strip()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"summary.csv", "summary.md"}
    summary = (sweep_dir / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 4  # header and every job
    experiment = client.get_experiment_by_name("flexgnn-bench")
    children = [r for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert sorted(r.info.run_id for r in children if r.info.status == "FINISHED") == sorted(
        r["tracking"]["run_id"] for r in records.values())
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)  # the interrupted job's run: KILLED


def test_a_full_disk_under_disk_dir_is_a_clear_error(fresh_env, tmp_path):
    env, runs, uri = fresh_env
    mount = tmp_path / "full"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"SKIPPED LOUDLY: cannot mount a small tmpfs here ({mounted.stderr.strip()})")
    try:
        process = _harness(env, "+debug=fast", "system=flexgnn", "planner=all_disk", f"hardware.disk_dir={mount}")
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 1, stderr[-3000:]  # before: SIGBUS, exit 135, no message
        assert "error: hardware.disk_dir: cannot reserve" in stderr and "No space left on device" in stderr
        assert list(mount.iterdir()) == []
        (job_record,) = runs.glob("hydra/*/record.json")
        record = json.loads(job_record.read_text())
        assert record["status"] == "failed" and "hardware.disk_dir" in record["error"]
        assert _client(uri).get_run(record["tracking"]["run_id"]).info.status == "FAILED"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


DDP_JOB = textwrap.dedent("""
    import sys
    from baselines import ddp_fullgraph
    from flexgnn_core.data.synthetic import make_synthetic
    from flexgnn_core.models import init_params
    from flexgnn_core.spec import ModelSpec, TrainSpec
    graph = make_synthetic(num_nodes=2000, avg_degree=5, num_features=16, num_classes=4)
    model = ModelSpec(kind="gcn", num_layers=2, hidden=16)
    epochs = int(sys.argv[1])
    ddp_fullgraph.train(graph, model, init_params(model, 16, 4, 0), TrainSpec(epochs=epochs, progress=False,
                        device="cpu"), {"world_size": 2, "timeout_s": 30.0})
    print("done")
""")


def test_a_sigkilled_ddp_launcher_leaves_nothing_after_the_next_job(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    launcher = subprocess.Popen([sys.executable, "-c", DDP_JOB, "100000"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # ranks inherit the pipes
    _wait_for(lambda: any(tmp_path.glob("ddp_job_*/rank1.pt")) or launcher.poll() is not None, what="the job")
    time.sleep(3.0)  # the ranks are training
    launcher.kill()
    launcher.wait(timeout=60)  # reaped, as a shell would: a zombie launcher still looks alive to its ranks
    time.sleep(3.0)  # ranks notice within a second that their launcher is gone, and exit
    assert list(tmp_path.glob("ddp_job_*")) and list(tmp_path.glob("pymp-*"))  # what SIGKILL leaves
    again = subprocess.run([sys.executable, "-c", DDP_JOB, "2"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and again.stdout.strip().endswith("done"), again.stderr[-3000:]
    assert list(tmp_path.glob("ddp_job_*")) == [] and list(tmp_path.glob("pymp-*")) == []
