"""The graph data layer: cleaning, synthetic graphs, the on-disk format, OGB and user files.

``load_dataset(name, **options)`` is the one entry point the harness and the systems use:

- ``"synthetic"``: options are ``make_synthetic``'s knobs (num_nodes, avg_degree, num_features, num_classes, skew,
  homophily, feature_noise, train_frac, val_frac, seed). Offline and deterministic: the default.
- ``"ogbn-arxiv"``, ``"ogbn-products"``, ``"ogbn-papers100M"``: options ``root`` (folder holding ogb's dataset
  folders, default ``data``), ``download`` (default False; needs internet), ``mmap`` (default True), ``url``
  (a mirror of OGB's zip). Cached in our on-disk format after the first load (``flexgnn_core.data.ogb``).
- ``"files"``: options ``edges``, ``features``, ``labels``, then ``train_idx``/``val_idx``/``test_idx`` or
  ``train_frac``/``val_frac``/``split_seed``, and ``num_classes``, ``symmetrize``, ``name``, ``allow_empty``
  (formats in ``flexgnn_core.data.files``).
- ``"synthetic_large"``: ``make_synthetic``'s knobs plus ``root`` (default ``data/synthetic``), ``mmap`` and
  ``memory_bytes``: the same model written once to the on-disk format in bounded memory
  (``flexgnn_core.data.synthetic_stream``), then memory-mapped: graphs larger than RAM.
- ``"saved"``: options ``path`` (a directory written by ``save_graph``), ``mmap`` (default True) and
  ``allow_empty`` (default False: a graph without edges is refused).

Unknown names and unknown options raise ``ValueError`` listing the valid ones; bad values raise errors naming the
option and the fix.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from flexgnn_core.data.clean import build_csr
from flexgnn_core.data.files import load_files
from flexgnn_core.data.ogb import OGB_DATASETS, DatasetFilesMissing, load_ogb
from flexgnn_core.data.storage import GraphFileError, load_graph, save_graph
from flexgnn_core.data.synthetic import make_synthetic
from flexgnn_core.data.synthetic_stream import load_synthetic_large, write_synthetic
from flexgnn_core.spec import Graph

DATASETS = ("synthetic", "synthetic_large", "ogbn-arxiv", "ogbn-products", "ogbn-papers100M", "files", "saved")

__all__ = ["DATASETS", "DatasetFilesMissing", "GraphFileError", "build_csr", "load_dataset", "load_files",
           "load_graph", "load_ogb", "make_synthetic", "save_graph", "write_synthetic"]


def _loader(name: str) -> Callable[..., Graph]:
    if name == "synthetic":
        return make_synthetic
    if name == "synthetic_large":
        return load_synthetic_large
    if name in OGB_DATASETS:
        def load_named_ogb(root="data", download: bool = False, mmap: bool = True, url: str | None = None) -> Graph:
            return load_ogb(name, root=root, download=download, mmap=mmap, url=url)
        return load_named_ogb
    if name == "files":
        return load_files
    if name == "saved":
        return load_graph
    raise ValueError(f"dataset '{name}' is unknown; valid: {', '.join(DATASETS)}")


def load_dataset(name: str, **options: Any) -> Graph:
    """Build or load the dataset ``name`` (one of ``DATASETS``) with its ``options`` (see the module docstring)."""
    loader = _loader(name)
    parameters = inspect.signature(loader).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ValueError(f"dataset '{name}': unknown option(s) {', '.join(unknown)}; valid: {', '.join(parameters)}")
    missing = [p for p, spec in parameters.items() if spec.default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ValueError(f"dataset '{name}': missing required option(s) {', '.join(missing)}")
    for option in ("download", "mmap", "symmetrize", "allow_empty"):
        if option in options and not isinstance(options[option], bool):
            raise ValueError(f"dataset '{name}' option '{option}' must be true or false, got {options[option]!r}")
    return loader(**options)
