"""Microbenchmarks of this machine's rates: sparse aggregation, matmul, memory, gathers, links, disk, overhead.

Each returns a rate (per second) measured with ``_time``: the median of a few runs after two warm-ups (the
machine may be shared: the median resists spikes). ``calibrate.measure`` combines them into a ``Hardware``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int = 7) -> float:
    """Median seconds of ``fn()`` after two warm-up calls (the machine may be shared: the median resists spikes)."""
    fn(), fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _random_csr(rows: int, cols: int, degree: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    col = torch.randint(0, cols, (rows * degree,), generator=generator).view(rows, degree).sort(dim=1).values
    crow = torch.arange(0, rows * degree + 1, degree)
    return torch.sparse_csr_tensor(crow, col.flatten(), torch.rand(rows * degree, generator=generator),
                                   size=(rows, cols)).to(device)


def aggregation(device: torch.device, rows: int) -> float:
    """Entries x features per second of the engine's CSR product (``native.csr_mm``, what its chunks run)."""
    from flexgnn_core.native import csr_mm

    rates = []
    for width in (16, 64, 128):
        matrix = _random_csr(rows, rows, 8, device)
        crow, col, values = matrix.crow_indices(), matrix.col_indices(), matrix.values()
        x = torch.rand(rows, width, device=device)
        rates.append(rows * 8 * width / _time(lambda: csr_mm(crow, col, values, x), device))
    return statistics.median(rates)


def matmul(device: torch.device, rows: int) -> float:
    a, b = torch.rand(rows, 256, device=device), torch.rand(256, 256, device=device)
    return 2 * rows * 256 * 256 / _time(lambda: a @ b, device)


def memory(device: torch.device, numel: int) -> float:
    x = torch.rand(numel, device=device)
    out = torch.empty_like(x)
    return 2 * numel * 4 / _time(lambda: torch.clamp(x, min=0, out=out), device)


