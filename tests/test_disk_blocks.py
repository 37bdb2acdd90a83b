"""The disk tier's block rule (plan.blocks): the files move exactly the spans the simulator charges, the spans fit
the staging buffer, and the link counters are what the storage device saw (/proc/self/io, O_DIRECT files)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from flexgnn_core import system
from flexgnn_core.data.synthetic import make_synthetic
from flexgnn_core.engine.prepare import prepare
from flexgnn_core.engine.diskfile import RowFile, Staging
from flexgnn_core.models import init_params
from flexgnn_core.plan import Budgets, Plan, blocks, chunking, problem as problem_module, simulate
from flexgnn_core.spec import ModelSpec, TrainSpec

ALIGN = blocks.ALIGN

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("seed", range(20))
def test_range_spans_are_the_spans_of_the_range_and_fit_the_staging(seed):
    rng = random.Random(seed)
    row = 4 * rng.choice([1, 3, 7, 64, 129, 1000])
    staging = ALIGN * rng.randint(2 + row // ALIGN + 1, 40)
    window = blocks.window(staging, row)
    start = rng.randint(0, 3000)
    stop = start + rng.randint(1, 5000)
    lo, hi, a0, a1 = blocks.range_spans(start, stop, row, window)
    first, last, b0, b1 = blocks.spans(np.arange(start, stop), row, window)
    assert lo.tolist() == (first + start).tolist() and hi.tolist() == (last + start + 1).tolist()
    assert a0.tolist() == b0.tolist() and a1.tolist() == b1.tolist()
    assert (a1 - a0).max() <= staging and (a0 % ALIGN == 0).all() and (a1 % ALIGN == 0).all()
    assert (a0 <= lo * row).all() and (hi * row <= a1).all()


@pytest.mark.parametrize("seed", range(10))
def test_gather_groups_cover_every_row_once_within_their_spans(seed):
    rng = np.random.default_rng(seed)
    row, staging = 4 * int(rng.integers(1, 300)), 6 * ALIGN + 4 * 300
    ids = np.unique(rng.integers(0, 50_000, size=int(rng.integers(1, 4000))))
    first, last, a0, a1 = blocks.spans(ids, row, blocks.window(staging, row))
    assert first[0] == 0 and last[-1] == ids.size - 1 and (first[1:] == last[:-1] + 1).all()
    assert (a0 <= ids[first] * row).all() and ((ids[last] + 1) * row <= a1).all() and (a1 - a0).max() <= staging


def test_a_row_wider_than_the_staging_buffer_is_refused_by_name(tmp_path):
    path = tmp_path / "wide.f32"
    path.write_bytes(b"\0" * 3 * ALIGN)
    with pytest.raises(ValueError, match="staging buffer of at least"):
        RowFile(path, 1, 2 * ALIGN // 4, Staging(3 * ALIGN))


def _file(tmp_path, rows, width, staging):
    path = tmp_path / "f.f32"
    with open(path, "wb") as out:
        out.truncate(blocks.aligned(rows * width * 4))
    return RowFile(path, rows, width, Staging(staging))


def test_each_operation_moves_the_blocks_the_rule_predicts_and_keeps_the_neighbours(tmp_path):
    rows, width, staging = 5000, 13, 5 * ALIGN
    file = _file(tmp_path, rows, width, staging)
    row, window = width * 4, blocks.window(staging, width * 4)
    reference = torch.zeros(rows, width)
    rng = torch.Generator().manual_seed(0)

    def moved(action):
        before = dict(file.actual)
        action()
        return file.actual["read"] - before["read"], file.actual["write"] - before["write"]

    full, partial = blocks.range_moves([(0, rows)], row, window)  # partial: rows straddling a window's end
    values = torch.randn(rows, width, generator=rng)
    assert moved(lambda: file.write_range(0, values)) == (partial, full)
    reference[:] = values
    for start, stop in [(7, 1234), (1234, 1300), (4000, 5000)]:
        span, partial = blocks.range_moves([(start, stop)], row, window)
        values = torch.randn(stop - start, width, generator=rng)
        assert partial > 0 and moved(lambda: file.write_range(start, values)) == (partial, span)
        reference[start:stop] = values
        assert moved(lambda: file.write_range(start, values, add=True)) == (span, span)
        reference[start:stop] += values
        assert moved(lambda: file.read_range(start, stop)) == (span, 0)
    halo = torch.unique(torch.randint(0, rows, (700,), generator=rng))
    gather = blocks.gather_bytes([halo.numpy()], row, window)
    assert moved(lambda: file.read_index(halo)) == (gather, 0)
    values = torch.randn(halo.numel(), width, generator=rng)
    assert moved(lambda: file.add_index(halo, values)) == (gather, gather)
    reference.index_add_(0, halo, values)
    torch.testing.assert_close(file.read_range(0, rows), reference, rtol=0, atol=0)
    file.close()


def _epoch_links(kind, options, tmp_path, graph):
    model = ModelSpec(kind=kind, num_layers=2, hidden=24, heads=2)
    params = init_params(model, graph.num_features, graph.num_classes, seed=0)

    def run(epochs):
        spec = TrainSpec(epochs=epochs, warmup_epochs=0, progress=False, device="cpu")
        return system.train(graph, model, params, spec, {"print_plan": False, "disk_dir": str(tmp_path), **options})

    longer, shorter = run(3), run(2)
    epoch = {link: longer.io_bytes[link] - shorter.io_bytes[link] for link in longer.io_bytes}
    prepared = prepare(graph, model, params, options["num_chunks"], budgets=Budgets())
    return longer, epoch, simulate(Plan.from_json(longer.plan), prepared.problem)["link_bytes"]


@pytest.mark.parametrize("kind", ["gcn", "gat"])
def test_a_steady_epoch_on_disk_moves_the_simulated_blocks_across_windows_and_gaps(kind, tmp_path, monkeypatch):
    """Rows spanning many blocks, halos with gaps, a staging buffer small enough that ranges cut at windows:
    one epoch's disk links equal the simulator's block counts, and the files' own totals equal the counters."""
    monkeypatch.setattr(problem_module, "MAX_STAGING_BYTES", 4 * ALIGN)
    graph = make_synthetic(num_nodes=3000, avg_degree=4, num_features=20, num_classes=3, seed=1)
    result, epoch, predicted = _epoch_links(kind, {"num_chunks": 5, "policy": "all_disk"}, tmp_path, graph)
    assert epoch == predicted and epoch["disk_read"] > 0 and epoch["disk_write"] > 0
    assert result.extra["disk_actual_bytes"] == {"read": result.io_bytes["disk_read"],
                                                 "write": result.io_bytes["disk_write"]}


