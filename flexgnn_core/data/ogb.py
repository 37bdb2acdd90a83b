"""OGB node-classification graphs (ogbn-arxiv, ogbn-products, ogbn-papers100M) through ogb's own code.

We do not use ``ogb.nodeproppred.NodePropPredDataset`` itself: with ogb 1.3.6 on torch >= 2.6 its cached reload is a
bare ``torch.load`` that fails under weights-only loading (and would unpickle), and a dataset folder without
``RELEASE_v1.txt`` makes it call ``input()``. Instead we follow its ``pre_process`` step by step with ogb's parts:
the per-dataset facts come from ogb's ``nodeproppred/master.csv``; the graph from ogb's raw readers
(``ogb.io.read_graph_raw.read_csv_graph_raw`` for the csv.gz layout, ``read_binary_graph_raw`` for papers100M's
npz); labels and the official split are read exactly as ogb reads them; a download goes through
``ogb.utils.url.download_url`` and ``extract_zip``. The graph is then symmetrised and cleaned (``build_csr``, as the
FlexGNN configs use it; models add their own self-loops) and cached in our on-disk format in
``<root>/<ogbn_name>/flexgnn/``, next to ogb's ``raw/`` and ``split/``; later loads memory-map that cache (delete
that folder to rebuild it from the raw files).

Expected layout (what OGB's zip unpacks to, renamed as ogb does)::

    <root>/ogbn_arxiv/raw/{edge,num-node-list,num-edge-list,node-feat,node-label}.csv.gz
    <root>/ogbn_arxiv/split/time/{train,valid,test}.csv.gz
    <root>/ogbn_papers100M/raw/{data,node-label}.npz   (+ split/time/*.csv.gz)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flexgnn_core.data.clean import build_csr
from flexgnn_core.data.storage import META_FILE, load_graph, save_graph
from flexgnn_core.spec import Graph, GraphError

OGB_DATASETS = ("ogbn-arxiv", "ogbn-products", "ogbn-papers100M")
CACHE_DIR = "flexgnn"  # our on-disk format, inside ogb's dataset folder
DOWNLOAD_TIMEOUT_S = 60.0


class DatasetFilesMissing(FileNotFoundError):
    """Raw dataset files are absent and were not (or could not be) downloaded; the message says where and how."""


def ogb_meta(name: str) -> dict[str, str]:
    """The column of ogb's ``nodeproppred/master.csv`` for ``name`` (read as ogb reads it).

    The file is located without importing ``ogb.nodeproppred`` (that import pulls in sklearn and PyG: ~10 s here).
    """
    if name not in OGB_DATASETS:
        raise ValueError(f"OGB dataset '{name}' is not supported; valid: {', '.join(OGB_DATASETS)}")
    import pandas as pd

    spec = importlib.util.find_spec("ogb")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'ogb' package is not installed; install it with `pip install ogb>=1.3.6`")
    master_csv = Path(list(spec.submodule_search_locations)[0]) / "nodeproppred" / "master.csv"
    master = pd.read_csv(master_csv, index_col=0, keep_default_na=False)
    return {key: str(value) for key, value in master[name].items()}


def _required_files(dataset_dir: Path, meta: dict[str, str]) -> list[Path]:
    raw, split = dataset_dir / "raw", dataset_dir / "split" / meta["split"]
    if meta["binary"] == "True":
        files = [raw / "data.npz", raw / "node-label.npz"]
    else:
        files = [raw / f"{stem}.csv.gz" for stem in ("edge", "num-node-list", "num-edge-list", "node-feat",
                                                      "node-label")]
    return files + [split / f"{part}.csv.gz" for part in ("train", "valid", "test")]


def _missing_message(name: str, dataset_dir: Path, meta: dict[str, str], missing: list[Path], why: str) -> str:
    shown = ", ".join(str(p) for p in missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    return (f"dataset '{name}': {why}. Missing: {shown}. Expected OGB's raw layout under {dataset_dir} (raw/ and "
            f"split/{meta['split']}/). Downloading needs internet: load with download=True (harness: "
            f"dataset.download=true) on a machine online, or fetch {meta['url']} elsewhere, unzip it and move its "
            f"'{meta['download_name']}' folder to {dataset_dir}")


def _download(name: str, meta: dict[str, str], root: Path, dataset_dir: Path, url: str) -> None:
    """ogb's own download steps (``NodePropPredDataset.pre_process``), minus its size prompt; bounded timeout."""
    from ogb.utils.url import download_url, extract_zip

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # ogb's urlopen has none; offline must fail fast, not hang
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout's last line belongs to the run record
            zip_path = download_url(url, str(root))
            extract_zip(zip_path, str(root))
        os.unlink(zip_path)
        extracted = root / meta["download_name"]
        if not extracted.is_dir():
            raise DatasetFilesMissing(f"dataset '{name}': the archive {url} did not contain the folder "
                                      f"'{meta['download_name']}'; check the URL")
        shutil.rmtree(dataset_dir, ignore_errors=True)
        shutil.move(str(extracted), str(dataset_dir))
    finally:
        socket.setdefaulttimeout(previous)


def _labels(raw_dir: Path, binary: bool) -> np.ndarray:
    """Node labels as int64 [N] with -1 for unlabelled (papers100M stores NaN), read as ogb reads them."""
    if binary:
        with np.load(raw_dir / "node-label.npz", allow_pickle=False) as npz:
            labels = npz["node_label"]
    else:
        import pandas as pd

        labels = pd.read_csv(raw_dir / "node-label.csv.gz", compression="gzip", header=None).values
    labels = np.asarray(labels).reshape(labels.shape[0], -1)
    if labels.shape[1] != 1:
        raise ValueError(f"{raw_dir / 'node-label'}: {labels.shape[1]} label columns; only single-task "
                         "node classification is supported")
    labels = labels[:, 0]
    if labels.dtype.kind == "f":
        unlabelled = np.isnan(labels)
        labels = np.where(unlabelled, -1, labels).astype(np.int64)
    return labels.astype(np.int64)  # a copy: pandas 3 hands out read-only arrays


