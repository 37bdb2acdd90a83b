"""Multi-device partition-parallel full-graph training on torch.distributed: the cluster side of our comparison.

What it measures: exact full-graph GCN / SAGE / GAT training (the model of ``flexgnn_core.spec``) on R ranks, one
device each (NCCL on CUDA, gloo on CPU), in the NeutronStar / CAGNET-1D style: every rank owns a vertex partition
(METIS or contiguous ranges) and fetches the halo rows it needs per layer with ``all_to_all_single``; halo gradients
go back to their owners in backward (``baselines/ddp_halo.py``). Weights are replicated, gradients all-reduced, Adam
runs on every rank; the loss is the global mean over all train vertices, so the losses equal the single-device run.

Two ways to launch:
- ``train(graph, model, params, train, options)`` (the harness: ``python -m harness system=ddp
  system.world_size=2 model=sage``) partitions in the calling process, writes one shard per rank to a job
  directory ``$TMPDIR/ddp_job_*`` (it names its owner; a later job removes those of dead owners) and starts
  ``world_size`` processes itself (``start_method`` forkserver by default), supervising them. The launcher serves
  the rendezvous store on ``master_addr`` only (loopback by default), and the ranks' gloo / NCCL sockets use the
  interface of that address.
- ``torchrun --nproc-per-node=2 -m baselines.ddp_fullgraph --synthetic 20000`` (or ``--graph-dir DIR`` in our
  on-disk format; multi-node: ``torchrun --nnodes=2 --node-rank=K --master-addr=HOST --master-port=PORT ...``):
  every rank loads the graph, rank 0's partition is broadcast, each rank builds its own shard.
  ``python -m baselines.ddp_fullgraph --world-size 2 ...`` without torchrun goes through ``train``.

Record (``RunResult``): epoch time of the job = slowest rank per epoch; ``extra["ranks"]`` holds per-rank epoch
times, halo bytes sent / received per epoch, all-reduce bytes, seconds in collectives and peak memory;
``extra["comm_share_median"]`` is the median over timed epochs of the ranks' mean time-in-collectives / epoch time.
``io_bytes`` ``net_send`` / ``net_recv``: halo bytes exactly plus all-reduce bytes under the ring model
(``2 (R-1) / R`` x payload each way per rank), summed over ranks and epochs.

Faults: a rank that raises writes its error and traceback to the job directory; the parent then stops the others
(collectives also time out after ``timeout_s``) and raises ``DistributedJobError`` with the first failing rank's
traceback. ``fail_rank`` / ``fail_epoch`` / ``fail_mode`` (raise, exit, hang) are fault-injection knobs for tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import multiprocessing.connection
import os
import socket
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import psutil
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from baselines.ddp_halo import (PARTITIONS, CommCounters, LocalGraph, Shard, aggregation_csr, build_shard, forward,
                                partition_vertices)
from flexgnn_core import workdirs
from flexgnn_core.loop import timed_training
from flexgnn_core.memory import PeakMemoryMeter
from flexgnn_core.spec import Graph, ModelSpec, RunResult, TrainSpec, resolve_device

SYSTEM = "ddp"
HARDWARE_KEYS = ("device_budget_bytes", "host_budget_bytes", "disk_dir")  # passed by the harness, not used here


class DistributedJobError(RuntimeError):
    """A rank failed or the job timed out; the message carries the first failing rank's error and traceback."""

    def __init__(self, message: str, rank_pids: list[int]):
        super().__init__(message)
        self.rank_pids = rank_pids