def gather(device: torch.device, numel: int) -> float:
    """Bytes of rows per second that a gather of random rows plus a scatter-add back moves on the device (what a
    chunk does with its halo rows): the mean of the two."""
    rows = numel // 64
    source = torch.rand(rows, 64, device=device)
    index = torch.randint(0, rows, (rows // 2,), generator=torch.Generator().manual_seed(0)).to(device)
    values = torch.rand(rows // 2, 64, device=device)
    nbytes = rows // 2 * 64 * 4
    gather_s = _time(lambda: torch.index_select(source, 0, index), device)
    scatter_s = _time(lambda: source.index_add_(0, index, values), device)
    return 2 * nbytes / (gather_s + scatter_s)


def softmax(device: torch.device, rows: int) -> float:
    """GAT's edge softmax (``kernels.edge_softmax``) alone, per edge and head: what recomputing attention redoes."""
    from flexgnn_core.engine.chunks import build_chunks
    from flexgnn_core.kernels import edge_softmax
    from flexgnn_core.norm import add_self_loops_csr

    matrix = _random_csr(rows, rows, 8, torch.device("cpu"))
    rowptr, col = add_self_loops_csr(matrix.crow_indices(), matrix.col_indices())
    chunk = build_chunks(rowptr, col, None, 1, self_loops=True)[0].to(device)
    scores = torch.rand(chunk.num_edges, 4, device=device)
    return chunk.num_edges * 4 / _time(lambda: edge_softmax(chunk, scores), device)


def dropout_masks(device: torch.device, rows: int) -> float:
    """Dropout mask entries made and applied per second (``flexgnn_core.dropout.nodes`` on rows of width 64)."""
    from flexgnn_core import dropout

    h = torch.rand(rows, 64, device=device)
    ids = torch.arange(rows, device=device)
    return rows * 64 / _time(lambda: dropout.nodes(h, ids, 0.5, 0, 0, 0), device)


def links(device: torch.device, numel: int) -> tuple[float, float]:
    pinned = device.type == "cuda"
    rows = numel // 64
    host = torch.rand(rows, 64).pin_memory() if pinned else torch.rand(rows, 64)
    index = torch.randperm(rows)[: rows // 2].sort().values
    staging = torch.empty(rows // 2, 64, pin_memory=pinned)
    target = torch.empty(rows // 2, 64, device=device)
    copied = torch.cuda.Event() if pinned else None  # the last copy out of ``staging``

    def h2d():
        if copied is not None:
            copied.synchronize()  # the gather must not overwrite staging while its last copy is in flight
        torch.index_select(host, 0, index, out=staging)
        target.copy_(staging, non_blocking=pinned)
        if copied is not None:
            copied.record()

    source = torch.rand(rows, 64, device=device)
    back = torch.empty(rows, 64, pin_memory=pinned)
    nbytes = rows * 64 * 4
    return nbytes / 2 / _time(h2d, device), nbytes / _time(lambda: back.copy_(source), device)


def disk(nbytes: int) -> tuple[float, float]:
    """Read and write rates of the disk tier's own I/O (``engine.diskfile.RowFile``: ``O_DIRECT`` where the file
    system takes it, else buffered with each written range dropped from the page cache; through the engine's
    largest staging buffer): a file of ``nbytes`` written in full, synced, then read back in full (median of 3).
    Reading it with ``read_bytes`` as before measured the page cache, 1.3-2.7 GB/s here, where the tier's reads
    got 0.45-0.9 GB/s (results/LOG.md 2026-12-02, stop 28). The file goes in the system's temporary directory."""
    from flexgnn_core import workdirs
    from flexgnn_core.engine.diskfile import RowFile, Staging
    from flexgnn_core.plan.blocks import aligned

    width = 1024  # 4 KiB rows: every transfer is whole blocks
    rows = max(1, nbytes // (4 * width))
    size = rows * width * 4
    data = torch.rand(rows, width)
    with tempfile.TemporaryDirectory(prefix="flexgnn-calibrate-") as where:
        path = Path(where) / "probe.bin"
        workdirs.reserve(path, aligned(size))
        probe = RowFile(path, rows, width, Staging())
        try:
            start = time.perf_counter()
            probe.write_range(0, data)
            os.fsync(probe.fd)
            write_s = time.perf_counter() - start
            reads = []
            for _ in range(3):
                start = time.perf_counter()
                probe.read_range(0, rows)
                reads.append(time.perf_counter() - start)
        finally:
            probe.close()
    return size / statistics.median(reads), size / write_s


def step_overhead(device: torch.device) -> float:
    matrix = _random_csr(16, 16, 4, device)
    x, w = torch.rand(16, 16, device=device), torch.rand(16, 16, device=device)
    index = torch.arange(0, 16, 2, device=device)

    def step():
        h = torch.index_select(x, 0, index)
        torch.sparse.mm(matrix, x) @ w + h.sum()

    return _time(lambda: [step() for _ in range(20)], device) / 20


NOT_MEASURED_ON_CPU = ("not measured: a CPU has no copy engine to overlap; the engine probe measures the share of "
                       "fetch time its prefetch thread hides")


def copy_compute_overlap(device: torch.device, numel: int) -> tuple[float | None, str]:
    """The share of the shorter of a host -> device copy and a matmul loop that runs hidden when the two run on
    two streams at once: ``(copy_s + compute_s - together_s) / min(copy_s, compute_s)``, in [0, 1]; the loop is
    sized to last about as long as the copy. CUDA only (pinned source, each side timed alone, then both together,
    medians of ``_time``); on CPU ``(None, NOT_MEASURED_ON_CPU)``. Returns the value and how it was obtained."""
    if device.type != "cuda":
        return None, NOT_MEASURED_ON_CPU
    copy_stream, compute_stream = torch.cuda.Stream(device), torch.cuda.Stream(device)
    host = torch.rand(numel).pin_memory()
    target = torch.empty(numel, device=device)
    a = torch.rand(2048, 2048, device=device)
    out = torch.empty_like(a)

    def copy():
        with torch.cuda.stream(copy_stream):
            target.copy_(host, non_blocking=True)

    def matmuls(count: int):
        def run():
            with torch.cuda.stream(compute_stream):
                for _ in range(count):
                    torch.mm(a, a, out=out)
        return run

    copy_s = _time(copy, device)
    count = max(1, round(copy_s / _time(matmuls(1), device)))
    compute_s = _time(matmuls(count), device)
    together_s = _time(lambda: (copy(), matmuls(count)()), device)
    share = (copy_s + compute_s - together_s) / min(copy_s, compute_s)
    return min(max(share, 0.0), 1.0), (f"measured: a {numel * 4} B pinned copy and {count} 2048^2 matmuls on two "
                                       f"streams: {copy_s:.6f} s and {compute_s:.6f} s apart, {together_s:.6f} s "
                                       "together")
