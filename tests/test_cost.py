"""Cost model and calibration: validation, additivity with unit costs, agreement with simulate(), the cache."""

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexgnn_core import calibrate, models
from flexgnn_core.calibrate import probe
from flexgnn_core.plan import Problem, cost, custom_plan, intermediates, layer_orders, simulate
from flexgnn_core.plan.cost import UNIT, Hardware
from flexgnn_core.plan.solvers import solve


def tiny_problem(**changes) -> Problem:
    base = dict(kind="gcn", dims=(2, 3), heads=1, num_nodes=4, num_edges=6, num_chunks=1, max_chunk_rows=4,
                max_halo_rows=3, max_chunk_edges=6, sum_halo_rows=3, graph_bytes=100, param_bytes=40)
    return Problem(**{**base, **changes})


RATES = dict(name="x", agg_edge_width_per_s=1.0, matmul_flop_per_s=1.0, memory_bytes_per_s=1.0, h2d_bytes_per_s=1.0,
             d2h_bytes_per_s=1.0, disk_read_bytes_per_s=1.0, disk_write_bytes_per_s=1.0)


@pytest.mark.parametrize("field,value", [("h2d_bytes_per_s", -1.0), ("disk_read_bytes_per_s", 0),
                                         ("matmul_flop_per_s", "fast"), ("agg_edge_width_per_s", True),
                                         ("d2h_bytes_per_s", math.inf), ("overlap", 1.5), ("step_overhead_s", -0.1),
                                         ("gat_edge_head_per_s", -1.0), ("gat_edge_per_s", -1.0),
                                         ("gather_bytes_per_s", "slow")])
def test_bad_hardware_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Hardware(**{**RATES, field: value})


def test_unknown_hardware_field_is_listed():
    with pytest.raises(ValueError, match="unknown hardware field.*pcie_bytes"):
        Hardware.from_json({**RATES, "pcie_bytes": 1.0})


def test_unit_costs_add_up_by_hand():
    """1-layer GCN, N=4, E=6, dims 2->3, all on the device: forward mm 2*4*2*3=48, backward dW 48, loss and its
    gradient 4*3*4*2=96 elementwise bytes; layer 0's aggregate is stored, so reused: 192 in all, no transfers."""
    problem = tiny_problem()
    prediction = cost.predict(solve(problem, "all_device"), problem, UNIT)
    assert prediction.compute_s == 192
    assert prediction.epoch_s == 192 and prediction.hidden_s == 0
    assert dict(prediction.link_bytes) == {"h2d": 0, "d2h": 0, "disk_read": 0, "disk_write": 0}
    recomputed = custom_plan(problem, {"graph": "device", "h0": "device", "agg0": "recompute",
                                       "grad_h1": "device"})
    assert cost.predict(recomputed, problem, UNIT).compute_s == 192 + 2 * 6 * 2  # aggregate fwd + bwd each epoch


def test_input_dropout_makes_the_layer0_aggregate_every_epoch_by_hand():
    """The same 1-layer GCN with input dropout: the features change every epoch, so the aggregate (6 edges x 2
    columns) and the masks of the 3 halo rows x 2 columns it reads (one mask entry a second here) are made every
    epoch; storing agg0 saves only the backward's second aggregate, and the optimal plan stores it."""
    problem = tiny_problem(input_dropout=True)
    hw = dataclasses.replace(UNIT, dropout_mask_per_s=1.0)
    assert cost.predict(solve(problem, "all_device"), problem, hw).compute_s == 192 + 12 + 6
    recomputed = custom_plan(problem, {"graph": "device", "h0": "device", "agg0": "recompute", "grad_h1": "device"})
    assert cost.predict(recomputed, problem, hw).compute_s == 192 + 2 * (12 + 6)
    assert solve(problem, "optimal", hw).where("agg0") == "device"
    hidden = tiny_problem(dims=(2, 3, 2), hidden_dropout=True)  # masks of h1 (4 x 3) forward and backward
    plain = tiny_problem(dims=(2, 3, 2))
    extra = cost.predict(solve(hidden, "all_device"), hidden, hw).compute_s
    assert extra - cost.predict(solve(plain, "all_device"), plain, hw).compute_s == 2 * 4 * 3


