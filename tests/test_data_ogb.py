"""OGB datasets through ogb's own readers and downloader, on tiny datasets written in OGB's real raw layouts.

The csv.gz layout (ogbn-arxiv, ogbn-products) is what ogb's ``read_csv_graph_raw`` and ``NodePropPredDataset`` read:
headerless gzip csv files under ``raw/`` and ``split/<split>/``. The npz layout (ogbn-papers100M) is written here by
ogb's own ``DatasetSaver``.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flexgnn_core.data import DATASETS, load_dataset
from flexgnn_core.data.clean import build_csr
from flexgnn_core.data.ogb import CACHE_DIR, OGB_DATASETS, DatasetFilesMissing, load_ogb, ogb_meta
from flexgnn_core.spec import GraphError

N, F = 30, 6


def _csv_gz(path: Path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(np.asarray(array)).to_csv(path, header=False, index=False, compression="gzip")


def _tiny_parts(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, N, 80), rng.integers(0, N, 80)
    src[:3], dst[:3] = [4, 4, 5], [4, 7, 7]  # a self-loop and a duplicate after symmetrisation (4-7, 7-4 below)
    src[3], dst[3] = 7, 4
    order = rng.permutation(N)
    return {"edge": np.stack([src, dst], axis=1), "x": rng.standard_normal((N, F)).astype(np.float32),
            "y": rng.integers(0, 40, N), "split": {"train": order[:15], "valid": order[15:22], "test": order[22:]}}


def write_csv_layout(folder: Path, parts: dict, split: str = "time") -> None:
    """A dataset folder exactly as OGB's arxiv.zip unpacks (the files ogb's csv reader and split code open)."""
    raw = folder / "raw"
    _csv_gz(raw / "edge.csv.gz", parts["edge"])
    _csv_gz(raw / "num-node-list.csv.gz", [N])
    _csv_gz(raw / "num-edge-list.csv.gz", [len(parts["edge"])])
    _csv_gz(raw / "node-feat.csv.gz", parts["x"])
    _csv_gz(raw / "node-label.csv.gz", parts["y"].reshape(-1, 1))
    _csv_gz(raw / "node_year.csv.gz", np.full((N, 1), 2020))
    for name, index in parts["split"].items():
        _csv_gz(folder / "split" / split / f"{name}.csv.gz", index)
    (folder / "RELEASE_v1.txt").write_text("# Release note for a tiny ogbn-arxiv\n")


def _expected_csr(parts: dict):
    return build_csr(parts["edge"][:, 0], parts["edge"][:, 1], N, symmetrize=True)


@pytest.fixture
def arxiv_root(tmp_path) -> tuple[Path, dict]:
    parts = _tiny_parts()
    write_csv_layout(tmp_path / "ogbn_arxiv", parts)
    return tmp_path, parts


def _check_graph(graph, parts: dict, num_classes: int) -> None:
    rowptr, col = _expected_csr(parts)
    assert torch.equal(graph.rowptr, rowptr) and torch.equal(graph.col, col)
    assert torch.allclose(graph.x, torch.from_numpy(parts["x"]), atol=1e-6)  # csv round trip of float32
    assert torch.equal(graph.y, torch.from_numpy(parts["y"]).long())
    for mask, part in zip((graph.train_mask, graph.val_mask, graph.test_mask), ("train", "valid", "test")):
        assert sorted(torch.nonzero(mask).flatten().tolist()) == sorted(parts["split"][part].tolist())
    assert graph.num_classes == num_classes


def test_arxiv_raw_layout_loads_symmetrised_and_cleaned(arxiv_root):
    root, parts = arxiv_root
    graph = load_dataset("ogbn-arxiv", root=str(root))
    _check_graph(graph, parts, num_classes=40)  # 40 from ogb's master.csv
    src, dst = graph.edge_index()
    assert not bool((src == dst).any())
    assert graph.name == "ogbn-arxiv" and graph.provenance["source"] == "ogb"
    assert graph.provenance["raw_num_edges"] == 80 and graph.provenance["split"] == "time"


def test_cache_is_written_and_reused(arxiv_root):
    root, parts = arxiv_root
    first = load_ogb("ogbn-arxiv", root=root)
    cache = root / "ogbn_arxiv" / CACHE_DIR
    assert (cache / "graph.json").is_file()
    shutil.rmtree(root / "ogbn_arxiv" / "raw")  # a later load must not need the raw files
    second = load_ogb("ogbn-arxiv", root=root, mmap=False)
    _check_graph(second, parts, num_classes=40)
    assert torch.equal(first.col, second.col) and first.provenance == second.provenance


def test_papers100m_npz_layout_written_by_ogb(tmp_path):
    """The binary layout through ogb's DatasetSaver (writer) and read_binary_graph_raw (reader); NaN = unlabelled."""
    from ogb.io import DatasetSaver

    parts = _tiny_parts(seed=1)
    labels = parts["y"].astype(np.float32).reshape(-1, 1)
    parts["split"]["test"] = parts["split"]["test"][:4]  # vertices outside every split are unlabelled
    unlabelled = np.setdiff1d(np.arange(N), np.concatenate(list(parts["split"].values())))
    labels[unlabelled] = np.nan
    saver = DatasetSaver("ogbn-papers100M", is_hetero=False, version=1, root=str(tmp_path / "submission"))
    saver.save_graph_list([{"edge_index": parts["edge"].T.copy(), "node_feat": parts["x"], "num_nodes": N}])
    saver.save_target_labels(labels)
    folder = tmp_path / "root" / "ogbn_papers100M"
    shutil.copytree(saver.dataset_dir, folder)
    for name, index in parts["split"].items():  # papers100M-bin ships its split as csv.gz
        _csv_gz(folder / "split" / "time" / f"{name}.csv.gz", index)

    graph = load_dataset("ogbn-papers100M", root=str(tmp_path / "root"))
    parts["y"] = np.where(np.isnan(labels[:, 0]), -1, parts["y"])
    _check_graph(graph, parts, num_classes=172)
    assert int((graph.y == -1).sum()) == len(unlabelled) > 0


