"""Planner invariants over many tiny problems: budgets respected, no transfers when unlimited, monotone in the
budget, ``optimal`` never predicted slower than any solver and equal to brute force, fast, infeasible as a value."""

import dataclasses
import itertools
import random
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flexgnn_core import models
from flexgnn_core.engine.chunks import build_chunks, relabel_csr, reorder
from flexgnn_core.plan import (Problem, cost, fixed_device_bytes, free_orders, intermediates, layer_orders, make_plan,
                               simulate, working_set_bytes)
from flexgnn_core.plan import chunking, solvers
from flexgnn_core.plan.cost import UNIT, Hardware
from flexgnn_core.plan.problem import STAGING_THREADS, staging_bytes
from flexgnn_core.plan.simulate import column_layers, column_passes
from graphs import tricky_graph

# Rates of the order this 2-core machine measures (calibrate.py); fixed so that tests are deterministic.
CPU_LIKE = Hardware("cpu-like", 1.5e8, 2.5e10, 2e9, 1.5e9, 5e8, 7e8, 5e8, 2e-5, 0.0)
GPU_LIKE = Hardware("gpu-like", 1.2e12, 6.7e13, 4.8e12, 6.3e10, 6.3e10, 1.2e10, 1.2e10, 1e-5, 1.0)
HARDWARE = [UNIT, CPU_LIKE, GPU_LIKE]


def random_problem(rng: random.Random, layers: int | None = None, budget_fraction: float | None = None) -> Problem:
    kind = rng.choice(models.names())
    layers = layers or rng.randint(1, 3)
    heads = 2 if models.get(kind).family == "attention" else 1
    n = rng.randint(4, 400)
    e = rng.randint(n, 8 * n)
    p = rng.randint(1, min(n, 8))
    rows = -(-n // p)
    halo = rng.randint(1, n)
    problem = Problem(kind=kind, dims=tuple(rng.randint(1, 64) * heads for _ in range(layers + 1)), heads=heads,
                      num_nodes=n, num_edges=e, num_chunks=p, max_chunk_rows=rows, max_halo_rows=halo,
                      max_chunk_edges=min(e, -(-e // p) * 2), sum_halo_rows=min(n * p, halo * p),
                      graph_bytes=e * 52 + n * 24, param_bytes=rng.randint(10, 10_000) * 4,
                      order_rule=rng.choice(["auto", "auto", "aggregate_first", "transform_first"]))
    everything = simulate(solvers.solve(problem, "all_device"), problem)["peak_bytes"]["device"]
    fraction = budget_fraction if budget_fraction is not None else rng.choice([None, 1.0, 0.5, 0.25, 0.0625])
    budget = None if fraction is None else max(1, int(everything * fraction))
    host = rng.choice([None, None, max(1, int(everything * rng.random()))])
    dropout = {"input_dropout": rng.random() < 0.3, "hidden_dropout": rng.random() < 0.3,
               "attention_dropout": heads > 1 and rng.random() < 0.3}  # the masks' costs; agg0 made every epoch
    return Problem(**{**problem.__dict__, "device_budget_bytes": budget, "host_budget_bytes": host, **dropout})


def within_budget(plan, problem) -> bool:
    peak = simulate(plan, problem)["peak_bytes"]
    return ((problem.device_budget_bytes is None or peak["device"] <= problem.device_budget_bytes)
            and (problem.host_budget_bytes is None or peak["host"] <= problem.host_budget_bytes))


def predicted(plan, problem, hw) -> float:
    return cost.predict(plan, problem, hw).epoch_s


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**9), hw=st.sampled_from(HARDWARE))
def test_optimal_is_feasible_within_budget_and_never_slower_than_any_solver(seed, hw):
    problem = random_problem(random.Random(seed))
    best = solvers.make_optimal(hw)(problem)
    assert best.feasible == within_budget(best, problem)
    for name in solvers.SOLVERS:
        if name.startswith("optimal"):
            continue
        other = solvers.solve(problem, name)
        assert other.feasible == within_budget(other, problem), name
        if other.feasible:
            assert best.feasible, f"{name} found a feasible plan, optimal did not"
            assert predicted(best, problem, hw) <= predicted(other, problem, hw) * (1 + 1e-9), name


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**9), hw=st.sampled_from(HARDWARE))
def test_unlimited_budget_means_no_transfers(seed, hw):
    problem = random_problem(random.Random(seed), budget_fraction=None)
    problem = Problem(**{**problem.__dict__, "device_budget_bytes": None, "host_budget_bytes": None})
    for plan in (solvers.make_optimal(hw)(problem), solvers.solve(problem, "flexgnn_greedy")):
        assert plan.feasible
        assert all(nbytes == 0 for nbytes in simulate(plan, problem)["link_bytes"].values())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**9), hw=st.sampled_from(HARDWARE))
