"""Column passes (``plan.simulate.column_passes``): a wide layer whose input or input gradient is on disk is
aggregated one column block at a time, each block read or written with one sweep of its file, instead of chunk by
chunk through halos that span the whole file. Exact like every other plan (PyG's losses; the in-memory plan's
weights, bit for bit where no self rows change the order of additions), and its traffic is the simulator's to the
byte, forward only, backward only or both, with the graph on the host (the chunk blocks walked once per column
block) or on the device.
"""

from __future__ import annotations

import functools

import pytest
import torch

from baselines import pyg_fullgraph
from flexgnn_core import system
from flexgnn_core.engine import prepare
from flexgnn_core.engine.tiers import TierStore
from flexgnn_core.models import init_params
from flexgnn_core.plan import Plan, simulate
from flexgnn_core.plan.blocks import COLUMN_BLOCK
from flexgnn_core.plan.simulate import column_layers, column_passes, column_working_bytes
from flexgnn_core.spec import ModelSpec, TrainSpec
from graphs import tricky_graph

GRAPH = tricky_graph(num_nodes=300)  # random edges: every chunk's halo spans (nearly) the whole file
WIDE = 2 * COLUMN_BLOCK + 32  # three column blocks, the last one narrower
TRAIN = TrainSpec(epochs=3, warmup_epochs=0, progress=False, device="cpu")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny graphs gain nothing from threads

# layer 1 (WIDE -> WIDE) aggregates first; the last layer (WIDE -> classes) transforms first
PLACEMENTS = {
    "both": {"graph": "host", "h0": "host", "agg0": "host", "h1": "disk", "agg1": "disk", "grad_h1": "disk",
             "h2": "disk", "t2": "host", "grad_t2": "disk", "grad_h2": "disk", "grad_h3": "host"},
    "forward": {"graph": "device", "h0": "device", "agg0": "device", "h1": "disk", "agg1": "host", "grad_h1": "host",
                "h2": "host", "t2": "device", "grad_t2": "host", "grad_h2": "disk", "grad_h3": "device"},
    "backward": {"graph": "host", "h0": "device", "agg0": "device", "h1": "host", "agg1": "device",
                 "grad_h1": "disk", "h2": "device", "t2": "recompute", "grad_t2": "device", "grad_h2": "host",
                 "grad_h3": "device"},
    "recomputed": {"graph": "host", "h0": "device", "agg0": "device", "h1": "disk", "agg1": "recompute",
                   "grad_h1": "disk", "h2": "device", "t2": "device", "grad_t2": "device", "grad_h2": "device",
                   "grad_h3": "device"},
}
EXPECTED = {"both": (True, True), "forward": (True, False), "backward": (False, True), "recomputed": (False, False)}


@functools.lru_cache(maxsize=None)
def _setup(kind: str):
    model = ModelSpec(kind=kind, num_layers=3, hidden=WIDE, heads=2)
    params = init_params(model, GRAPH.num_features, GRAPH.num_classes, seed=0)
    in_memory = system.train(GRAPH, model, params, TRAIN, {"print_plan": False, "num_chunks": 5,
                                                          "policy": "all_device"})
    return model, params, pyg_fullgraph.train(GRAPH, model, params, TRAIN, {}), in_memory


def _train(kind: str, placement: dict, epochs: int, tmp_path):
    model, params, _, _ = _setup(kind)
    spec = TrainSpec(epochs=epochs, warmup_epochs=0, progress=False, device="cpu")
    return system.train(GRAPH, model, params, spec, {"print_plan": False, "disk_dir": str(tmp_path), "num_chunks": 5,
                                                    "placement": placement})


