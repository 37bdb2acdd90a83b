"""The on-disk format: exact round trip, memory-mapped without copies or warnings, atomic saves, clear errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from flexgnn_core.data import load_dataset
from flexgnn_core.data.storage import ARRAYS, META_FILE, GraphFileError, load_graph, read_meta, save_graph
from flexgnn_core.data.synthetic import make_synthetic
from flexgnn_core.spec import Graph, GraphError
from tests.graphs import tricky_graph


def _assert_same_graph(a: Graph, b: Graph) -> None:
    for name in ARRAYS:
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.name, a.num_classes, a.provenance) == (b.name, b.num_classes, b.provenance)


@pytest.fixture
def saved(tmp_path) -> tuple[Graph, Path]:
    graph = tricky_graph()
    path = tmp_path / "tricky"
    save_graph(graph, path)
    return graph, path


@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_is_exact_and_silent(saved, mmap):
    graph, path = saved
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "non-writable NumPy array" warning must not leak
        loaded = load_graph(path, mmap=mmap)
    _assert_same_graph(graph, loaded)
    assert sorted(p.name for p in path.iterdir()) == sorted([META_FILE] + [f"{n}.npy" for n in ARRAYS])


def test_mmap_tensors_view_the_file_without_copying(saved):
    """With mmap the tensor is a view of the file's pages: a later write to the file shows through; without, not."""
    _, path = saved
    mapped, copied = load_graph(path, mmap=True), load_graph(path, mmap=False)
    writer = np.load(path / "x.npy", mmap_mode="r+")
    writer[3, 2] = 123.0
    writer.flush()
    assert float(mapped.x[3, 2]) == 123.0
    assert float(copied.x[3, 2]) != 123.0


def test_metadata_describes_every_array(saved):
    graph, path = saved
    meta = read_meta(path)
    assert meta["format_version"] == 1 and meta["name"] == graph.name
    assert (meta["num_nodes"], meta["num_edges"], meta["num_features"], meta["num_classes"]) == \
        (graph.num_nodes, graph.num_edges, graph.num_features, graph.num_classes)
    for name, dtype in ARRAYS.items():
        entry = meta["arrays"][name]
        assert entry["dtype"] == dtype and entry["shape"] == list(getattr(graph, name).shape)
        assert entry["bytes"] == (path / entry["file"]).stat().st_size


def test_saved_dataset_and_larger_graph_round_trip(tmp_path):
    graph = make_synthetic(num_nodes=3000)
    save_graph(graph, tmp_path / "g")
    _assert_same_graph(graph, load_dataset("saved", path=str(tmp_path / "g")))


def test_save_replaces_an_existing_graph_and_leaves_no_temporaries(saved):
    _, path = saved
    other = make_synthetic(num_nodes=300)
    save_graph(other, path)
    _assert_same_graph(other, load_graph(path))
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_save_refuses_to_overwrite_foreign_data(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a graph directory"):
        save_graph(tricky_graph(), target)
    assert (target / "notes.txt").read_text() == "keep me"


def test_failed_save_leaves_nothing_that_loads(saved, tmp_path):
    """A save that fails half-way (here: the last array cannot be read) keeps the old graph and no temporaries."""
    graph, path = saved
    broken = tricky_graph(seed=1)
    broken.test_mask = torch.empty(broken.num_nodes, dtype=torch.bool, device="meta")  # fails when written
    with pytest.raises(NotImplementedError):
        save_graph(broken, path)
    _assert_same_graph(graph, load_graph(path))
    with pytest.raises(NotImplementedError):
        save_graph(broken, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tricky"]


def test_unserialisable_provenance_is_refused(tmp_path):
    graph = tricky_graph()
    graph.provenance = {"tensor": torch.zeros(1)}
    with pytest.raises(ValueError, match="provenance"):
        save_graph(graph, tmp_path / "g")
    assert not (tmp_path / "g").exists()


def _truncate(path: Path, name: str) -> None:
    file = path / f"{name}.npy"
    file.write_bytes(file.read_bytes()[:-40])


def _truncate_and_record(path: Path, name: str) -> None:
    """Truncated so that graph.json agrees on the size: np.load itself must notice."""
    _truncate(path, name)
    meta = json.loads((path / META_FILE).read_text())
    meta["arrays"][name]["bytes"] = (path / f"{name}.npy").stat().st_size
    (path / META_FILE).write_text(json.dumps(meta))


def _replace_array(path: Path, name: str, array: np.ndarray, allow_pickle: bool = False) -> None:
    np.save(path / f"{name}.npy", array, allow_pickle=allow_pickle)
    meta = json.loads((path / META_FILE).read_text())
    meta["arrays"][name]["bytes"] = (path / f"{name}.npy").stat().st_size
    (path / META_FILE).write_text(json.dumps(meta))


def _edit_meta(path: Path, **changes) -> None:
    meta = json.loads((path / META_FILE).read_text())
    meta.update(changes)
    (path / META_FILE).write_text(json.dumps(meta))


CORRUPTIONS = {
    "missing array": (lambda p: (p / "x.npy").unlink(), "x.npy", "is missing"),
    "missing metadata": (lambda p: (p / META_FILE).unlink(), META_FILE, "is missing"),
    "bad json": (lambda p: (p / META_FILE).write_text('{"format": "flexgnn-graph", '), META_FILE, "not valid JSON"),
    "foreign json": (lambda p: (p / META_FILE).write_text("[1, 2]"), META_FILE, "not a 'flexgnn-graph'"),
    "newer version": (lambda p: _edit_meta(p, format_version=99), META_FILE, "format_version 99"),
    "truncated array": (lambda p: _truncate(p, "col"), "col.npy", "truncated or replaced"),
    "truncated, size recorded": (lambda p: _truncate_and_record(p, "x"), "x.npy", "truncated or corrupt"),
    "wrong shape": (lambda p: _replace_array(p, "y", np.zeros(47, dtype=np.int64)), "y.npy", "shape"),
    "wrong dtype": (lambda p: _replace_array(p, "y", np.zeros(48, dtype=np.int32)), "y.npy", "dtype int32"),
    "pickled array": (lambda p: _replace_array(p, "y", np.array([{"a": 1}] * 48, dtype=object), True), "y.npy",
                      "cannot be read as .npy"),
    "wrong node count": (lambda p: _edit_meta(p, num_nodes=5), META_FILE, "num_nodes=5"),
}


@pytest.mark.parametrize("corrupt,file,problem", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_graph_names_file_and_fix(saved, corrupt, file, problem):
    _, path = saved
    corrupt(path)
    with pytest.raises(GraphFileError) as info:
        load_graph(path)
    message = str(info.value)
    assert str(path / file) in message and problem in message
    assert "save_graph" in message and "delete" not in message  # the folder may be the user's only copy


def test_inconsistent_content_names_the_field(saved):
    """Arrays that read fine but break the Graph invariants (label out of range) are reported as such."""
    _, path = saved
    labels = np.load(path / "y.npy")
    labels[0] = 99
    _replace_array(path, "y", labels)
    with pytest.raises(GraphError, match=r"graph field 'y'.*labels outside \[-1, 4\).*Fix: save the graph again"):
        load_graph(path)


def test_missing_directory(tmp_path):
    with pytest.raises(GraphFileError, match="no such directory"):
        load_graph(tmp_path / "absent")
