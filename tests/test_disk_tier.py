"""The disk tier leaves RAM: explicit positioned I/O (O_DIRECT where the file system takes it), every read, write,
gather and scatter-add equal to a plain tensor's, the bytes its system calls move confirmed by /proc/self/io, and
the page cache left empty. Reading several buffers from two threads at once stays correct (the prefetch thread)."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
import torch

from flexgnn_core import machine
from flexgnn_core.engine import diskfile
from flexgnn_core.engine.diskfile import RowFile, aligned
from flexgnn_core.engine.tiers import TierStore
from flexgnn_core.plan.problem import STAGING_THREADS

CPU = torch.device("cpu")


def _file(tmp_path: Path, rows: int, width: int, staging: int = diskfile.MAX_STAGING_BYTES) -> RowFile:
    path = tmp_path / f"rows{width}.f32"
    with open(path, "wb") as handle:
        handle.truncate(aligned(rows * width * 4))
    return RowFile(path, rows, width, diskfile.Staging(staging))


@pytest.mark.parametrize("width", [3, 16, 300])
def test_random_operations_equal_a_plain_tensor(tmp_path, width):
    rows, rng = 700, random.Random(width)
    # a small staging buffer: ranges and runs split into many pieces, rows straddle piece boundaries
    file, reference = _file(tmp_path, rows, width, staging=16 * 1024), torch.zeros(rows, width)
    for step in range(40):
        a = rng.randrange(rows)
        b = rng.randrange(a, rows + 1)
        index = torch.tensor(rng.sample(range(rows), rng.randrange(0, 200)), dtype=torch.long)  # unsorted
        values = torch.randn(b - a, width)
        choice = step % 4
        if choice == 0:
            file.write_range(a, values)
            reference[a:b] = values
        elif choice == 1:
            file.write_range(a, values, add=True)
            reference[a:b] += values
        elif choice == 2:
            extra = torch.randn(index.numel(), width)
            file.add_index(index, extra)
            reference.index_add_(0, index, extra)
        elif step % 13 == 0:
            file.zero()
            reference.zero_()
        assert torch.equal(file.read_range(a, b), reference[a:b])
        assert torch.equal(file.read_index(index), reference[index])
    file.close()


def test_actual_bytes_match_proc_self_io_and_the_page_cache_stays_empty(tmp_path):
    rows, width = 20_000, 64  # 5 MiB
    file = _file(tmp_path, rows, width)
    if file.mode != "direct":
        pytest.skip(f"{tmp_path} does not take O_DIRECT (mode {file.mode}): /proc/self/io would count cache hits")
    before = machine.process_io()
    if before is None:
        pytest.skip("no /proc/self/io here")
    data = torch.randn(rows, width)
    file.write_range(0, data)
    for start in range(0, rows, 3000):
        assert torch.equal(file.read_range(start, min(rows, start + 3000)), data[start: start + 3000])
    halo = torch.arange(0, rows, 7)
    assert torch.equal(file.read_index(halo), data[halo])
    after = machine.process_io()
    moved = {"read": after["read_bytes"] - before["read_bytes"], "write": after["write_bytes"] - before["write_bytes"]}
    for kind in ("read", "write"):
        assert file.actual[kind] > 0
        assert abs(moved[kind] - file.actual[kind]) <= 0.1 * file.actual[kind], (kind, moved, file.actual)
    file.close()


def test_two_threads_reading_and_writing_different_buffers_at_once(tmp_path):
    with TierStore(CPU, str(tmp_path)) as store:
        first, second = store.alloc("a", (5000, 32), "disk"), store.alloc("b", (5000, 32), "disk")
        data = {name: torch.randn(5000, 32) for name in "ab"}
        first.write(slice(0, 5000), data["a"])
        second.write(slice(0, 5000), data["b"])
        errors = []

        def reader() -> None:
            try:
                for start in range(0, 5000, 250):
                    assert torch.equal(second.read(slice(start, start + 250)), data["b"][start: start + 250])
            except BaseException as error:  # noqa: BLE001 (reported below)
                errors.append(error)

        thread = threading.Thread(target=reader)
        thread.start()
        for start in range(0, 5000, 100):
            first.add(slice(start, start + 100), torch.ones(100, 32))
        thread.join()
        assert not errors
        torch.testing.assert_close(first.read(slice(0, 5000)), data["a"] + 1, rtol=0, atol=0)
        assert store.disk_actual()["read"] > 0 and store.disk_modes
        assert store.counters.current["host"] == STAGING_THREADS * store.staging.size  # staging, accounted as host


def test_row_writes_run_behind_and_a_read_waits_for_them_and_sees_their_failure(tmp_path, monkeypatch):
    """Disk row writes run on the store's write-behind thread, in order, one in flight; a read of the rows waits
    for the write, and a write that failed raises at the next access of its buffer, not silently."""
    writers = []
    original = RowFile.write_range

    def recording(self, start, rows, add=False):
        writers.append(threading.current_thread().name)
        return original(self, start, rows, add)

    monkeypatch.setattr(RowFile, "write_range", recording)
    with TierStore(CPU, str(tmp_path)) as store:
        buffer = store.alloc("h1", (1000, 16), "disk")
        for start in range(0, 1000, 100):  # each overwrites the previous one's last rows: order matters
            buffer.write(slice(start, min(1000, start + 150)), torch.full((min(1000, start + 150) - start, 16),
                                                                           float(start)))
        expected = torch.tensor([float(r // 100 * 100) for r in range(1000)]).unsqueeze(1).expand(1000, 16)
        torch.testing.assert_close(buffer.read(slice(0, 1000)), expected, rtol=0, atol=0)
        assert set(writers) == {"flexgnn-write_0"}

        def failing(self, start, rows, add=False):
            raise OSError("disk tier: short write (injected)")

        monkeypatch.setattr(RowFile, "write_range", failing)
        buffer.write(slice(0, 10), torch.ones(10, 16))  # returns at once: the write runs behind
        with pytest.raises(OSError, match="injected"):
            buffer.read(slice(0, 10))


def test_the_pass_that_builds_agg0_reads_the_features_not_h0_on_disk(tmp_path, monkeypatch):
    """A stored ``agg0`` is built once from the features' halo rows. With ``h0`` on disk each chunk's scattered halo
    would read nearly the whole file through O_DIRECT (P x the file per pass); the build reads the caller's ``x``
    instead, so ``h0``'s file is never gathered from, and the result stays exact."""
    from flexgnn_core import system
    from flexgnn_core.data import make_synthetic
    from flexgnn_core.models import init_params
    from flexgnn_core.spec import ModelSpec, TrainSpec

    graph = make_synthetic(num_nodes=3000, avg_degree=8, num_features=16, num_classes=4)
    model = ModelSpec(kind="gcn", num_layers=2, hidden=8)
    params = init_params(model, graph.num_features, graph.num_classes, seed=0)
    spec = TrainSpec(epochs=2, warmup_epochs=0, progress=False, device="cpu")
    placement = {"graph": "device", "h0": "disk", "agg0": "device", "h1": "device", "grad_h1": "device",
                 "grad_h2": "device", "agg1": "recompute"}
    gathered = []
    read_index = RowFile.read_index
    monkeypatch.setattr(RowFile, "read_index", lambda self, index: gathered.append(self.width) or
                        read_index(self, index))
    options = {"print_plan": False, "disk_dir": str(tmp_path), "num_chunks": 8, "order": "aggregate_first"}
    result = system.train(graph, model, params, spec, {**options, "placement": placement})
    reference = system.train(graph, model, params, spec, {**options, "policy": "all_device"})
    assert result.plan["placement"]["h0"] == "disk" and gathered.count(graph.num_features) == 0
    assert result.epoch_losses == reference.epoch_losses