@pytest.mark.parametrize("kind", ["gcn", "sage"])  # (GIN takes the same path as GCN)
@pytest.mark.parametrize("case", sorted(PLACEMENTS))
def test_column_passes_are_exact_and_move_the_simulated_bytes(kind, case, tmp_path):
    model, params, reference, in_memory = _setup(kind)
    problem = prepare(GRAPH, model, params, 5).problem
    assert column_layers(problem) == (False, True, True)  # layer 0's aggregate is reused; layer 2 could (aggregating
    assert column_passes(problem, PLACEMENTS[case], 1) == EXPECTED[case]  # first), but transforms first here
    assert column_passes(problem, PLACEMENTS[case], 2) == (False, False)
    longer, shorter = _train(kind, PLACEMENTS[case], 3, tmp_path), _train(kind, PLACEMENTS[case], 2, tmp_path)
    torch.testing.assert_close(torch.tensor(longer.epoch_losses), torch.tensor(reference.epoch_losses),
                               rtol=1e-5, atol=0)
    exact = kind == "gcn"  # SAGE adds its self-row gradient before the column pass's sum, not between chunks
    for name, value in in_memory.final_params.items():
        torch.testing.assert_close(longer.final_params[name], value, rtol=0 if exact else 1e-5,
                                   atol=0 if exact else 1e-7, msg=name)
    epoch = {link: longer.io_bytes[link] - shorter.io_bytes[link] for link in longer.io_bytes}
    plan = Plan.from_json(longer.plan)
    assert epoch == simulate(plan, problem)["link_bytes"]
    assert longer.tier_peak_bytes["device"] <= plan.predicted_peak_bytes[0][1]  # the blocks are counted


def test_column_passes_read_each_block_once_where_halos_read_the_file_per_chunk():
    """On this graph a chunk's halo gather moves the whole file, so per epoch the forward pass's reads of h1 fall
    from P sweeps to one (and backward's read-modify-write of grad_h1 per chunk to one write)."""
    model, params, _, _ = _setup("gcn")
    problem = prepare(GRAPH, model, params, 5).problem
    plan = simulate(Plan("custom", 5, ("aggregate_first", "aggregate_first", "transform_first"),
                         tuple(PLACEMENTS["both"].items()), None, None, (), 0, True), problem)
    halo_plan = simulate(Plan("custom", 5, ("aggregate_first", "aggregate_first", "transform_first"),
                              tuple({**PLACEMENTS["both"], "agg1": "recompute"}.items()), None, None, (), 0, True),
                         problem)
    assert plan["link_bytes"]["disk_read"] < halo_plan["link_bytes"]["disk_read"]
    assert plan["peak_bytes"]["device"] - halo_plan["peak_bytes"]["device"] == column_working_bytes(problem)
    assert column_working_bytes(problem) == 3 * GRAPH.num_nodes * COLUMN_BLOCK * 4


def test_narrow_layers_have_no_column_passes():
    model = ModelSpec(kind="gcn", num_layers=3, hidden=2 * COLUMN_BLOCK - 1, heads=2)
    params = init_params(model, GRAPH.num_features, GRAPH.num_classes, seed=0)
    problem = prepare(GRAPH, model, params, 5).problem
    assert column_layers(problem) == (False, False, False) and column_working_bytes(problem) == 0


@pytest.mark.parametrize("tier", ["device", "host", "disk"])
def test_buffer_column_blocks_read_write_and_add(tier, tmp_path):
    rows, width = 37, 2 * COLUMN_BLOCK + 5
    values = torch.randn(rows, width)
    with TierStore(torch.device("cpu"), str(tmp_path)) as store:
        buffer = store.alloc("wide", (rows, width), tier)
        assert buffer.columns == [(0, 64), (64, 128), (128, width)]
        assert len(buffer.files) == (3 if tier == "disk" else 0)
        buffer.write(slice(0, rows), values)
        for j, (c0, c1) in enumerate(buffer.columns):
            torch.testing.assert_close(buffer.read_columns(j), values[:, c0:c1], rtol=0, atol=0)
        buffer.write_columns(1, torch.ones(rows, 64), add=True)
        buffer.write_columns(2, torch.full((rows, width - 128), 2.0))
        expected = values.clone()
        expected[:, 64:128] += 1
        expected[:, 128:] = 2
        torch.testing.assert_close(buffer.read(slice(0, rows)), expected, rtol=0, atol=0)
        index = torch.tensor([3, 1, 30])
        torch.testing.assert_close(buffer.read(index), expected[index], rtol=0, atol=0)
