"""Users' own graphs from plain files: an edge list, a feature matrix, labels and a split.

Inputs (paths; ``.npy`` files are read with ``allow_pickle=False``, so nothing is ever unpickled):

- ``edges``: ``.npy`` integer array ``[2, E]`` (row 0 = sources) or ``[E, 2]``; a ``[2, 2]`` array is read as
  ``[2, E]``. Or ``.csv`` / ``.tsv`` / ``.txt``: two integer columns (source, destination) separated by commas, tabs
  or spaces, with an optional header line; lines starting with ``#`` are comments.
- ``features``: ``.npy`` numeric array ``[N, F]`` (cast to float32; NaN/Inf rejected). N is the vertex count.
- ``labels``: ``.npy`` array ``[N]`` (or ``[N, 1]``) of integers in ``[0, C)``, ``-1`` = unlabelled; a float
  array may use NaN for unlabelled (as ogbn-papers100M does).
- split, either ``train_idx``, ``val_idx``, ``test_idx``: three ``.npy`` files of vertex indices (or boolean masks of
  length N), or ``train_frac`` / ``val_frac`` with ``split_seed``: a seeded random split of the labelled vertices
  (the rest is the test split). The two ways cannot be mixed.
- ``num_classes``: inferred as ``max(label) + 1`` when not given; at most the number of vertices either way.
- ``symmetrize`` (default True): add the reverse of every edge, as for the OGB graphs; set False for a directed
  graph. Self-loops and duplicate edges are always removed (``build_csr``).
- ``allow_empty`` (default False): a graph with no edges left after cleaning is refused unless this is True.

Refused with an error naming the option: split files that share vertices, ``.npy`` headers declaring more data than
the file holds, vertex ids beyond int64 in a text edge list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from flexgnn_core.data.checks import class_count_problem, npy_size_problem, overlapping_splits
from flexgnn_core.data.clean import build_csr
from flexgnn_core.spec import Graph, GraphError

TEXT_SUFFIXES = (".csv", ".tsv", ".txt")


def _bad(option: str, path, problem: str, fix: str) -> ValueError:
    where = f" ({path})" if path is not None else ""
    return ValueError(f"dataset 'files' option '{option}'{where}: {problem}. Fix: {fix}")


def _load_npy(option: str, path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise _bad(option, path, "file not found", "pass the path of an existing .npy file")
    problem = npy_size_problem(path)
    if problem:
        raise _bad(option, path, problem, "rewrite it with np.save(path, array)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays need pickle, which we never allow
        raise _bad(option, path, f"cannot be read without unpickling or is not a valid .npy file ({err})",
                   "save a plain numeric array with np.save(path, array)") from err
    except (OSError, EOFError) as err:
        raise _bad(option, path, f"cannot be read as .npy ({err})", "rewrite it with np.save") from err
    except MemoryError as err:
        raise _bad(option, path, f"does not fit in memory ({err})", "use a smaller graph or a machine with more "
                   "memory") from err


def _read_edge_text(path: Path) -> np.ndarray:
    import pandas as pd

    with open(path) as f:
        first = next((line for line in f if line.strip() and not line.lstrip().startswith("#")), "")
    sep = "," if "," in first else r"\s+"
    tokens = [t for t in first.replace(",", " ").split() if t]
    has_header = bool(tokens) and not all(t.lstrip("+-").isdigit() for t in tokens)
    try:
        frame = pd.read_csv(path, sep=sep, header=0 if has_header else None, comment="#", dtype=np.int64,
                            skip_blank_lines=True)
    except OverflowError as err:
        raise _bad("edges", path, "a vertex id does not fit in a 64-bit integer",
                   "use 0-based vertex ids, one per feature row") from err
    except (ValueError, pd.errors.ParserError) as err:
        raise _bad("edges", path, f"is not two integer columns ({err})",
                   "write one 'source,destination' pair of vertex ids per line") from err
    return frame.to_numpy()


def _read_edges(path) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        if not path.is_file():
            raise _bad("edges", path, "file not found", "pass the path of an existing edge list")
        array = _read_edge_text(path)
        if array.ndim != 2 or array.shape[1] != 2:
            raise _bad("edges", path, f"has {array.shape[1] if array.ndim == 2 else 0} columns, expected 2",
                       "keep exactly two columns: source, destination")
        array = array.T
    elif path.suffix.lower() == ".npy":
        array = _load_npy("edges", path)
        if array.ndim != 2 or 2 not in array.shape:
            raise _bad("edges", path, f"shape {array.shape} is neither [2, E] nor [E, 2]",
                       "store the edge list as a [2, E] integer array")
        if array.shape[0] != 2:
            array = array.T
    else:
        raise _bad("edges", path, f"unknown file type '{path.suffix}'", "use .npy, .csv, .tsv or .txt")
    if array.dtype.kind not in "iu":
        raise _bad("edges", path, f"dtype {array.dtype} is not integer", "store vertex ids as integers")
    return array[0].astype(np.int64), array[1].astype(np.int64)


def _read_labels(path) -> np.ndarray:
    labels = _load_npy("labels", path)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise _bad("labels", path, f"shape {labels.shape} is not [N]", "store one class id per vertex")
    if labels.dtype.kind == "f":
        known = ~np.isnan(labels)
        if not np.all(labels[known] == np.round(labels[known])):
            raise _bad("labels", path, "has non-integer values", "store class ids 0..C-1 (-1 or NaN = unlabelled)")
        labels = np.where(known, labels, -1)
    elif labels.dtype.kind not in "iub":
        raise _bad("labels", path, f"dtype {labels.dtype} is not numeric", "store class ids as integers")
    return labels.astype(np.int64)


def _split_from_files(paths: dict[str, Any], num_nodes: int) -> list[torch.Tensor]:
    masks = []
    for option, path in paths.items():
        index = _load_npy(option, path)
        mask = torch.zeros(num_nodes, dtype=torch.bool)
        if index.dtype == np.bool_:
            if index.shape != (num_nodes,):
                raise _bad(option, path, f"boolean mask of shape {index.shape}, expected [{num_nodes}]",
                           "give one flag per vertex, or vertex indices")
            mask = torch.from_numpy(index.copy())
        else:
            if index.dtype.kind not in "iu" or index.ndim != 1:
                raise _bad(option, path, f"dtype {index.dtype} / shape {index.shape} is not a 1-D index array",
                           "store the split's vertex ids as a 1-D integer array")
            if index.size and (index.min() < 0 or index.max() >= num_nodes):
                raise _bad(option, path, f"vertex index out of range [0, {num_nodes}): min {index.min()}, max "
                           f"{index.max()}", "use ids of existing vertices (rows of the features)")
            mask[torch.from_numpy(index.astype(np.int64))] = True
        masks.append(mask)
    for a, b, shared in overlapping_splits(dict(zip(paths, masks))):
        raise _bad(b, paths[b], f"shares {shared} vertices with {a} ({paths[a]}); validation and test accuracy "
                   "would count training vertices", f"make {', '.join(paths)} disjoint")
    return masks


def _split_from_fractions(labels: np.ndarray, train_frac, val_frac, seed) -> list[torch.Tensor]:
    for option, value in (("train_frac", train_frac), ("val_frac", val_frac)):
        if not isinstance(value, (int, float)) or not 0 < value < 1:
            raise _bad(option, None, f"{value!r} is not in (0, 1)", "give a fraction such as 0.6")
    if train_frac + val_frac >= 1:
        raise _bad("val_frac", None, f"train_frac + val_frac = {train_frac + val_frac:g} leaves no test vertices",
                   "keep the sum below 1")
    labelled = np.flatnonzero(labels >= 0)
    order = labelled[np.random.default_rng(seed).permutation(labelled.size)]
    n_train, n_val = round(train_frac * order.size), round(val_frac * order.size)
    parts = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])
    masks = []
    for part in parts:
        mask = torch.zeros(labels.size, dtype=torch.bool)
        mask[torch.from_numpy(part)] = True
        masks.append(mask)
    return masks


def load_files(edges, features, labels, train_idx=None, val_idx=None, test_idx=None, train_frac=None,
               val_frac=None, split_seed: int = 0, num_classes: int | None = None, symmetrize: bool = True,
               name: str | None = None, allow_empty: bool = False) -> Graph:
    """Build a cleaned ``Graph`` from user files (formats in the module docstring)."""
    index_files = {"train_idx": train_idx, "val_idx": val_idx, "test_idx": test_idx}
    given = [k for k, v in index_files.items() if v is not None]
    if given and (train_frac is not None or val_frac is not None):
        raise _bad("train_frac", None, "given together with split index files", "use one way to split, not both")
    if given and len(given) != 3:
        raise _bad(sorted(set(index_files) - set(given))[0], None, "missing (split files come in threes)",
                   "give train_idx, val_idx and test_idx, or train_frac and val_frac instead")
    if not given and (train_frac is None or val_frac is None):
        raise _bad("train_idx", None, "no split given", "give train_idx/val_idx/test_idx .npy files or "
                   "train_frac and val_frac (with split_seed)")

    x = _load_npy("features", features)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise _bad("features", features, f"shape {x.shape} is not [N, F]", "store one feature row per vertex")
    if x.dtype.kind not in "iufb":
        raise _bad("features", features, f"dtype {x.dtype} is not numeric", "store numbers (float32 preferred)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        rows = int((~np.isfinite(x)).any(axis=1).sum())
        raise _bad("features", features, f"contains NaN or Inf in {rows} rows", "impute or drop those values")
    num_nodes = x.shape[0]

    y = _read_labels(labels)
    if y.shape[0] != num_nodes:
        raise _bad("labels", labels, f"has {y.shape[0]} entries but features have {num_nodes} rows",
                   "give one label per feature row")
    if y.size and y.min() < -1:
        raise _bad("labels", labels, f"minimum label {y.min()} is below -1", "use -1 only for unlabelled vertices")
    if num_classes is None:
        num_classes = int(y.max()) + 1
        if num_classes < 2:
            raise _bad("labels", labels, f"only {num_classes} class(es) present", "label at least two classes, or "
                       "give num_classes")
        if class_count_problem(num_classes, num_nodes):
            raise _bad("labels", labels, f"maximum label {y.max()} means "
                       f"{class_count_problem(num_classes, num_nodes)}, more classes than vertices",
                       "number the classes 0..C-1 (e.g. np.unique(labels, return_inverse=True)[1])")
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise _bad("num_classes", None, f"{num_classes!r} is not an integer >= 2", "give the class count")
    elif class_count_problem(num_classes, num_nodes, int(y.max())):
        raise _bad("num_classes", None, class_count_problem(num_classes, num_nodes, int(y.max())),
                   "lower num_classes to the number of classes in the labels")
    if y.max() >= num_classes:
        raise _bad("labels", labels, f"maximum label {y.max()} is not below num_classes={num_classes}",
                   "use class ids 0..num_classes-1 or raise num_classes")

    src, dst = _read_edges(edges)
    for end, ids in (("source", src), ("destination", dst)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_nodes):
            raise _bad("edges", edges, f"{end} vertex id out of range [0, {num_nodes}): min {ids.min()}, max "
                       f"{ids.max()}", "use 0-based ids of feature rows, or add feature rows for those vertices")
    rowptr, col = build_csr(src, dst, num_nodes, symmetrize=symmetrize)
    if col.numel() == 0 and not allow_empty:
        raise _bad("edges", edges, f"no edges left ({src.size} read; self-loops and duplicates are removed), so "
                   "training would ignore the graph", "give a non-empty edge list, or set allow_empty=true "
                   "(dataset.allow_empty=true) if a graph without edges is intended")

    if given:
        masks = _split_from_files(index_files, num_nodes)
    else:
        masks = _split_from_fractions(y, train_frac, val_frac, split_seed)
    provenance = {"source": "files", "edges": str(edges), "features": str(features), "labels": str(labels),
                  "split": {k: str(v) for k, v in index_files.items()} if given
                  else {"train_frac": train_frac, "val_frac": val_frac, "split_seed": split_seed},
                  "symmetrized": bool(symmetrize), "raw_num_edges": int(src.size)}
    try:
        return Graph(name=name or Path(edges).stem, rowptr=rowptr, col=col, x=torch.from_numpy(x),
                     y=torch.from_numpy(y), train_mask=masks[0], val_mask=masks[1], test_mask=masks[2],
                     num_classes=int(num_classes), provenance=provenance)
    except GraphError as err:  # e.g. an empty split or a split that selects unlabelled vertices
        split = "the split files" if given else "train_frac/val_frac"
        raise GraphError(f"dataset 'files' ({edges}): {err} (check {split})") from err
