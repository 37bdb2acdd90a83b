"""Sweeps beyond one process (issue 16), fast: the bookkeeping, core slots and the calibration lock that the
launchers (joblib, submitit) rely on, exercised in this process and in forked ones. The same behaviours end to end
through ``python -m harness ... hydra/launcher=...`` are in ``test_launchers_cli.py`` (slow)."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import pickle
import time
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import open_dict, read_write

from harness import cores
from harness.summary import summarize
from harness.sweep import RESULT_FILE, SweepCallback
from hydra_jobs import hydra_job


def test_slots_are_disjoint_when_cores_suffice_and_marked_when_they_do_not():
    plan = cores.plan_for(2, [0, 1, 2, 3, 4])
    assert plan["slots"] == [[0, 1], [2, 3]] and plan["comparable"]  # equal shares; core 4 stays idle
    shared = cores.plan_for(3, [0, 1])
    assert shared["slots"] == [[0], [1], [0]] and not shared["comparable"]
    assert "not comparable" in shared["note"] and "n_jobs=2" in shared["note"]
    assert cores.plan_for(None, [0, 1])["slots"] == []  # Slurm: the scheduler pins each allocation
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 8}
    assert cores.parallel_jobs(joblib, 3) == 3  # never more at once than there are jobs
    assert cores.parallel_jobs({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 9) == 1
    local = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"}
    assert cores.parallel_jobs(local, 4) == 4  # submitit_local starts every job at once


def _hold_slot(sweep_dir: str, queue, release: str) -> None:
    """A job: holds a slot until the file ``release`` exists (a multiprocessing Event can hang its setter when a
    waiter dies)."""
    import threading

    import torch

    earlier = threading.Thread(target=threading.Event().wait, args=(60,), daemon=True)  # e.g. an earlier job's pool
    earlier.start()
    with cores.job_slot(Path(sweep_dir)) as slot:
        queue.put((slot, sorted(os.sched_getaffinity(0)), sorted(os.sched_getaffinity(earlier.native_id)),
                   torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")))
        deadline = time.monotonic() + 30
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def test_parallel_jobs_each_pin_themselves_to_a_slot_of_their_own(tmp_path):
    available = cores.available_cores()
    cores.write_plan(tmp_path, cores.plan_for(2, available))
    context = multiprocessing.get_context("fork")
    queue, release = context.Queue(), tmp_path / "release"
    jobs = [context.Process(target=_hold_slot, args=(str(tmp_path), queue, str(release))) for _ in range(2)]
    for job in jobs:
        job.start()
    try:
        held = [queue.get(timeout=30) for _ in jobs]
    finally:
        release.touch()
        for job in jobs:
            job.join(30)
    assert sorted(slot["slot"] for slot, *_ in held) == [0, 1]  # never the same slot twice
    for slot, affinity, earlier_thread, threads, omp in held:
        assert affinity == earlier_thread == slot["cores"]  # threads started before the job are pinned too
        assert threads == len(slot["cores"]) and omp == str(len(slot["cores"]))
    if len(available) >= 2:
        assert not set(held[0][1]) & set(held[1][1])
    with cores.job_slot(tmp_path) as slot:  # and the process gets its affinity back after the job
        assert sorted(os.sched_getaffinity(0)) == slot["cores"]
    assert sorted(os.sched_getaffinity(0)) == available and cores.current() is None


def test_summary_marks_rows_whose_jobs_shared_cores():
    def record(slot):
        return {"system": "pyg", "model": "gcn", "dataset": "d", "status": "ok", "graph": {"num_nodes": 5},
                "result": {"median_epoch_s": 1.0, "epoch_times_s": [1.0], "device": "cpu"},
                "machine": {"sweep_slot": slot}}

    shared = {"slot": 1, "cores": [1], "parallel_jobs": 4, "comparable": False}
    rows = summarize([record(shared), record({**shared, "comparable": True}), record(None)])
    assert ["not comparable" in (row["note"] or "") for row in rows] == [True, False, False]


def _calibrate(cache_dir: str, queue) -> None:
    from flexgnn_core import calibrate

    os.environ[calibrate.CACHE_ENV] = cache_dir

    def measure(*args, **kwargs):
        """Stands in for the microbenchmarks (torch's thread pool must not run in a forked child): what is tested is
        who measures, so it takes long enough that both processes look before either has written the file."""
        time.sleep(1.5)
        queue.put("measured")
        return calibrate.profile("h100")

    calibrate.measure = measure
    calibrate.load_or_measure("cpu", scale=0.05)
    queue.put("done")


def test_parallel_jobs_calibrate_once_per_machine(tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    jobs = [context.Process(target=_calibrate, args=(str(tmp_path), queue)) for _ in range(2)]
    for job in jobs:
        job.start()
    events = []
    while events.count("done") < 2:
        events.append(queue.get(timeout=120))
    for job in jobs:
        job.join(30)
    assert all(job.exitcode == 0 for job in jobs)
    assert events.count("done") == 2 and events.count("measured") == 1  # the other one read the cache
    assert len(list(tmp_path.glob("calibration-*.json"))) == 1


def _launch_config(compose, tmp_path: Path, launcher: list[str], task: list[str]):
    cfg = compose([*launcher, "+debug=fast"], return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.overrides.task = task
        cfg.hydra.sweep.dir = str(tmp_path / "sweep")
    return cfg


def test_sweep_counts_parent_run_and_summary_come_from_records_written_elsewhere(
        cluster_extra, compose, harness_dirs, mlflow_client, tmp_path, capsys):
    """Under joblib the launcher's callbacks run in worker processes (the callback travels there pickled): the
    launching process still counts both jobs, closes the parent run with its children and writes the summary."""
    task = ["+debug=fast", "model=gcn,sage"]
    cfg = _launch_config(compose, tmp_path, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], task)
    launching = SweepCallback()
    launching.on_multirun_start(cfg)
    sweep_dir = tmp_path / "sweep"
    assert launching.total == 2 and cores.read_plan(sweep_dir)["parallel_jobs"] == 2
    worker = pickle.loads(pickle.dumps(launching))  # what joblib / submitit ship to a job's process
    assert worker.store is None and worker.parent_run_id == launching.parent_run_id

    from harness.run import run

    with hydra_job(compose, ["+debug=fast", "model=gcn"], sweep_dir / "0_pyg_gcn", sweep_dir) as job_cfg:
        record = run(job_cfg)  # a job that ran: its MLflow run names the sweep's parent
    failed_cfg = compose(["+debug=fast", "model=sage"], return_hydra_config=True)
    with read_write(failed_cfg.hydra), open_dict(failed_cfg.hydra):
        failed_cfg.hydra.runtime.output_dir = str(sweep_dir / "1_pyg_sage")
    (sweep_dir / "1_pyg_sage").mkdir()
    worker.launcher_pid = -1  # this "worker" is another process: it writes the record, prints nothing
    worker.on_job_end(failed_cfg, JobReturn(overrides=["model=sage"], status=JobStatus.FAILED,
                                            _return_value=ValueError("a job that failed before its record")))
    deadline = time.monotonic() + 10
    while "2/2" not in capsys.readouterr().err and time.monotonic() < deadline:
        time.sleep(0.2)  # the launching process's watcher prints progress as records appear
    launching.on_multirun_end(cfg)
    err = capsys.readouterr().err
    assert "sweep done: 1 ok, 1 failed" in err

    result = json.loads((sweep_dir / RESULT_FILE).read_text())
    assert result["counts"] == {"ok": 1, "failed": 1} and result["status"] == "FAILED" and result["closed_in_mlflow"]
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert sorted((row["model"], row["status"]) for row in rows) == [("gcn", "ok"), ("sage", "failed")]
    parent = mlflow_client.get_run(launching.parent_run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["failed_jobs"] == "1"
    assert record["tracking"]["parent_run_id"] == launching.parent_run_id
    assert mlflow_client.get_run(record["tracking"]["run_id"]).info.status == "FINISHED"


def test_launcher_configs_compose_with_their_resources(cluster_extra, compose):
    cfg = compose(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_task=4",
                   "hydra.launcher.timeout_min=120"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_task == 4
    assert cores.parallel_jobs(launcher, 10) is None
    local = compose(["hydra/launcher=submitit_local"], return_hydra_config=True).hydra.launcher
    assert cores.parallel_jobs(local, 4) == 4


def test_jobs_in_other_processes_resume_into_the_sweep_the_launching_process_chose(tmp_path, monkeypatch):
    """With resume=true each job re-resolves the sweep directory with its own overrides; a job in another process
    (joblib, submitit) cannot match the sweep command from those, so it takes the launching process's choice."""
    from harness import resume

    earlier = tmp_path / "2026-01-01_00-00-00-000000"
    earlier.mkdir()
    resume.write_sweep_file(earlier, ["+debug=fast", "train.seed=1,2"], "2026-01-01T00:00:00Z")
    monkeypatch.setattr(resume, "_chosen", {})
    monkeypatch.delenv(resume.CHOSEN_ENV, raising=False)  # restored after the test, with what the resolver sets
    command = ["+debug=fast", "train.seed=1,2", "resume=true"]
    assert resume.sweep_dir(str(tmp_path), "new-stamp", True, command) == str(earlier)
    monkeypatch.setattr(resume, "_chosen", {})  # a job's process: nothing resolved there yet, the environment inherited
    assert resume.sweep_dir(str(tmp_path), "new-stamp", True, ["+debug=fast", "train.seed=2"]) == str(earlier)
