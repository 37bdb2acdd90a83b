"""CPU checks of what the CUDA paths get wrong when only CPU tensors ever meet (issue 18).

On CPU every tensor is on one device, so a CPU index reading CUDA rows, or a byte count that reads a row's size off
an empty tensor, passes unnoticed. These tests put the data on the ``meta`` device (shapes without storage) and use
an ``index_select`` that refuses mixed devices as CUDA's does, or feed the corner case directly.
"""

from __future__ import annotations

import pytest
import torch

from baselines import ddp_halo
from baselines.ddp_halo import CommCounters
from flexgnn_core.engine.tiers import TierStore


def _strict_index_select(real):
    def index_select(data, dim, index, **kwargs):
        if data.device != index.device:  # what CUDA's kernel says for a CPU index into CUDA rows
            raise RuntimeError(f"index_select: data on {data.device}, index on {index.device}")
        return real(data, dim, index, **kwargs)
    return index_select


def test_device_rows_read_with_a_host_chunks_index_follow_the_data_device(monkeypatch):
    """A graph placed on the host keeps its chunks' halo indices there; the rows they read from a device-tier
    buffer must still be gathered with an index on the buffer's device."""
    monkeypatch.setattr(torch, "index_select", _strict_index_select(torch.index_select))
    with TierStore(torch.device("meta")) as store:
        buffer = store.alloc("h1", (10, 4), "device")
        halo = torch.tensor([1, 3, 7])  # a host chunk's halo
        rows = buffer.read(halo)
        assert rows.device.type == "meta" and rows.shape == (3, 4)
        buffer.add(halo, torch.zeros(3, 4, device="meta"))  # the scatter-add back takes a host index too


def test_strict_index_select_refuses_mixed_devices(monkeypatch):
    """The checker above is what makes the previous test able to fail."""
    strict = _strict_index_select(torch.index_select)
    with pytest.raises(RuntimeError, match="index on cpu"):
        strict(torch.zeros(4, 2, device="meta"), 0, torch.tensor([1]))


def test_a_rank_that_sends_no_rows_still_counts_the_rows_it_receives(monkeypatch):
    monkeypatch.setattr(CommCounters, "timed", lambda self, fn, *args, **kwargs: None)  # no process group here
    counters = CommCounters(torch.device("cpu"))
    nothing = torch.empty(0, 16)
    received = torch.empty(5, 16)
    ddp_halo._all_to_all(received, nothing, [0, 5], [0, 0], counters)
    assert counters.recv_bytes == 5 * 16 * 4 and counters.sent_bytes == 0
    ddp_halo._all_to_all(torch.empty(0, 3, 2), torch.empty(4, 3, 2), [0, 0], [4, 0], counters)
    assert counters.sent_bytes == 4 * 3 * 2 * 4