def test_tighter_budget_never_lowers_the_predicted_time(seed, hw):
    base = random_problem(random.Random(seed), budget_fraction=1.0)
    previous = 0.0
    for fraction in (1.0, 0.75, 0.5, 0.35, 0.25, 0.125, 0.0625):
        budget = max(1, int(base.device_budget_bytes * fraction))
        problem = Problem(**{**base.__dict__, "device_budget_bytes": budget})
        plan = solvers.make_optimal(hw)(problem)
        if not plan.feasible:
            break
        now = predicted(plan, problem, hw)
        assert now >= previous * (1 - 1e-9)
        previous = now


def brute_force(problem: Problem, hw: Hardware) -> float:
    """The least predicted epoch time over every order and placement (tiny problems only)."""
    layers = problem.num_layers
    if free_orders(problem):
        order_sets = list(itertools.product(("aggregate_first", "transform_first"), repeat=layers))
    else:
        order_sets = [layer_orders(problem)]
    best = float("inf")
    for orders in order_sets:
        items = intermediates(problem, orders)
        options = [item.tiers + (("recompute",) if item.recomputable else ()) for item in items]
        for choice in itertools.product(*options):
            plan = make_plan("brute", problem, orders, dict(zip((item.name for item in items), choice)))
            if plan.feasible:
                best = min(best, predicted(plan, problem, hw))
    return best


def assert_optimal_is_brute_force(problem: Problem, hw: Hardware) -> None:
    """``optimal`` is feasible exactly when some placement is, and then predicted as fast as the best one."""
    plan = solvers.make_optimal(hw)(problem)
    expected = brute_force(problem, hw)
    assert plan.feasible == (expected < float("inf"))
    if plan.feasible:  # to HiGHS's tolerances (1e-6 relative on the scaled rows): two plans 1e-10 s apart on a
        # 1e-4 s epoch may tie (hypothesis found one: recompute GAT attention or not, gpu-like rates)
        assert predicted(plan, problem, hw) == pytest.approx(expected, rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**9), hw=st.sampled_from(HARDWARE))
def test_optimal_equals_brute_force_on_one_layer(seed, hw):
    assert_optimal_is_brute_force(random_problem(random.Random(seed), layers=1), hw)


@pytest.mark.parametrize("seed", [7, 8, *(pytest.param(seed, marks=pytest.mark.slow) for seed in (9, 10))])
def test_optimal_equals_brute_force_on_two_gcn_layers(seed):
    problem = random_problem(random.Random(seed), layers=2, budget_fraction=0.5)
    problem = Problem(**{**problem.__dict__, "kind": "gcn", "heads": 1, "order_rule": "auto"})
    assert_optimal_is_brute_force(problem, CPU_LIKE)


@pytest.mark.parametrize("kind", models.names())
def test_optimal_equals_brute_force_with_partial_overlap_and_pair_terms(kind):
    """CPU calibrations now measure an overlap strictly between 0 and 1, and a layer input's traffic depends on
    whether its aggregate or transform is recomputed (the MILP's product variables): still exact."""
    hw = Hardware(**{**CPU_LIKE.__dict__, "overlap": 0.6})
    rng = random.Random(11)
    attention = models.get(kind).family == "attention"
    for layers in (1, 2) if not attention else (1,):
        problem = random_problem(rng, layers=layers, budget_fraction=0.5)
        problem = Problem(**{**problem.__dict__, "kind": kind, "heads": 2 if attention else 1,
                             "dims": tuple(2 * d for d in problem.dims), "order_rule": "auto"})
        assert_optimal_is_brute_force(problem, hw)


