"""Plans are values: every policy returns the same shape, round-trips through JSON, and obeys invariants checked
against something the planner did not compute: a feasible plan, run by the engine, stays within its budgets by the
engine's own counters; an unlimited budget moves nothing."""

from __future__ import annotations

import itertools
import json

import pytest

from flexgnn_core import models, system
from flexgnn_core.models import init_params
from flexgnn_core.plan import (Plan, Problem, custom_plan, fixed_device_bytes, intermediates, layer_orders, simulate,
                               working_set_bytes)
from flexgnn_core.plan.problem import STAGING_THREADS, staging_bytes
from flexgnn_core.plan.solvers import SOLVERS, solve
from flexgnn_core.spec import ModelSpec, TrainSpec
from graphs import tricky_graph

PROFILE = "h200"  # cost-model solvers plan on a datasheet profile: no calibration, the same plans on any machine


def _problem(kind="gcn", dims=(64, 32, 32, 8), budget=None, host=None, chunks=4, order="auto") -> Problem:
    n, e = 1000, 12000
    return Problem(kind=kind, dims=tuple(dims), heads=4, num_nodes=n, num_edges=e, num_chunks=chunks,
                   max_chunk_rows=n // chunks, max_halo_rows=min(n, 3 * e // chunks // 4), max_chunk_edges=e // chunks,
                   sum_halo_rows=min(n, 3 * e // chunks // 4) * chunks, graph_bytes=24 * e, param_bytes=40_000,
                   device_budget_bytes=budget, host_budget_bytes=host, order_rule=order)


PROBLEMS = [_problem(kind, dims, chunks=chunks) for kind, dims, chunks in
            itertools.product(models.names(), ((64, 32, 8), (16, 64, 64, 8)), (1, 4, 64))]


def _hw():
    from flexgnn_core.calibrate import profile

    return profile(PROFILE)


@pytest.mark.parametrize("policy", sorted(SOLVERS))
@pytest.mark.parametrize("problem", PROBLEMS[:6])
def test_every_policy_round_trips_through_json_and_prints(policy, problem):
    plan = solve(problem, policy, _hw())
    assert isinstance(plan, Plan) and plan.policy == policy
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan
    text = str(plan)
    assert f"plan {policy}: P={plan.num_chunks}" in text and "placement:" in text
    assert {name for name, _ in plan.placement} == {item.name for item in intermediates(problem, plan.orders)}


@pytest.mark.parametrize("problem", PROBLEMS)
def test_unlimited_budget_keeps_everything_on_device_and_moves_nothing(problem):
    for policy in ("all_device", "flexgnn_greedy"):
        plan = solve(problem, policy)
        assert plan.feasible and {where for _, where in plan.placement} == {"device"}
        assert set(simulate(plan, problem)["link_bytes"].values()) == {0}


GRAPH = tricky_graph(num_nodes=40)
TRAIN = TrainSpec(epochs=1, warmup_epochs=0, progress=False, device="cpu")


@pytest.mark.parametrize("kind", models.names())
@pytest.mark.parametrize("fraction", [0.9, 0.6, 0.35])
@pytest.mark.parametrize("policy", sorted(SOLVERS))
def test_a_feasible_plan_stays_within_its_budgets_by_the_engines_counters(kind, fraction, policy, tmp_path,
                                                                          one_thread):
    """Run every solver's plan under shrinking budgets and read the tier store's counters (accounted device peak
    over the whole run, host and disk bytes held), which the solvers never see."""
    model = ModelSpec(kind=kind, num_layers=3, hidden=8, heads=2)
    params = init_params(model, GRAPH.num_features, GRAPH.num_classes, seed=0)
    options = {"print_plan": False, "num_chunks": 4, "hardware": PROFILE, "disk_dir": str(tmp_path)}
    need = system.train(GRAPH, model, params, TRAIN, {**options, "policy": "all_device"}).tier_peak_bytes["device"]
    device, host = int(need * fraction), int(need * fraction / 2)
    result = system.train(GRAPH, model, params, TRAIN, {**options, "policy": policy, "device_budget_bytes": device,
                                                        "host_budget_bytes": host})
    if result.status == "infeasible":
        assert "infeasible" in result.reason and not result.epoch_losses
        return
    assert result.tier_peak_bytes["device"] <= device, result.plan
    assert result.tier_peak_bytes["host"] <= host, result.plan
    assert result.extra["device_within_budget"] is True


@pytest.mark.parametrize("problem", PROBLEMS)
def test_greedy_tighter_budget_never_raises_device_use(problem):
    need = simulate(solve(problem, "all_device"), problem)["peak_bytes"]["device"]
    previous = None
    for fraction in (1.0, 0.8, 0.6, 0.4, 0.2):
        budgeted = Problem(**{**problem.__dict__, "device_budget_bytes": int(need * fraction)})
        plan = solve(budgeted, "flexgnn_greedy")
        device = dict(plan.predicted_peak_bytes)["device"]
        assert previous is None or device <= previous
        previous = device
        if plan.feasible:
            assert device <= budgeted.device_budget_bytes


def test_greedy_with_everything_fitting_equals_all_device_and_host_budget_sends_rest_to_disk():
    problem = _problem(budget=10**12)
    assert solve(problem, "flexgnn_greedy").placement == solve(problem, "all_device").placement
    need = simulate(solve(problem, "all_device"), problem)["peak_bytes"]["device"]
    staging = STAGING_THREADS * staging_bytes(problem)  # the disk tier's buffers, host memory
    tight = _problem(budget=int(need * 0.7), host=int(need * 0.05) + staging)
    tiers = {where for _, where in solve(tight, "flexgnn_greedy").placement}
    assert tiers == {"device", "host", "disk"}


def test_recompute_keeps_only_what_cannot_be_recomputed():
    problem = _problem(kind="gat")
    plan = solve(problem, "recompute")
    for item in intermediates(problem, plan.orders):
        assert (plan.where(item.name) == "recompute") == item.recomputable


def test_infeasible_is_a_value_naming_the_minimum_budget():
    problem = _problem(budget=1000)
    plan = solve(problem, "all_host")
    assert not plan.feasible
    assert plan.min_device_budget_bytes == fixed_device_bytes(problem) + working_set_bytes(problem)
    assert f"minimum for P=4 with this placement: {plan.min_device_budget_bytes} bytes" in plan.reason


def test_orders_follow_the_rule_and_gat_always_transforms_first():
    assert layer_orders(_problem(dims=(64, 32, 32, 8))) == ("aggregate_first", "aggregate_first", "transform_first")
    assert layer_orders(_problem(order="transform_first")) == ("transform_first",) * 3
    assert layer_orders(_problem(kind="gat", order="aggregate_first")) == ("transform_first",) * 3
    with pytest.raises(ValueError, match="order='sideways' is unknown; valid: auto, aggregate_first"):
        layer_orders(_problem(order="sideways"))


def test_unknown_policy_intermediate_or_tier_is_rejected_listing_valid_ones():
    problem = _problem()
    with pytest.raises(ValueError, match="policy 'fastest' is unknown; valid: all_device, all_host"):
        solve(problem, "fastest")
    placement = {name: "device" for name, _ in solve(problem, "all_device").placement}
    with pytest.raises(ValueError, match="unknown intermediate 'h9'; valid: graph, h0, agg0"):
        custom_plan(problem, {**placement, "h9": "host"})
    with pytest.raises(ValueError, match="unknown or invalid tier 'tape'; valid for it: device, host, disk"):
        custom_plan(problem, {**placement, "h1": "tape"})
    with pytest.raises(ValueError, match="valid for it: device, host, disk$"):
        custom_plan(problem, {**placement, "h0": "recompute"})  # the input features cannot be recomputed
    with pytest.raises(ValueError, match="valid for it: device, host$"):
        custom_plan(problem, {**placement, "graph": "disk"})
    del placement["h1"]
    with pytest.raises(ValueError, match="no placement for h1"):
        custom_plan(problem, placement)


def test_greedy_walks_from_the_deepest_layer_back():
    problem = _problem(dims=(32, 32, 32, 32), chunks=64)
    items = [item for item in intermediates(problem, layer_orders(problem)) if item.name != "graph"]
    deepest = max(item.layer for item in items)
    room = sum(item.nbytes for item in items if item.layer == deepest)  # exactly the deepest layer's intermediates
    budget = fixed_device_bytes(problem) + working_set_bytes(problem) + problem.graph_bytes + room
    plan = solve(Problem(**{**problem.__dict__, "device_budget_bytes": budget}), "flexgnn_greedy")
    on_device = {name for name, where in plan.placement if where == "device"}
    assert on_device == {"graph"} | {item.name for item in items if item.layer == deepest}