@dataclasses.dataclass(frozen=True)
class DDPOptions:
    """``conf/system/ddp.yaml`` as a typed value; every field is validated with an error naming ``system.<key>``."""

    world_size: int = 2
    partition: str = "metis"
    backend: str = "auto"  # auto = nccl on CUDA, gloo on CPU
    timeout_s: float = 120.0  # collective timeout: a stuck peer fails the job after this long
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # None = pick a free port
    start_method: str = "forkserver"  # forkserver imports torch once per parent; spawn is the portable fallback
    launch: str = "spawn"  # spawn = train() starts the ranks; env = join a world started by torchrun
    cache_input_aggregation: bool = True  # layer 0's A X computed (and its halo fetched) once, not every epoch
    job_timeout_s: float | None = None  # whole-job limit (tests); None = none
    fail_rank: int | None = None  # fault injection: this rank fails ...
    fail_epoch: int = 0  # ... at the start of this epoch ...
    fail_mode: str = "raise"  # ... by raising, by exiting without a record ("exit"), or by hanging ("hang")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> "DDPOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names - set(HARDWARE_KEYS) - {"name"})
        if unknown:
            raise ValueError(f"system.{unknown[0]} is not a ddp option; valid: {', '.join(sorted(names))}")
        return cls(**{k: v for k, v in options.items() if k in names})

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> None:
            raise ValueError(f"system.{key}={getattr(self, key)!r}: {why}")

        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            bad("world_size", "must be an integer >= 1 (the number of ranks, one device each)")
        if self.partition not in PARTITIONS:
            bad("partition", f"unknown; valid: {', '.join(PARTITIONS)}")
        if self.backend not in ("auto", "gloo", "nccl"):
            bad("backend", "unknown; valid: auto, gloo, nccl")
        if not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            bad("timeout_s", "must be a positive number of seconds")
        if self.master_port is not None and not (isinstance(self.master_port, int) and 0 < self.master_port < 65536):
            bad("master_port", "must be null (pick a free port) or a port number in 1..65535")
        if self.start_method not in ("forkserver", "spawn"):
            bad("start_method", "unknown; valid: forkserver, spawn")
        if self.launch not in ("spawn", "env"):
            bad("launch", "unknown; valid: spawn (train starts the ranks), env (inside torchrun)")
        if not isinstance(self.cache_input_aggregation, bool):
            bad("cache_input_aggregation", "must be true or false")
        if self.job_timeout_s is not None and self.job_timeout_s <= 0:
            bad("job_timeout_s", "must be null or a positive number of seconds")
        if self.fail_rank is not None and not 0 <= self.fail_rank < self.world_size:
            bad("fail_rank", f"must be null or a rank in [0, {self.world_size})")
        if self.fail_mode not in ("raise", "exit", "hang"):
            bad("fail_mode", "unknown; valid: raise, exit, hang")


def _backend(opts: DDPOptions, device: torch.device) -> str:
    backend = opts.backend if opts.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("system.backend=nccl needs CUDA devices; use system.backend=gloo (or auto) on CPU")
    return backend


def _rank_device(device: torch.device, local_rank: int) -> torch.device:
    if device.type != "cuda":
        return device
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


# ----------------------------------------------------------------------------------------------- one rank's training

def _inject_fault(opts: DDPOptions, rank: int, epoch: int) -> None:
    if opts.fail_rank != rank or opts.fail_epoch != epoch:
        return
    if opts.fail_mode == "exit":
        os._exit(3)
    if opts.fail_mode == "hang":
        time.sleep(10**6)
    raise RuntimeError(f"injected fault: system.fail_rank={rank} at system.fail_epoch={epoch}")


