"""The streaming synthetic generator: the same model as make_synthetic, written in bounded memory, loadable."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from flexgnn_core.data import load_dataset, load_graph, make_synthetic
from flexgnn_core.data import synthetic_stream as stream

KNOBS = dict(num_nodes=20000, avg_degree=20.0, num_features=8, num_classes=4, seed=3)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One graph written with 1 MiB of working memory (12 buckets) and one with the default (1 bucket)."""
    root = tmp_path_factory.mktemp("stream")
    small = stream.write_synthetic(root / "small", memory_bytes=1 << 20, **KNOBS)
    large = stream.write_synthetic(root / "large", **KNOBS)
    return load_graph(small), load_graph(large)


def test_the_graph_does_not_depend_on_the_bucket_count(written):
    small, large = written
    assert small.provenance["buckets"] > 8 and large.provenance["buckets"] == 1
    for name in ("rowptr", "col", "x", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(small, name), getattr(large, name)), name


def test_a_clean_symmetric_graph_with_the_model_s_statistics(written):
    graph, _ = written
    n = KNOBS["num_nodes"]
    assert graph.num_edges == 2 * round(n * KNOBS["avg_degree"] / 2)  # topped up to the exact target
    rowptr, col = graph.rowptr.numpy(), graph.col.numpy()
    dst = np.repeat(np.arange(n), np.diff(rowptr))
    assert not (dst == col).any()  # no self-loops
    keys = dst * n + col
    assert (np.diff(keys) > 0).all()  # sorted by (dst, src), no duplicates
    assert np.array_equal(np.sort(col * n + dst), keys)  # every edge has its reverse
    reference = make_synthetic(**KNOBS)  # same model, other draws: same statistics
    assert abs(graph.provenance["edge_homophily"] - reference.provenance["edge_homophily"]) < 0.02
    degrees, ref_degrees = np.diff(rowptr), np.diff(reference.rowptr.numpy())
    assert abs(degrees.std() / ref_degrees.std() - 1) < 0.1
    assert np.bincount(graph.y.numpy()).tolist() == [n // 4] * 4  # balanced classes
    masks = torch.stack([graph.train_mask, graph.val_mask, graph.test_mask])
    assert masks.sum(0).eq(1).all() and masks.sum(1).tolist() == [12000, 4000, 4000]


def test_memory_is_bounded_by_the_budget_not_the_graph(tmp_path, monkeypatch):
    """Python-side peak (numpy allocations are traced): the in-memory generator holds every key and its sort; the
    streaming one only a batch, a bucket and O(N) vertex arrays."""
    monkeypatch.setattr(stream, "BATCH_PAIRS", 1 << 14)
    knobs = {**KNOBS, "avg_degree": 40.0}
    tracemalloc.start()
    try:
        make_synthetic(**knobs)
        in_memory = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        stream.write_synthetic(tmp_path / "g", memory_bytes=1 << 20, **knobs)
        streamed = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert streamed < in_memory / 8, (streamed, in_memory)


def test_an_interrupted_write_leaves_no_graph_and_no_temporary_files(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stream, "_write_features", fail)
    with pytest.raises(KeyboardInterrupt):
        stream.write_synthetic(tmp_path / "g", **KNOBS)
    assert list(tmp_path.iterdir()) == []


def test_the_dataset_is_written_once_then_memory_mapped(tmp_path):
    first = load_dataset("synthetic_large", root=str(tmp_path), **KNOBS)
    (folder,) = tmp_path.iterdir()
    stamp = (folder / "col.npy").stat().st_mtime_ns
    second = load_dataset("synthetic_large", root=str(tmp_path), **KNOBS)
    assert (folder / "col.npy").stat().st_mtime_ns == stamp  # reused, not written again
    assert torch.equal(first.col, second.col)
    assert second.provenance["knobs"]["num_nodes"] == KNOBS["num_nodes"]
    assert _mapped_from(second.col.data_ptr(), folder / "col.npy")  # a view of the file, not a copy in RAM


def _mapped_from(address: int, file) -> bool:
    """Whether ``address`` lies in a mapping of ``file`` in /proc/self/maps."""
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(file):
            start, end = (int(part, 16) for part in fields[0].split("-"))
            if start <= address < end:
                return True
    return False


def test_bad_knobs_and_memory_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="'memory_bytes'"):
        stream.write_synthetic(tmp_path / "g", memory_bytes=100, **KNOBS)
    with pytest.raises(ValueError, match="'avg_degree'"):
        stream.write_synthetic(tmp_path / "g", **{**KNOBS, "avg_degree": -1.0})
    assert list(tmp_path.iterdir()) == []
