"""Synthetic graphs larger than RAM: the model of ``synthetic.py``, written to the on-disk format in bounded memory.

``make_synthetic`` holds every pair key, its sort and the features in memory (about 60 bytes per undirected pair
plus the [N, F] features): fine at millions of edges, not at 160M. ``write_synthetic`` draws from the same planted-
partition Chung-Lu model and writes a graph directory (``flexgnn_core.data.storage``) in passes over bucket files:

1. Draw undirected pairs in fixed batches (each batch its own generator, keyed by (seed, batch)); split each batch
   by the smaller endpoint's range into B bucket files (raw int64 keys ``lo * N + hi``).
2. Deduplicate each bucket alone (keys of one ``lo`` never span two buckets); top up with further batches until
   the target pair count is met, then drop the surplus by global index, as ``make_synthetic`` does.
3. Symmetrise: every pair ``(lo, hi)`` is the edge ``hi -> lo``, already keyed by destination in its bucket, and the
   edge ``lo -> hi``, appended to the bucket of ``hi``; each destination bucket is sorted and written straight into
   ``col.npy`` (preallocated: its size is known), its degree counts into ``rowptr``.
4. Features in blocks of 65536 rows (each block its own generator), labels and masks (O(N) int64/bool, in memory).

B is chosen so that one bucket's work fits ``memory_bytes``; the graph does not depend on B (batches, dedup order
and the surplus drop are all global). Peak memory: O(N) for the vertex arrays (perm, labels, rowptr: 24 bytes a
vertex) plus ``memory_bytes``; the page cache holds the files (reclaimable). It is not the same graph as
``make_synthetic`` with the same knobs (its draws are batched differently), but the same distribution.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from flexgnn_core.data.clean import sorted_unique
from flexgnn_core.data.storage import GraphFileError, load_graph, publish_graph_dir, read_meta
from flexgnn_core.data.synthetic import _TOP_UP_ROUNDS, _check_knobs, _draw_pairs, split_sizes
from flexgnn_core.spec import Graph

GENERATOR = "flexgnn_core.data.synthetic_stream.write_synthetic (planted partition, Chung-Lu degrees, streamed)"
BATCH_PAIRS = 1 << 22  # draws per batch: the unit of determinism (independent of the bucket count)
_KEY_BYTES_AT_WORK = 8 * 4  # a bucket's int64 key, its sort copy, the reversed edges and the split: ~4 copies
DEFAULT_MEMORY_BYTES = 1 << 30
FEATURE_BLOCK_ROWS = 1 << 16  # rows of x per generator (fixed: the features do not depend on memory_bytes)


def _batch_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


class _Buckets:
    """B files of raw int64 keys, bucket ``b`` holding the keys whose ``key // scale`` lies in the b-th range."""

    def __init__(self, folder: Path, name: str, count: int, num_nodes: int):
        self.files = [folder / f"{name}-{b:04d}.bin" for b in range(count)]
        for file in self.files:
            file.write_bytes(b"")
        # vertex v belongs to bucket v * B // N: contiguous vertex ranges, nearly equal
        self.bounds = np.array([-(-b * num_nodes // count) for b in range(count + 1)], dtype=np.int64)
        self.num_nodes = num_nodes

    def vertex_range(self, b: int) -> tuple[int, int]:
        return int(self.bounds[b]), int(self.bounds[b + 1])

    def append_sorted(self, keys: np.ndarray) -> None:
        """Append sorted keys, split at the bucket bounds (of ``key // N``)."""
        cuts = np.searchsorted(keys, self.bounds * self.num_nodes)
        for b, file in enumerate(self.files):
            if cuts[b + 1] > cuts[b]:
                with open(file, "ab") as f:
                    keys[cuts[b]:cuts[b + 1]].tofile(f)

    def read(self, b: int) -> np.ndarray:
        return np.fromfile(self.files[b], dtype=np.int64)

    def write(self, b: int, keys: np.ndarray) -> None:
        keys.tofile(self.files[b])


def _buckets_for(target_pairs: int, memory_bytes: int) -> int:
    return max(1, math.ceil(2 * target_pairs * _KEY_BYTES_AT_WORK / memory_bytes))


def _draw_unique_pairs(work: Path, rng0_perm: np.ndarray, knobs: dict, target_pairs: int, buckets: int,
                       progress: Callable[[str], None]) -> _Buckets:
    """Bucket files of distinct undirected pair keys, exactly ``target_pairs`` of them (when that many exist)."""
    n, seed = knobs["num_nodes"], knobs["seed"]
    pairs = _Buckets(work, "pairs", buckets, n)
    batch, total, draws = 0, 0, target_pairs
    for round_ in range(_TOP_UP_ROUNDS):
        before = total
        remaining = draws
        while remaining > 0:
            count = min(BATCH_PAIRS, remaining)
            keys = _draw_pairs(_batch_rng(seed, 1, batch), rng0_perm, knobs["num_classes"], knobs["skew"],
                               knobs["homophily"], count)
            pairs.append_sorted(np.sort(keys))
            batch, remaining = batch + 1, remaining - count
        total = 0
        for b in range(buckets):
            keys = sorted_unique(pairs.read(b))
            pairs.write(b, keys)
            total += keys.size
        progress(f"round {round_ + 1}: {total:,} distinct pairs of {target_pairs:,} ({batch} batches)")
        missing = target_pairs - total
        if missing <= 0:
            break
        new_per_draw = max((total - before) / draws, 1e-3)
        draws = int(1.2 * missing / new_per_draw) + 16
    surplus = total - target_pairs
    if surplus > 0:  # drop the surplus uniformly by global index, as make_synthetic does
        drop = np.sort(_batch_rng(seed, 2, 0).choice(total, surplus, replace=False))
        start = 0
        for b in range(buckets):
            keys = pairs.read(b)
            mine = drop[(drop >= start) & (drop < start + keys.size)] - start
            if mine.size:
                pairs.write(b, np.delete(keys, mine))
            start += keys.size
    return pairs


def _write_csr(work: Path, out: Path, pairs: _Buckets, num_pairs: int, labels: np.ndarray) -> float | None:
    """``rowptr.npy`` and ``col.npy`` (CSR by destination, both directions of each pair); returns the measured edge
    homophily (share of pairs inside a class), counted on the pass that reads every pair anyway."""
    n, buckets = pairs.num_nodes, len(pairs.files)
    reverse = _Buckets(work, "reverse", buckets, n)
    same = 0
    for b in range(buckets):  # the edge lo -> hi, keyed by its destination hi
        lo, hi = np.divmod(pairs.read(b), n)
        same += int((labels[lo] == labels[hi]).sum())
        reverse.append_sorted(np.sort(hi * n + lo))
    num_edges = 2 * num_pairs
    col = np.lib.format.open_memmap(out / "col.npy", mode="w+", dtype=np.int64, shape=(num_edges,))
    rowptr = np.zeros(n + 1, dtype=np.int64)
    at = 0
    for b in range(buckets):
        keys = np.concatenate([pairs.read(b), reverse.read(b)])  # both keyed dst * N + src, disjoint
        keys.sort()
        dst, src = np.divmod(keys, n)
        first, last = pairs.vertex_range(b)
        rowptr[first + 1:last + 1] = np.bincount(dst - first, minlength=last - first)
        col[at:at + src.size] = src
        at += src.size
        reverse.files[b].unlink()
    assert at == num_edges, (at, num_edges)
    np.cumsum(rowptr, out=rowptr)
    col.flush()
    del col
    np.save(out / "rowptr.npy", rowptr, allow_pickle=False)
    return same / num_pairs if num_pairs else None


def _write_features(out: Path, rng0: np.random.Generator, labels: np.ndarray, knobs: dict) -> None:
    n, f, c = knobs["num_nodes"], knobs["num_features"], knobs["num_classes"]
    centroids = rng0.standard_normal((c, f), dtype=np.float32)
    x = np.lib.format.open_memmap(out / "x.npy", mode="w+", dtype=np.float32, shape=(n, f))
    for block, start in enumerate(range(0, n, FEATURE_BLOCK_ROWS)):
        stop = min(n, start + FEATURE_BLOCK_ROWS)
        values = _batch_rng(knobs["seed"], 3, block).standard_normal((stop - start, f), dtype=np.float32)
        values *= np.float32(knobs["feature_noise"])
        values += centroids[labels[start:stop]]
        x[start:stop] = values
    x.flush()
    del x


def graph_dir_name(knobs: dict) -> str:
    """A directory name per knob set: readable sizes plus a hash of every knob."""
    digest = hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:10]
    return f"synthetic-n{knobs['num_nodes']}-d{knobs['avg_degree']:g}-f{knobs['num_features']}-{digest}"


def write_synthetic(path, num_nodes: int = 20000, avg_degree: float = 10.0, num_features: int = 64,
                    num_classes: int = 8, skew: float = 0.5, homophily: float = 0.8, feature_noise: float = 5.0,
                    train_frac: float = 0.6, val_frac: float = 0.2, seed: int = 0,
                    memory_bytes: int = DEFAULT_MEMORY_BYTES,
                    progress: Callable[[str], None] | None = None) -> Path:
    """Write a planted-partition Chung-Lu graph (knobs as in ``make_synthetic``) to the graph directory ``path``
    in bounded memory (module docstring); returns ``path``. Atomic: an interrupted write leaves no graph there."""
    _check_knobs(num_nodes, avg_degree, num_features, num_classes, skew, homophily, feature_noise, train_frac,
                 val_frac, seed)
    if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, int) or memory_bytes < (1 << 20):
        raise ValueError(f"synthetic_large option 'memory_bytes' = {memory_bytes!r}: must be an integer of at least "
                         "1 MiB (the working memory of one bucket pass)")
    progress = progress or (lambda message: None)
    n, c = int(num_nodes), int(num_classes)
    n_train, n_val = split_sizes(n, train_frac, val_frac)
    knobs = dict(num_nodes=n, avg_degree=float(avg_degree), num_features=int(num_features), num_classes=c,
                 skew=float(skew), homophily=float(homophily), feature_noise=float(feature_noise),
                 train_frac=float(train_frac), val_frac=float(val_frac), seed=int(seed))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    work = tmp / "work"
    work.mkdir(parents=True)
    started = time.perf_counter()
    try:
        rng0 = np.random.default_rng(seed)
        perm = rng0.permutation(n)  # degree-rank position -> vertex id
        labels = np.empty(n, dtype=np.int64)
        labels[perm] = rng0.permutation(c)[np.arange(n) % c]
        target_pairs = int(round(n * avg_degree / 2))
        buckets = _buckets_for(target_pairs, memory_bytes)
        progress(f"drawing {target_pairs:,} pairs into {buckets} buckets")
        pairs = _draw_unique_pairs(work, perm, knobs, target_pairs, buckets, progress)
        del perm
        num_pairs = sum(file.stat().st_size for file in pairs.files) // 8
        homophily_measured = _write_csr(work, tmp, pairs, num_pairs, labels)
        shutil.rmtree(work)
        progress(f"{2 * num_pairs:,} directed edges written; features")
        _write_features(tmp, rng0, labels, knobs)
        np.save(tmp / "y.npy", labels, allow_pickle=False)
        order = rng0.permutation(n)
        for name, part in (("train_mask", order[:n_train]), ("val_mask", order[n_train:n_train + n_val]),
                           ("test_mask", order[n_train + n_val:])):
            mask = np.zeros(n, dtype=bool)
            mask[part] = True
            np.save(tmp / f"{name}.npy", mask, allow_pickle=False)
        provenance = {"source": "synthetic", "generator": GENERATOR, "knobs": knobs, "num_undirected_pairs": num_pairs,
                      "avg_degree_achieved": 2 * num_pairs / n, "edge_homophily": homophily_measured,
                      "buckets": buckets, "write_s": round(time.perf_counter() - started, 1),
                      "numpy_version": np.__version__}
        publish_graph_dir(tmp, path, name=f"synthetic-n{n}-d{avg_degree:g}", num_classes=c, provenance=provenance)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_synthetic_large(root: str = "data/synthetic", mmap: bool = True, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                         num_nodes: int = 20000, avg_degree: float = 10.0, num_features: int = 64,
                         num_classes: int = 8, skew: float = 0.5, homophily: float = 0.8, feature_noise: float = 5.0,
                         train_frac: float = 0.6, val_frac: float = 0.2, seed: int = 0) -> Graph:
    """The ``synthetic_large`` dataset: written once under ``root`` (one directory per knob set, made by
    ``write_synthetic``), then read through memory maps, so neither step holds the graph in RAM."""
    knobs = dict(num_nodes=num_nodes, avg_degree=float(avg_degree), num_features=num_features,
                 num_classes=num_classes, skew=float(skew), homophily=float(homophily),
                 feature_noise=float(feature_noise), train_frac=float(train_frac), val_frac=float(val_frac),
                 seed=seed)
    path = Path(root) / graph_dir_name(knobs)
    try:
        fresh = read_meta(path).get("provenance", {}).get("knobs") != knobs
    except GraphFileError:
        fresh = True
    if fresh:
        write_synthetic(path, memory_bytes=memory_bytes, progress=_say, **knobs)
    return load_graph(path, mmap=mmap, fix=f"delete {path} (the harness made it from the synthetic knobs; it is "
                      "made again on the next run)")


def _say(message: str) -> None:
    print(f"synthetic_large: {message}", file=sys.stderr, flush=True)
