"""Planner quality from run records: every solver's plan run for real, against the cost model (issue 4).

A pure step over record files (STYLE.md #11), written by ``python -m harness.report`` and at the end of a sweep
as ``planner.csv`` / ``planner.md`` whenever the records hold a case run with several planners, e.g. after
``python -m harness +sweep=planner``. Definitions are those of ``bench/planner_quality.py``:

- case: flexgnn records with the same model (kind, layers, hidden, heads), graph (dataset, num_nodes,
  avg_degree), P (``system.num_chunks``) and device budget (``hardware.device_budget_fraction``, else
  ``hardware.device_budget_bytes``); one entry per planner (``planner=`` or ``system.policy``);
- measured: the record's median epoch (warm-up excluded), the fastest when a planner ran a case more than once,
  and planners whose plans are identical share the fastest of them (the bench runs an identical plan once);
  predicted: the cost model's epoch time for the plan that ran (``result.extra.predicted_epoch_s``);
- budget: a ``device_budget_fraction`` is resolved by the engine against the all-on-device peak at the case's P,
  so at 1.0 ``optimal_p`` must fit that peak at any P it picks (the bench's 1.0 is no budget at all);
- error = |predicted - measured| / measured, per plan;
- ``optimal`` regret = its measured time / the best measured at the same P (every planner but ``optimal_p``);
  ``optimal_p`` regret = its time / the best of all (its search space holds every other plan);
- speedup vs greedy = measured ``flexgnn_greedy`` / measured ``optimal``.

An infeasible plan (``status: infeasible``: it does not fit the budget) has no time and is in no minimum.
Goals (issue 4): regret median <= 1.10, worst <= 1.30; error median <= 25%.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

PLANNERS = ("all_device", "all_host", "all_disk", "recompute", "flexgnn_greedy", "hongtu_like", "optimal",
            "optimal_p")
CASE_COLUMNS = ("model", "dataset", "num_nodes", "avg_degree", "num_layers", "hidden", "heads", "num_chunks",
                "budget_fraction", "device_budget_bytes")
CSV_COLUMNS = (*CASE_COLUMNS, "planner", "status", "chunks_run", "measured_s", "predicted_s", "error",
               "optimal_regret", "optimal_p_regret", "speedup_vs_greedy", "note")
# The summary, logged on a sweep's parent MLflow run as planner/<name>: ratios (regret, speedup) and fractions
# (error, 0.25 = 25%) are unitless; the names match bench/planner_quality.py's JSON.
SUMMARY_KEYS = ("regret_median", "regret_max", "optimal_p_regret_median", "optimal_p_regret_max", "error_median",
                "optimal_error_median", "speedup_vs_greedy_median", "speedup_vs_greedy_min", "num_cases")


def planner_of(record: dict[str, Any]) -> str | None:
    config = record.get("config") or {}
    return (config.get("planner") or {}).get("name") or (config.get("system") or {}).get("policy")


def _case_of(record: dict[str, Any]) -> dict[str, Any]:
    config = record.get("config") or {}
    dataset, model = config.get("dataset") or {}, config.get("model") or {}
    system, hardware = config.get("system") or {}, config.get("hardware") or {}
    # the fraction lives in the hardware group (records before 2026-12-01 kept it in the system group)
    fraction = hardware.get("device_budget_fraction", system.get("device_budget_fraction"))
    return {"model": record.get("model"), "dataset": record.get("dataset"), "num_nodes": dataset.get("num_nodes"),
            "avg_degree": dataset.get("avg_degree"), "num_layers": model.get("num_layers"),
            "hidden": model.get("hidden"), "heads": model.get("heads") if record.get("model") == "gat" else None,
            "num_chunks": system.get("num_chunks"), "budget_fraction": fraction,
            "device_budget_bytes": None if fraction is not None else hardware.get("device_budget_bytes")}


def _entry(record: dict[str, Any]) -> dict[str, Any]:
    result = record.get("result") or {}
    extra = result.get("extra") or {}
    measured, predicted = result.get("median_epoch_s"), extra.get("predicted_epoch_s")
    error = abs(predicted - measured) / measured if measured and predicted is not None else None
    plan = result.get("plan")
    return {"status": record.get("status"), "chunks_run": extra.get("num_chunks"), "measured_s": measured,
            "predicted_s": predicted if measured is not None else None, "error": error,
            "note": record.get("error") if record.get("status") != "ok" else None,
            "plan_key": None if plan is None else json.dumps({**plan, "policy": ""}, sort_keys=True)}


def _pool_identical(case: dict[str, Any]) -> None:
    """Planners that ran the same plan (placement, orders, P) share its fastest time, as in the bench, where an
    identical plan runs once: otherwise optimal's regret against the plan it equals would measure noise."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in case["planners"].values():
        if entry["measured_s"] is not None and entry["plan_key"] is not None:
            groups.setdefault(entry["plan_key"], []).append(entry)
    for same in groups.values():
        fastest = min(entry["measured_s"] for entry in same)
        for entry in same:
            entry["measured_s"] = fastest
            entry["error"] = abs(entry["predicted_s"] - fastest) / fastest if entry["predicted_s"] is not None else None


