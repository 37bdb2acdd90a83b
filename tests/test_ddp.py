"""The DDP baseline trains the exact full-graph model on R ranks, and a failing rank ends the whole job cleanly.

Parity: per-epoch losses of ``baselines.ddp_fullgraph.train`` at R = 1..4 equal single-process PyG training from the
same initial weights within 1e-5 relative (the PyG baseline when it exists, else PyG layers built here). Each job
starts R processes (a few seconds each on 2 cores), so the default set is small; the full grid is marked slow.
Every job carries ``job_timeout_s`` so a hang fails the test instead of stalling the run.
"""

from __future__ import annotations

import time

import psutil
import pytest
import torch
import torch.nn.functional as F

from baselines import ddp_fullgraph
from baselines.ddp_fullgraph import DistributedJobError
from baselines.ddp_halo import aggregation_csr, build_shard, partition_vertices
from flexgnn_core import models
from flexgnn_core.models import init_params
from flexgnn_core.spec import ModelSpec, TrainSpec
from graphs import tricky_graph  # tests/ is on sys.path under pytest (no __init__.py)

EPOCHS = 4
JOB_LIMIT = {"job_timeout_s": 120.0, "timeout_s": 30.0}


def _model(kind: str) -> ModelSpec:
    # hidden 16 > 7 input features and 4 classes < 16: both exchange orders (aggregate first, transform first) run.
    return ModelSpec(kind=kind, num_layers=3, hidden=16, heads=2, lr=0.05)


def _reference_losses(graph, model: ModelSpec, params) -> list[float]:
    """Single-process PyG training: the PyG baseline if present, else PyG layers loading the same weights."""
    try:
        from baselines.pyg_fullgraph import train as pyg_train
    except ImportError:
        pyg_train = None
    if pyg_train is not None:
        return pyg_train(graph, model, params, TrainSpec(epochs=EPOCHS, progress=False, device="cpu"), {}).epoch_losses
    from torch_geometric.nn import GATConv, GCNConv, SAGEConv

    dims = model.dims(graph.num_features, graph.num_classes)
    convs = torch.nn.ModuleList()
    for i in range(model.num_layers):
        last = i == model.num_layers - 1
        if model.kind == "gcn":
            convs.append(GCNConv(dims[i], dims[i + 1]))
        elif model.kind == "sage":
            convs.append(SAGEConv(dims[i], dims[i + 1]))
        else:
            convs.append(GATConv(dims[i], dims[i + 1] if last else dims[i + 1] // model.heads, heads=model.heads,
                                 concat=not last))
    holder = torch.nn.Module()
    holder.convs = convs
    holder.load_state_dict(params)
    optimizer = torch.optim.Adam(holder.parameters(), lr=model.lr)
    edge_index, losses = graph.edge_index(), []
    for _ in range(EPOCHS):
        optimizer.zero_grad()
        h = graph.x
        for i, conv in enumerate(convs):
            h = conv(h, edge_index)
            if i < model.num_layers - 1:
                h = F.elu(h) if model.kind == "gat" else F.relu(h)
        loss = F.cross_entropy(h[graph.train_mask], graph.y[graph.train_mask])
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


def _run(kind: str, world_size: int, **options):
    graph, model = tricky_graph(), _model(kind)
    params = init_params(model, graph.num_features, graph.num_classes, seed=0)
    result = ddp_fullgraph.train(graph, model, params, TrainSpec(epochs=EPOCHS, progress=False, device="cpu"),
                                 {"world_size": world_size, **JOB_LIMIT, **options})
    return graph, model, params, result


