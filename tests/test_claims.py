"""The claims table, parity and the end-of-sweep comparisons, on small records made here with known numbers: each
claim row's measured value is the ratio of the medians it names, linked to exactly those records; out-of-memory
cells count; parity flags a curve that left PyG's; MLflow gets the metrics on children and parent."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.claims import PARITY_LOSS_RTOL, claim_rows, claims_markdown, write_claims
from harness.comparisons import child_metrics, log_comparisons, terminal_tables
from harness.summary import summarize

SWEEP = Path("/sweeps/s1")
CAP = 2**30
LOSSES = [2.0, 1.5, 1.2, 1.0]


def record(system: str, nodes: int, median: float | None, *, planner: str | None = None, ranks: int = 1,
           status: str = "ok", losses: list[float] = LOSSES, test: float = 0.9, run_id: str | None = None,
           cap: int | None = CAP, seed: int = 0, graph_seed: int = 0) -> dict:
    job = f"{system}{planner or ''}{ranks}_{nodes}" + (f"_{seed}_{graph_seed}" if seed or graph_seed else "")
    config = {"dataset": {"name": "synthetic", "num_nodes": nodes, "avg_degree": 20, "num_features": 128,
                          "seed": graph_seed}, "train": {"seed": seed},
              "model": {"kind": "gcn", "num_layers": 2, "hidden": 128},
              "system": {"name": system, "world_size": ranks} if system == "ddp" else {"name": system},
              "planner": {"name": planner} if planner else None, "hardware": {"memory_cap": "1GiB" if cap else None}}
    ok = status == "ok"
    return {"system": system, "model": "gcn", "dataset": "synthetic", "status": status, "config": config,
            "graph": {"num_nodes": nodes, "num_edges": 20 * nodes} if ok else None,
            "result": {"median_epoch_s": median, "epoch_losses": losses, "epoch_times_s": [median] * len(losses),
                       "accuracy": {"test": test}, "device": f"{ranks}xcpu" if system == "ddp" else "cpu",
                       "plan": {"num_chunks": 8}} if ok else None,
            "memory_cap": {"cap_bytes": cap * ranks, "peak_bytes": 700 * 2**20} if cap else None,
            "machine": {"cpu_model": "Test CPU", "cpu_logical_cores": 2, "torch_threads": 2, "gpus": []},
            "tracking": {"run_id": run_id} if run_id else None,
            "paths": {"job_dir": str(SWEEP / job), "record": f"/runs/records/{job}.json"}}


def sweep_records() -> list[dict]:
    return [
        record("pyg", 75_000, 8.0, run_id="pyg75"), record("pyg", 300_000, None, status="oom"),
        record("dgl", 75_000, 4.0), record("dgl", 300_000, None, status="oom"),
        record("flexgnn", 75_000, 2.0, run_id="flex75"), record("flexgnn", 300_000, 10.0, run_id="flex300"),
        record("flexgnn", 75_000, 3.0, planner="hongtu_like"), record("flexgnn", 300_000, 40.0, planner="hongtu_like"),
        record("flexgnn", 75_000, 2.5, planner="flexgnn_greedy"),
        record("flexgnn", 300_000, 12.0, planner="flexgnn_greedy"),
        record("ddp", 75_000, 5.0, ranks=2), record("ddp", 300_000, 30.0, ranks=2),
        record("ddp", 75_000, 6.0, ranks=4), record("ddp", 300_000, None, ranks=4, status="oom"),
    ]


def by_claim(rows: list[dict]) -> dict[str, dict]:
    return {row["claim"]: row for row in rows}


def test_each_claim_is_the_ratio_of_the_medians_it_links():
    rows = by_claim(claim_rows(sweep_records(), SWEEP))
    assert rows["hongtu"]["measured"] == pytest.approx(4.0)  # 40 s / 10 s at 300k beats 3 s / 2 s at 75k
    assert rows["hongtu"]["ratio"] == pytest.approx(4.0 / 5.4)
    assert set(rows["hongtu"]["records"]) == {"flexgnn1_75000/record.json", "flexgnnhongtu_like1_75000/record.json",
                                              "flexgnn1_300000/record.json", "flexgnnhongtu_like1_300000/record.json"}
    assert rows["neutronstar (R=2)"]["measured"] == pytest.approx(3.0)
    assert rows["neutronstar (R=4)"]["measured"] == pytest.approx(3.0)  # 6 / 2 at 75k; 300k was out of memory
    assert "ran out of memory on 1 graph" in rows["neutronstar (R=4)"]["verdict"]
    assert rows["oom"]["measured"] == pytest.approx(4.0)  # flexgnn's 300k over the 75k PyG and DGL managed
    assert rows["oom"]["verdict"].startswith("reproduced in kind")
    assert "pyg gcn: largest ok 75k nodes, out of memory from 300k" in rows["oom"]["verdict"]
    assert "gcn 300k nodes: 4.00x (40.00 s vs 10.00 s)" in rows["hongtu"]["verdict"]  # each number names its cell
    assert rows["plan vs flexgnn[flexgnn_greedy]"]["measured"] == pytest.approx(1.25)
    assert rows["plan vs flexgnn[flexgnn_greedy]"]["geomean"] == pytest.approx((1.25 * 1.2) ** 0.5)
    assert "2 cores, CPU only), 2 torch threads" in rows["hongtu"]["measured_conditions"]
    assert "cap 1 GiB per device" in rows["neutronstar (R=2)"]["measured_conditions"]


def test_a_claim_without_its_runs_says_so_and_the_oom_claim_fails_when_everything_fit():
    fitted = [r for r in sweep_records() if r["status"] == "ok" and r["system"] in ("pyg", "flexgnn")
              and not r["config"]["planner"]]
    rows = by_claim(claim_rows(fitted, SWEEP))
    assert rows["hongtu"]["measured"] is None and "no capped flexgnn and flexgnn[hongtu_like]" in rows["hongtu"][
        "verdict"]
    assert rows["oom"]["measured"] is None and rows["oom"]["verdict"].startswith("not shown")


def test_claims_md_has_a_row_per_claim_with_reported_measured_and_links(tmp_path):
    paths, metrics = write_claims(sweep_records(), tmp_path)
    text = paths[0].read_text()
    for claim in ("hongtu", "neutronstar (R=2)", "neutronstar (R=4)", "oom", "plan vs flexgnn[flexgnn_greedy]",
                  "plan vs flexgnn[hongtu_like]"):
        assert f"| {claim} |" in text
    assert "| hongtu | 5.4 |" in text and "| 4 x |" in text and "| 0.741 |" in text
    assert "[flexgnnhongtu_like1_300000](/runs/records/flexgnnhongtu_like1_300000.json)" in text  # not in tmp_path
    assert metrics["claims/hongtu/measured"] == pytest.approx(4.0) and metrics["claims/hongtu/reported"] == 5.4
    assert metrics["claims/neutronstar_R2/measured"] == pytest.approx(3.0)
    assert write_claims([r for r in sweep_records() if not r["memory_cap"]], tmp_path) == ([], {})
    assert claims_markdown(claim_rows(sweep_records(), SWEEP)).count("\n| ") == 7  # header + 6 claims


def test_parity_is_measured_against_pyg_and_flags_a_curve_that_left_it():
    drifted = [loss * (1 + 3 * PARITY_LOSS_RTOL) for loss in LOSSES]
    records = [record("pyg", 75_000, 8.0, cap=None), record("flexgnn", 75_000, 2.0, cap=None, test=0.899),
               record("dgl", 75_000, 4.0, cap=None, losses=drifted),
               record("ddp", 75_000, 4.0, cap=None, ranks=2, test=0.88)]
    rows = {row["run"]: row for row in summarize(records)}
    assert rows["pyg"]["parity"] is None  # the reference itself
    assert rows["flexgnn"]["parity"] == "ok" and rows["flexgnn"]["test_acc_diff"] == pytest.approx(-0.001)
    assert rows["dgl"]["parity"] == "BROKEN" and rows["dgl"]["max_rel_loss_diff"] == pytest.approx(3e-4)
    assert rows["ddp[R=2]"]["parity"] == "BROKEN"  # 2 points of test accuracy
    assert rows["flexgnn"]["speedup_vs_pyg"] == pytest.approx(4.0)
    assert rows["ddp[R=2]"]["speedup_vs_pyg"] == pytest.approx(2.0)  # R CPU ranks against one CPU: same kind


def test_a_seed_sweep_compares_each_run_with_the_reference_of_its_own_seeds():
    """Other initial weights (train.seed) or another graph draw (dataset.seed) give other curves by design: a
    recipe's 10-seed PyG sweep must not read BROKEN (it did: every run was compared with seed 0's)."""
    curves = {seed: [loss + 0.1 * seed for loss in LOSSES] for seed in range(3)}
    records = [record(system, 75_000, 8.0, cap=None, seed=seed, losses=curves[seed], test=0.9 - 0.01 * seed)
               for seed in range(3) for system in ("pyg", "flexgnn")]
    records.append(record("flexgnn", 75_000, 2.0, cap=None, graph_seed=1, losses=curves[2]))  # no pyg on draw 1
    rows = summarize(records)
    assert [row["parity"] for row in rows if row["system"] == "pyg"] == [None] * 3  # each seed its own reference
    flex = [row for row in rows if row["system"] == "flexgnn"]
    assert [row["parity"] for row in flex] == ["ok"] * 3 + [None]
    assert [row["max_rel_loss_diff"] for row in flex[:3]] == [0.0] * 3
    assert sum(row["speedup_vs_pyg"] is not None for row in flex) == 4  # timing compares per graph size, as before
    (drifted,) = [row for row in flex if row["parity"] is None]
    assert drifted["max_rel_loss_diff"] is None  # another graph: no reference rather than a false BROKEN


def test_where_pyg_ran_out_of_memory_parity_falls_back_to_the_next_reference():
    rows = {(row["run"], row["num_nodes"]): row for row in summarize(sweep_records())}
    assert rows[("flexgnn[hongtu_like]", 300_000)]["parity"] == "ok"  # against flexgnn: pyg and dgl were oom
    assert rows[("pyg", 300_000)]["status"] == "oom" and rows[("pyg", 300_000)]["memory_cap"] == "1GiB"


def test_child_metrics_carry_speedups_parity_and_a_comparable_peak():
    metrics = child_metrics(sweep_records())
    assert set(metrics) == {"pyg75", "flex75", "flex300"}  # ok records that have an MLflow run
    values, tags = metrics["flex75"]
    assert values["speedup_vs_pyg"] == pytest.approx(4.0) and values["parity/max_rel_loss_diff"] == 0.0
    assert values["speedup_vs/flexgnn_hongtu_like"] == pytest.approx(1.5)
    assert values["speedup_vs/ddp_R4"] == pytest.approx(3.0) and values["mem/real_peak_bytes"] == 700 * 2**20
    assert tags == {"parity": "ok", "run": "flexgnn"}
    assert "speedup_vs_pyg" not in metrics["flex300"][0]  # pyg ran out of memory there
    for reference in ("pyg75", "flex300"):  # PyG, and flexgnn where PyG and DGL ran out of memory
        assert metrics[reference][1]["parity"] == "reference" and metrics[reference][0]["parity/max_rel_loss_diff"] == 0


def test_comparisons_reach_mlflow_children_and_parent(harness_dirs, mlflow_client):
    from harness.tracking import Store

    store = Store.open(SimpleNamespace(get=lambda key, default=None: {"tracking_uri": harness_dirs.uri}.get(key)),
                       harness_dirs.runs_dir)
    parent = store.start_run("sweep", {"kind": "sweep"})
    records = sweep_records()
    ids = {}
    for r in records:
        if r["tracking"]:
            ids[r["tracking"]["run_id"]] = store.start_run(r["tracking"]["run_id"], {}, parent)
            r["tracking"]["run_id"] = ids[r["tracking"]["run_id"]]
    claims = log_comparisons(store, parent, records)
    assert mlflow_client.get_run(parent).data.metrics["claims/hongtu/measured"] == pytest.approx(4.0)
    assert claims["claims/oom/measured"] == pytest.approx(4.0)
    flex = mlflow_client.get_run(ids["flex75"]).data
    assert flex.metrics["speedup_vs_pyg"] == pytest.approx(4.0) and flex.tags["parity"] == "ok"
    experiment = mlflow_client.get_experiment(store.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags["mlflow.sharedViewState.comparisons"])  # the runs table's speed-up column
    assert view["selectedColumns"][0] == "metrics.`speedup_vs_pyg`" and view["runsExpanded"] == {parent: True}


def test_the_terminal_gets_one_line_per_job_and_the_claims():
    text = terminal_tables(sweep_records(), "# claims table")
    assert text.count("\n") == 2 + len(sweep_records()) + 2
    assert "flexgnn[hongtu_like]" in text and "oom" in text and text.rstrip().endswith("# claims table")


def test_run_names_read_apart_and_unset_config_values_stay_absent(harness_dirs, mlflow_client):
    from harness.naming import run_name, source_tags
    from harness.tracking import Store

    config = {"planner": {"name": "hongtu_like"}, "model": {"kind": "gcn"}, "hardware": {"memory_cap": "640MiB"},
              "dataset": {"name": "synthetic", "num_nodes": 120_000, "avg_degree": 10.0}}
    assert run_name("flexgnn", config) == "flexgnn[hongtu_like] gcn synthetic 120k d10 cap 640MiB"
    assert run_name("ddp", {**config, "system": {"world_size": 4}, "hardware": {}}) == "ddp[R=4] gcn synthetic 120k d10"
    store = Store.open(SimpleNamespace(get=lambda key, default=None: {"tracking_uri": harness_dirs.uri}.get(key)),
                       harness_dirs.runs_dir)
    run_id = store.start_run("r", source_tags({"commit": "abc123"}))
    store.log_record(run_id, {"config": {"model": {"dropout": None, "hidden": 128}}, "result": None}, "x: 1\n")
    found = mlflow_client.get_run(run_id).data
    assert found.params == {"model.hidden": "128"}  # no "null" strings for unset values
    assert found.tags["mlflow.source.git.commit"] == "abc123" and found.tags["mlflow.source.name"] == "python -m harness"


def test_claims_plots_are_written_with_one_size_panel_per_model(tmp_path):
    import copy

    from matplotlib.image import imread

    from harness.plots_claims import claims_plot, epoch_vs_size_plot, memory_vs_cap_plot

    gcn = sweep_records()
    sage = copy.deepcopy(gcn)
    for r in sage:
        r["model"], r["config"]["model"]["kind"] = "sage", "sage"
    widths = {}
    for name, records in (("one", gcn), ("two", gcn + sage)):
        path = epoch_vs_size_plot(records, tmp_path / f"{name}.png")
        widths[name] = imread(path).shape[1]
    assert widths == {"one": 960, "two": 1200}  # 8 in, then 5 in per panel, at 120 dpi
    assert claims_plot(gcn, tmp_path / "claims.png").stat().st_size > 0
    assert memory_vs_cap_plot(gcn, tmp_path / "memory.png").stat().st_size > 0
    assert epoch_vs_size_plot([r for r in gcn if r["status"] == "oom"], tmp_path / "none.png") is None  # nothing ok