@pytest.mark.parametrize("kind", models.names())
def test_eight_layers_with_chunk_search_solve_in_under_a_second(kind):
    problem = random_problem(random.Random(1), layers=8, budget_fraction=0.25)
    problem = Problem(**{**problem.__dict__, "kind": kind, "heads": 2 if models.get(kind).family == "attention" else 1,
                         "dims": (128,) + (256,) * 7 + (40,), "num_nodes": 200_000, "num_edges": 2_000_000,
                         "sum_halo_rows": 300_000, "max_halo_rows": 90_000, "max_chunk_rows": 50_000,
                         "max_chunk_edges": 500_000, "num_chunks": 4, "graph_bytes": 100_000_000,
                         "order_rule": "auto", "host_budget_bytes": None})
    problem = Problem(**{**problem.__dict__, "device_budget_bytes": 2 * 2**30})
    # CPU seconds of this process (every solver thread counted): what the solver costs, independent of other
    # processes sharing the cores, which made the wall clock exceed the bound under a loaded test run. Even CPU
    # time inflates under contention (shared caches: 0.44 s alone, 1.49 s in a full suite at load ~4 for sage),
    # so the least of three solves is held to the bound.
    seconds = []
    for _ in range(3):
        start = time.process_time()
        plan = solvers.make_optimal(GPU_LIKE, chunking.estimate_chunk_stats(problem))(problem)
        seconds.append(time.process_time() - start)
        if seconds[-1] < 1.0:
            break
    assert min(seconds) < 1.0, seconds
    assert plan.feasible and plan.num_chunks in chunking.CHUNK_COUNTS


def test_budget_below_the_working_set_is_an_infeasible_value_giving_the_minimum():
    problem = random_problem(random.Random(3), budget_fraction=1.0)
    minimum = fixed_device_bytes(problem) + working_set_bytes(problem)
    problem = Problem(**{**problem.__dict__, "device_budget_bytes": minimum - 1, "host_budget_bytes": None})
    plan = solvers.make_optimal(CPU_LIKE)(problem)
    assert not plan.feasible and plan.min_device_budget_bytes >= minimum
    assert f"minimum for P={problem.num_chunks}" in plan.reason and str(plan.min_device_budget_bytes) in plan.reason


@pytest.mark.parametrize("field,value", [("device_budget_bytes", -5), ("host_budget_bytes", "1GB"),
                                         ("device_budget_bytes", 0)])
def test_bad_budget_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"hardware.{field}"):  # validated once, where a Problem is made
        Problem(**{**random_problem(random.Random(0)).__dict__, field: value})


def test_cost_model_solvers_refuse_to_plan_without_rates():
    for name in solvers.NEEDS_HARDWARE:
        with pytest.raises(ValueError, match=f"solver '{name}' plans with a cost model and needs hardware rates"):
            solvers.solve(random_problem(random.Random(0)), name)


def test_unknown_solver_lists_the_solvers():
    with pytest.raises(ValueError, match="all_device.*flexgnn_greedy.*hongtu_like.*optimal"):
        solvers.solve(random_problem(random.Random(0)), "best")


def test_hongtu_like_keeps_vertex_data_on_host_and_recomputes_aggregates():
    problem = random_problem(random.Random(5))
    plan = solvers.solve(problem, "hongtu_like")
    for item in intermediates(problem, plan.orders):
        if item.name != "graph":
            assert plan.where(item.name) == ("recompute" if item.recomputable else "host")


@pytest.mark.parametrize("kind", models.names())
@pytest.mark.parametrize("method", ["none", "metis"])
def test_chunk_stats_match_the_engine_chunks(kind, method):
    graph = tricky_graph(num_nodes=60)
    order = reorder(graph.rowptr, graph.col, method, 4)
    rowptr, col = relabel_csr(graph.rowptr, graph.col, order)
    rowptr, col, values = models.get(kind).aggregation(rowptr, col)
    attention = models.get(kind).family == "attention"
    stats = chunking.chunk_stats(rowptr, col, attention, [1, 3, 4, 7, 60, 61])
    assert sorted(stats) == [1, 3, 4, 7, 60]
    for count, got in stats.items():
        chunks = build_chunks(rowptr, col, values, count, self_loops=attention)
        assert got == {"max_chunk_rows": max(c.rows for c in chunks),
                       "max_halo_rows": max(int(c.halo.numel()) for c in chunks),
                       "max_chunk_edges": max(c.num_edges for c in chunks),
                       "sum_halo_rows": sum(int(c.halo.numel()) for c in chunks),
                       "graph_bytes": sum(c.nbytes() for c in chunks)}


