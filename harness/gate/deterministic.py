"""Layer 1 of the gate: deterministic figures of every case, compared with ``results/baseline/deterministic.json``.

Per case, for one steady-state epoch: bytes per link (``io_bytes`` of a K-epoch run minus a (K-1)-epoch run of the
same plan: allocation, layer 0's one-off aggregate and the final evaluation cancel), the accounted peak per tier
(whole run), the plan (P, placements, orders, predicted peaks, the budgets it was solved under), the predicted
epoch time, the aten op calls of epoch K (``cases.OpCounter``, prefetch thread included) and the loss curve of the
K epochs.

The peaks come from a third run with the prefetch thread off: with it on, the accounted device peak counts the
fetches in flight at whatever moment the two threads interleave, so it moves from run to run (measured for
gcn-budget: 663160 bytes under heavy load, 630056 on a quieter machine, 604972 with prefetch off). Bytes, op calls
and losses do not depend on the thread (checked on every run: the third run's bytes must equal the first's).

Exact, except two floats: the loss curve within ``LOSS_RTOL`` and the predicted epoch time within
``PREDICTED_RTOL`` (see the constants). The deterministic layer runs with one intra-op thread, so reductions run
in one order.
"""

from __future__ import annotations

import math
import platform
from typing import Any

import torch

from harness.gate import cases
from harness.gate.report import Finding

EPOCHS = 4  # the loss curve's length; bytes and op calls are epoch 4's (epoch 1 computes layer 0's aggregate)
# fp32 rounds each op to 6e-8 relative; the losses are sums over the training vertices after a few Adam steps.
# Measured on the gate's graph: chunked (P=4) and in-memory runs of a model differ by up to 2.3e-7 relative (another
# summation order), repeated runs not at all; a 1% change of the learning rate moves the losses of epochs 2-4 by
# 7e-4 to 2.8e-3. 1e-6 leaves 4x room for another BLAS build's rounding and is still 700x tighter than that change.
LOSS_RTOL = 1e-6
# The predicted time is pure float arithmetic on the plan and the datasheet; only a change of summation order in
# a library could move it, by a few ulps. Any cost-model change moves it by far more.
PREDICTED_RTOL = 1e-9


def environment() -> dict[str, str]:
    """What op names and counts may depend on besides our code (recorded in the baseline, not compared)."""
    return {"torch": torch.__version__, "python": platform.python_version()}


def measure_case(case: cases.Case) -> dict[str, Any]:
    """The figures of one case (three training runs of the tiny graph: about a second)."""
    counter = cases.OpCounter()

    def count_epoch(epoch: int) -> None:
        counter.on = epoch == EPOCHS - 1  # on from the end of step K-1 to the end of step K

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with counter, cases.epoch_ends(count_epoch):
            longer = cases.run_case(case, EPOCHS)
        shorter = cases.run_case(case, EPOCHS - 1)
        serial = cases.run_case(case, EPOCHS, prefetch=False)
    finally:
        torch.set_num_threads(threads)
    if (shorter.plan != longer.plan or shorter.epoch_losses != longer.epoch_losses[:EPOCHS - 1]
            or serial.io_bytes != longer.io_bytes or serial.epoch_losses != longer.epoch_losses):
        raise RuntimeError(f"case {case.name}: runs of the same plan disagree (plan, losses or bytes differ); the "
                           "figures are not deterministic, so the gate cannot compare them")
    plan = longer.plan
    return {
        "io_bytes_per_epoch": {link: longer.io_bytes[link] - shorter.io_bytes[link] for link in longer.io_bytes},
        "tier_peak_bytes": dict(serial.tier_peak_bytes),
        "plan": {"policy": plan["policy"], "num_chunks": plan["num_chunks"], "orders": list(plan["orders"]),
                 "placement": dict(plan["placement"]), "predicted_peak_bytes": dict(plan["predicted_peak_bytes"]),
                 "feasible": plan["feasible"],  # and the budgets it was solved under (the machine's room is fixed)
                 **{key: plan.get(key) for key in ("device_budget_bytes", "host_budget_bytes", "memory_budget_bytes")}},
        "predicted_epoch_s": longer.extra["predicted_epoch_s"],
        "kernel_calls_per_epoch": counter.counts,
        "epoch_losses": list(longer.epoch_losses),
    }


def measure(selected: tuple[cases.Case, ...]) -> dict[str, dict[str, Any]]:
    return {case.name: measure_case(case) for case in selected}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"gcn-memory": {"io_bytes_per_epoch": {"h2d": 5}}}`` -> ``{"gcn-memory/io_bytes_per_epoch/h2d": 5}``;
    list items get their index as a key."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}/{key}" if prefix else str(key)))
    return out


def _tolerance(figure: str) -> float:
    section = figure.split("/")[1] if "/" in figure else ""
    return {"epoch_losses": LOSS_RTOL, "predicted_epoch_s": PREDICTED_RTOL}.get(section, 0.0)


def _agrees(baseline: Any, now: Any, rtol: float) -> bool:
    numbers = (int, float)
    if rtol and isinstance(baseline, numbers) and isinstance(now, numbers) and not isinstance(now, bool):
        return math.isclose(baseline, now, rel_tol=rtol, abs_tol=0.0)
    return type(baseline) is type(now) and baseline == now


def compare(baseline: dict[str, Any], now: dict[str, Any]) -> list[Finding]:
    """One finding per figure that differs (absent or new figures too), for the cases measured now."""
    findings = []
    for case in sorted(now):
        if case not in baseline:
            findings.append(Finding("deterministic", f"{case}/*", "(absent)", "measured", "regression",
                                    "no baseline for this case: python -m harness.gate --update"))
            continue
        old, new = flatten(baseline[case], case), flatten(now[case], case)
        for figure in sorted(set(old) | set(new)):
            before, after = old.get(figure, "(absent)"), new.get(figure, "(absent)")
            rtol = _tolerance(figure)
            if not _agrees(before, after, rtol):
                findings.append(Finding("deterministic", figure, before, after, "regression",
                                        f"must match within {rtol:g} rel" if rtol else "must match exactly"))
    return findings


def history_figures(figures: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The numeric figures worth plotting over commits (per-op call counts summed; placements left out)."""
    out: dict[str, float] = {}
    for case, values in figures.items():
        for link, nbytes in values["io_bytes_per_epoch"].items():
            out[f"{case}/io_bytes_per_epoch/{link}"] = nbytes
        for tier, nbytes in values["tier_peak_bytes"].items():
            out[f"{case}/tier_peak_bytes/{tier}"] = nbytes
        out[f"{case}/predicted_epoch_s"] = values["predicted_epoch_s"]
        out[f"{case}/kernel_calls_per_epoch"] = sum(values["kernel_calls_per_epoch"].values())
        out[f"{case}/final_loss"] = values["epoch_losses"][-1]
    return out