def test_input_dropout_lets_layer0_transform_first_when_that_narrows():
    assert layer_orders(tiny_problem(dims=(8, 3))) == ("aggregate_first",)  # fixed features: aggregate once
    assert layer_orders(tiny_problem(dims=(8, 3), input_dropout=True)) == ("transform_first",)
    assert layer_orders(tiny_problem(dims=(2, 3), input_dropout=True)) == ("aggregate_first",)


@pytest.mark.parametrize("overlap", [0.0, 0.5, 1.0])
def test_epoch_is_compute_plus_unhidden_transfer(overlap):
    problem = tiny_problem(num_chunks=2)
    hw = Hardware(**{**RATES, "overlap": overlap})
    prediction = cost.predict(solve(problem, "all_host"), problem, hw)
    transfer = sum(dict(prediction.link_bytes).values())  # unit bandwidths: seconds = bytes
    assert sum(dict(prediction.transfer_s).values()) == transfer > 0
    # each pass's first chunk fetches with nothing to hide behind: at P=2 half the overlap is usable
    assert prediction.epoch_s == max(prediction.compute_s, prediction.compute_s + transfer
                                     - overlap / 2 * prediction.compute_s)
    assert prediction.epoch_s + prediction.hidden_s == prediction.compute_s + transfer
    # one chunk: nothing to prefetch while it computes, so nothing is hidden (the engine prefetches only at P > 1)
    single = tiny_problem()
    alone = cost.predict(solve(single, "all_host"), single, hw)
    assert alone.hidden_s == 0 and alone.epoch_s == alone.compute_s + sum(dict(alone.transfer_s).values())


def test_gat_attention_uses_its_own_rate_per_edge_head_and_pass():
    """All on the device, each GAT layer runs one attention pass forward and one backward: halving the rate adds
    exactly 2 x layers x E x heads / rate seconds of compute."""
    problem = tiny_problem(kind="gat", dims=(4, 4, 2), heads=2)
    plan = solve(problem, "all_device")
    fast, slow = (Hardware(**{**RATES, "gat_edge_head_per_s": rate}) for rate in (2.0, 1.0))
    extra = cost.predict(plan, problem, slow).compute_s - cost.predict(plan, problem, fast).compute_s
    assert extra == pytest.approx(2 * 2 * problem.num_edges * problem.heads * (1 / 1.0 - 1 / 2.0))
    unset = Hardware(**RATES)  # not calibrated: a quarter of the aggregation rate, as before calibration existed
    assert cost.attention_s(unset, 6, 2) == 6 * 2 / (RATES["agg_edge_width_per_s"] / 4)
    per_edge = Hardware(**{**RATES, "gat_edge_per_s": 3.0, "gat_edge_head_per_s": 2.0})
    assert cost.attention_s(per_edge, 6, 2) == 6 / 3.0 + 6 * 2 / 2.0  # index work per edge, whatever the heads


@pytest.mark.parametrize("kind", models.names())
def test_more_halo_rows_cost_more_and_a_faster_gather_less(kind):
    """Chunks gather and scatter-add their halo rows: the more distinct sources all chunks read, the longer the
    predicted epoch (the term that grows with P); a faster gather rate shortens it."""
    dims = (4, 4, 2)
    problem = tiny_problem(kind=kind, dims=dims, heads=2, num_chunks=2, sum_halo_rows=5, order_rule="aggregate_first")
    wider = tiny_problem(kind=kind, dims=dims, heads=2, num_chunks=2, sum_halo_rows=8, order_rule="aggregate_first")
    plan = solve(problem, "all_device")
    assert cost.predict(plan, wider, UNIT).compute_s > cost.predict(plan, problem, UNIT).compute_s
    fast_gather = Hardware(**{**RATES, "gather_bytes_per_s": 100.0})
    assert cost.predict(plan, problem, fast_gather).compute_s < cost.predict(plan, problem, UNIT).compute_s