def test_estimated_chunk_stats_keep_the_problem_and_grow_the_halo_with_p():
    problem = random_problem(random.Random(11))
    stats = chunking.estimate_chunk_stats(problem, (1, 2, 4, 8, 16))
    assert stats[problem.num_chunks] == {name: getattr(problem, name) for name in chunking.STAT_FIELDS}
    counts = sorted(c for c in stats if c != problem.num_chunks)
    rows = [stats[c]["max_chunk_rows"] for c in counts]
    assert rows == sorted(rows, reverse=True)
    assert all(stats[c]["sum_halo_rows"] <= problem.num_nodes * c for c in counts)


def test_every_planner_file_names_a_known_solver():
    import pathlib

    import yaml

    from flexgnn_core import calibrate

    conf = pathlib.Path(__file__).resolve().parents[1] / "conf"
    planners = sorted(conf.glob("planner/*.yaml"))
    assert {p.stem for p in planners} == set(solvers.SOLVERS)
    for path in planners:
        assert yaml.safe_load(path.read_text())["name"] == path.stem
    for name in calibrate.PROFILES:  # hardware.profile=<name> in the harness
        assert calibrate.profile(name).source == "datasheet"
    from flexgnn_core.system import hardware_for

    assert hardware_for("h100", torch.device("cpu")).name == "h100-pcie5-nvme4"


def test_the_engine_runs_the_optimal_plan_and_matches_the_all_device_losses():
    """``optimal`` on given rates under a tight budget picks per-layer orders and placements the engine executes;
    training is exact, so the losses match all-device."""
    from flexgnn_core import system
    from flexgnn_core.models import init_params
    from flexgnn_core.spec import ModelSpec, TrainSpec

    graph = tricky_graph(num_nodes=80, num_features=16)
    model = ModelSpec(kind="gcn", num_layers=3, hidden=16)
    params = init_params(model, graph.num_features, graph.num_classes, seed=0)
    spec = TrainSpec(epochs=3, warmup_epochs=1, seed=0, device="cpu", progress=False)
    options = {"num_chunks": 3, "print_plan": False, "hardware": CPU_LIKE}
    reference = system.train(graph, model, params, spec, {**options, "policy": "all_device"})
    budget = int(reference.tier_peak_bytes["device"] * 0.93)  # above the working set, below all-device
    result = system.train(graph, model, params, spec, {**options, "policy": "optimal", "device_budget_bytes": budget})
    assert result.plan["policy"] == "optimal" and result.plan["feasible"]
    assert any(where != "device" for where in result.plan["placement"].values())
    assert result.tier_peak_bytes["device"] <= budget
    assert result.extra["hardware"] == {"name": "cpu-like", "source": "measured"}
    torch.testing.assert_close(torch.tensor(result.epoch_losses), torch.tensor(reference.epoch_losses),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fraction", [0.7, 0.6])
def test_optimal_equals_brute_force_with_column_passes(fraction):
    """A wide layer on a graph whose halos span the file: placements with h1 or grad_h1 on disk and agg1 stored run
    column passes (terms of three placements with the graph on the host; the blocks' device bytes in the budget,
    the MILP's w). Still exact: brute force prices every such placement too, and a feasible one is in the search."""
    problem = Problem(kind="gcn", dims=(16, 160, 160), heads=1, num_nodes=3000, num_edges=30000, num_chunks=8,
                      max_chunk_rows=375, max_halo_rows=2400, max_chunk_edges=4000, sum_halo_rows=19200,
                      graph_bytes=30000 * 12 + 3000 * 8, param_bytes=4 * (16 * 160 + 160 * 160 + 320),
                      order_rule="aggregate_first")
    assert column_layers(problem) == (False, True)
    everything = simulate(solvers.solve(problem, "all_device"), problem)["peak_bytes"]["device"]
    staging = STAGING_THREADS * staging_bytes(problem)  # the host holds the disk tier's staging and the graph
    problem = dataclasses.replace(problem, device_budget_bytes=int(everything * fraction),
                                  host_budget_bytes=staging + problem.graph_bytes)
    assert_optimal_is_brute_force(problem, CPU_LIKE)
    by_columns = {"graph": "host", "h0": "disk", "agg0": "disk", "h1": "disk", "agg1": "disk", "grad_h1": "disk",
                  "grad_h2": "disk"}
    candidate = make_plan("columns", problem, layer_orders(problem), by_columns)
    assert candidate.feasible and column_passes(problem, by_columns, 1) == (True, True)
    assert predicted(solvers.make_optimal(CPU_LIKE)(problem), problem, CPU_LIKE) <= predicted(candidate, problem,
                                                                                             CPU_LIKE)
