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
