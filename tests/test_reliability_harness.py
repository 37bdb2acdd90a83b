"""Reliability of the harness (issue 13), in-process and fast: concurrent processes on one fresh MLflow store,
runs whose process died closed as KILLED, SIGTERM taking Ctrl-C's path, resumed sweeps, unique job directories,
sweep progress for plain command-line multiruns and credentials kept out of records and MLflow params.
The same behaviours end to end through ``python -m harness`` are in ``test_reliability_cli.py`` (slow)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness import resume
from harness.record import build_record, redact
from harness.run import run
from harness.signals import Terminated, sigterm_as_interrupt
from harness.sweep import SweepCallback, count_jobs
from harness.tracking import Store
from hydra_jobs import hydra_job


def _store_cfg(uri: str):
    return OmegaConf.create({"tracking_uri": uri, "experiment": "flexgnn-bench", "artifact_location": None})


def _open_and_finish(uri: str, runs_dir: str, barrier, index: int) -> None:
    """A forked process: open the (fresh) store when all are ready, log one finished run; exit 0 or 1."""
    try:
        barrier.wait(timeout=60)
        store = Store.open(_store_cfg(uri), Path(runs_dir))
        run_id = store.start_run(f"job{index}", {})
        store.client.set_terminated(run_id, status="FINISHED")
        code = 0
    except BaseException as error:  # noqa: BLE001 (reported through the exit code and stderr)
        print(f"process {index}: {type(error).__name__}: {error}"[:2000], file=sys.stderr)
        code = 1
    os._exit(code)


def test_processes_opening_one_fresh_store_at_once_all_succeed(tmp_path):
    """Issue 13, row 1: MLflow's schema migration ran in every process at once and broke the store for good."""
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    context = multiprocessing.get_context("fork")  # no re-import of mlflow: the processes meet at the migration
    barrier = context.Barrier(3)
    processes = [context.Process(target=_open_and_finish, args=(uri, str(tmp_path), barrier, i)) for i in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    store = Store.open(_store_cfg(uri), tmp_path)
    runs = store.client.search_runs([store.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["job0", "job1", "job2"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def _start_run_and_die(uri: str, runs_dir: str, pipe) -> None:
    store = Store.open(_store_cfg(uri), Path(runs_dir))
    pipe.send(store.start_run("killed-job", {}))
    os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9` or the out-of-memory killer: nothing is closed


def test_a_run_whose_process_is_gone_is_closed_as_killed_by_the_next_run(tmp_path, mlflow_client, harness_dirs):
    """Issue 13, rows 2 and 4: after SIGKILL the MLflow run stayed RUNNING forever."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_start_run_and_die, args=(harness_dirs.uri, str(tmp_path), send))
    process.start()
    orphan = receive.recv()
    process.join(timeout=60)
    assert process.exitcode == -signal.SIGKILL
    assert mlflow_client.get_run(orphan).info.status == "RUNNING"

    store = Store.open(_store_cfg(harness_dirs.uri), tmp_path)  # what the next run or sweep does first
    alive = store.start_run("this-process", {})
    Store.open(_store_cfg(harness_dirs.uri), tmp_path)
    closed = mlflow_client.get_run(orphan)
    assert closed.info.status == "KILLED" and "ended without closing this run" in closed.data.tags["error"]
    assert mlflow_client.get_run(alive).info.status == "RUNNING"  # its process (this one) still runs


def _send_sigterm_when(condition, timeout_s: float = 120.0) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # well inside training
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_sigterm_during_an_all_disk_run_removes_the_disk_tier_and_records_killed(compose, harness_dirs,
                                                                                  mlflow_client, tmp_path):
    """Issue 13, row 2, in-process: SIGTERM raises where Ctrl-C would, so the same cleanup runs."""
    # What the first epochs import lazily (Adam's first step loads torch._dynamo and sympy) is imported now: an
    # interrupt inside an import would leave a half-initialised module for every later test in this process.
    import sympy  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch_geometric  # noqa: F401

    disk = tmp_path / "disk"
    job_dir = tmp_path / "job"
    overrides = ["+debug=fast", "system=flexgnn", "planner=all_disk", "train.epochs=5000", f"hardware.disk_dir={disk}"]
    with hydra_job(compose, overrides, job_dir) as cfg, sigterm_as_interrupt():
        _send_sigterm_when(lambda: any(disk.glob("flexgnn-*/*.f32")))
        with pytest.raises(Terminated):
            run(cfg)
    assert list(disk.iterdir()) == []
    record = json.loads((job_dir / "record.json").read_text())
    assert record["status"] == "killed" and record["error"] == "Terminated: SIGTERM"
    killed = mlflow_client.get_run(record["tracking"]["run_id"])
    assert killed.info.status == "KILLED" and killed.data.tags["error"] == "Terminated: SIGTERM"
    assert not (harness_dirs.runs_dir / "records").exists()  # a killed run is no result


def test_resumed_sweep_job_reuses_a_complete_record_and_reruns_the_rest(compose, harness_dirs, mlflow_client,
                                                                         tmp_path):
    sweep = tmp_path / "sweep"
    job_dir = sweep / "0_pyg_gcn"
    overrides = ["+debug=fast", "train.seed=3"]
    with hydra_job(compose, overrides, job_dir, sweep_dir=sweep) as cfg:
        first = run(cfg)
    with hydra_job(compose, [*overrides, "resume=true"], job_dir, sweep_dir=sweep) as cfg:
        again = run(cfg)
    assert again.pop("reused") is True and again == first  # the stored record, not a new run
    assert len(list((harness_dirs.runs_dir / "records").glob("*.json"))) == 1
    experiment = mlflow_client.get_experiment_by_name("flexgnn-bench")
    assert len(mlflow_client.search_runs([experiment.experiment_id])) == 1

    with hydra_job(compose, [*overrides, "train.epochs=4", "resume=true"], job_dir, sweep_dir=sweep) as cfg:
        changed = run(cfg)  # another config in the same job directory is not this job's result
    assert "reused" not in changed and len(changed["result"]["epoch_losses"]) == 4

    interrupted = {**changed, "status": "killed"}  # a job cut short half-way
    (job_dir / "record.json").write_text(json.dumps(interrupted))
    with hydra_job(compose, [*overrides, "train.epochs=4", "resume=true"], job_dir, sweep_dir=sweep) as cfg:
        rerun = run(cfg)
    assert "reused" not in rerun and rerun["status"] == "ok" and rerun["utc_time"] != changed["utc_time"]
    assert json.loads((job_dir / "record.json").read_text()) == rerun
    assert len(mlflow_client.search_runs([experiment.experiment_id])) == 3


def test_a_job_record_of_another_commit_is_not_reused(tmp_path):
    config = {"train": {"seed": 1}, "resume": False}
    record = {"status": "ok", "config": config, "git": {"commit": "a" * 40}}
    (tmp_path / "record.json").write_text(json.dumps(record))
    assert resume.completed_record(tmp_path, {**config, "resume": True}, "a" * 40) == record
    assert resume.completed_record(tmp_path, config, "b" * 40) is None
    assert resume.completed_record(tmp_path, config, None) is None  # no commit known: nothing can be vouched for
    assert resume.completed_record(tmp_path, {"train": {"seed": 2}}, "a" * 40) is None


def test_resume_continues_the_latest_sweep_of_the_same_command(compose, harness_dirs):
    sweeps = harness_dirs.runs_dir / "sweeps"
    pinned = [f"runs_dir={harness_dirs.runs_dir}", f"mlflow.tracking_uri={harness_dirs.uri}"]  # compose adds them
    for name, overrides, started in (("old", ["+sweep=speedup"], "2026-01-01"), ("new", ["+sweep=speedup"],
                                     "2026-02-01"), ("other", ["+sweep=speedup", "model=gat"], "2026-03-01")):
        (sweeps / name).mkdir(parents=True)
        resume.write_sweep_file(sweeps / name, [*pinned, *overrides], started)
    resumed = compose(["+sweep=speedup", "resume=true"], return_hydra_config=True)
    assert Path(resumed.hydra.sweep.dir) == sweeps / "new"
    fresh = compose(["+sweep=speedup"], return_hydra_config=True)
    assert Path(fresh.hydra.sweep.dir).parent == sweeps and Path(fresh.hydra.sweep.dir).name not in {
        "old", "new", "other"}
    nothing_yet = compose(["+sweep=speedup", "model=sage", "resume=true"], return_hydra_config=True)
    assert Path(nothing_yet.hydra.sweep.dir).name not in {"old", "new", "other"}


def test_runs_started_in_the_same_second_get_their_own_job_directories(compose):
    """Issue 13, row 8: the job directory was named to the second, so concurrent runs shared one."""
    first, second = (compose(["+debug=fast"], return_hydra_config=True) for _ in range(2))
    assert first.hydra.run.dir != second.hydra.run.dir
    sweeps = [compose(["+sweep=speedup"], return_hydra_config=True).hydra.sweep.dir for _ in range(2)]
    assert sweeps[0] != sweeps[1]


def test_a_plain_command_line_multirun_counts_its_jobs(compose, capsys, tmp_path):
    """Issue 13, row 7: without +sweep= the total was unknown and the bar showed full at 1/?."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import open_dict, read_write

    cfg = compose(["+debug=fast"], return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.overrides.task = ["+debug=fast", "model=gcn,sage", "train.seed=1,2,3"]
    assert cfg.hydra.sweeper.params is None and count_jobs(cfg) == 6
    callback = SweepCallback()
    callback.sweep_dir, callback.total = tmp_path, None  # another sweeper's syntax: no total
    callback.launcher_pid = os.getpid()  # jobs run in this process (Hydra's basic launcher)
    (tmp_path / "0_pyg_gcn").mkdir()  # progress counts job records (harness/sweep.py)
    (tmp_path / "0_pyg_gcn" / "record.json").write_text(json.dumps({"status": "ok", "overrides": ["model=gcn"]}))
    callback.on_job_end(cfg, JobReturn(overrides=["model=gcn"], status=JobStatus.COMPLETED, _return_value="ok"))
    assert "sweep 1/? " in capsys.readouterr().err  # no bar claiming the sweep is done


def test_credentials_in_uris_stay_out_of_records_and_mlflow_params(compose, harness_dirs, mlflow_client, tmp_path,
                                                                   monkeypatch):
    """Issue 13, last row: a tracking URI with a password was copied into every record and MLflow params."""
    from test_data_ogb import _tiny_parts, write_csv_layout

    write_csv_layout(tmp_path / "ogb" / "ogbn_arxiv", _tiny_parts())
    monkeypatch.setattr(sys, "argv", ["harness", "mlflow.tracking_uri=postgresql://bob:s3cret@db.example/mlflow"])
    record = run(compose(["+debug=fast", "dataset=ogbn-arxiv", f"dataset.root={tmp_path / 'ogb'}",
                          "dataset.url=https://bob:s3cret@mirror.example/arxiv.zip"]))
    assert record["config"]["dataset"]["url"] == "https://bob:***@mirror.example/arxiv.zip"
    assert "postgresql://bob:***@db.example/mlflow" in record["command"]
    stored = next((harness_dirs.runs_dir / "records").glob("*.json")).read_text()
    assert "s3cret" not in stored
    logged = mlflow_client.get_run(record["tracking"]["run_id"])
    assert logged.data.params["dataset.url"] == "https://bob:***@mirror.example/arxiv.zip"
    config_yaml = Path(mlflow_client.download_artifacts(logged.info.run_id, "config.yaml", str(tmp_path)))
    assert "s3cret" not in config_yaml.read_text() and "bob:***@" in config_yaml.read_text()

    uri = "postgresql://bob:s3cret@db.example:5432/mlflow"  # $MLFLOW_TRACKING_URI as the issue reproduced it
    built = build_record(config={"mlflow": {"tracking_uri": uri}}, settings=None, graph_stats=None, result=None,
                         started=datetime.now(timezone.utc), status="ok",
                         tracking={"tracking_uri": uri}, git={"commit": None, "dirty": None})
    assert "s3cret" not in json.dumps(built) and built["tracking"]["tracking_uri"].startswith("postgresql://bob:***@")
    assert redact("http://host:5000/a?token=abc&x=1") == "http://host:5000/a?token=***&x=1"


def test_sigterm_in_a_finalizer_is_delivered_again(tmp_path):
    """A signal handler's exception raised inside a finalizer is dropped by Python ("Exception ignored"); the
    interrupt must still end the run, so SIGTERM is sent again until the cleanup acknowledges it."""
    script = tmp_path / "finalizer.py"
    script.write_text(
        "import gc, os, signal, sys, time\n"
        "from harness.signals import acknowledge, exit_code, sigterm_as_interrupt\n"
        "class Slow:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(0.2)  # the handler runs here and its exception is swallowed\n"
        "with sigterm_as_interrupt():\n"
        "    try:\n"
        "        Slow()\n"
        "        gc.collect()\n"
        "        time.sleep(30)\n"
        "        sys.exit('not interrupted')\n"
        "    except KeyboardInterrupt as interrupt:\n"
        "        acknowledge()\n"
        "        sys.exit(exit_code(interrupt))\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(script)], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=60)
    assert "Exception ignored" in done.stderr and done.returncode == 143, done.stderr[-2000:]


def test_sigterm_while_a_result_is_recorded_waits_until_it_is_written():
    from harness.signals import deferred

    written = []
    with sigterm_as_interrupt():
        with pytest.raises(Terminated):
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.3)  # the handler has run by now, and raised nothing
                written.append("record")
    assert written == ["record"]


def test_sigterm_turned_into_another_exception_still_ends_the_run_as_interrupted(tmp_path):
    """Code that catches ``Exception`` around library calls can turn the interrupt into another exception on its way
    out (Hydra then reports it and exits 1, and a sweep was closed FAILED with its jobs "lost"). A SIGTERM that
    reached the process ends it as interrupted whatever it ends with: exit 143, the reason on stderr."""
    script = tmp_path / "converted.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "import harness.__main__ as cli\n"
        "def run(cfg):\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(5)\n"
        "    except KeyboardInterrupt as interrupt:\n"
        "        raise RuntimeError('a library wrapped the interrupt') from interrupt\n"
        "    sys.exit('not interrupted')\n"
        "cli.run = run\n"
        "sys.argv = ['harness', '+debug=fast', 'mlflow.enabled=false']\n"
        "cli.cli()\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "FLEXGNN_RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run([sys.executable, str(script)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 143, done.stderr[-3000:]  # before: 1
    assert "SIGTERM arrived, and the run ended with SystemExit" in done.stderr
    assert "a library wrapped the interrupt" in done.stderr and "interrupted by SIGTERM" in done.stderr
