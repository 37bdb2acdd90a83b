"""The simulator's bytes per link are the engine's: for every model, offloading policy and chunk count, one
steady-state training epoch moves exactly ``plan.simulate()``'s ``link_bytes``.

One epoch's traffic is the difference of ``RunResult.io_bytes`` between a 3-epoch and a 2-epoch run (same plan):
allocation, the first epoch's one-off layer-0 aggregate and the final evaluation cancel. Exact equality, no
tolerance: both sides count whole fp32 rows and whole chunk blocks. With input dropout (the features change every
epoch, so layer 0's aggregate is made every epoch: ``Problem.input_dropout``) the equality holds too.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest

from flexgnn_core import models, system
from flexgnn_core.engine import prepare
from flexgnn_core.models import init_params
from flexgnn_core.plan import Plan, simulate
from flexgnn_core.plan.problem import STAGING_THREADS, staging_bytes
from flexgnn_core.spec import ModelSpec, TrainSpec
from graphs import tricky_graph

GRAPH = tricky_graph(num_nodes=48)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny graphs gain nothing from threads


@functools.lru_cache(maxsize=None)
def _params(kind: str, dropout: float = 0.0):
    model = ModelSpec(kind=kind, num_layers=3, hidden=8, heads=2, dropout=dropout)
    return model, init_params(model, GRAPH.num_features, GRAPH.num_classes, seed=0)


def _run(kind: str, epochs: int, options: dict, tmp_path, dropout: float = 0.0):
    model, params = _params(kind, dropout)
    spec = TrainSpec(epochs=epochs, warmup_epochs=0, progress=False, device="cpu")
    return system.train(GRAPH, model, params, spec, {"print_plan": False, "disk_dir": str(tmp_path), **options})


def _budgets(kind: str, policy: str, num_chunks: int, tmp_path, dropout: float = 0.0) -> dict:
    """Greedy: 80% of the all-device peak and 20% for the host (all three tiers used); recompute: half way
    between its own unlimited plan's minimum and peak, so that some kept intermediates leave the device."""
    if policy == "recompute":
        plan = _run(kind, 1, {"policy": "recompute", "num_chunks": num_chunks}, tmp_path, dropout).plan
        low, high = plan["min_device_budget_bytes"], plan["predicted_peak_bytes"]["device"]
        return {"device_budget_bytes": (low + high) // 2}
    unlimited = _run(kind, 1, {"policy": "all_device", "num_chunks": num_chunks}, tmp_path, dropout)
    need = unlimited.plan["predicted_peak_bytes"]["device"]
    staging = STAGING_THREADS * staging_bytes(_problem(kind, num_chunks, None))  # the disk tier's, on the host
    return {"device_budget_bytes": int(need * 0.8), "host_budget_bytes": int(need * 0.2) + staging}


@pytest.mark.parametrize("kind", models.names())
@pytest.mark.parametrize("policy", ["all_host", "all_disk", "recompute", "flexgnn_greedy_tight", "custom"])
@pytest.mark.parametrize("num_chunks", [1, 5])
def test_one_epoch_moves_exactly_the_simulated_bytes(kind, policy, num_chunks, tmp_path):
    options = {"num_chunks": num_chunks, "policy": policy}
    if policy in ("flexgnn_greedy_tight", "recompute"):  # tight: some of what is kept must leave the device
        options.update(policy=policy.removesuffix("_tight"), **_budgets(kind, policy, num_chunks, tmp_path))
    if policy == "custom":
        names = _run(kind, 1, {"policy": "all_host", "num_chunks": num_chunks}, tmp_path).plan["placement"]
        options = {"num_chunks": num_chunks, "placement": _mixed_placement(names)}
    longer, shorter = _run(kind, 3, options, tmp_path), _run(kind, 2, options, tmp_path)
    assert longer.plan == shorter.plan
    epoch = {link: longer.io_bytes[link] - shorter.io_bytes[link] for link in longer.io_bytes}
    plan = Plan.from_json(longer.plan)
    simulated = simulate(plan, _problem(kind, num_chunks, plan))
    assert epoch == simulated["link_bytes"]
    assert sum(epoch.values()) > 0


@pytest.mark.parametrize("kind", models.names())
@pytest.mark.parametrize("policy", ["all_host", "recompute", "custom"])
def test_with_input_dropout_one_epoch_moves_exactly_the_simulated_bytes(kind, policy, tmp_path):
    options = {"num_chunks": 5, "policy": policy}
    if policy == "recompute":
        options.update(_budgets(kind, policy, 5, tmp_path, 0.5))
    if policy == "custom":
        names = _run(kind, 1, {"policy": "all_host", "num_chunks": 5}, tmp_path, 0.5).plan["placement"]
        options = {"num_chunks": 5, "placement": {**_mixed_placement(names), "h0": "host"}}
    longer, shorter = _run(kind, 3, options, tmp_path, 0.5), _run(kind, 2, options, tmp_path, 0.5)
    epoch = {link: longer.io_bytes[link] - shorter.io_bytes[link] for link in longer.io_bytes}
    plan = Plan.from_json(longer.plan)
    problem = _problem(kind, 5, plan, 0.5)
    assert problem.input_dropout
    assert epoch == simulate(plan, problem)["link_bytes"]
    reused = simulate(plan, dataclasses.replace(problem, input_dropout=False))["link_bytes"]
    where = dict(plan.placement)
    if where.get("agg0", "recompute") != "recompute" and where["h0"] != "device":
        assert epoch["h2d"] > reused["h2d"]  # a stored agg0 is not reused: h0's halo is read every epoch


def _mixed_placement(names) -> dict[str, str]:
    """Graph on the host, every aggregate, transform and attention recomputed, the rest alternating host and disk
    (``h1`` on the device): the re-gathers that recomputing causes, from both off-device tiers."""
    placement = {}
    for i, name in enumerate(names):
        if name == "graph":
            placement[name] = "host"
        elif name.startswith(("agg", "t", "att")):
            placement[name] = "recompute"
        else:
            placement[name] = ("host", "disk")[i % 2]
    return {**placement, "h1": "device"}


def _problem(kind: str, num_chunks: int, plan: Plan | None, dropout: float = 0.0):
    """The engine's own Problem for this graph, model and P (``engine.prepare``, as the flexgnn system does)."""
    model, params = _params(kind, dropout)
    return prepare(GRAPH, model, params, num_chunks).problem