def test_attention_fit_recovers_the_rates_that_made_the_runs():
    """Calibration fits GAT's per-edge and per-edge-head rates from two all-device runs with 1 and 4 heads: fed
    runs whose times the model itself made from known rates, it must give those rates back."""
    truth = Hardware(**{**RATES, "gat_edge_per_s": 7.0, "gat_edge_head_per_s": 3.0})
    prior = Hardware(**{**RATES, "gat_edge_head_per_s": 5.0})  # the rates before the fit
    runs = []
    for heads in (1, 4):
        problem = tiny_problem(kind="gat", dims=(8, 8, 2), heads=heads, num_chunks=2)
        plan = solve(problem, "all_device")
        runs.append((cost.predict(plan, problem, truth).compute_s, plan, problem, {}))
    fitted = probe._fit_attention(prior, runs)
    assert fitted.gat_edge_per_s == pytest.approx(7.0) and fitted.gat_edge_head_per_s == pytest.approx(3.0)
    # runs faster than the rest of the model explains cannot give a rate below zero: a quarter of the prior's
    # attention time is kept, all of it per edge and head
    clipped = probe._fit_attention(prior, [(0.0, plan, problem, {}) for _, plan, problem, _ in runs])
    assert clipped.gat_edge_per_s == 0 and clipped.gat_edge_head_per_s > 0


def test_compute_fit_recovers_the_rates_and_step_overhead_that_made_the_runs():
    """Calibration scales the aggregation and the other compute rates and sets the per-step overhead from three
    all-device runs (two densities, two P): fed runs the model made from known rates, it gives them back."""
    truth = Hardware(**{**RATES, "agg_edge_width_per_s": 3.0, "matmul_flop_per_s": 0.5, "memory_bytes_per_s": 0.5,
                        "gather_bytes_per_s": 0.25, "step_overhead_s": 0.7})
    prior = Hardware(**{**RATES, "gather_bytes_per_s": 0.5, "step_overhead_s": 0.1})
    runs = []
    for edges, count, halo in ((6, 2, 5), (40, 2, 7), (6, 4, 9)):
        problem = tiny_problem(dims=(4, 4, 2), num_edges=edges, num_chunks=count, sum_halo_rows=halo)
        plan = solve(problem, "all_device")
        runs.append((cost.predict(plan, problem, truth).compute_s, plan, problem, {}))
    fitted = probe._fit_compute(prior, runs)
    for name in ("agg_edge_width_per_s", "matmul_flop_per_s", "memory_bytes_per_s", "gather_bytes_per_s",
                 "step_overhead_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name)), name


def test_link_fit_recovers_bandwidth_and_per_transfer_latency():
    """Host links are fitted from all-host runs at a low and a high P (an alpha-beta model): fed runs the model
    made from a known bandwidth and per-transfer latency, the fit gives both back."""
    truth = Hardware(**{**RATES, "h2d_bytes_per_s": 0.5, "d2h_bytes_per_s": 0.5, "transfer_op_s": 0.005,
                        "overlap": 0.4})
    prior = Hardware(**{**RATES, "overlap": 0.4})
    runs = []
    for count, halo in ((2, 5), (4, 9)):
        problem = tiny_problem(dims=(4, 4, 2), num_chunks=count, sum_halo_rows=halo)
        plan = solve(problem, "all_host")
        runs.append((cost.predict(plan, problem, truth).epoch_s, plan, problem, {}))
        assert simulate(plan, problem)["transfer_ops"] > 0
    scale, fitted = probe._fit_links(prior, runs)
    assert scale == pytest.approx(2.0) and fitted.h2d_bytes_per_s == pytest.approx(0.5)
    assert fitted.transfer_op_s == pytest.approx(0.005)


def test_predict_rejects_mismatched_chunk_count():
    problem = tiny_problem()
    plan = solve(tiny_problem(num_chunks=2), "all_device")
    with pytest.raises(ValueError, match="num_chunks"):
        cost.predict(plan, problem, UNIT)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(models.names()), layers=st.integers(1, 3), seed=st.integers(0, 10**6),
       order=st.sampled_from(["auto", "aggregate_first", "transform_first"]))
