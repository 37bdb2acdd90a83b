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
- ``system.launch=torchrun``: the same shards, the ranks started by torchrun inside the job (how a DDP job runs in
  a cluster allocation: ``baselines/ddp_torchrun.py``).
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
import os
import socket
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import psutil
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from baselines.ddp_halo import (PARTITIONS, CommCounters, DropKey, LocalGraph, Shard, aggregation_csr, build_shard,
                                forward, partition_vertices)
from baselines.ddp_options import HARDWARE_KEYS, DDPOptions, backend_for, rank_device  # noqa: F401 (registry reads it)
from baselines.ddp_supervise import (DistributedJobError, end_process, stop, supervise,  # noqa: F401 (raised here)
                                     under_torchrun, watch_parent)
from baselines.ddp_torchrun import run_ranks
from flexgnn_core import models, native, workdirs
from flexgnn_core.evaluate import Evaluation, predictions
from flexgnn_core.loop import timed_training
from flexgnn_core.memory import cap_device_memory
from flexgnn_core.spec import Graph, ModelSpec, RunResult, TrainSpec, resolve_device

SYSTEM = "ddp"
NATIVE_KERNELS = True  # its ranks run flexgnn_core.kernels, whose CSR products are flexgnn_core.native


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
              device: torch.device, timings_s: Mapping[str, float], evaluation: Evaluation) -> RunResult:
    """Train this rank's shard in the initialised process group; every rank returns the job's combined record.
    Dropout masks are keyed by global ids (``flexgnn_core.dropout``): the ranks together drop what one device
    would. Evaluation gathers every rank's predictions, and each rank scores the whole graph's."""
    rank, world = dist.get_rank(), dist.get_world_size()
    shard = dataclasses.replace(shard, send_index=shard.send_index.to(device))
    counters = CommCounters(device)
    graph = LocalGraph.build(shard, device)
    x, y = shard.x.to(device), shard.y.to(device)
    masks = {split: mask.to(device) for split, mask in shard.masks.items()}
    train_rows = torch.nonzero(masks["train"]).flatten()
    weights = {name: value.detach().to(device, copy=True).requires_grad_() for name, value in params.items()}
    optimizer = torch.optim.Adam(weights.values(), lr=model.lr, weight_decay=model.weight_decay)
    per_epoch: list[dict] = []
    # the cached input aggregation is exact only for fixed features: input dropout changes them every epoch
    cache: dict[str, Tensor] | None = {} if opts.cache_input_aggregation and model.input_rate == 0 else None

    def step(epoch: int) -> float:
        _inject_fault(opts, rank, epoch)
        before = counters.snapshot()
        optimizer.zero_grad(set_to_none=False)
        logits = forward(model, weights, x, graph, shard, counters, DropKey(train.seed, epoch), cache)
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
    def evaluate() -> Tensor:
        local = predictions(forward(model, weights, x, graph, shard, counters, cache=cache))
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (shard.owned, local))
        pred = torch.empty(evaluation.y.numel(), dtype=torch.int64)
        for owned, values in gathered:
            pred[owned] = values
        return pred

    dist.barrier()  # start epoch 0 together: set-up times differ between ranks
    base = timed_training(system=SYSTEM, train=dataclasses.replace(train, progress=train.progress and rank == 0),
                          device=device, step=step, evaluate=evaluate, evaluation=evaluation,
                          final_params=lambda: weights, timings_s=timings_s)  # peaks: training epochs only
    record = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "device": str(device),
              "epoch_times_s": base.epoch_times_s, "eval_s": base.timings_s["eval"],
              "startup_s": timings_s.get("startup"),
              "comm_s": [e["comm_s"] for e in per_epoch], "halo_sent_bytes": [e["sent_bytes"] for e in per_epoch],
              "halo_recv_bytes": [e["recv_bytes"] for e in per_epoch],
              "allreduce_bytes": [e["allreduce_bytes"] for e in per_epoch],
              "peak_bytes": base.peak_bytes, **shard.stats()}
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
        # what the ranks' CSR products ran on (the engine's kernels.py, flexgnn_core.native on CPU)
        "spmm_kernel": native.describe() if records[0]["device"].startswith("cpu") else "torch.sparse.mm (cuda)",
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

