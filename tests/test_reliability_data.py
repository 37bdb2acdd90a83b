"""Bad input from users' files and saved graphs (issue 13): every case is an error naming the option or file and a
fix in the right direction, before anything large is allocated; never a raw traceback, never "delete your folder"."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flexgnn_core.data import load_dataset
from flexgnn_core.data.storage import META_FILE, GraphFileError, load_graph, save_graph
from graphs import tricky_graph

N = 30


@pytest.fixture
def user_files(tmp_path) -> dict:
    """A small valid graph as user files: edges, features, labels (3 classes) and split index files."""
    rng = np.random.default_rng(0)
    paths = {name: tmp_path / f"{name}.npy" for name in ("edges", "features", "labels", "train_idx", "val_idx",
                                                            "test_idx")}
    np.save(paths["edges"], rng.integers(0, N, (2, 90)))
    np.save(paths["features"], rng.standard_normal((N, 4)).astype(np.float32))
    np.save(paths["labels"], np.arange(N) % 3)
    order = rng.permutation(N)
    np.save(paths["train_idx"], order[:15])
    np.save(paths["val_idx"], order[15:22])
    np.save(paths["test_idx"], order[22:])
    return {name: str(path) for name, path in paths.items()}


def test_the_fixture_graph_loads(user_files):
    assert load_dataset("files", **user_files).num_classes == 3


def test_overlapping_split_files_are_refused_naming_both_and_the_count(user_files, tmp_path):
    """Issue 13: train and val sharing 10 vertices were accepted; validation accuracy was inflated."""
    train = np.load(user_files["train_idx"])
    np.save(tmp_path / "val_overlap.npy", np.concatenate([np.load(user_files["val_idx"]), train[:10]]))
    with pytest.raises(ValueError, match=r"option 'val_idx' .*shares 10 vertices with train_idx .*Fix: make "
                                         r"train_idx, val_idx, test_idx disjoint"):
        load_dataset("files", **{**user_files, "val_idx": str(tmp_path / "val_overlap.npy")})


def test_overlapping_splits_in_a_saved_graph_are_refused(tmp_path):
    graph = tricky_graph()
    graph.test_mask[graph.train_mask.nonzero()[:3, 0]] = True
    graph.test_mask[graph.y < 0] = False
    save_graph(graph, tmp_path / "g")
    with pytest.raises(GraphFileError, match=r"train_mask and test_mask share 3 vertices.*Fix: save the graph again "
                                             r"with disjoint"):
        load_graph(tmp_path / "g")


def test_an_empty_edge_list_is_refused_unless_allowed(user_files, tmp_path):
    """Issue 13: an empty edge list was accepted and trained a graph with no edges."""
    np.save(tmp_path / "no_edges.npy", np.zeros((2, 0), dtype=np.int64))
    (tmp_path / "self_loops.csv").write_text("src,dst\n1,1\n2,2\n")  # nothing is left after cleaning either
    for edges in (tmp_path / "no_edges.npy", tmp_path / "self_loops.csv"):
        with pytest.raises(ValueError, match=r"option 'edges' .*no edges left.*Fix: .*dataset.allow_empty=true"):
            load_dataset("files", **{**user_files, "edges": str(edges)})
    graph = load_dataset("files", **{**user_files, "edges": str(tmp_path / "no_edges.npy"), "allow_empty": True})
    assert graph.num_edges == 0
    save_graph(graph, tmp_path / "saved")
    with pytest.raises(GraphFileError, match=r"no edges.*Fix: .*allow_empty=True"):
        load_dataset("saved", path=str(tmp_path / "saved"))
    assert load_dataset("saved", path=str(tmp_path / "saved"), allow_empty=True).num_edges == 0


def test_a_huge_label_does_not_become_the_class_count(user_files, tmp_path):
    """Issue 13: a label of 10^12 made num_classes 10^12 + 1, then a 512 TB allocation traceback."""
    labels = np.arange(N) % 3
    labels[4] = 10**12
    np.save(tmp_path / "huge_label.npy", labels)
    with pytest.raises(ValueError, match=r"option 'labels' .*maximum label 1000000000000 means 1000000000001 "
                                         r"classes for 30 vertices.*Fix: number the classes 0..C-1"):
        load_dataset("files", **{**user_files, "labels": str(tmp_path / "huge_label.npy")})
    with pytest.raises(ValueError, match=r"option 'num_classes'.*1000 classes for 30 vertices.*Fix: lower "
                                         r"num_classes"):
        load_dataset("files", **user_files, num_classes=1000)


def test_a_npy_header_declaring_terabytes_is_a_named_error(user_files, tmp_path):
    """Issue 13: a header declaring 23 TiB raised a raw MemoryError."""
    path = tmp_path / "huge.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (2**40, 6)})
        handle.write(b"\0" * 64)
    with pytest.raises(ValueError, match=r"option 'features' .*header declares shape \(1099511627776, 6\) of "
                                         r"float32 \(26388279066624 bytes\) but the file holds 64 bytes"):
        load_dataset("files", **{**user_files, "features": str(path)})


def test_a_csv_vertex_id_beyond_int64_is_a_named_error(user_files, tmp_path):
    """Issue 13: an id beyond int64 in a CSV raised a bare OverflowError."""
    (tmp_path / "edges.csv").write_text("0,1\n1,99999999999999999999\n")
    with pytest.raises(ValueError, match=r"option 'edges' .*edges.csv.*does not fit in a 64-bit integer.*Fix"):
        load_dataset("files", **{**user_files, "edges": str(tmp_path / "edges.csv")})


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("arrays.x", "x.npy", r"field 'arrays.x' is str 'x.npy', expected an object"),
    ("num_classes", "4", r"field 'num_classes' is str '4', expected an integer"),
    ("name", None, r"field 'name' is NoneType"),
    ("arrays.col.shape", "big", r"field 'arrays.col.shape' is 'big'"),
])
def test_wrong_types_in_graph_json_name_the_field(tmp_path, field, value, expected):
    """Issue 13: `arrays.x` a string in graph.json raised AttributeError."""
    save_graph(tricky_graph(), tmp_path / "g")
    meta = json.loads((tmp_path / "g" / META_FILE).read_text())
    _, *path, last = ["root", *field.split(".")]
    target = meta
    for key in path:
        target = target[key]
    target[last] = value
    (tmp_path / "g" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(GraphFileError, match=expected):
        load_graph(tmp_path / "g")


def test_a_corrupt_saved_graph_of_the_user_is_never_suggested_for_deletion(tmp_path):
    """Issue 13: the fix for a user's own `dataset=saved` folder said "delete the directory and rerun"."""
    directory = tmp_path / "my_graph"
    save_graph(tricky_graph(), directory)
    x = directory / "x.npy"
    x.write_bytes(x.read_bytes()[:-8])
    with pytest.raises(GraphFileError) as caught:
        load_dataset("saved", path=str(directory))
    message = str(caught.value)
    assert "x.npy" in message and "save_graph" in message and "delete" not in message
    assert directory.is_dir() and x.is_file()