def test_the_counters_are_what_the_storage_device_saw(tmp_path):
    """On a file system that takes O_DIRECT, /proc/self/io's bytes over the run are the disk counters' (10%)."""
    graph = make_synthetic(num_nodes=20000, avg_degree=6, num_features=32, num_classes=4, seed=0)
    model = ModelSpec(kind="gcn", num_layers=2, hidden=32)
    params = init_params(model, graph.num_features, graph.num_classes, seed=0)
    spec = TrainSpec(epochs=2, warmup_epochs=0, progress=False, device="cpu")
    result = system.train(graph, model, params, spec, {"print_plan": False, "disk_dir": str(tmp_path),
                                                       "num_chunks": 8, "policy": "all_disk"})
    if result.extra["disk_modes"] != ["direct"] or result.extra["proc_io_bytes"] is None:
        pytest.skip(f"{tmp_path} does not take O_DIRECT or /proc/self/io is missing: the page cache would answer")
    real, counted = result.extra["proc_io_bytes"], result.io_bytes
    assert counted["disk_read"] > 0
    assert abs(real["read_bytes"] - counted["disk_read"]) <= 0.1 * counted["disk_read"]
    assert abs(real["write_bytes"] - counted["disk_write"]) <= 0.1 * counted["disk_write"]


def test_block_sums_at_another_p_are_estimated_not_copied():
    graph = make_synthetic(num_nodes=4000, avg_degree=8, num_features=16, num_classes=3, seed=0)
    model = ModelSpec(kind="gcn", num_layers=2, hidden=16)
    params = init_params(model, graph.num_features, graph.num_classes, seed=0)
    prepared = prepare(graph, model, params, 4)
    measured = dict(prepared.problem.disk_halo_bytes)
    stats = chunking.estimate_chunk_stats(prepared.problem, (4, 32))
    other = chunking.problem_for(prepared.problem, stats[32], 32)
    exact = prepare(graph, model, params, 32).problem
    assert chunking.problem_for(prepared.problem, stats[4], 4) == prepared.problem
    for row, value in other.disk_halo_bytes:
        truth = dict(exact.disk_halo_bytes)[row]
        assert value != measured[row] and 0.5 * truth <= value <= 2 * truth