def _score(case: dict[str, Any]) -> None:
    """Regrets and speedup from the measured times (absent when a side has no time)."""
    measured = {name: e["measured_s"] for name, e in case["planners"].items() if e["measured_s"] is not None}
    same_p = {name: seconds for name, seconds in measured.items() if name != "optimal_p"}
    case["optimal_regret"] = same_p["optimal"] / min(same_p.values()) if "optimal" in same_p else None
    case["optimal_p_regret"] = (measured["optimal_p"] / min(measured.values()) if "optimal_p" in measured
                                else None)
    case["speedup_vs_greedy"] = (measured["flexgnn_greedy"] / measured["optimal"]
                                 if "optimal" in measured and "flexgnn_greedy" in measured else None)


def planner_cases(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cases (``CASE_COLUMNS`` plus ``planners``: name -> entry, and the scores) run with two planners or more."""
    cases: dict[tuple, dict[str, Any]] = {}
    for record in records:
        if record.get("system") != "flexgnn" or record.get("status") not in ("ok", "infeasible"):
            continue
        described = _case_of(record)
        case = cases.setdefault(tuple(str(v) for v in described.values()), {**described, "planners": {}})
        entry, name = _entry(record), planner_of(record)
        resolved = (((record.get("result") or {}).get("extra") or {}).get("device_budget_bytes")
                    or (record.get("plan") or {}).get("device_budget_bytes"))  # an infeasible plan's budget
        if resolved is not None:
            case["device_budget_bytes"] = resolved  # in bytes, a fraction resolved by the engine
        kept = case["planners"].get(name)
        if kept is None or kept["measured_s"] is None or (  # a planner run twice: its fastest median
                entry["measured_s"] is not None and entry["measured_s"] < kept["measured_s"]):
            case["planners"][name] = entry
    chosen = [case for case in cases.values() if len(case["planners"]) >= 2]
    for case in chosen:
        _pool_identical(case)
        _score(case)
    order = {name: i for i, name in enumerate(PLANNERS)}
    for case in chosen:
        case["planners"] = dict(sorted(case["planners"].items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))
    return sorted(chosen, key=lambda c: (str(c["dataset"]), c["num_nodes"] or 0, str(c["model"]),
                                         c["avg_degree"] or 0, -(c["budget_fraction"] or 0), str(c["num_chunks"])))


def planner_summary(cases: list[dict[str, Any]]) -> dict[str, float | int | None]:
    def values(key: str) -> list[float]:
        return [case[key] for case in cases if case[key] is not None]

    median = lambda found: statistics.median(found) if found else None  # noqa: E731
    errors = [e["error"] for case in cases for e in case["planners"].values() if e["error"] is not None]
    optimal_errors = [case["planners"]["optimal"]["error"] for case in cases
                      if case["planners"].get("optimal", {}).get("error") is not None]
    regrets, regrets_p, speedups = values("optimal_regret"), values("optimal_p_regret"), values("speedup_vs_greedy")
    return {"regret_median": median(regrets), "regret_max": max(regrets, default=None),
            "optimal_p_regret_median": median(regrets_p), "optimal_p_regret_max": max(regrets_p, default=None),
            "error_median": median(errors), "optimal_error_median": median(optimal_errors),
            "speedup_vs_greedy_median": median(speedups), "speedup_vs_greedy_min": min(speedups, default=None),
            "num_cases": len(cases)}


def _num(value: Any, fmt: str = "{:.3g}") -> str:
    return "" if value is None else fmt.format(value)


def summary_line(summary: dict[str, Any]) -> str:
    pct = lambda v: _num(None if v is None else 100 * v, "{:.0f}%")  # noqa: E731
    return (f"{summary['num_cases']} cases. optimal regret (same P) median {_num(summary['regret_median'])}, "
            f"worst {_num(summary['regret_max'])} (goal <= 1.10, <= 1.30); optimal_p regret median "
            f"{_num(summary['optimal_p_regret_median'])}, worst {_num(summary['optimal_p_regret_max'])}; "
            f"prediction error median {pct(summary['error_median'])} over all plans, "
            f"{pct(summary['optimal_error_median'])} for optimal (goal <= 25%); speedup of optimal over "
            f"flexgnn_greedy median {_num(summary['speedup_vs_greedy_median'])}x, "
            f"min {_num(summary['speedup_vs_greedy_min'])}x.")


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    if entry["measured_s"] is None:
        return str(entry["status"])
    predicted = "?" if entry["predicted_s"] is None else f"{1e3 * entry['predicted_s']:.4g}"
    return f"{1e3 * entry['measured_s']:.4g} / {predicted}"


def markdown(cases: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """One row per case: each planner's measured / predicted epoch in ms (``infeasible`` when it does not fit)."""
    names = [n for n in PLANNERS if any(n in c["planners"] for c in cases)]
    names += sorted({n for c in cases for n in c["planners"]} - set(names), key=str)
    header = ["model", "graph", "budget", *[f"{n} ms" for n in names], "optimal regret", "optimal_p regret (P)",
              "speedup vs greedy"]
    lines = ["Measured / predicted median epoch (ms) per planner; regret and speedup from measured times.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in cases:
        graph = f"{case['dataset']} n={case['num_nodes']} deg={_num(case['avg_degree'], '{:g}')} P={case['num_chunks']}"
        budget = (f"{case['budget_fraction']:g}" if case["budget_fraction"] is not None else "bytes") + (
            f" ({case['device_budget_bytes'] / 2**20:.2f} MiB)" if isinstance(case["device_budget_bytes"], int)
            else f" ({case['device_budget_bytes']})" if case["device_budget_bytes"] else "")
        cells = [_cell(case["planners"].get(name)) for name in names]
        chunks_p = case["planners"].get("optimal_p", {}).get("chunks_run")
        regret_p = _num(case["optimal_p_regret"]) + (f" (P={chunks_p})" if case["optimal_p_regret"] else "")
        lines.append("| " + " | ".join([f"{case['model']} L={case['num_layers']} h={case['hidden']}", graph, budget,
                                         *cells, _num(case["optimal_regret"]), regret_p,
                                         _num(case["speedup_vs_greedy"])]) + " |")
    return "\n".join([*lines, "", summary_line(summary)]) + "\n"


def write_planner(records: list[dict[str, Any]], out_dir: Path) -> tuple[list[Path], dict[str, Any] | None]:
    """``planner.csv`` (one row per case and planner) and ``planner.md`` into ``out_dir``, with the summary;
    nothing (``[], None``) when no case was run with two planners or more."""
    cases = planner_cases(records)
    if not cases:
        return [], None
    summary = planner_summary(cases)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "planner.csv", out_dir / "planner.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for case in cases:
            for name, entry in case["planners"].items():
                row = {**{k: case[k] for k in CASE_COLUMNS}, **entry, "planner": name,
                       **{k: case[k] for k in ("optimal_regret", "optimal_p_regret", "speedup_vs_greedy")}}
                writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    md_path.write_text(markdown(cases, summary))
    return [csv_path, md_path], summary