def _assert_parity(kind: str, world_size: int, **options) -> None:
    graph, model, params, result = _run(kind, world_size, **options)
    expected = _reference_losses(graph, model, params)
    torch.testing.assert_close(torch.tensor(result.epoch_losses), torch.tensor(expected), rtol=1e-5, atol=0)
    assert result.extra["world_size"] == world_size
    assert len(result.extra["ranks"]) == world_size
    assert set(result.final_params) == set(params)
    assert all(0.0 <= acc <= 1.0 for acc in result.accuracy.values())
    if world_size > 1:  # the partition cuts edges of tricky_graph, so halos really travel
        assert result.io_bytes["net_send"] > 0 and result.io_bytes["net_send"] == result.io_bytes["net_recv"]
        assert result.extra["halo_rows_total"] > 0


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_sage_losses_match_pyg_at_every_world_size(world_size):
    _assert_parity("sage", world_size)


@pytest.mark.parametrize("kind", [kind for kind in models.names() if kind != "sage"])  # sage: every R above
def test_every_other_model_matches_pyg_on_two_ranks(kind):
    # GCN here recomputes layer 0's aggregation every epoch (the SAGE runs above cache it)
    _assert_parity(kind, 2, partition="contiguous", cache_input_aggregation=kind != "gcn")


@pytest.mark.slow
@pytest.mark.parametrize("partition", ["metis", "contiguous"])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", models.names())
def test_full_parity_grid(kind, world_size, partition):
    _assert_parity(kind, world_size, partition=partition, cache_input_aggregation=partition == "metis")


def test_shards_cover_every_edge_once_and_halo_orders_agree():
    """No processes: the shards' local edges are the global ones, and what rank q sends to r is r's halo from q."""
    graph, world = tricky_graph(), 3
    csr = aggregation_csr(graph, "gcn")
    parts = partition_vertices(graph, world, "metis")
    shards = [build_shard(graph, parts, r, world, csr) for r in range(world)]
    assert sorted(torch.cat([s.owned for s in shards]).tolist()) == list(range(graph.num_nodes))
    assert sum(int(s.col.numel()) for s in shards) == int(csr[1].numel())
    for r, shard in enumerate(shards):
        local_to_global = torch.cat([shard.owned, shard.halo])
        dst = torch.repeat_interleave(shard.owned, shard.rowptr[1:] - shard.rowptr[:-1])
        edges = set(zip(local_to_global[shard.col].tolist(), dst.tolist()))
        rows = torch.repeat_interleave(torch.arange(graph.num_nodes), csr[0][1:] - csr[0][:-1])
        mine = parts[rows] == r
        assert edges == set(zip(csr[1][mine].tolist(), rows[mine].tolist()))
        offsets = [0] + torch.cumsum(torch.tensor(shard.recv_counts), 0).tolist()
        for q, sender in enumerate(shards):
            send_offsets = [0] + torch.cumsum(torch.tensor(sender.send_counts), 0).tolist()
            sent = sender.owned[sender.send_index[send_offsets[r]:send_offsets[r + 1]]]
            assert sent.tolist() == shard.halo[offsets[q]:offsets[q + 1]].tolist()


def _assert_no_rank_alive(pids: list[int]) -> None:
    for pid in pids:
        if psutil.pid_exists(pid):
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"rank process {pid} still running"


def test_failing_rank_ends_the_job_with_its_traceback():
    start = time.monotonic()
    with pytest.raises(DistributedJobError) as failure:
        _run("sage", 3, fail_rank=1, fail_epoch=2)
    elapsed = time.monotonic() - start
    message = str(failure.value)
    assert "rank 1 raised RuntimeError: injected fault: system.fail_rank=1 at system.fail_epoch=2" in message
    assert "_inject_fault" in message  # the failing rank's own traceback
    assert elapsed < 60, f"job took {elapsed:.1f} s to end after a rank failed"
    assert len(failure.value.rank_pids) == 3
    _assert_no_rank_alive(failure.value.rank_pids)


def test_crashing_rank_is_named_as_the_root_cause():
    """A rank that dies without a Python error (os._exit, a signal, the OOM killer) leaves no record; its peers
    then fail with "connection closed". The message must blame the crashed rank, not the peers."""
    with pytest.raises(DistributedJobError) as failure:
        _run("gcn", 2, fail_rank=1, fail_epoch=0, fail_mode="exit")
    assert str(failure.value).startswith("ddp job failed: rank 1 exited with code 3 without an error record")
    _assert_no_rank_alive(failure.value.rank_pids)


