"""Bad input to the FlexGNN system fails early with errors that name the field and the fix, and leaves no files;
a budget no plan fits is an ``infeasible`` result naming the minimum, not an exception."""

from __future__ import annotations

import re

import pytest
import torch

from baselines import pyg_fullgraph
from flexgnn_core import system
from flexgnn_core.models import init_params
from flexgnn_core.spec import ModelSpec, TrainSpec
from graphs import tricky_graph

GRAPH = tricky_graph(num_nodes=24)
MODEL = ModelSpec(kind="sage", num_layers=2, hidden=8)
PARAMS = init_params(MODEL, GRAPH.num_features, GRAPH.num_classes, seed=0)
TRAIN = TrainSpec(epochs=2, warmup_epochs=0, progress=False, device="cpu")


def _train(model=MODEL, **options):
    params = PARAMS if model is MODEL else init_params(model, GRAPH.num_features, GRAPH.num_classes, seed=0)
    return system.train(GRAPH, model, params, TRAIN, {"print_plan": False, **options})


def test_budget_below_one_chunks_working_set_names_the_minimum():
    refused = _train(policy="flexgnn_greedy", num_chunks=4, device_budget_bytes=1000)
    assert refused.status == "infeasible" and not refused.epoch_losses and refused.plan["feasible"] is False
    assert re.search(r"infeasible: .*minimum for P=4 with this placement: \d+ bytes", refused.reason)
    minimum = int(re.search(r"minimum for P=4 with this placement: (\d+) bytes", refused.reason).group(1))
    result = _train(policy="all_host", num_chunks=4, device_budget_bytes=minimum)  # the named minimum suffices
    assert result.tier_peak_bytes["device"] <= minimum and result.extra["device_within_budget"]


def test_unwritable_disk_dir_is_a_clear_error_and_leaves_no_files(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="disk_dir=.*is not writable"):
        _train(policy="all_disk", disk_dir=str(blocker / "spill"))
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_disk_files_removed_after_training(tmp_path):
    result = _train(policy="all_disk", num_chunks=3, disk_dir=str(tmp_path))
    assert result.io_bytes["disk_write"] > 0 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("num_chunks, fix", [(0, "raise it to at least 1"), (25, "lower it to at most num_nodes=24"),
                                             (2.5, "give a whole number")])
def test_num_chunks_outside_one_to_num_nodes_is_rejected(num_chunks, fix):
    with pytest.raises(ValueError, match=rf"num_chunks=.* must be an integer in \[1, num_nodes=24\]; {fix}"):
        _train(num_chunks=num_chunks)


def test_one_vertex_per_chunk_is_allowed_and_exact():
    result = _train(policy="all_host", num_chunks=24)  # a fixed plan: no calibration
    reference = pyg_fullgraph.train(GRAPH, MODEL, PARAMS, TRAIN, {})
    assert len(result.epoch_losses) == 2 and result.plan["num_chunks"] == 24
    torch.testing.assert_close(torch.tensor(result.epoch_losses), torch.tensor(reference.epoch_losses), rtol=1e-5,
                               atol=0)


def test_unknown_policy_lists_policies():
    with pytest.raises(ValueError, match="policy 'fast' is unknown; valid: all_device, all_host, all_disk, recompute, "
                                         "flexgnn_greedy, hongtu_like, optimal, optimal_p"):
        _train(policy="fast")


def test_custom_plan_with_unknown_intermediate_or_tier_lists_valid_ones():
    placement = {"graph": "device", "h0": "host", "agg0": "device", "h1": "host", "t1": "disk", "grad_t1": "host",
                 "grad_h1": "disk", "grad_h2": "device"}
    assert _train(placement=placement).plan["policy"] == "custom"
    with pytest.raises(ValueError, match="unknown intermediate 'z1'; valid: graph, h0, agg0, h1, t1, grad_t1"):
        _train(placement={**placement, "z1": "host"})
    with pytest.raises(ValueError, match="tier 'gpu' ; valid|unknown or invalid tier 'gpu'; valid for it: device"):
        _train(placement={**placement, "h1": "gpu"})


@pytest.mark.parametrize("options, message", [
    ({"reorder": "random"}, "reorder='random' is unknown; valid: none, rcm, metis"),
    ({"order": "backwards"}, "order='backwards' is unknown; valid: auto, aggregate_first, transform_first"),
    ({"chunk_size": 3}, "unknown flexgnn option.*chunk_size; valid: policy, num_chunks"),
    ({"device_budget_bytes": -5}, "hardware.device_budget_bytes=-5 must be a positive integer number of bytes or None"),
])
def test_bad_options_name_the_field(options, message):
    with pytest.raises(ValueError, match=message):
        _train(**options)


@pytest.mark.parametrize("fields, message", [
    ({"attention_dropout": 0.5}, r"model.attention_dropout=0.5 applies to attention models only .*leave it null"),
    ({"dropout": 1.0}, r"model.dropout must be in \[0, 1\), got 1.0"),
    ({"input_dropout": -0.1}, r"model.input_dropout must be in \[0, 1\), got -0.1"),
    ({"weight_decay": -1e-4}, r"model.weight_decay must be a number >= 0, got -0.0001"),
])
def test_bad_dropout_and_weight_decay_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        _train(model=ModelSpec(kind="gcn", num_layers=2, hidden=8, **fields))


def test_caller_params_are_not_modified():
    before = {k: v.clone() for k, v in PARAMS.items()}
    _train(policy="all_host")
    for name, value in PARAMS.items():
        assert torch.equal(value, before[name])