def _run_rank(shard: Shard, model: ModelSpec, params: Mapping[str, Tensor], train: TrainSpec, opts: DDPOptions,
              device: torch.device, timings_s: Mapping[str, float]) -> RunResult:
    """Train this rank's shard in the initialised process group; every rank returns the job's combined record."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(train.seed + rank)  # dropout masks: independent per rank, reproducible per job
    shard = dataclasses.replace(shard, send_index=shard.send_index.to(device))
    counters = CommCounters(device)
    graph = LocalGraph.build(shard, device)
    x, y = shard.x.to(device), shard.y.to(device)
    masks = {split: mask.to(device) for split, mask in shard.masks.items()}
    train_rows = torch.nonzero(masks["train"]).flatten()
    weights = {name: value.detach().to(device, copy=True).requires_grad_() for name, value in params.items()}
    optimizer = torch.optim.Adam(weights.values(), lr=model.lr)
    per_epoch: list[dict] = []
    cache: dict[str, Tensor] | None = {} if opts.cache_input_aggregation else None

    def step(epoch: int) -> float:
        _inject_fault(opts, rank, epoch)
        before = counters.snapshot()
        optimizer.zero_grad(set_to_none=False)
        logits = forward(model.kind, weights, model.num_layers, x, graph, shard, counters, model.dropout, True,
                         cache)
        loss = F.cross_entropy(logits[train_rows], y[train_rows], reduction="sum") / shard.num_train_global
        loss.backward()
        grads = [w.grad for w in weights.values()]
        flat = counters.all_reduce(torch.cat([g.flatten() for g in grads]))  # one bucket: the sum of local grads
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
        optimizer.step()
        total = counters.all_reduce(loss.detach().reshape(1).clone())  # also aligns the ranks' epoch ends
        after = counters.snapshot()
        per_epoch.append({k: after[k] - before[k] for k in after})
        return float(total)

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        logits = forward(model.kind, weights, model.num_layers, x, graph, shard, counters, cache=cache)
        correct = logits.argmax(dim=-1) == y
        counts = torch.tensor([[float((correct & m).sum()), float(m.sum())] for m in masks.values()], device=device)
        counters.all_reduce(counts)
        return {split: float(c[0] / c[1]) for split, c in zip(masks, counts.cpu())}

    dist.barrier()  # start epoch 0 together: set-up times differ between ranks
    with PeakMemoryMeter(device) as meter:
        base = timed_training(system=SYSTEM, train=dataclasses.replace(train, progress=train.progress and rank == 0),
                              device=device, step=step, evaluate=evaluate, final_params=lambda: weights,
                              timings_s=timings_s)
    record = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "device": str(device),
              "epoch_times_s": base.epoch_times_s, "eval_s": base.timings_s["eval"],
              "startup_s": timings_s.get("startup"),
              "comm_s": [e["comm_s"] for e in per_epoch], "halo_sent_bytes": [e["sent_bytes"] for e in per_epoch],
              "halo_recv_bytes": [e["recv_bytes"] for e in per_epoch],
              "allreduce_bytes": [e["allreduce_bytes"] for e in per_epoch],
              "peak_bytes": meter.peak_bytes, **shard.stats()}
    records: list[dict] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(records, record)
    return _combine(base, records, opts, dist.get_backend())


def _combine(base: RunResult, records: list[dict], opts: DDPOptions, backend: str) -> RunResult:
    """The job record: slowest rank per epoch, totals over ranks, every rank's own numbers in ``extra``."""
    world = len(records)
    epochs = range(len(base.epoch_times_s))
    epoch_times = [max(r["epoch_times_s"][e] for r in records) for e in epochs]
    shares = [statistics.mean(r["comm_s"][e] / r["epoch_times_s"][e] for r in records) for e in epochs]
    ring = 2 * (world - 1) / world  # bytes each rank sends (and receives) per payload byte of a ring all-reduce
    allreduce = sum(ring * sum(r["allreduce_bytes"]) for r in records)
    device_peaks = [r["peak_bytes"]["device"] for r in records if r["peak_bytes"]["device"] is not None]
    timed = shares[base.warmup_epochs:] or shares
    extra = {
        "world_size": world, "backend": backend, "partition": opts.partition,
        "comm_share_median": statistics.median(timed) if timed else None, "comm_share_per_epoch": shares,
        "halo_rows_total": sum(r["num_halo"] for r in records),
        "replication_factor": sum(r["num_owned"] + r["num_halo"] for r in records)
        / max(sum(r["num_owned"] for r in records), 1),
        "ranks": records,
    }
    return dataclasses.replace(
        base, epoch_times_s=epoch_times, device=f"{world}x{records[0]['device'].split(':')[0]}",
        peak_bytes={"device": max(device_peaks) if device_peaks else None,
                    "host": max(r["peak_bytes"]["host"] for r in records)},
        io_bytes={"net_send": int(sum(sum(r["halo_sent_bytes"]) for r in records) + allreduce),
                  "net_recv": int(sum(sum(r["halo_recv_bytes"]) for r in records) + allreduce)},
        timings_s={**base.timings_s, "eval": max(r["eval_s"] for r in records),
                   **({"startup": max(r["startup_s"] for r in records)} if records[0]["startup_s"] else {})},
        extra=extra)


