"""What a run leaves on disk (issue 13): tier and DDP job directories name their owner and are reaped once it is
dead, a full file system is a clear error instead of SIGBUS, and the DDP rendezvous listens on master_addr only."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest
import torch

from flexgnn_core import workdirs
from flexgnn_core.engine.tiers import TierStore
from flexgnn_core.plan.blocks import aligned

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]


def _killed_while_holding_a_disk_tier(disk_dir: str) -> None:
    store = TierStore(CPU, disk_dir)
    store.alloc("h0", (100, 8), "disk").write(slice(0, 100), torch.ones(100, 8))
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_new_disk_tier_reaps_the_directory_of_a_killed_run(tmp_path):
    """Issue 13, row 3: after SIGKILL the stale flexgnn-* directory stayed for good."""
    child = multiprocessing.get_context("fork").Process(target=_killed_while_holding_a_disk_tier,
                                                        args=(str(tmp_path),))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    (stale,) = tmp_path.glob("flexgnn-*")
    foreign = tmp_path / "flexgnn-dgl-abc"  # no owner file: another tool's, never touched
    foreign.mkdir()
    with TierStore(CPU, str(tmp_path)) as store:
        store.alloc("h0", (4, 2), "disk")
        mine = store.workdir
        owner = json.loads((mine / workdirs.OWNER_FILE).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert not stale.exists() and foreign.is_dir()
        assert workdirs.reap(tmp_path, "flexgnn-") == []  # the live owner's directory is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flexgnn-dgl-abc"]


def test_owner_files_of_other_hosts_or_unreadable_are_kept(tmp_path):
    other = tmp_path / "flexgnn-other"
    other.mkdir()
    (other / workdirs.OWNER_FILE).write_text(json.dumps({"pid": 1, "started": 0.0, "host": "elsewhere"}))
    broken = tmp_path / "flexgnn-broken"
    broken.mkdir()
    (broken / workdirs.OWNER_FILE).write_text("{not json")
    reused = tmp_path / "flexgnn-reused"  # pid 1 is alive, but it is not the process that started then
    reused.mkdir()
    (reused / workdirs.OWNER_FILE).write_text(json.dumps({"pid": 1, "started": 0.0, "host": socket.gethostname()}))
    assert workdirs.reap(tmp_path, "flexgnn-") == [reused]
    assert other.is_dir() and broken.is_dir()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root, as on this project's machines); skipped loudly where mount is not permitted."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"SKIPPED LOUDLY: cannot mount a small tmpfs here ({done.stderr.strip()}); the full-disk case "
                    "is then only covered by test_a_full_disk_fails_the_run_naming_disk_dir_and_bytes")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_disk_tier_larger_than_the_file_system_is_an_error_not_sigbus(small_tmpfs):
    """Issue 13, row 5: on a full file system the memory map died with SIGBUS (exit 135), no message."""
    script = textwrap.dedent(f"""
        import torch
        from flexgnn_core.engine.tiers import TierStore
        store = TierStore(torch.device("cpu"), {str(small_tmpfs)!r})
        buffer = store.alloc("h0", (1000, 1000), "disk")  # 4 MB on a 1 MiB file system
        buffer.write(slice(0, 1000), torch.ones(1000, 1000))
        print("wrote 4 MB")
        """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, f"exit {done.returncode}: {done.stderr[-2000:]}"
    # whole blocks of 16 column block files (15 of 64 floats per row, one of 40), each file's own blocks
    need = 15 * aligned(1000 * 64 * 4) + aligned(1000 * 40 * 4)
    assert "DiskFull" in done.stderr and f"hardware.disk_dir: cannot reserve {need} bytes for h0 (16 column block" \
        in done.stderr
    assert list(small_tmpfs.iterdir()) == []


def test_a_full_disk_fails_the_run_naming_disk_dir_and_bytes(compose, mlflow_client, tmp_path, monkeypatch):
    """The same through the harness, with the file system's ENOSPC from a failing fallocate: a FAILED MLflow run
    with the message, nothing left in hardware.disk_dir."""
    import errno

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    from harness.run import run

    disk = tmp_path / "disk"
    with pytest.raises(workdirs.DiskFull, match=r"hardware.disk_dir: cannot reserve \d+ bytes for \w+.f32 in "
                                                r".*No space left on device.*Fix: point hardware.disk_dir"):
        run(compose(["+debug=fast", "system=flexgnn", "planner=all_disk", f"hardware.disk_dir={disk}"]))
    assert list(disk.iterdir()) == []
    experiment = mlflow_client.get_experiment_by_name("flexgnn-bench")
    (failed,) = mlflow_client.search_runs([experiment.experiment_id])
    assert failed.info.status == "FAILED" and "hardware.disk_dir" in failed.data.tags["error"]


def _listening(pid: int) -> list[tuple[str, int]]:
    return [(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN]


def test_the_ddp_rendezvous_listens_on_master_addr_only():
    """Issue 13, row 9: rank 0's rendezvous store listened on every interface although master_addr=127.0.0.1."""
    import torch.distributed as dist

    from baselines.ddp_fullgraph import _join_group, _serve_rendezvous

    before = {name: os.environ.get(name) for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
    store = _serve_rendezvous("127.0.0.1", None, 1, 30.0)
    try:
        assert ("127.0.0.1", store.port) in _listening(os.getpid())
        _join_group("gloo", "127.0.0.1", store.port, 0, 1, 30.0)
        listening = _listening(os.getpid())
        assert listening and all(ip == "127.0.0.1" for ip, _ in listening), listening
        assert os.environ["GLOO_SOCKET_IFNAME"] == "lo"
        dist.destroy_process_group()
    finally:
        del store
        for name, value in before.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def _make_dead_pymp_dir(parent: Path) -> Path:
    """What a SIGKILLed multiprocessing parent leaves: pymp-*/listener-* whose socket nobody holds."""
    directory = Path(tempfile.mkdtemp(prefix="pymp-", dir=parent))
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(directory / "listener-dead"))
        listener.listen()
    return directory


