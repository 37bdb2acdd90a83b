"""DGL on a CUDA machine with PyPI's CPU-only DGL: the worker's device decision and how the summary marks it.

The decision is a pure function of two flags, so it is tested here without DGL and without a GPU; on a GPU machine
the worker feeds it ``torch.cuda.is_available()`` and ``dgl.ndarray.gpu(0).exist``.
"""

from __future__ import annotations

import pytest

from baselines.dgl_device import DeviceChoice, choose_device
from harness.report import markdown, summarize


@pytest.mark.parametrize("dgl_has_cuda", [False, True])
def test_cpu_only_machine_trains_on_the_cpu_without_a_fallback(dgl_has_cuda):
    for requested in ("auto", "cpu"):
        assert choose_device(requested, cuda_available=False, dgl_has_cuda=dgl_has_cuda) == DeviceChoice("cpu")


def test_auto_on_a_gpu_machine_with_cpu_only_dgl_falls_back_to_the_cpu_and_says_why():
    choice = choose_device("auto", cuda_available=True, dgl_has_cuda=False)
    assert choice.device == "cpu" and "CPU-only" in choice.fallback and "CPU times" in choice.fallback


def test_gpu_is_used_where_dgl_can_use_it():
    assert choose_device("auto", cuda_available=True, dgl_has_cuda=True) == DeviceChoice("cuda")
    assert choose_device("cuda:1", cuda_available=True, dgl_has_cuda=True) == DeviceChoice("cuda:1")
    assert choose_device("cpu", cuda_available=True, dgl_has_cuda=True) == DeviceChoice("cpu")  # asked for


def test_explicit_cuda_that_dgl_cannot_use_is_an_error_naming_the_field_and_the_fix():
    with pytest.raises(ValueError, match="'cuda' but this DGL build is CPU-only.*Fix: hardware.device=auto"):
        choose_device("cuda", cuda_available=True, dgl_has_cuda=False)
    with pytest.raises(ValueError, match="'cuda:0' but CUDA is not available"):
        choose_device("cuda:0", cuda_available=False, dgl_has_cuda=False)
    with pytest.raises(ValueError, match="got 'gpu'"):
        choose_device("gpu", cuda_available=True, dgl_has_cuda=True)


def _record(system, device, median_s, fallback=None):
    extra = {"device_fallback": fallback} if fallback else {}
    return {"system": system, "model": "gcn", "dataset": "synthetic", "status": "ok",
            "graph": {"num_nodes": 100, "num_edges": 500},
            "result": {"device": device, "median_epoch_s": median_s, "epoch_times_s": [median_s] * 3,
                       "accuracy": {}, "peak_bytes": {}, "extra": extra}}


def test_summary_marks_a_cpu_fallback_and_gives_it_no_speedup_against_a_gpu_baseline():
    fallback = choose_device("auto", cuda_available=True, dgl_has_cuda=False).fallback
    rows = {row["system"]: row for row in summarize([
        _record("pyg", "cuda", 0.01), _record("flexgnn", "cuda", 0.005), _record("dgl", "cpu", 0.5, fallback)])}
    assert rows["flexgnn"]["speedup_vs_pyg"] == pytest.approx(2.0) and rows["flexgnn"]["note"] is None
    assert rows["dgl"]["speedup_vs_pyg"] is None
    assert rows["dgl"]["note"].startswith("ran on cpu, not the requested device: ") and fallback in rows["dgl"]["note"]
    # On a CPU machine the same systems compare as before.
    rows = {row["system"]: row for row in summarize([_record("pyg", "cpu", 0.2), _record("dgl", "cpu", 0.1)])}
    assert rows["dgl"]["speedup_vs_pyg"] == pytest.approx(2.0)


def test_a_multi_line_skip_note_stays_in_its_markdown_cell():
    skipped = {"system": "dgl", "model": "gcn", "dataset": "synthetic", "status": "skipped",
               "error": "creating its pinned environment failed; its last lines:\nERROR: No matching distribution | x"}
    table = markdown(summarize([skipped]))
    assert len(table.strip().splitlines()) == 3  # header, rule, one row
    assert "its last lines:<br>ERROR: No matching distribution \\| x |" in table