# ----------------------------------------------------------------------------------- ranks started by train() itself

def _watch_parent(launcher_pid: int) -> None:
    """Exit if the launching process disappears, so that no rank outlives a killed parent."""
    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(launcher_pid, 0)
            except ProcessLookupError:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _spawned_rank(rank: int, job_dir: str, launcher_pid: int, launched_at: float) -> None:
    _watch_parent(launcher_pid)
    try:
        job = torch.load(Path(job_dir) / f"rank{rank}.pt", weights_only=False)
        opts: DDPOptions = job["opts"]
        device = _rank_device(torch.device(job["device"]), rank)
        if device.type == "cpu":  # ranks on one host share its cores instead of each starting one thread per core
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // opts.world_size))
        _join_group(job["backend"], opts.master_addr, job["port"], rank, opts.world_size, opts.timeout_s)
        timings = {**job["timings_s"], "startup": time.time() - launched_at}
        result = _run_rank(job["shard"], job["model"], job["params"], job["train"], opts, device, timings)
        if rank == 0:
            torch.save(result, Path(job_dir) / "result.pt")
        dist.destroy_process_group()
    except BaseException as error:  # noqa: BLE001 (recorded for the parent, then the process ends)
        record = {"rank": rank, "time": time.time(), "type": type(error).__name__, "message": str(error),
                  "traceback": traceback.format_exc()}
        (Path(job_dir) / f"error{rank}.json").write_text(json.dumps(record))
        sys.stderr.flush()
        os._exit(1)  # skip atexit hooks: a broken process group can hang in its destructor