def test_item_link_bytes_sum_to_simulate(kind, layers, seed, order):
    import random

    rng = random.Random(seed)
    n = rng.randint(2, 50)
    heads = 2 if models.get(kind).family == "attention" else 1
    problem = tiny_problem(kind=kind, dims=tuple(rng.randint(1, 9) * heads for _ in range(layers + 1)), heads=heads, num_nodes=n, num_edges=rng.randint(n, 5 * n),
                           sum_halo_rows=rng.randint(0, 3 * n), order_rule=order)
    orders = layer_orders(problem)
    placement = {item.name: rng.choice(item.tiers + (("recompute",) if item.recomputable else ()))
                 for item in intermediates(problem, orders)}
    plan = custom_plan(problem, placement)
    total = dict.fromkeys(cost.LINKS, 0)
    for item in intermediates(problem, orders):
        for link, nbytes in cost.item_link_bytes(problem, item.name, placement[item.name]).items():
            total[link] += nbytes
    for when, links in cost.joint_link_bytes(problem):  # the MILP's product variables
        if all(placement.get(name) in allowed for name, allowed in when):
            for link, nbytes in links.items():
                total[link] += nbytes
    simulated = simulate(plan, problem)
    assert total == {**simulated["link_bytes"], "ops": simulated["transfer_ops"]}


def test_profiles_are_datasheet_values_and_unknown_names_are_listed():
    h200 = calibrate.profile("h200")
    assert h200.source == "datasheet" and h200.memory_bytes_per_s == 4.8e12 and h200.h2d_bytes_per_s == 63e9
    assert calibrate.profile("a100-pcie5-nvme5").disk_read_bytes_per_s == 12e9
    with pytest.raises(ValueError, match="h200, h100, a100"):
        calibrate.profile("tpu")


def test_calibration_is_cached_per_machine_and_forced_again(tmp_path, monkeypatch):
    monkeypatch.setenv(calibrate.CACHE_ENV, str(tmp_path))
    measured = calibrate.load_or_measure("cpu", scale=0.25)
    assert measured.source == "measured"
    for name in cost.RATE_FIELDS + ("gat_edge_head_per_s", "gather_bytes_per_s"):
        assert 0 < getattr(measured, name) < math.inf
    assert 0 <= measured.gat_edge_per_s < math.inf  # 0 when the probes cannot tell per-edge work apart
    assert 0 <= measured.overlap <= 1  # on CPU: the share of fetch time the engine probe's prefetch hid
    path = calibrate.cache_path(calibrate.torch.device("cpu"))
    assert path.parent == tmp_path and path.exists()
    record = json.loads(path.read_text())
    assert record["fingerprint"]["cores"] and record["fingerprint"]["torch"]
    record["hardware"]["matmul_flop_per_s"] = 123.0  # the cache, not a new measurement, answers the next call
    path.write_text(json.dumps(record))
    calls: list[float] = []  # a second measurement is what this test must see happen or not, not its numbers

    def remeasure(device, scale, notes):
        calls.append(scale)
        return dataclasses.replace(measured, matmul_flop_per_s=456.0)

    monkeypatch.setattr(calibrate, "measure", remeasure)
    assert calibrate.load_or_measure("cpu", scale=0.25).matmul_flop_per_s == 123.0 and not calls
    assert calibrate.load_or_measure("cpu", force=True, scale=0.25).matmul_flop_per_s == 456.0 and calls == [0.25]
    assert json.loads(path.read_text())["hardware"]["matmul_flop_per_s"] == 456.0  # and caches what it measured


def test_disk_rates_are_measured_on_the_device_not_the_page_cache(tmp_path, monkeypatch):
    """``micro.disk`` moves its bytes through the disk tier's own I/O: the storage layer (``/proc/self/io``) sees the
    write and all three reads. Reading the file back through the page cache (as before) read nothing from the
    device, and the cost model got page-cache rates (2-3x the tier's). Skipped where the temporary file system
    refuses ``O_DIRECT`` (tmpfs), since there the tier's reads are memory copies too."""
    import tempfile

    from flexgnn_core import machine
    from flexgnn_core.calibrate import micro
    from flexgnn_core.engine.diskfile import RowFile, Staging

    probe_path = tmp_path / "mode.bin"
    probe_path.write_bytes(b"\0" * 8192)
    mode_probe = RowFile(probe_path, 2, 1024, Staging(2**16))
    mode = mode_probe.mode
    mode_probe.close()
    before = machine.process_io()
    if before is None or mode != "direct":
        pytest.skip(f"no /proc/self/io or no O_DIRECT here (mode {mode})")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    nbytes = 4 * 2**20
    read_rate, write_rate = micro.disk(nbytes)
    after = machine.process_io()
    assert read_rate > 0 and write_rate > 0
    assert after["read_bytes"] - before["read_bytes"] >= 3 * nbytes
    assert after["write_bytes"] - before["write_bytes"] >= nbytes
