"""Calibrate the cost model on this machine, or pick a datasheet profile of a known GPU server for what-ifs.

``measure()`` runs short microbenchmarks (a few seconds at the default sizes) and returns a ``cost.Hardware``:

- aggregation: ``torch.sparse.mm`` of a random CSR matrix (average degree 8) with dense features of a few widths;
  the rate is edges x width per second, the median over the sizes;
- dense matmul FLOP/s on a tall-skinny product (the shape of a GNN transform);
- elementwise memory bandwidth (ReLU: one read and one write);
- links: host -> device is a gather of random rows into a device tensor (what a halo fetch does), device -> host
  a contiguous copy into host memory (pinned on CUDA); on CPU both are copies between two CPU buffers;
- disk: writing a temporary file with fsync, then reading it back (through the page cache, as the engine's
  memory-mapped disk tier does);
- per chunk step overhead: the time of one tiny chunk step (a small sparse product, a gather and a matmul);
- halo gathers: a gather of random rows and a scatter-add back on the device (chunks do both with halo rows);
- GAT's edge softmax per edge and head (what recomputing attention costs);
- engine probe (``_engine_probe``): small engine runs correct what microbenchmarks miss: the aggregation and the
  other compute rates and the engine's per-step overhead (three all-device GCN runs: two densities, two P), the
  prefetch overlap on CPU (hidden over fetch time of an all-host run), the host links, and GAT's attention rates
  per edge and per edge and head (two head counts).

``load_or_measure()`` caches the result as JSON under ``$FLEXGNN_CACHE_DIR`` (default ``~/.cache/flexgnn-bench``),
in a file named by a fingerprint of the machine (CPU model, cores, torch threads, torch version, device); ``force=True``
measures again. ``profile(name)`` returns datasheet values (not measurements) of known GPUs and links.

Command: ``python -m flexgnn_core.calibrate [--force] [--device cuda]`` prints the rates as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from flexgnn_core.cost import Hardware

if TYPE_CHECKING:
    from flexgnn_core.plan import Plan, Problem
    from flexgnn_core.spec import Graph, ModelSpec, TrainSpec

CACHE_ENV = "FLEXGNN_CACHE_DIR"
SCHEMA = 6  # 6: per-transfer latency; 5: engine step overhead, GAT softmax; 4: halo gathers; 3: exact link bytes

# Datasheet values (vendor specification sheets; REFERENCE.md section 4), not measurements. Aggregation on a GPU
# is modelled at its memory roofline: one 4-byte read per edge and feature, so rate = memory bandwidth / 4.
# Overlap 1.0 assumes the copy engines run beside compute; step_overhead_s 0 is unmodelled, not measured.
GPUS = {  # name: (memory bytes/s, fp32 non-tensor FLOP/s, memory bytes)
    "h200": (4.8e12, 67e12, 141e9),
    "h100": (3.35e12, 67e12, 80e9),
    "a100": (2.039e12, 19.5e12, 80e9),
}
LINKS = {"pcie4": 31.5e9, "pcie5": 63e9}  # per direction, x16
DISKS = {"nvme4": 7e9, "nvme5": 12e9}  # sequential, read and write taken alike
PROFILES = {"h200": ("h200", "pcie5", "nvme5"), "h100": ("h100", "pcie5", "nvme4"),
            "a100": ("a100", "pcie4", "nvme4")}


def profile(name: str) -> Hardware:
    """A datasheet profile: ``h200``/``h100``/``a100`` (with their usual link and disk) or ``gpu-link-disk``,
    e.g. ``h100-pcie4-nvme5``."""
    parts = PROFILES.get(name, tuple(name.split("-")))
    if len(parts) != 3 or parts[0] not in GPUS or parts[1] not in LINKS or parts[2] not in DISKS:
        raise ValueError(f"hardware profile '{name}' is unknown; valid: {', '.join(PROFILES)} or gpu-link-disk "
                         f"with gpu in {', '.join(GPUS)}, link in {', '.join(LINKS)}, disk in {', '.join(DISKS)}")
    gpu, link, disk = parts
    memory, flops, _ = GPUS[gpu]
    return Hardware(name="-".join(parts), agg_edge_width_per_s=memory / 4, matmul_flop_per_s=flops,
                    memory_bytes_per_s=memory, h2d_bytes_per_s=LINKS[link], d2h_bytes_per_s=LINKS[link],
                    disk_read_bytes_per_s=DISKS[disk], disk_write_bytes_per_s=DISKS[disk], step_overhead_s=0.0,
                    overlap=1.0, source="datasheet")


# ---- microbenchmarks -----------------------------------------------------------------------------------------
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


def _aggregation(device: torch.device, rows: int) -> float:
    rates = []
    for width in (16, 64, 128):
        matrix = _random_csr(rows, rows, 8, device)
        x = torch.rand(rows, width, device=device)
        rates.append(rows * 8 * width / _time(lambda: torch.sparse.mm(matrix, x), device))
    return statistics.median(rates)


def _matmul(device: torch.device, rows: int) -> float:
    a, b = torch.rand(rows, 256, device=device), torch.rand(256, 256, device=device)
    return 2 * rows * 256 * 256 / _time(lambda: a @ b, device)


def _memory(device: torch.device, numel: int) -> float:
    x = torch.rand(numel, device=device)
    out = torch.empty_like(x)
    return 2 * numel * 4 / _time(lambda: torch.clamp(x, min=0, out=out), device)


def _gather(device: torch.device, numel: int) -> float:
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


def _softmax(device: torch.device, rows: int) -> float:
    """GAT's edge softmax (``ops.edge_softmax``) alone, per edge and head: what recomputing attention redoes."""
    from flexgnn_core.chunks import build_chunks
    from flexgnn_core.norm import add_self_loops_csr
    from flexgnn_core.ops import edge_softmax

    matrix = _random_csr(rows, rows, 8, torch.device("cpu"))
    rowptr, col = add_self_loops_csr(matrix.crow_indices(), matrix.col_indices())
    chunk = build_chunks(rowptr, col, None, 1, self_loops=True)[0].to(device)
    scores = torch.rand(chunk.num_edges, 4, device=device)
    return chunk.num_edges * 4 / _time(lambda: edge_softmax(chunk, scores), device)