def _spawned_rank(rank: int, job_dir: str, launcher_pid: int, launched_at: float, torchrun: bool = False) -> None:
    """One rank of a job whose shards ``train`` wrote to ``job_dir``: started by ``train`` itself, or by torchrun
    (``torchrun``: its env:// rendezvous instead of the launcher's store)."""
    watch_parent(launcher_pid)
    try:
        job = torch.load(Path(job_dir) / f"rank{rank}.pt", weights_only=False)
        opts: DDPOptions = job["opts"]
        device = rank_device(torch.device(job["device"]), rank)
        cap_device_memory(device)  # under hardware.memory_cap: the device budget is this rank's hard limit on CUDA
        if device.type == "cpu":  # ranks share the job's cores (its affinity) instead of each taking them all
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // opts.world_size))
        if torchrun:
            dist.init_process_group(job["backend"], init_method="env://",
                                    timeout=datetime.timedelta(seconds=opts.timeout_s))
        else:
            _join_group(job["backend"], opts.master_addr, job["port"], rank, opts.world_size, opts.timeout_s)
        timings = {**job["timings_s"], "startup": time.time() - launched_at}
        result = _run_rank(job["shard"], job["model"], job["params"], job["train"], opts, device, timings,
                           job["evaluation"])
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
    backend = backend_for(opts, device)
    if device.type == "cuda" and opts.world_size > torch.cuda.device_count():
        raise ValueError(f"system.world_size={opts.world_size} but only {torch.cuda.device_count()} CUDA device(s) "
                         "are visible; lower system.world_size or use train.device=cpu (gloo); on Slurm, ask for "
                         "hydra.launcher.gpus_per_task=<world_size>")
    torchrun = opts.launch == "torchrun"  # torchrun has its own rendezvous
    store = None if torchrun else _serve_rendezvous(opts.master_addr, opts.master_port, opts.world_size,
                                                    opts.timeout_s)
    port = None if torchrun else store.port
    workdirs.reap_multiprocessing_leftovers()  # a killed launcher's forkserver socket folder
    start = time.perf_counter()
    parts, csr = _prepare(graph, model, opts.world_size, opts.partition, train.seed)
    partition_s = time.perf_counter() - start
    shards = [build_shard(graph, parts, r, opts.world_size, csr) for r in range(opts.world_size)]
    evaluation = Evaluation.of(graph)
    timings = {"partition": partition_s, "preprocess": time.perf_counter() - start}
    context = torch.multiprocessing.get_context(opts.start_method)
    if opts.start_method == "forkserver":
        # Ranks fork from a server that imported torch once; torch._dynamo is what Adam's constructor imports
        # lazily (about 2.5 s per process on this machine).
        context.set_forkserver_preload(["baselines.ddp_fullgraph", "torch._dynamo"])
    with workdirs.owned_dir(None, prefix="ddp_job_") as job_dir:  # holds our pid; dead launchers' dirs are reaped
        for rank, shard in enumerate(shards):
            torch.save({"shard": shard, "model": model, "params": dict(params), "train": train, "opts": opts,
                        "device": str(device), "backend": backend, "port": port, "timings_s": timings,
                        "evaluation": evaluation}, job_dir / f"rank{rank}.pt")
        del shards
        if torchrun:
            run_ranks(job_dir, opts)
            result: RunResult = torch.load(job_dir / "result.pt", weights_only=False)
            result.extra["rank_pids"] = [rank["pid"] for rank in result.extra["ranks"]]
            return result
        processes = [context.Process(target=_spawned_rank, args=(rank, str(job_dir), os.getpid(), time.time()),
                                     daemon=True)
                     for rank in range(opts.world_size)]
        try:
            for p in processes:
                p.start()
            supervise(processes, job_dir, opts)
        finally:
            stop(processes)
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
    device = rank_device(resolve_device(train.device), int(os.environ.get("LOCAL_RANK", 0)))
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend_for(opts, device), init_method="env://",
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
        return _run_rank(shard, model, params, train, dataclasses.replace(opts, world_size=world), device, timings,
                         Evaluation.of(graph))
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
    parser.add_argument("--model", default="gcn", choices=list(models.names()))
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
    parser.add_argument("--job-dir", help=argparse.SUPPRESS)  # system.launch=torchrun: a rank of train()'s job
    parser.add_argument("--launcher-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--launched-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job_dir:
        from baselines import ddp_fullgraph  # the module's real name: the shards unpickle its types, not __main__'s

        return ddp_fullgraph._spawned_rank(int(os.environ["RANK"]), args.job_dir, args.launcher_pid,
                                           args.launched_at, torchrun=True)
    rank = int(os.environ.get("RANK", 0))
    graph = _load_graph(args)
    model = ModelSpec(kind=args.model, num_layers=args.layers, hidden=args.hidden, heads=args.heads, lr=args.lr)
    train_spec = TrainSpec(epochs=args.epochs, warmup_epochs=args.warmup, seed=args.seed, device=args.device,
                           progress=rank == 0)
    options = {"world_size": args.world_size, "partition": args.partition, "timeout_s": args.timeout_s,
               "launch": "env" if under_torchrun() else "spawn"}
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
    if under_torchrun():
        end_process(0)  # not through interpreter finalization: see end_process