def _serve_rendezvous(addr: str, port: int | None, world_size: int, timeout_s: float) -> dist.TCPStore:
    """The job's rendezvous store, served by the launching process on ``addr`` only. torch's TCPStore binds every
    interface when it opens its own socket, so it gets one bound here (``master_listen_fd``); holding it from the
    start also means no other job can take the port between choosing it and the ranks' start."""
    family, kind, proto, _, address = socket.getaddrinfo(addr, port or 0, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.bind(address)
        listener.listen(max(world_size, 16))
    except OSError as error:
        listener.close()
        raise ValueError(f"system.master_port={port} cannot be bound on {addr} ({error}); set "
                         "system.master_port=null to pick a free port") from None
    port = listener.getsockname()[1]
    return dist.TCPStore(addr, port, world_size, is_master=True, timeout=datetime.timedelta(seconds=timeout_s),
                         wait_for_workers=False, master_listen_fd=listener.detach())  # the store closes it


def _join_group(backend: str, addr: str, port: int, rank: int, world_size: int, timeout_s: float) -> None:
    """Join the job's process group through the launcher's store; gloo's and NCCL's own sockets go on the network
    interface that holds ``addr`` (loopback by default) unless GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME say else."""
    ip = socket.gethostbyname(addr)
    interface = next((name for name, addresses in psutil.net_if_addrs().items()
                      if any(a.address == ip for a in addresses)), None)
    if interface is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(addr, port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


def _failure_message(job_dir: Path, processes: list, reason: str, stopped: set[int]) -> str:
    """The root cause first: a rank that died without a record (crash, signal, out of memory) is what its peers'
    "connection closed" errors follow from; otherwise the earliest recorded error, with its traceback."""
    errors = sorted((json.loads(p.read_text()) for p in job_dir.glob("error*.json")), key=lambda e: e["time"])
    recorded = {e["rank"] for e in errors}
    context = f"({reason}; exit codes " + ", ".join(f"rank {r}: {p.exitcode}" for r, p in enumerate(processes))
    context += "; negative = signal)"
    crashed = [r for r, p in enumerate(processes) if p.exitcode not in (0, None) and r not in recorded | stopped]
    if crashed:
        lines = [f"ddp job failed: rank {crashed[0]} exited with code {processes[crashed[0]].exitcode} without an "
                 "error record (crashed, killed by a signal or out of memory)", context]
    elif errors:
        first, errors = errors[0], errors[1:]
        lines = [f"ddp job failed: rank {first['rank']} raised {first['type']}: {first['message']}", context,
                 f"--- traceback of rank {first['rank']} ---", first["traceback"]]
    else:
        lines = ["ddp job failed and no rank left an error record", context]
    for other in errors:
        lines.append(f"--- then rank {other['rank']}: {other['type']}: {other['message'].splitlines()[0][:300]}")
    return "\n".join(lines)


def _supervise(processes: list, job_dir: Path, opts: DDPOptions) -> None:
    """Wait for the ranks; on the first failure give the others a moment to record theirs, then stop them all."""
    start = time.monotonic()
    pending = {p.sentinel: p for p in processes}
    reason = None
    while pending and reason is None:
        for sentinel in multiprocessing.connection.wait(list(pending), timeout=0.5):
            process = pending.pop(sentinel)
            process.join()
            if process.exitcode != 0 and reason is None:
                reason = f"rank {processes.index(process)} exited with code {process.exitcode}"
        if opts.job_timeout_s is not None and time.monotonic() - start > opts.job_timeout_s:
            reason = f"job exceeded system.job_timeout_s={opts.job_timeout_s}"
    if reason is None:
        return
    grace = time.monotonic() + min(5.0, opts.timeout_s)
    while any(p.is_alive() for p in processes) and time.monotonic() < grace:
        time.sleep(0.05)
    stopped = _stop(processes)
    raise DistributedJobError(_failure_message(job_dir, processes, reason, stopped), [p.pid for p in processes])


def _stop(processes: list) -> set[int]:
    """Terminate, then kill, every rank still running; returns the ranks that had to be stopped."""
    stopped = {r for r, p in enumerate(processes) if p.is_alive()}
    for r in stopped:
        processes[r].terminate()
    for r in stopped:
        processes[r].join(timeout=2.0)
        if processes[r].is_alive():
            processes[r].kill()
            processes[r].join()
    return stopped


def _prepare(graph: Graph, model: ModelSpec, world_size: int, partition: str, seed: int) -> tuple[Tensor, tuple]:
    parts = partition_vertices(graph, world_size, partition, seed)
    return parts, aggregation_csr(graph, model.kind)


def train(graph: Graph, model: ModelSpec, params: Mapping[str, Tensor], train: TrainSpec,
          options: Mapping[str, Any]) -> RunResult:
    """``spec.TrainFn``: exact full-graph training on ``options["world_size"]`` ranks (see the module docstring)."""
    opts = DDPOptions.from_mapping(options)
    if opts.launch == "env":
        return _train_in_env_world(graph, model, params, train, opts)
    device = resolve_device(train.device)
    backend = _backend(opts, device)
    if device.type == "cuda" and opts.world_size > torch.cuda.device_count():
        raise ValueError(f"system.world_size={opts.world_size} but only {torch.cuda.device_count()} CUDA device(s) "
                         "are visible; lower system.world_size or use train.device=cpu (gloo)")
    store = _serve_rendezvous(opts.master_addr, opts.master_port, opts.world_size, opts.timeout_s)
    port = store.port
    workdirs.reap_multiprocessing_leftovers()  # a killed launcher's forkserver socket folder
    start = time.perf_counter()
    parts, csr = _prepare(graph, model, opts.world_size, opts.partition, train.seed)
    partition_s = time.perf_counter() - start
    shards = [build_shard(graph, parts, r, opts.world_size, csr) for r in range(opts.world_size)]
    timings = {"partition": partition_s, "preprocess": time.perf_counter() - start}
    context = torch.multiprocessing.get_context(opts.start_method)
    if opts.start_method == "forkserver":
        # Ranks fork from a server that imported torch once; torch._dynamo is what Adam's constructor imports
        # lazily (about 2.5 s per process on this machine).
        context.set_forkserver_preload(["baselines.ddp_fullgraph", "torch._dynamo"])
    with workdirs.owned_dir(None, prefix="ddp_job_") as job_dir:  # holds our pid; dead launchers' dirs are reaped
        for rank, shard in enumerate(shards):
            torch.save({"shard": shard, "model": model, "params": dict(params), "train": train, "opts": opts,
                        "device": str(device), "backend": backend, "port": port, "timings_s": timings},
                       job_dir / f"rank{rank}.pt")
        del shards
        processes = [context.Process(target=_spawned_rank, args=(rank, str(job_dir), os.getpid(), time.time()),
                                     daemon=True)
                     for rank in range(opts.world_size)]
        try:
            for p in processes:
                p.start()
            _supervise(processes, job_dir, opts)
        finally:
            _stop(processes)
            del store
        result: RunResult = torch.load(job_dir / "result.pt", weights_only=False)
    result.extra["rank_pids"] = [p.pid for p in processes]
    return result


# --------------------------------------------------------------------------------- ranks started by torchrun (env://)

def _train_in_env_world(graph: Graph, model: ModelSpec, params: Mapping[str, Tensor], train: TrainSpec,
                        opts: DDPOptions) -> RunResult:
    """This process is one rank of a world described by RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT
    (torchrun); every rank returns the same combined record. torchrun itself stops the others if one fails."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"system.launch=env needs the torchrun environment; missing {', '.join(missing)}")
    device = _rank_device(resolve_device(train.device), int(os.environ.get("LOCAL_RANK", 0)))
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(_backend(opts, device), init_method="env://",
                                timeout=datetime.timedelta(seconds=opts.timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    start = time.perf_counter()
    parts, csr = _prepare(graph, model, world, opts.partition, train.seed) if rank == 0 else (None, None)
    box = [parts]
    dist.broadcast_object_list(box, src=0)  # one partition for all, even if METIS builds differ between nodes
    csr = csr or aggregation_csr(graph, model.kind)
    shard = build_shard(graph, box[0], rank, world, csr)
    timings = {"preprocess": time.perf_counter() - start}
    try:
        return _run_rank(shard, model, params, train, dataclasses.replace(opts, world_size=world), device, timings)
    finally:
        if owns_group:
            dist.destroy_process_group()


def _load_graph(args: argparse.Namespace) -> Graph:
    if args.graph_dir:
        from flexgnn_core.data.storage import load_graph

        return load_graph(args.graph_dir)
    from flexgnn_core.data.synthetic import make_synthetic

    return make_synthetic(num_nodes=args.synthetic, avg_degree=args.avg_degree, num_features=args.features,
                          num_classes=args.classes, seed=args.seed)


def main(argv: list[str] | None = None) -> None:
    from flexgnn_core.models import init_params

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m baselines.ddp_fullgraph")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--graph-dir", help="a graph saved in our on-disk format")
    source.add_argument("--synthetic", type=int, default=20000, help="synthetic graph with this many vertices")
    parser.add_argument("--avg-degree", type=float, default=10.0)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--model", default="gcn", choices=["gcn", "sage", "gat"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--partition", default="metis", choices=list(PARTITIONS))
    parser.add_argument("--world-size", type=int, default=2, help="ranks to start (ignored under torchrun)")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0))
    graph = _load_graph(args)
    model = ModelSpec(kind=args.model, num_layers=args.layers, hidden=args.hidden, heads=args.heads, lr=args.lr)
    train_spec = TrainSpec(epochs=args.epochs, warmup_epochs=args.warmup, seed=args.seed, device=args.device,
                           progress=rank == 0)
    options = {"world_size": args.world_size, "partition": args.partition, "timeout_s": args.timeout_s,
               "launch": "env" if under_torchrun else "spawn"}
    if rank == 0:
        print(f"plan: {graph.stats()} model={model} ranks={os.environ.get('WORLD_SIZE', args.world_size)} "
              f"launch={options['launch']} partition={args.partition}", flush=True)
    # Through the module's real name: rank processes must unpickle its functions and types, not __main__'s.
    from baselines import ddp_fullgraph

    result = ddp_fullgraph.train(graph, model, init_params(model, graph.num_features, graph.num_classes, args.seed),
                                 train_spec, options)
    if rank == 0:
        summary = {"system": SYSTEM, "world_size": result.extra["world_size"], "model": args.model,
                   "median_epoch_s": result.median_epoch_s, "final_loss": result.epoch_losses[-1],
                   "accuracy": result.accuracy, "comm_share_median": result.extra["comm_share_median"],
                   "io_bytes": result.io_bytes, "peak_bytes": result.peak_bytes}
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