def _split_masks(split_dir: Path, num_nodes: int) -> list[torch.Tensor]:
    import pandas as pd

    masks = []
    for part in ("train", "valid", "test"):
        file = split_dir / f"{part}.csv.gz"
        index = pd.read_csv(file, compression="gzip", header=None).values.T[0].astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= num_nodes):
            raise ValueError(f"{file}: split index out of range [0, {num_nodes}); redownload the dataset")
        mask = torch.zeros(num_nodes, dtype=torch.bool)
        mask[torch.from_numpy(index)] = True
        masks.append(mask)
    return masks


def read_ogb_raw(name: str, dataset_dir, meta: dict[str, str] | None = None) -> Graph:
    """Read an OGB dataset folder in ogb's raw layout into a cleaned, symmetrised ``Graph`` (no caching)."""
    from ogb.io.read_graph_raw import read_binary_graph_raw, read_csv_graph_raw
    from ogb.version import __version__ as ogb_version

    meta = meta or ogb_meta(name)
    dataset_dir = Path(dataset_dir)
    raw_dir, binary = dataset_dir / "raw", meta["binary"] == "True"
    with contextlib.redirect_stdout(sys.stderr):  # ogb's readers print progress
        if binary:
            raw = read_binary_graph_raw(str(raw_dir), add_inverse_edge=False)[0]
        else:  # we symmetrise below, so ogb's add_inverse_edge (a duplicate per edge) would only cost memory
            raw = read_csv_graph_raw(str(raw_dir), add_inverse_edge=False)[0]
    num_nodes = int(raw["num_nodes"])
    if raw.get("node_feat") is None:
        raise ValueError(f"dataset '{name}': {raw_dir} has no node features (node-feat.csv.gz / node_feat in "
                         "data.npz); redownload the dataset")
    edge_index = raw["edge_index"]
    rowptr, col = build_csr(edge_index[0], edge_index[1], num_nodes, symmetrize=True)
    x = np.ascontiguousarray(raw["node_feat"], dtype=np.float32)
    x = torch.from_numpy(x if x.flags.writeable else x.copy())
    y = torch.from_numpy(_labels(raw_dir, binary))
    masks = _split_masks(dataset_dir / "split" / meta["split"], num_nodes)
    provenance: dict[str, Any] = {
        "source": "ogb", "dataset": name, "dataset_dir": str(dataset_dir.resolve()), "url": meta["url"],
        "ogb_version": ogb_version, "raw_format": "npz" if binary else "csv.gz", "split": meta["split"],
        "raw_num_edges": int(edge_index.shape[1]), "ogb_add_inverse_edge": meta["add_inverse_edge"] == "True",
        "symmetrized": True, "cleaning": "self-loops and duplicate edges removed (build_csr)",
    }
    return Graph(name=name, rowptr=rowptr, col=col, x=x, y=y, train_mask=masks[0], val_mask=masks[1],
                 test_mask=masks[2], num_classes=int(meta["num classes"]), provenance=provenance)


def load_ogb(name: str, root="data", download: bool = False, mmap: bool = True, url: str | None = None) -> Graph:
    """Load an OGB node-classification dataset, from our cache when present, else from ogb's raw files.

    Args:
        name: one of ``OGB_DATASETS``.
        root: the folder holding ogb's dataset folders (``<root>/ogbn_arxiv`` ...), as ogb's ``root``.
        download: fetch the raw files with ogb's downloader when missing (needs internet; papers100M is ~57 GB).
        mmap: memory-map the cached arrays (read-only tensors) instead of reading them into memory.
        url: a mirror (or ``file://`` URL) of OGB's zip to download from instead of ogb's ``master.csv`` URL.
    """
    meta = ogb_meta(name)
    root = Path(root)
    dataset_dir = root / "_".join(name.split("-"))  # ogb's folder name, e.g. ogbn_arxiv
    cache = dataset_dir / CACHE_DIR
    cache_fix = f"delete {cache}, this loader's converted copy of the raw files; the next load rebuilds it"
    if (cache / META_FILE).is_file():
        return load_graph(cache, mmap=mmap, fix=cache_fix)
    missing = [p for p in _required_files(dataset_dir, meta) if not p.is_file()]
    if missing and not download:
        raise DatasetFilesMissing(_missing_message(name, dataset_dir, meta, missing, "raw files not found and "
                                                   "download=False"))
    if missing:
        try:
            _download(name, meta, root, dataset_dir, url or meta["url"])
        except DatasetFilesMissing:
            raise
        except Exception as err:  # urllib, socket and zip errors all mean the same thing to the user
            raise DatasetFilesMissing(_missing_message(name, dataset_dir, meta, missing, f"download from "
                                                       f"{url or meta['url']} failed ({err!r})")) from err
        missing = [p for p in _required_files(dataset_dir, meta) if not p.is_file()]
        if missing:
            raise DatasetFilesMissing(_missing_message(name, dataset_dir, meta, missing, "the download did not "
                                                       "contain every expected file"))
    try:
        graph = read_ogb_raw(name, dataset_dir, meta)
    except GraphError as err:
        raise GraphError(f"dataset '{name}' from {dataset_dir}: {err}. The raw files look corrupt: delete "
                         f"{dataset_dir} and download again") from err
    save_graph(graph, cache)
    return load_graph(cache, mmap=mmap, fix=cache_fix) if mmap else graph
