"""Users' own graphs from files: every supported edge format gives the same cleaned graph; bad files are named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flexgnn_core.data import load_dataset
from flexgnn_core.data.clean import build_csr
from flexgnn_core.data.files import load_files
from flexgnn_core.spec import GraphError

N, F, C = 40, 5, 3


@pytest.fixture
def files(tmp_path) -> dict:
    """Edge list (with a self-loop and a duplicate), features, labels (two unlabelled) and a split, as .npy."""
    rng = np.random.default_rng(0)
    edges = rng.integers(0, N, (2, 120))
    edges[:, :3] = [[1, 2, 2], [1, 3, 3]]
    labels = rng.integers(0, C, N)
    labels[[5, 6]] = -1
    labelled = np.flatnonzero(labels >= 0)
    paths = {"edges": tmp_path / "edges.npy", "features": tmp_path / "x.npy", "labels": tmp_path / "y.npy",
             "train_idx": tmp_path / "train.npy", "val_idx": tmp_path / "val.npy", "test_idx": tmp_path / "test.npy"}
    np.save(paths["edges"], edges)
    np.save(paths["features"], rng.standard_normal((N, F)))  # float64 on purpose: cast to float32
    np.save(paths["labels"], labels)
    np.save(paths["train_idx"], labelled[:20])
    np.save(paths["val_idx"], labelled[20:29])
    np.save(paths["test_idx"], labelled[29:])
    return {"paths": {k: str(v) for k, v in paths.items()}, "edges": edges, "labels": labels, "dir": tmp_path}


def test_npy_files_load_cleaned_and_symmetrised(files):
    graph = load_dataset("files", **files["paths"])
    rowptr, col = build_csr(files["edges"][0], files["edges"][1], N, symmetrize=True)
    assert torch.equal(graph.rowptr, rowptr) and torch.equal(graph.col, col)
    assert graph.x.dtype == torch.float32 and graph.x.shape == (N, F)
    assert torch.equal(graph.y, torch.from_numpy(files["labels"]))
    assert graph.num_classes == C and graph.name == "edges"
    assert int(graph.train_mask.sum()) == 20 and int(graph.val_mask.sum()) == 9
    assert graph.provenance["source"] == "files" and graph.provenance["symmetrized"]


def _write_text(path: Path, edges: np.ndarray, sep: str, header: str | None) -> str:
    lines = ([header] if header else []) + [f"{u}{sep}{v}" for u, v in edges.T]
    path.write_text("# an edge list\n" + "\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("form", ["npy_E2", "csv_header", "csv_plain", "tsv", "txt_spaces"])
def test_every_edge_format_gives_the_same_graph(files, form):
    edges, directory = files["edges"], files["dir"]
    if form == "npy_E2":
        path = str(directory / "edges_e2.npy")
        np.save(path, edges.T.astype(np.int32))
    elif form == "csv_header":
        path = _write_text(directory / "edges.csv", edges, ",", "src,dst")
    elif form == "csv_plain":
        path = _write_text(directory / "edges.csv", edges, ",", None)
    elif form == "tsv":
        path = _write_text(directory / "edges.tsv", edges, "\t", "source\ttarget")
    else:
        path = _write_text(directory / "edges.txt", edges, "  ", None)
    reference = load_files(**files["paths"])
    graph = load_files(**{**files["paths"], "edges": path})
    assert torch.equal(graph.rowptr, reference.rowptr) and torch.equal(graph.col, reference.col)


def test_directed_graph_keeps_direction(files):
    graph = load_files(**files["paths"], symmetrize=False)
    rowptr, col = build_csr(files["edges"][0], files["edges"][1], N, symmetrize=False)
    assert torch.equal(graph.rowptr, rowptr) and torch.equal(graph.col, col)


def test_fraction_split_is_seeded_and_skips_unlabelled(files):
    paths = {k: v for k, v in files["paths"].items() if not k.endswith("_idx")}
    a = load_files(**paths, train_frac=0.5, val_frac=0.25, split_seed=3)
    b = load_files(**paths, train_frac=0.5, val_frac=0.25, split_seed=3)
    c = load_files(**paths, train_frac=0.5, val_frac=0.25, split_seed=4)
    assert torch.equal(a.train_mask, b.train_mask) and not torch.equal(a.train_mask, c.train_mask)
    masks = torch.stack([a.train_mask, a.val_mask, a.test_mask])
    assert bool((masks.sum(0) == (a.y >= 0)).all())  # every labelled vertex in exactly one split
    assert [int(m.sum()) for m in masks] == [19, 10, 9]


def test_boolean_masks_and_given_num_classes(files):
    directory = files["dir"]
    for name in ("train", "val", "test"):
        mask = np.zeros(N, dtype=bool)
        mask[np.load(directory / f"{name}.npy")] = True
        np.save(directory / f"{name}_mask.npy", mask)
    graph = load_files(**{**files["paths"], "train_idx": str(directory / "train_mask.npy"),
                          "val_idx": str(directory / "val_mask.npy"), "test_idx": str(directory / "test_mask.npy")},
                       num_classes=7)
    assert graph.num_classes == 7
    assert torch.equal(graph.train_mask, load_files(**files["paths"]).train_mask)


def test_float_labels_with_nan_mean_unlabelled(files):
    labels = files["labels"].astype(np.float64)
    labels[[5, 6]] = np.nan
    np.save(files["dir"] / "y_float.npy", labels)
    graph = load_files(**{**files["paths"], "labels": str(files["dir"] / "y_float.npy")})
    assert torch.equal(graph.y, torch.from_numpy(files["labels"]))


def _save(files, name: str, array, allow_pickle: bool = False) -> str:
    path = files["dir"] / f"{name}.npy"
    np.save(path, array, allow_pickle=allow_pickle)
    return str(path)


def _features_with_nan(files):
    x = np.ones((N, F), dtype=np.float32)
    x[7, 1] = np.nan
    return {"features": _save(files, "x_nan", x)}


BAD = {
    "nan features": (_features_with_nan, "features", "NaN or Inf in 1 rows"),
    "edge out of range": (lambda f: {"edges": _save(f, "e_big", np.array([[0, 1], [1, N]]))}, "edges",
                          "destination vertex id out of range"),
    "negative edge": (lambda f: {"edges": _save(f, "e_neg", np.array([[-1, 1], [1, 2]]))}, "edges",
                      "source vertex id out of range"),
    "edge shape": (lambda f: {"edges": _save(f, "e_3", np.zeros((3, 5), dtype=np.int64))}, "edges",
                   "neither [2, E] nor [E, 2]"),
    "float edges": (lambda f: {"edges": _save(f, "e_f", np.zeros((2, 5)))}, "edges", "not integer"),
    "label too big": (lambda f: {"labels": _save(f, "y_big", np.full(N, 2)), "num_classes": 2}, "labels",
                      "not below num_classes=2"),
    "label below -1": (lambda f: {"labels": _save(f, "y_neg", np.full(N, -3))}, "labels", "below -1"),
    "label count": (lambda f: {"labels": _save(f, "y_short", np.zeros(N - 1, dtype=np.int64))}, "labels",
                    f"has {N - 1} entries"),
    "pickled labels": (lambda f: {"labels": _save(f, "y_obj", np.array([None] * N), True)}, "labels",
                       "without unpickling"),
    "missing file": (lambda f: {"features": str(f["dir"] / "absent.npy")}, "features", "file not found"),
    "split index out of range": (lambda f: {"val_idx": _save(f, "v_big", np.array([0, N]))}, "val_idx",
                                 "out of range"),
    "split and fractions": (lambda f: {"train_frac": 0.5}, "train_frac", "use one way to split"),
    "bad suffix": (lambda f: {"edges": str(f["dir"] / "x.npy.gz")}, "edges", "unknown file type"),
}


@pytest.mark.parametrize("change,option,problem", BAD.values(), ids=BAD.keys())
def test_bad_input_names_the_option_and_file(files, change, option, problem):
    with pytest.raises(ValueError) as info:
        load_dataset("files", **{**files["paths"], **change(files)})
    message = str(info.value)
    assert f"option '{option}'" in message and problem in message and "Fix:" in message


def test_csv_with_three_columns_is_refused(files):
    path = files["dir"] / "e3.csv"
    path.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match=r"option 'edges'.*3 columns, expected 2"):
        load_files(**{**files["paths"], "edges": str(path)})


def test_split_selecting_unlabelled_vertex_is_reported(files):
    train = np.load(files["dir"] / "train.npy")
    np.save(files["dir"] / "train_bad.npy", np.append(train, 5))  # vertex 5 is unlabelled
    with pytest.raises(GraphError, match=r"train_mask.*unlabelled.*check the split files"):
        load_files(**{**files["paths"], "train_idx": str(files["dir"] / "train_bad.npy")})


def test_missing_options_are_listed(files):
    with pytest.raises(ValueError, match="missing required option"):
        load_dataset("files", edges=files["paths"]["edges"])
    with pytest.raises(ValueError, match=r"option 'test_idx'.*missing"):
        load_dataset("files", **{k: v for k, v in files["paths"].items() if k != "test_idx"})
