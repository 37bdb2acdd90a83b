"""Planner-quality tables and plots are a pure step over records: checked on small records in tests/data/records/.

The records (hand-made, trimmed to what the reports read) hold two planner cases on one graph (gcn, 3 layers,
P=8): budget 1.0, where every planner ran (all_host twice), and budget 1/16, where all_device and optimal are
infeasible and hongtu_like failed; plus a pyg / flexgnn pair of a speedup sweep on another graph.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from harness.plots import write_plots
from harness.report import main as report_main
from harness.report_planner import planner_cases, planner_summary, summary_line, write_planner

RECORDS_DIR = Path(__file__).parent / "data" / "records"
RECORDS = [json.loads(path.read_text()) for path in sorted(RECORDS_DIR.glob("*.json"))]


def test_cases_group_planners_and_score_them_as_the_bench_does():
    full, tight = planner_cases(RECORDS)  # the speedup pair is one planner on its own graph: not a case
    assert (full["budget_fraction"], tight["budget_fraction"]) == (1.0, 0.0625)
    assert full["device_budget_bytes"] == 16_000_000 and tight["device_budget_bytes"] == 1_000_000
    assert list(full["planners"]) == ["all_device", "all_host", "flexgnn_greedy", "optimal", "optimal_p"]
    assert full["planners"]["all_host"]["measured_s"] == 0.20  # ran twice: the fastest median is kept
    assert full["planners"]["all_device"]["error"] == pytest.approx(0.1)  # |0.11 - 0.10| / 0.10
    assert full["planners"]["all_host"]["error"] == pytest.approx(0.2)
    assert full["optimal_regret"] == pytest.approx(0.11 / 0.10)  # against the best at P=8: all_device
    assert full["optimal_p_regret"] == pytest.approx(1.0)  # optimal_p (P=4) is the fastest of all
    assert full["speedup_vs_greedy"] == pytest.approx(0.12 / 0.11)
    assert full["planners"]["optimal_p"]["chunks_run"] == 4

    # optimal does not fit 1/16: no regret and no speedup; the failed hongtu_like run is not a result
    assert list(tight["planners"]) == ["all_device", "flexgnn_greedy", "optimal", "optimal_p"]
    assert tight["planners"]["optimal"]["status"] == "infeasible" and tight["planners"]["optimal"]["measured_s"] is None
    assert "minimum for P=8" in tight["planners"]["optimal"]["note"]
    assert tight["optimal_regret"] is None and tight["speedup_vs_greedy"] is None
    assert tight["optimal_p_regret"] == pytest.approx(0.50 / 0.40)
    (infeasible,) = planner_cases([r for r in RECORDS if r["status"] == "infeasible"])  # nothing fits 1/16
    assert infeasible["device_budget_bytes"] == 1_000_000  # from the plans that did not fit
    assert infeasible["optimal_regret"] is infeasible["optimal_p_regret"] is infeasible["speedup_vs_greedy"] is None


def test_summary_numbers():
    summary = planner_summary(planner_cases(RECORDS))
    assert summary["num_cases"] == 2
    assert summary["regret_median"] == summary["regret_max"] == pytest.approx(1.1)
    assert summary["optimal_p_regret_median"] == pytest.approx(1.125)
    assert summary["optimal_p_regret_max"] == pytest.approx(1.25)
    # errors: 0.1, 0.2, 0, 1/11, 0 (budget 1.0); 0.25, 0.1 (1/16): median 0.1
    assert summary["error_median"] == pytest.approx(0.1)
    assert summary["optimal_error_median"] == pytest.approx(1 / 11)
    assert summary["speedup_vs_greedy_median"] == summary["speedup_vs_greedy_min"] == pytest.approx(0.12 / 0.11)
    line = summary_line(summary)
    assert "2 cases" in line and "median 1.1," in line and "10% over all plans" in line


def test_tables_and_plots_are_written(tmp_path):
    paths, summary = write_planner(RECORDS, tmp_path)
    assert [p.name for p in paths] == ["planner.csv", "planner.md"] and summary["num_cases"] == 2
    rows = list(csv.DictReader((tmp_path / "planner.csv").open()))
    assert len(rows) == 9 and {row["planner"] for row in rows if row["status"] == "infeasible"} == {
        "all_device", "optimal"}
    greedy = next(r for r in rows if r["planner"] == "flexgnn_greedy" and r["budget_fraction"] == "1.0")
    assert float(greedy["speedup_vs_greedy"]) == pytest.approx(0.12 / 0.11)
    assert greedy["device_budget_bytes"] == "16000000"
    table = (tmp_path / "planner.md").read_text()
    assert "| infeasible |" in table and "110 / 100" in table and table.rstrip().endswith("min 1.09x.")

    plots = write_plots(RECORDS, tmp_path)
    assert [p.name for p in plots] == ["speedup.png", "prediction.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in plots)


def test_absent_records_skip_tables_and_plots_without_error(tmp_path):
    pyg_only = [r for r in RECORDS if r["system"] == "pyg"]
    assert write_planner(pyg_only, tmp_path) == ([], None)
    assert write_plots(pyg_only, tmp_path) == []  # pyg against itself: no speedup to plot
    assert write_plots([], tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_report_command_writes_every_table_and_plot(tmp_path, capsys):
    report_main([str(RECORDS_DIR), "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {"summary.csv", "summary.md", "planner.csv", "planner.md",
                                                    "speedup.png", "prediction.png"}
    assert printed.strip().splitlines()[-1].startswith("2 cases. optimal regret")
    summary = {row["system"] + row["model"] + row["avg_degree"]: row
               for row in csv.DictReader((tmp_path / "summary.csv").open()) if row["avg_degree"] == "10.0"}
    assert float(summary["flexgnngcn10.0"]["speedup_vs_pyg"]) == pytest.approx(2.0)


def test_planners_that_ran_the_same_plan_share_its_fastest_time():
    """As in the bench, where an identical plan runs once: when greedy chose exactly optimal's plan, the two are
    one measurement, so optimal's speedup over greedy is 1, not the noise between two runs of one plan."""
    import copy

    records = copy.deepcopy([r for r in RECORDS if r.get("config", {}).get("system", {}).get(
        "device_budget_fraction") == 1.0])
    by_planner = {r["config"]["planner"]["name"]: r for r in records if r.get("config", {}).get("planner")}
    optimal, greedy = by_planner["optimal"], by_planner["flexgnn_greedy"]
    plan = {"num_chunks": 8, "orders": ["aggregate_first"] * 3, "placement": [["h0", "host"], ["h1", "device"]]}
    optimal["result"]["plan"] = {**plan, "policy": "optimal"}  # the checked-in records are trimmed of plans
    greedy["result"]["plan"] = {**plan, "policy": "flexgnn_greedy"}
    (case,) = planner_cases(records)
    assert case["planners"]["flexgnn_greedy"]["measured_s"] == case["planners"]["optimal"]["measured_s"] == 0.11
    assert case["speedup_vs_greedy"] == pytest.approx(1.0)
    assert case["planners"]["flexgnn_greedy"]["error"] == pytest.approx(
        abs(case["planners"]["flexgnn_greedy"]["predicted_s"] - 0.11) / 0.11)