def test_offline_without_files_fails_fast_and_says_where(tmp_path):
    with pytest.raises(DatasetFilesMissing) as info:
        load_dataset("ogbn-products", root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "ogbn_products" / "raw" / "edge.csv.gz") in message
    assert "download=True" in message and "internet" in message and "products.zip" in message
    assert not (tmp_path / "ogbn_products").exists()


def test_failed_download_is_reported_as_missing_files(tmp_path):
    with pytest.raises(DatasetFilesMissing, match=r"download from file://.*failed.*internet"):
        load_ogb("ogbn-arxiv", root=tmp_path, download=True, url=(tmp_path / "absent.zip").as_uri())


def test_download_goes_through_ogbs_downloader(tmp_path):
    """ogb's download_url + extract_zip on a local copy of the zip (file:// URL): unpacked, renamed, loaded."""
    parts = _tiny_parts(seed=2)
    staging = tmp_path / "staging"
    write_csv_layout(staging / "arxiv", parts)  # arxiv.zip holds a top-level 'arxiv' folder
    archive = tmp_path / "mirror" / "arxiv.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for file in (staging / "arxiv").rglob("*"):
            zf.write(file, file.relative_to(staging))
    root = tmp_path / "root"
    graph = load_ogb("ogbn-arxiv", root=root, download=True, url=archive.as_uri())
    _check_graph(graph, parts, num_classes=40)
    assert (root / "ogbn_arxiv" / "raw" / "edge.csv.gz").is_file() and not (root / "arxiv.zip").exists()


def test_corrupt_raw_labels_are_reported(tmp_path):
    parts = _tiny_parts()
    parts["y"][3] = 45  # arxiv has 40 classes
    write_csv_layout(tmp_path / "ogbn_arxiv", parts)
    with pytest.raises(GraphError, match=r"ogbn-arxiv.*graph field 'y'.*download again"):
        load_ogb("ogbn-arxiv", root=tmp_path)
    assert not (tmp_path / "ogbn_arxiv" / CACHE_DIR).exists()


def test_master_csv_facts_and_names():
    assert set(OGB_DATASETS) <= set(DATASETS)
    assert ogb_meta("ogbn-products")["add_inverse_edge"] == "True"
    assert ogb_meta("ogbn-papers100M")["binary"] == "True"
    with pytest.raises(ValueError, match="ogbn-mag"):
        ogb_meta("ogbn-mag")
    with pytest.raises(ValueError, match="option 'download' must be true or false"):
        load_dataset("ogbn-arxiv", download="yes")