def _owned_then_killed(parent: str) -> None:
    workdirs.make_owned(parent, prefix="ddp_job_")
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_ddp_job_names_its_owner_and_reaps_a_killed_launchers_leftovers(tmp_path, monkeypatch):
    """Issue 13, row 4: after SIGKILL of a DDP parent, ddp_job_* shard files and pymp-* stayed in TMPDIR."""
    from baselines import ddp_fullgraph
    from flexgnn_core.models import init_params
    from flexgnn_core.spec import ModelSpec, TrainSpec
    from graphs import tricky_graph

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    child = multiprocessing.get_context("fork").Process(target=_owned_then_killed, args=(str(tmp_path),))
    child.start()
    child.join(timeout=60)
    (stale_job,) = tmp_path.glob("ddp_job_*")
    stale_pymp = _make_dead_pymp_dir(tmp_path)
    live_socket = socket.socket(socket.AF_UNIX)  # a live process's folder is kept
    live_pymp = Path(tempfile.mkdtemp(prefix="pymp-", dir=tmp_path))
    live_socket.bind(str(live_pymp / "listener-live"))
    seen_owner: list[dict] = []
    make_owned = workdirs.make_owned

    def spy(parent, prefix):  # reads the owner file as soon as it is written: no polling race under load
        path = make_owned(parent, prefix)
        if prefix == "ddp_job_":
            seen_owner.append(json.loads((path / workdirs.OWNER_FILE).read_text()))
        return path

    monkeypatch.setattr(workdirs, "make_owned", spy)
    graph, model = tricky_graph(), ModelSpec(kind="gcn", num_layers=2, hidden=8)
    params = init_params(model, graph.num_features, graph.num_classes, seed=0)
    try:
        ddp_fullgraph.train(graph, model, params, TrainSpec(epochs=3, progress=False, device="cpu"),
                            {"world_size": 1, "job_timeout_s": 120.0, "timeout_s": 30.0})
        assert seen_owner and seen_owner[0]["pid"] == os.getpid()
        assert not stale_job.exists() and not stale_pymp.exists() and live_pymp.is_dir()
        assert not list(tmp_path.glob("ddp_job_*"))  # its own job directory is gone at the end
    finally:
        live_socket.close()