def test_peak_memory_window_is_the_training_epochs_not_what_came_before():
    """Every system's peak comes from ``timed_training``'s window: a large preprocessing temporary freed before
    training is not in it (it was in the old meters that opened before preprocessing)."""
    from flexgnn_core.evaluate import Evaluation
    from flexgnn_core.loop import timed_training
    from flexgnn_core.memory import host_peak_bytes
    from flexgnn_core.spec import TrainSpec

    temporary = torch.ones(256 * 2**20 // 4)  # 256 MiB touched, then freed: preprocessing's peak
    del temporary
    before_training = host_peak_bytes()
    y = torch.zeros(8, dtype=torch.long)
    evaluation = Evaluation(y, {split: torch.ones(8, dtype=torch.bool) for split in ("train", "val", "test")})
    result = timed_training(system="probe", train=TrainSpec(epochs=2, warmup_epochs=0, progress=False),
                            device=torch.device("cpu"), step=lambda epoch: 0.0, evaluate=lambda: y,
                            evaluation=evaluation, extra={"kept": 1})
    if not result.extra["host_peak_reset"]:
        pytest.skip("this kernel cannot reset the process peak (/proc/self/clear_refs)")
    assert result.peak_bytes["device"] is None and result.peak_bytes["host"] > 0
    assert result.peak_bytes["host"] < before_training - 128 * 2**20
    assert result.extra["kept"] == 1


def test_the_harness_touches_no_cuda_device_around_the_system(compose, monkeypatch):
    """On a GPU machine the harness's own meter made a CUDA context on GPU 0 in the launcher and in every torchrun
    rank before the rank set its device; now the harness measures nothing around ``train_fn``."""
    from flexgnn_core import spec
    from harness import job
    from harness.config import validate

    touched = []
    for name in ("synchronize", "reset_peak_memory_stats", "max_memory_allocated", "set_device", "current_device"):
        monkeypatch.setattr(torch.cuda, name, lambda *args, _name=name, **kwargs: touched.append(_name) or 0)
    monkeypatch.setattr(spec, "resolve_device", lambda name: torch.device("cuda"))
    settings = validate(compose(["+debug=fast", "system=pyg"]))
    fake = spec.RunResult(system="pyg", epoch_losses=[1.0], epoch_times_s=[0.1], warmup_epochs=0, accuracy={},
                          device="cuda", peak_bytes={"device": 123, "host": 456})
    _, result = job.train_job(settings, lambda *args: fake)
    assert touched == []
    assert result["peak_bytes"] == {"device": 123, "host": 456}  # the system's own training-window peaks


def test_staged_host_reads_go_in_slot_sized_pieces_and_the_slots_are_accounted():
    """The CUDA host -> device path (pinned slots, pieces, one slot per concurrent reader), run on CPU: same rows
    as a plain gather, the h2d bytes of the rows, and the slots held as host memory until the store closes."""
    from flexgnn_core.engine.transfer import PinnedPool

    with TierStore(torch.device("cpu")) as store:
        counters = store.counters
        store.pinned = PinnedPool(torch.device("cpu"), lambda n: counters.hold("host", n),
                                  lambda n: counters.release("host", n), slot_bytes=64, staged=True)
        buffer = store.alloc("h1", (10, 4), "host")
        buffer.data.copy_(torch.arange(40, dtype=torch.float32).view(10, 4))
        halo = torch.tensor([0, 2, 3, 5, 6, 8, 9])  # 7 rows of 16 bytes: two pieces of a 64-byte slot
        torch.testing.assert_close(buffer.read(halo), buffer.data[halo], rtol=0, atol=0)
        torch.testing.assert_close(buffer.read(slice(1, 10)), buffer.data[1:10], rtol=0, atol=0)
        assert counters.links["h2d"] == (7 + 9) * 16
        assert store.pinned.held_bytes == 64  # one reader at a time: one slot, reused
        assert counters.current["host"] == buffer.nbytes + 64
        wide = store.alloc("wide", (2, 32), "host")
        with pytest.raises(ValueError, match="staging slot"):
            wide.read(slice(0, 2))
    assert counters.current["host"] == 0 and store.pinned.held_bytes == 0


def test_prefetch_clock_counts_fetch_and_wait_on_cpu():
    """The overlap counters on CPU come from the same ``StreamClock`` that reads CUDA events on a GPU."""
    with TierStore(torch.device("cpu")) as store:
        buffer = store.alloc("h1", (64, 8), "host")
        chunks = [slice(i, i + 8) for i in range(0, 64, 8)]
        seen = [item for item, _ in store.prefetched(chunks, lambda c: {"rows": buffer.read(c)})]
        assert seen == chunks
        assert store.counters.fetch_s > 0 and store.counters.wait_s > 0
        assert store.side_stream() is None


def test_copy_compute_overlap_is_recorded_as_not_measured_on_cpu():
    """CUDA measures the overlap (two streams, apart and together); on CPU the same call says it did not, and the
    calibration keeps the engine probe's measurement (0 before the probe)."""
    from flexgnn_core import calibrate
    from flexgnn_core.calibrate import micro

    assert micro.copy_compute_overlap(torch.device("cpu"), 1000) == (None, micro.NOT_MEASURED_ON_CPU)
    notes: dict = {}
    hw = calibrate.measure("cpu", scale=0.05, probe=False, notes=notes)
    assert notes["overlap"] == {"value": None, "method": micro.NOT_MEASURED_ON_CPU}
    assert hw.overlap == 0.0