def _links(device: torch.device, numel: int) -> tuple[float, float]:
    pinned = device.type == "cuda"
    rows = numel // 64
    host = torch.rand(rows, 64).pin_memory() if pinned else torch.rand(rows, 64)
    index = torch.randperm(rows)[: rows // 2].sort().values
    staging = torch.empty(rows // 2, 64, pin_memory=pinned)
    target = torch.empty(rows // 2, 64, device=device)

    def h2d():
        torch.index_select(host, 0, index, out=staging)
        target.copy_(staging, non_blocking=pinned)

    source = torch.rand(rows, 64, device=device)
    back = torch.empty(rows, 64, pin_memory=pinned)
    nbytes = rows * 64 * 4
    return nbytes / 2 / _time(h2d, device), nbytes / _time(lambda: back.copy_(source), device)


def _disk(nbytes: int) -> tuple[float, float]:
    data = os.urandom(nbytes)
    with tempfile.TemporaryDirectory(prefix="flexgnn-calibrate-") as folder:
        path = Path(folder) / "probe.bin"
        start = time.perf_counter()
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        write_s = time.perf_counter() - start
        reads = []
        for _ in range(3):
            start = time.perf_counter()
            path.read_bytes()
            reads.append(time.perf_counter() - start)
    return nbytes / statistics.median(reads), nbytes / write_s


def _step_overhead(device: torch.device) -> float:
    matrix = _random_csr(16, 16, 4, device)
    x, w = torch.rand(16, 16, device=device), torch.rand(16, 16, device=device)
    index = torch.arange(0, 16, 2, device=device)

    def step():
        h = torch.index_select(x, 0, index)
        torch.sparse.mm(matrix, x) @ w + h.sum()

    return _time(lambda: [step() for _ in range(20)], device) / 20


def _probe_run(graph: Graph, model: ModelSpec, spec: TrainSpec, hw: Hardware, policy: str,
               num_chunks: int = 4) -> tuple[float, Plan, Problem, dict]:
    """Train ``model`` on a synthetic ``graph`` (ids already in order) with the engine at P=``num_chunks``: the
    median epoch, the plan, the engine's ``Problem`` rebuilt from the graph, and the run's extra counters."""
    from flexgnn_core import engine
    from flexgnn_core.models import init_params
    from flexgnn_core.plan import Plan, Problem
    from flexgnn_core.solvers import chunk_stats, using_hardware

    params = init_params(model, graph.num_features, graph.num_classes, seed=0)
    with using_hardware(hw):  # an engine that predicts must not calibrate again from inside calibration
        result = engine.train(graph, model, params, spec, {"policy": policy, "num_chunks": num_chunks,
                                                           "print_plan": False})
    rowptr, col, _ = engine.model_graph(graph.rowptr, graph.col, model.kind)
    problem = Problem(kind=model.kind, dims=tuple(model.dims(graph.num_features, graph.num_classes)),
                      heads=model.heads, num_nodes=graph.num_nodes, num_edges=int(col.numel()),
                      num_chunks=num_chunks, **chunk_stats(rowptr, col, model.kind, [num_chunks])[num_chunks],
                      param_bytes=sum(p.numel() * 4 for p in params.values()))
    measured = statistics.median(result.epoch_times_s[result.warmup_epochs:])
    return measured, Plan.from_json(result.plan), problem, result.extra


def _fit_compute(hw: Hardware, runs: list[tuple[float, Plan, Problem, dict]]) -> Hardware:
    """Rates such that all-device runs of different density and chunk count are predicted as measured: a
    least-squares fit of ``measured = a x aggregation + b x rest + steps x overhead`` (each run's predicted
    aggregation time, the rest of its compute, its chunk-step count), which divides the aggregation rate by ``a``,
    the matmul, elementwise and gather rates by ``b``, and sets the engine's per-step overhead (its Python
    dispatch per chunk, which microbenchmarks miss). Parts the runs cannot tell apart, or a fit that is not
    positive, fall back to one common scale and the measured step overhead; scales are clipped against noise."""
    from dataclasses import replace

    import numpy as np

    from flexgnn_core import cost

    rows, measured = [], []
    for seconds, plan, problem, _ in runs:
        total = cost.predict(plan, problem, hw).compute_s
        agg = 2 * (total - cost.predict(plan, problem, replace(hw, agg_edge_width_per_s=2 * hw.agg_edge_width_per_s))
                   .compute_s)
        no_steps = cost.predict(plan, problem, replace(hw, step_overhead_s=0.0)).compute_s
        steps = cost.predict(plan, problem, replace(hw, step_overhead_s=1.0)).compute_s - no_steps  # step count
        rows.append([agg, no_steps - agg, steps])
        measured.append(seconds)
    a, b, step = np.linalg.lstsq(np.array(rows), np.array(measured), rcond=None)[0]
    if not (a > 0 and b > 0 and step > 0):  # one common scale for everything, the step overhead included
        a = b = sum(measured) / sum(row[0] + row[1] + row[2] * hw.step_overhead_s for row in rows)
        step = a * hw.step_overhead_s
    a, b = min(max(float(a), 0.05), 50.0), min(max(float(b), 0.05), 50.0)
    return replace(hw, agg_edge_width_per_s=hw.agg_edge_width_per_s / a, matmul_flop_per_s=hw.matmul_flop_per_s / b,
                   memory_bytes_per_s=hw.memory_bytes_per_s / b,
                   gather_bytes_per_s=(hw.gather_bytes_per_s or hw.memory_bytes_per_s / 2) / b,
                   step_overhead_s=min(float(step), 1.0))


def _engine_probe(hw: Hardware, device: torch.device, nodes: int, repeats: int = 2) -> tuple[Hardware, dict]:
    """Microbenchmarks miss the engine's own overheads (sparse block setup, gathers, accounting). Train small
    synthetic graphs with the engine (each probe ``repeats`` times, interleaved, the fastest kept: this machine's
    epochs vary by 10-30% run to run) and fold the measured/predicted ratios into the rates: the compute rates and
    the per-step overhead from three all-device runs (``_fit_compute``); then, on CPU, the overlap as
    the share of an all-host run's fetch time that prefetching hid; then the host links' bandwidth and per-transfer
    latency from all-host runs at two P (``_fit_links``); then GAT's attention rates (``_fit_attention``)."""
    from dataclasses import replace

    from flexgnn_core.data.synthetic import make_synthetic
    from flexgnn_core.spec import ModelSpec, TrainSpec

    graphs = {degree: make_synthetic(num_nodes=nodes, avg_degree=degree, num_features=64, num_classes=8, seed=0)
              for degree in (10, 40)}
    gcn = ModelSpec(kind="gcn", num_layers=3, hidden=64)  # a middle layer aggregates wide rows, the last narrow
    gat = {heads: ModelSpec(kind="gat", num_layers=2, hidden=64, heads=heads) for heads in (1, 4)}
    spec = TrainSpec(epochs=6, warmup_epochs=1, seed=0, device=str(device), progress=False)
    # density separates aggregation from the rest, P the per-step overhead, heads GAT's per-edge work
    probes = {"sparse": (graphs[10], gcn, "all_device", 4), "dense": (graphs[40], gcn, "all_device", 4),
              "chunked": (graphs[10], gcn, "all_device", 64), "host": (graphs[10], gcn, "all_host", 4),
              "host_chunked": (graphs[10], gcn, "all_host", 64),
              "gat1": (graphs[10], gat[1], "all_device", 4), "gat4": (graphs[10], gat[4], "all_device", 4)}
    best = {}
    for _ in range(repeats):  # interleaved; the fastest run of each probe is the least disturbed by other work
        for key, (graph, model, policy, count) in probes.items():
            run = _probe_run(graph, model, spec, hw, policy, count)
            if key not in best or run[0] < best[key][0]:
                best[key] = run
    runs = [best["sparse"], best["dense"], best["chunked"]]
    host_s, _, _, host_extra = best["host"]
    before = hw
    hw = _fit_compute(hw, runs)
    agg_scale = before.agg_edge_width_per_s / hw.agg_edge_width_per_s
    rest_scale = before.matmul_flop_per_s / hw.matmul_flop_per_s
    overlap = hw.overlap
    if device.type != "cuda" and host_extra["prefetch_fetch_s"] > 0:  # GPU profiles keep theirs (copy engines)
        # The share of fetch time the engine's background prefetch hid under compute in the all-host run, whose
        # passes' first chunks cannot be hidden (cost.overlap: x (P - 1) / P): scaled to the share as P grows.
        hidden = host_extra["prefetch_hidden_s"] / host_extra["prefetch_fetch_s"]
        p = best["host"][2].num_chunks
        overlap = min(max(hidden * p / (p - 1), 0.0), 1.0)
    hw = replace(hw, overlap=overlap)
    link_scale, hw = _fit_links(hw, [best["host"], best["host_chunked"]])
    gat_runs = [best["gat1"], best["gat4"]]
    hw = _fit_attention(hw, gat_runs)
    return hw, {"agg_scale": agg_scale, "rest_scale": rest_scale, "link_scale": link_scale, "overlap": overlap,
                "transfer_op_s": hw.transfer_op_s, "all_host_chunked_s": best["host_chunked"][0],
                "all_device_s": [run[0] for run in runs], "all_host_s": host_s, "step_overhead_s": hw.step_overhead_s,
                "gat_all_device_s": [run[0] for run in gat_runs], "gat_edge_head_per_s": hw.gat_edge_head_per_s,
                "gat_edge_per_s": hw.gat_edge_per_s}


def _fit_links(hw: Hardware, runs: list[tuple[float, Plan, Problem, dict]]) -> tuple[float, Hardware]:
    """Host links as the engine sees them (an alpha-beta model): from all-host runs at a low and a high P, solve
    ``measured = (1 - overlap at P) x compute + scale x byte time + transfers x transfer_op_s`` for the bandwidth
    ``scale`` (dividing h2d and d2h) and the per-transfer latency. When the two runs cannot tell them apart (or
    the fit is not positive), no latency and the scale from the low-P run; both clipped against noise."""
    from dataclasses import replace

    import numpy as np

    from flexgnn_core import cost
    from flexgnn_core.plan import simulate

    rows, targets = [], []
    for measured, plan, problem, _ in runs:
        prediction = cost.predict(plan, problem, replace(hw, overlap=0.0, transfer_op_s=0.0))
        rows.append([sum(seconds for link, seconds in prediction.transfer_s if link != "ops"),
                     simulate(plan, problem)["transfer_ops"]])
        targets.append(measured - (1 - cost.overlap(problem, hw)) * prediction.compute_s)
    scale, op_s = np.linalg.lstsq(np.array(rows, float), np.array(targets), rcond=None)[0]
    if not (scale > 0 and op_s >= 0):
        scale, op_s = targets[0] / rows[0][0], 0.0
    scale = min(max(float(scale), 0.25), 20.0)
    return scale, replace(hw, h2d_bytes_per_s=hw.h2d_bytes_per_s / scale, d2h_bytes_per_s=hw.d2h_bytes_per_s / scale,
                          transfer_op_s=min(float(op_s), 0.01))


def _fit_attention(hw: Hardware, runs: list[tuple[float, Plan, Problem, dict]]) -> Hardware:
    """GAT's attention (scores, softmax and weighting, forward and backward) costs far more than an aggregation
    of the same width. From small GATs trained all on the device with different head counts, give the time the
    rest of the model does not explain to the attention terms: ``passes x E x (1 / per_edge + heads /
    per_edge_head)``, a least-squares fit of the two rates (per-edge work dropped when the fit makes it negative;
    the attention time clipped at a quarter of the prior, against noise)."""
    from dataclasses import replace

    import numpy as np

    from flexgnn_core import cost

    base = replace(hw, gat_edge_per_s=0.0)
    rows, targets = [], []
    for measured, plan, problem, _ in runs:
        predicted = cost.predict(plan, problem, base).compute_s
        passes = 2 * problem.num_layers  # all on the device: one attention pass forward, one backward, per layer
        attention = passes * cost.attention_s(base, problem.num_edges, problem.heads)
        rows.append([passes * problem.num_edges, passes * problem.num_edges * problem.heads])
        targets.append(max(measured - (predicted - attention), 0.25 * attention))
    (per_edge, per_edge_head), *_ = np.linalg.lstsq(np.array(rows, float), np.array(targets), rcond=None)
    per_edge, per_edge_head = float(per_edge), float(per_edge_head)
    if per_edge * rows[0][0] < 1e-6 * targets[0] or per_edge_head <= 0:  # no per-edge part (or cannot tell):
        per_edge, per_edge_head = 0.0, sum(targets) / sum(row[1] for row in rows)  # all per edge and head
    return replace(hw, gat_edge_per_s=1 / per_edge if per_edge > 0 else 0.0, gat_edge_head_per_s=1 / per_edge_head)


def measure(device: str | torch.device = "cpu", scale: float = 1, probe: bool = True) -> Hardware:
    """Microbenchmark this machine (``scale`` multiplies the problem sizes; 1 takes a few seconds on 2 CPU cores),
    then correct the rates with a short engine run (``probe``)."""
    device = torch.device(device)
    rows = int(20_000 * scale)
    h2d, d2h = _links(device, int(2_000_000 * scale))
    disk_read, disk_write = _disk(int(16 * 2**20 * scale))
    hw = Hardware(name=f"measured-{fingerprint(device)['device']}", agg_edge_width_per_s=_aggregation(device, rows),
                    matmul_flop_per_s=_matmul(device, rows), memory_bytes_per_s=_memory(device, int(4_000_000 * scale)),
                    h2d_bytes_per_s=h2d, d2h_bytes_per_s=d2h, disk_read_bytes_per_s=disk_read,
                    disk_write_bytes_per_s=disk_write, step_overhead_s=_step_overhead(device),
                    gather_bytes_per_s=_gather(device, int(8_000_000 * scale)),  # past the caches
                    gat_softmax_edge_head_per_s=_softmax(device, rows),
                    overlap=1.0 if device.type == "cuda" else 0.0, source="measured")
    if not probe:
        return hw
    hw, _ = _engine_probe(hw, device, int(20_000 * scale))
    return hw


# ---- cache -----------------------------------------------------------------------------------------------------
def fingerprint(device: torch.device) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "threads": str(torch.get_num_threads()),
            "torch": torch.__version__, "device": name}


def cache_path(device: torch.device) -> Path:
    folder = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "flexgnn-bench")
    key = hashlib.sha256(json.dumps(fingerprint(device), sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"calibration-{key}.json"


def load_or_measure(device: str | torch.device | None = None, force: bool = False, scale: float = 1) -> Hardware:
    """This machine's rates from the cache, measured (and cached) when absent, stale in schema, or ``force``."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = cache_path(device)
    if not force and path.exists():
        try:
            record = json.loads(path.read_text())
            if record.get("schema") == SCHEMA:
                return Hardware.from_json(record["hardware"])
        except (ValueError, KeyError, TypeError):
            pass  # a corrupt or foreign cache file: measure again and overwrite it
    hw = measure(device, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"schema": SCHEMA, "fingerprint": fingerprint(device), "measured_utc": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "hardware": hw.to_json()}
    path.write_text(json.dumps(record, indent=1, sort_keys=True))
    return hw


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="measure again even when cached")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    args = parser.parse_args()
    start = time.perf_counter()
    rates = load_or_measure(args.device, force=args.force)
    print(json.dumps({**rates.to_json(), "elapsed_s": round(time.perf_counter() - start, 3)}))
