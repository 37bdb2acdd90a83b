"""The on-disk graph format: a directory of ``.npy`` arrays plus ``graph.json``, read through memory maps.

Layout of a graph directory::

    graph.json       format name and version, name, sizes, num_classes, provenance, and per array: file, dtype,
                     shape, byte size (a cheap integrity check against truncated or replaced files)
    rowptr.npy       int64 [N+1]   CSR by destination (see ``flexgnn_core.spec.Graph``)
    col.npy          int64 [E]
    x.npy            float32 [N, F]
    y.npy            int64 [N]     -1 = unlabelled
    train_mask.npy, val_mask.npy, test_mask.npy   bool [N]

Arrays are read with ``np.load(mmap_mode="r", allow_pickle=False)``: nothing is ever unpickled, and a graph larger
than RAM is paged in on demand. The tensors wrap the read-only maps without copying; write to a ``.clone()``.
Every field of ``graph.json`` is type-checked and every ``.npy`` header against its file size; the splits must be
disjoint, and a graph without edges is refused unless ``allow_empty``.
Errors name the file and field; the fix never suggests deleting the directory, which may be the user's own data
(a loader that owns its cache, as the OGB loader does, says so itself).
``save_graph`` writes into a temporary sibling directory and renames it into place, so an interrupted save never
leaves a directory that loads.

This module must stay importable in the DGL worker's environment (torch 2.2, numpy < 2): it uses only numpy,
torch, json, pathlib and ``flexgnn_core.spec``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flexgnn_core.data.checks import SPLITS, npy_header, npy_size_problem, overlapping_splits
from flexgnn_core.spec import Graph, GraphError

FORMAT = "flexgnn-graph"
FORMAT_VERSION = 1
META_FILE = "graph.json"
ARRAYS = {"rowptr": "int64", "col": "int64", "x": "float32", "y": "int64", "train_mask": "bool",
          "val_mask": "bool", "test_mask": "bool"}


class GraphFileError(GraphError):
    """An on-disk graph that is missing, truncated or inconsistent; the message names the file and the fix."""


def _corrupt(file: Path, problem: str) -> GraphFileError:
    return GraphFileError(f"on-disk graph file {file}: {problem}")


def user_fix(path: Path) -> str:
    """The fix for a bad graph directory the user made: write it again; it is theirs, so nothing deletes it."""
    return (f"save the graph again from its source with flexgnn_core.data.save_graph(graph, '{path}'), or restore "
            "the file from a copy (this folder is yours: the harness never removes or rewrites it)")


def _is_graph_dir(path: Path) -> bool:
    return (path / META_FILE).is_file()


def _write_array(directory: Path, name: str, tensor: torch.Tensor) -> None:
    with open(directory / f"{name}.npy", "wb") as f:
        np.save(f, np.ascontiguousarray(tensor.detach().cpu().numpy()), allow_pickle=False)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_graph(graph: Graph, path) -> None:
    """Write ``graph`` to the directory ``path`` atomically (temporary sibling, then rename).

    An existing graph directory at ``path`` is replaced; any other existing file or non-empty directory is left
    alone and reported, so a typo never deletes user data.
    """
    path = Path(path)
    _check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name in ARRAYS:
            _write_array(tmp, name, getattr(graph, name))
        publish_graph_dir(tmp, path, graph.name, graph.num_classes, graph.provenance)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_target(path: Path) -> None:
    if path.exists() and not (_is_graph_dir(path) or (path.is_dir() and not any(path.iterdir()))):
        raise ValueError(f"save_graph: {path} exists and is not a graph directory (no {META_FILE}); choose another "
                         "path or remove it yourself")


def publish_graph_dir(tmp: Path, path: Path, name: str, num_classes: int, provenance: dict[str, Any]) -> None:
    """Finish a graph directory whose ``.npy`` arrays are written in ``tmp`` (a sibling of ``path``): fsync the
    arrays, write ``graph.json`` (sizes and per-array dtype, shape and bytes from the files), then rename ``tmp`` to
    ``path``, replacing a graph directory there. The caller removes ``tmp`` if this raises."""
    _check_target(path)
    try:
        provenance = json.loads(json.dumps(provenance, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"save_graph: the provenance of '{name}' is not JSON-serialisable ({err}); keep it to "
                         "plain str/int/float/bool/list/dict values") from err
    arrays = {}
    for array_name in ARRAYS:
        file = tmp / f"{array_name}.npy"
        with open(file, "rb+") as f:
            os.fsync(f.fileno())
            shape, dtype = npy_header(f)  # np.save and open_memmap write versions 1.0 / 2.0
        arrays[array_name] = {"file": file.name, "dtype": str(dtype), "shape": list(shape),
                              "bytes": file.stat().st_size}
    shape = lambda key: arrays[key]["shape"]  # noqa: E731
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "num_nodes": shape("rowptr")[0] - 1,
            "num_edges": shape("col")[0], "num_features": shape("x")[1] if len(shape("x")) > 1 else 0,
            "num_classes": num_classes, "arrays": arrays, "provenance": provenance}
    with open(tmp / META_FILE, "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    old = None
    if path.exists():  # a graph directory or an empty one: move it aside, swap in the new one, then delete
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        path.rename(old)
    tmp.rename(path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_meta(path) -> dict[str, Any]:
    """``graph.json`` of a graph directory, checked for format and version."""
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise GraphFileError(f"on-disk graph {path}: no such directory. Fix: save a graph there first "
                             "(flexgnn_core.data.storage.save_graph) or pass the right path")
    if not meta_path.is_file():
        raise _corrupt(meta_path, "is missing (the directory is not a complete graph; a save may have failed)")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise _corrupt(meta_path, f"is not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _corrupt(meta_path, f"is not a '{FORMAT}' metadata file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _corrupt(meta_path, f"has format_version {meta.get('format_version')!r}; this code reads version "
                       f"{FORMAT_VERSION}")
    missing = [key for key in ("name", "num_classes", "arrays") if key not in meta]
    if missing or not isinstance(meta["arrays"], dict) or set(meta["arrays"]) != set(ARRAYS):
        raise _corrupt(meta_path, f"lacks required entries (missing: {missing or 'arrays ' + str(sorted(ARRAYS))})")
    _check_meta_types(meta_path, meta)
    return meta


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_meta_types(meta_path: Path, meta: dict[str, Any]) -> None:
    """Each field of ``graph.json`` has the type ``save_graph`` writes; the error names the field."""
    def bad(field: str, expected: str) -> GraphFileError:
        value = meta
        for key in field.split("."):
            value = value[key]
        return _corrupt(meta_path, f"field '{field}' is {type(value).__name__} {str(value)[:80]!r}, "
                        f"expected {expected}")

    if not isinstance(meta["name"], str) or not meta["name"]:
        raise bad("name", "a non-empty string")
    if not _is_count(meta["num_classes"]):
        raise bad("num_classes", "an integer")
    for key in ("num_nodes", "num_edges", "num_features"):
        if key in meta and not _is_count(meta[key]):
            raise bad(key, "a non-negative integer")
    if meta.get("provenance") is not None and not isinstance(meta["provenance"], dict):
        raise bad("provenance", "an object")
    for name, entry in meta["arrays"].items():
        if not isinstance(entry, dict):
            raise bad(f"arrays.{name}", "an object with file, dtype, shape and bytes")
        if not isinstance(entry.get("shape"), list) or not all(_is_count(n) for n in entry["shape"]):
            raise _corrupt(meta_path, f"field 'arrays.{name}.shape' is {entry.get('shape')!r}, expected a list of "
                           "non-negative integers")
        if not _is_count(entry.get("bytes")):
            raise _corrupt(meta_path, f"field 'arrays.{name}.bytes' is {entry.get('bytes')!r}, expected an integer")


def _read_array(path: Path, name: str, entry: dict[str, Any], mmap: bool) -> np.ndarray:
    file = path / f"{name}.npy"
    if not file.is_file():
        raise _corrupt(file, "is missing")
    size = file.stat().st_size
    if size != entry.get("bytes"):
        raise _corrupt(file, f"has {size} bytes but graph.json records {entry.get('bytes')} (truncated or replaced)")
    shape = tuple(entry.get("shape", ()))
    problem = npy_size_problem(file)
    if problem:
        raise _corrupt(file, problem)
    try:  # numpy cannot memory-map an empty array; such an array costs nothing to read
        array = np.load(file, mmap_mode="r" if mmap and int(np.prod(shape)) > 0 else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise _corrupt(file, f"cannot be read as .npy ({err})") from err
    except MemoryError as err:
        raise _corrupt(file, f"does not fit in memory ({err}); load it with mmap=True") from err
    if str(array.dtype) != ARRAYS[name] or str(array.dtype) != entry.get("dtype"):
        raise _corrupt(file, f"has dtype {array.dtype}, expected {ARRAYS[name]}")
    if array.shape != shape:
        raise _corrupt(file, f"has shape {array.shape} but graph.json records {shape}")
    return array


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """Wrap without copying; read-only maps are fine because the Graph contract treats them as read-only."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def load_graph(path, mmap: bool = True, allow_empty: bool = False, fix: str | None = None) -> Graph:
    """Read a graph directory written by ``save_graph``.

    With ``mmap`` the tensors are read-only views of memory-mapped files (no copy, pages read on demand); without
    it the arrays are read into writable memory. Never unpickles. A missing, truncated or inconsistent file raises
    ``GraphFileError`` naming the file and ending with ``fix`` (default: save the graph again; the folder is the
    user's). A graph without edges is refused unless ``allow_empty``.
    """
    path = Path(path)
    fix = fix or user_fix(path)
    try:
        meta = read_meta(path)
        tensors = {name: _as_tensor(_read_array(path, name, meta["arrays"][name], mmap)) for name in ARRAYS}
        num_nodes = tensors["rowptr"].numel() - 1
        for key, actual in (("num_nodes", num_nodes), ("num_edges", tensors["col"].numel())):
            if meta.get(key, actual) != actual:
                raise _corrupt(path / META_FILE, f"records {key}={meta[key]} but the arrays hold {actual}")
    except GraphFileError as err:
        raise GraphFileError(f"{err}. Fix: {fix}") from err
    _check_edges_and_splits(path, tensors, allow_empty)
    try:
        return Graph(name=meta["name"], num_classes=meta["num_classes"], provenance=meta.get("provenance") or {},
                     **tensors)
    except GraphError as err:
        raise GraphFileError(f"on-disk graph {path}: {err} (in the saved arrays). Fix: {fix}") from err


def _check_edges_and_splits(path: Path, tensors: dict[str, torch.Tensor], allow_empty: bool) -> None:
    if tensors["col"].numel() == 0 and not allow_empty:
        raise GraphFileError(f"on-disk graph {path}: the graph has no edges, so training would ignore the graph. "
                             "Fix: if that is intended, pass allow_empty=True (dataset.allow_empty=true); else save "
                             "the graph again with its edges")
    for a, b, shared in overlapping_splits({name: tensors[name] for name in SPLITS}):
        raise GraphFileError(f"on-disk graph {path}: {a} and {b} share {shared} vertices (validation and test "
                             f"accuracy would count training vertices). Fix: save the graph again with disjoint "
                             "train, val and test masks")