@pytest.mark.slow
def test_hanging_rank_is_bounded_by_the_collective_timeout():
    start = time.monotonic()
    with pytest.raises(DistributedJobError) as failure:
        _run("gcn", 2, fail_rank=0, fail_epoch=1, fail_mode="hang", timeout_s=5.0)
    assert time.monotonic() - start < 60
    assert "rank 1 raised" in str(failure.value)  # the waiting peer timed out and says so
    _assert_no_rank_alive(failure.value.rank_pids)


@pytest.mark.parametrize("options, field", [
    ({"world_size": 0}, "system.world_size"),
    ({"world_size": "2"}, "system.world_size"),
    ({"partition": "random"}, "system.partition"),
    ({"backend": "nccl"}, "system.backend"),
    ({"fail_rank": 5}, "system.fail_rank"),
    ({"wolrd_size": 2}, "system.wolrd_size"),
])
def test_bad_options_are_rejected_before_any_process_starts(options, field):
    graph, model = tricky_graph(), _model("gcn")
    params = init_params(model, graph.num_features, graph.num_classes, seed=0)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        ddp_fullgraph.train(graph, model, params, TrainSpec(epochs=2, progress=False, device="cpu"), options)


def test_env_launch_outside_torchrun_is_a_clear_error(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=r"system\.launch=env needs the torchrun environment; missing RANK"):
        _run("gcn", 2, launch="env")


@pytest.mark.slow
def test_torchrun_launch_gives_the_same_losses_as_train(tmp_path):
    """``torchrun --standalone --nproc-per-node=2 -m baselines.ddp_fullgraph``: the module's CLI under torchrun
    (env:// rendezvous, partition broadcast from rank 0) trains the same losses as ``train`` starting the ranks."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    cli = ["-m", "baselines.ddp_fullgraph", "--synthetic", "600", "--features", "8", "--hidden", "16",
           "--epochs", "3", "--model", "sage"]
    under_torchrun = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", *cli], capture_output=True,
                                    text=True, timeout=300)
    assert under_torchrun.returncode == 0, under_torchrun.stderr[-3000:]
    started_by_train = subprocess.run([sys.executable, *cli, "--world-size", "2"], capture_output=True, text=True,
                                      timeout=300)
    assert started_by_train.returncode == 0, started_by_train.stderr[-3000:]
    first, second = (json.loads(run.stdout.strip().splitlines()[-1]) for run in (under_torchrun, started_by_train))
    assert first["world_size"] == second["world_size"] == 2
    assert first["final_loss"] == pytest.approx(second["final_loss"], rel=1e-6)
    assert first["io_bytes"] == second["io_bytes"]


def test_busy_master_port_is_a_clear_error():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=rf"system\.master_port={port}.*master_port=null"):
            _run("gcn", 2, master_port=port)


def test_a_torchrun_rank_ends_after_its_threads_and_exit_handlers_without_finalization(tmp_path):
    """``end_process``: the end of a torchrun rank (gloo's worker may still be releasing the last collective's
    tensors, which aborts the process during interpreter finalization). What the interpreter's own exit does first
    still happens: non-daemon threads finish, atexit handlers run, buffered output is written; the code is kept."""
    import subprocess
    import sys

    marker = tmp_path / "atexit.txt"
    script = f"""
import atexit, threading, time, sys
from baselines.ddp_supervise import end_process
atexit.register(lambda: open({str(marker)!r}, "a").write("atexit ran\\n"))
threading.Thread(target=lambda: (time.sleep(0.3), open({str(marker)!r}, "a").write("thread done\\n"))).start()
class Finalized:
    def __del__(self):
        print("finalized")  # a module global goes at interpreter finalization only, never at os._exit
keep = Finalized()
sys.stdout.write("buffered, no newline")
end_process(3)
print("not reached")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered, no newline", done.stdout
    assert marker.read_text() == "thread done\natexit ran\n"