def test_the_ogb_cache_says_it_may_be_deleted_since_the_loader_rebuilds_it(tmp_path):
    from test_data_ogb import _tiny_parts, write_csv_layout

    write_csv_layout(tmp_path / "ogbn_arxiv", _tiny_parts())
    load_dataset("ogbn-arxiv", root=str(tmp_path))
    cache = tmp_path / "ogbn_arxiv" / "flexgnn"
    (cache / "col.npy").write_bytes(b"")
    with pytest.raises(GraphFileError, match=rf"Fix: delete {cache}, this loader's converted copy"):
        load_dataset("ogbn-arxiv", root=str(tmp_path))


def test_zero_chunks_says_to_raise_num_chunks(compose):
    """Issue 13: `system.num_chunks=0` said to lower num_chunks."""
    from flexgnn_core.plan.chunking import chunk_bounds
    from harness.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"'system.num_chunks': got 0, must be an integer >= 1.*Fix: raise it"):
        validate(compose(["+debug=fast", "system=flexgnn", "system.num_chunks=0"]))
    with pytest.raises(ValueError, match=r"num_chunks=0 .*; raise it to at least 1"):
        chunk_bounds(10, 0)
    with pytest.raises(ValueError, match=r"num_chunks=11 .*; lower it to at most num_nodes=10"):
        chunk_bounds(10, 11)
