"""``+sweep=planner`` (issue 4's planner quality): the real config composes every job, the device budget can be a
fraction of the all-on-device peak, an infeasible plan is a recorded result inside a sweep and an error alone, and
the sweep runs end to end in a tiny form with its tables, plot and MLflow summary."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest

from flexgnn_core import system
from flexgnn_core.data import load_dataset
from flexgnn_core.engine import prepare
from flexgnn_core.models import init_params
from flexgnn_core.plan import simulate
from flexgnn_core.plan.solvers import solve
from flexgnn_core.spec import ModelSpec, TrainSpec
from harness.config import ConfigError, conf_dir, validate
from harness.run import run
from harness.sweep import count_jobs

CONF = conf_dir()
PLANNERS = ["all_device", "all_host", "recompute", "flexgnn_greedy", "hongtu_like", "optimal", "optimal_p"]


def test_planner_sweep_composes_and_each_job_runs_its_planner(compose):
    cfg = compose(["+sweep=planner"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = {key: str(value).split(",") for key, value in cfg.hydra.sweeper.params.items()}
    assert params == {"repeat": ["0", "1"], "planner": PLANNERS, "model": ["gcn", "sage", "gat"],
                      "dataset.avg_degree": ["5", "25"],
                      "hardware.device_budget_fraction": ["1.0", "0.5", "0.25", "0.0625"]}
    assert list(params)[0] == "repeat"  # slowest-varying: the whole grid runs once before any job repeats
    assert count_jobs(cfg) == 2 * 7 * 3 * 2 * 4
    assert (CONF / "sweep" / "planner.yaml").read_text().splitlines()[1] == "# python -m harness +sweep=planner"
    for name in PLANNERS:  # the planner group, not the system file's default policy, decides each job's solver
        settings = validate(compose(["+sweep=planner", f"planner={name}", "model=gat",
                                     "hardware.device_budget_fraction=0.0625"]))
        assert settings.system_name == "flexgnn" and settings.system_options["policy"] == name
        assert settings.system_options["device_budget_fraction"] == 0.0625
        assert settings.system_options["num_chunks"] == 8 and "device_budget_bytes" not in settings.system_options
        assert (settings.model.num_layers, settings.model.hidden, settings.model.heads) == (3, 64, 2)
        assert settings.train.epochs == 5 and settings.train.warmup_epochs == 1


@pytest.mark.parametrize(("overrides", "field"), [
    (["hardware.device_budget_fraction=0"], "hardware.device_budget_fraction"),
    (["hardware.device_budget_fraction=1.5"], "hardware.device_budget_fraction"),
    (["hardware.device_budget_fraction=-0.5"], "hardware.device_budget_fraction"),
    (["hardware.device_budget_fraction=0.5", "hardware.device_budget_bytes=64MiB"],
     "hardware.device_budget_fraction=0.5 and hardware.device_budget_bytes=67108864 are both set"),
])
def test_bad_budget_fraction_names_the_field_before_anything_is_recorded(compose, harness_dirs, overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", "[.]")) as caught:
        run(compose(["+debug=fast", "system=flexgnn", *overrides]))
    assert "Fix" in str(caught.value)
    assert not harness_dirs.runs_dir.exists() and not (harness_dirs.root / "mlflow.db").exists()


def test_budget_fraction_that_is_not_a_number_fails_composition_naming_the_field(compose):
    with pytest.raises(Exception, match="hardware.device_budget_fraction") as caught:
        compose(["system=flexgnn", "hardware.device_budget_fraction=abc"])
    assert "could not be converted to Float" in str(caught.value.__cause__ or caught.value)


GRAPH = load_dataset("synthetic", num_nodes=300, avg_degree=4.0, num_features=8, num_classes=3)
MODEL = ModelSpec(kind="sage", num_layers=2, hidden=8)
PARAMS = init_params(MODEL, GRAPH.num_features, GRAPH.num_classes, seed=0)
TRAIN = TrainSpec(epochs=2, warmup_epochs=1, progress=False, device="cpu")


def _train(**options):
    return system.train(GRAPH, MODEL, PARAMS, TRAIN, {"print_plan": False, "num_chunks": 4, **options})


@pytest.mark.parametrize(("options", "message"), [
    ({"device_budget_fraction": 0}, r"device_budget_fraction=0 must be a number in \(0, 1\]"),
    ({"device_budget_fraction": 1.5}, r"device_budget_fraction=1.5 must be a number in \(0, 1\]"),
    ({"device_budget_fraction": "abc"}, r"device_budget_fraction='abc' must be a number in \(0, 1\]"),
    ({"device_budget_fraction": True}, r"device_budget_fraction=True must be a number"),
    ({"device_budget_fraction": 0.5, "device_budget_bytes": 10**6},
     "device_budget_fraction=0.5 and hardware.device_budget_bytes=1000000 are both set"),
])
def test_engine_rejects_bad_fractions(options, message):
    with pytest.raises(ValueError, match=message):
        _train(**options)


def test_engine_resolves_the_fraction_against_the_all_device_peak_at_its_p():
    everything = _train(policy="all_device", device_budget_fraction=1.0)  # the whole peak: all-on-device fits
    budget = everything.extra["device_budget_bytes"]
    unlimited = prepare(GRAPH, MODEL, PARAMS, 4).problem
    assert budget == simulate(solve(unlimited, "all_device"), unlimited)["peak_bytes"]["device"]
    assert everything.extra["device_budget_fraction"] == 1.0 and everything.extra["device_within_budget"]
    half = _train(policy="all_host", device_budget_fraction=0.5)
    assert half.extra["device_budget_bytes"] == math.ceil(0.5 * budget) and half.plan["device_budget_bytes"] == \
        half.extra["device_budget_bytes"]
    refused = _train(policy="all_device", device_budget_fraction=0.5)
    assert refused.status == "infeasible"
    assert re.search(rf"plan 'all_device' is infeasible: .*device_budget_bytes={math.ceil(0.5 * budget)}",
                     refused.reason)
    assert refused.plan["device_budget_bytes"] == math.ceil(0.5 * budget) and not refused.plan["feasible"]


@pytest.mark.slow  # 11 s, a harness subprocess (the engine's infeasible result: test_engine_bad_input, in process)
def test_single_infeasible_run_exits_nonzero_with_the_reason(run_harness, harness_dirs, mlflow_client):
    harness_dirs.env["OMP_NUM_THREADS"] = "1"  # tiny kernels: 2 threads on a busy 2-core machine stall for seconds
    done = run_harness("+debug=fast", "system=flexgnn", "planner=all_device", "hardware.device_budget_fraction=0.5",
                       "system.num_chunks=4")  # a fixed P: with P free the planner would find one that fits
    assert done.returncode == 1 and done.stdout == ""
    assert "error: plan 'all_device' is infeasible: device needs" in done.stderr and "minimum for P=4" in done.stderr
    assert not (harness_dirs.runs_dir / "records").exists()  # a failure: only the job dir holds a record
    (job_record,) = harness_dirs.runs_dir.glob("hydra/*/record.json")
    assert json.loads(job_record.read_text())["status"] == "failed"
    (failed,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("flexgnn-bench").experiment_id])
    assert failed.info.status == "FAILED" and "is infeasible" in failed.data.tags["error"]


@pytest.mark.slow  # 18 s: a 4-job sweep in a subprocess; CI runs the slow set (.ci/run)
def test_tiny_planner_sweep_records_infeasible_jobs_and_writes_the_planner_table(run_harness, harness_dirs,
                                                                                 mlflow_client):
    harness_dirs.env["OMP_NUM_THREADS"] = "1"  # tiny kernels: 2 threads on a busy 2-core machine stall for seconds
    # A datasheet profile: plans that do not depend on this machine's calibration (nor measure one).
    done = run_harness("+sweep=planner", "+debug=fast", "repeat=0", "planner=all_device,optimal", "model=gcn",
                       "dataset.avg_degree=5", "hardware.device_budget_fraction=1.0,0.5", "hardware.profile=h200")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted((harness_dirs.runs_dir / "sweeps").glob("*/*/record.json"))]
    outcome = {(r["config"]["planner"]["name"], r["config"]["hardware"]["device_budget_fraction"]):
               r["status"] for r in records}
    assert outcome == {("all_device", 1.0): "ok", ("all_device", 0.5): "infeasible", ("optimal", 1.0): "ok",
                       ("optimal", 0.5): "ok"}  # the sweep went on past the infeasible job
    infeasible = next(r for r in records if r["status"] == "infeasible")
    assert infeasible["result"] is None and "plan 'all_device' is infeasible" in infeasible["error"]
    assert infeasible["plan"]["feasible"] is False and infeasible["plan"]["policy"] == "all_device"
    assert len(list((harness_dirs.runs_dir / "records").glob("*.json"))) == 4  # infeasible is a kept result
    budgets = {r["result"]["extra"]["device_budget_bytes"] for r in records if r["status"] == "ok"}
    assert len(budgets) == 2  # one resolved budget per fraction, the same for every planner

    (sweep_dir,) = (harness_dirs.runs_dir / "sweeps").iterdir()
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == [
        "0_all_device_gcn", "1_all_device_gcn", "2_optimal_gcn", "3_optimal_gcn"]
    rows = list(csv.DictReader((sweep_dir / "planner.csv").open()))
    assert sorted((row["planner"], row["budget_fraction"], row["status"]) for row in rows) == [
        ("all_device", "0.5", "infeasible"), ("all_device", "1.0", "ok"), ("optimal", "0.5", "ok"),
        ("optimal", "1.0", "ok")]
    assert {row["optimal_regret"] for row in rows if row["budget_fraction"] == "0.5"} == {"1.0"}  # alone at P
    assert (sweep_dir / "prediction.png").stat().st_size > 0 and "infeasible" in (sweep_dir / "planner.md").read_text()

    parent_id = (sweep_dir / "mlflow_parent_run_id.txt").read_text().strip()
    parent = mlflow_client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["infeasible_jobs"] == "1"
    assert parent.data.metrics["planner/num_cases"] == 2 and "planner/regret_median" in parent.data.metrics
    assert {a.path for a in mlflow_client.list_artifacts(parent_id)} >= {"planner.csv", "planner.md",
                                                                        "prediction.png"}
    children = mlflow_client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 4 and all(child.info.status == "FINISHED" for child in children)
    (tagged,) = [child for child in children if child.data.tags.get("status") == "infeasible"]
    assert "device needs" in tagged.data.tags["error"] and tagged.data.params["planner.name"] == "all_device"
    assert "infeasible: repeat=0 planner=all_device" in done.stderr and "1 infeasible, 3 ok, 0 failed" in done.stderr
