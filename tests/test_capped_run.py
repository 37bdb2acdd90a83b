"""Runs under ``hardware.memory_cap`` (harness/capped.py): out of memory is a recorded result, a job that fits
reports the kernel's meter, DDP ranks killed under the cap end the job quickly as ``oom``; plus the pure parts (the
allocator messages, the device cap's fraction) that need no cgroup. Real caps are skipped loudly where none works."""

from __future__ import annotations

import json
import time

import pytest
import torch

from flexgnn_core.memory import DEVICE_CAP_ENV, cap_device_memory, device_memory_fraction
from harness import capped, memcap
from harness.config import ConfigError
from harness.run import run

TINY = ["+debug=fast", "train.epochs=2"]


def test_python_and_torch_allocation_failures_are_out_of_memory_with_the_bytes_asked():
    with pytest.raises(MemoryError) as python_error:
        bytearray(2**62)
    assert capped.is_out_of_memory(f"{type(python_error.value).__name__}: {python_error.value}")
    with pytest.raises(RuntimeError) as torch_error:
        torch.empty(2**50, dtype=torch.uint8)
    text = f"RuntimeError: {torch_error.value}"
    assert capped.is_out_of_memory(text)
    assert capped.allocation_facts(text) == {"requested_bytes": 2**50, "in_use_bytes": None, "needed_bytes_min": 2**50}
    # torch's CUDA message (c10/cuda/CUDACachingAllocator.cpp) under a per-process fraction
    cuda = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
            "139.72 GiB of which 120.00 GiB is free. Of the allocated memory 1.50 GiB is allocated by PyTorch, and "
            "20.00 MiB is reserved by PyTorch but unallocated.")
    assert capped.allocation_facts(cuda) == {"requested_bytes": 2 * 2**30, "in_use_bytes": 3 * 2**29,
                                             "needed_bytes_min": 7 * 2**29}
    assert capped.is_out_of_memory("ddp job failed: rank 1 raised MemoryError: \n(rank 1 exited with code 1)")
    assert capped.is_out_of_memory("OSError: [Errno 12] Cannot allocate memory")  # fork or mmap under the cap
    assert not capped.is_out_of_memory("ValueError: system.world_size=0 must be an integer >= 1 (memory.py)")
    assert not capped.is_out_of_memory('  File "x.py", line 3, in f\n    except MemoryError:\nKeyError: 3')


def test_device_cap_is_a_fraction_of_the_device_and_only_ever_set_on_cuda(monkeypatch):
    assert device_memory_fraction(2**30, 4 * 2**30) == 0.25
    assert device_memory_fraction(8 * 2**30, 4 * 2**30) == 1.0  # a budget above the device: the whole device
    with pytest.raises(ValueError, match="positive"):
        device_memory_fraction(0, 2**30)
    monkeypatch.setenv(DEVICE_CAP_ENV, str(2**20))
    assert cap_device_memory(torch.device("cpu")) is None  # no allocator cap to set on CPU
    monkeypatch.delenv(DEVICE_CAP_ENV)
    assert cap_device_memory(torch.device("cuda:0")) is None  # no budget: nothing capped (and CUDA never touched)


def test_psi_full_stall_is_read_from_the_pressure_files_format():
    text = ("some avg10=65.40 avg60=65.18 avg300=61.32 total=528933345\n"
            "full avg10=63.19 avg60=63.30 avg300=59.74 total=516065519\n")  # /proc/pressure/memory, as measured
    assert memcap.psi_full_avg10(text) == 63.19
    assert memcap.psi_full_avg10("some avg10=1.00 avg60=0 avg300=0 total=1\n") is None  # no "full" line
    assert memcap.psi_full_avg10(None) is None  # a kernel without PSI


class _Meters:
    """A group whose meters a test sets: ``stall`` (PSI full avg10) and ``charged`` bytes; ``kill`` ends ``child``."""

    def __init__(self, stall: float | None, charged: int | None):
        self.stall_value, self.charged_value, self.child, self.killed = stall, charged, None, 0

    def stall(self) -> float | None:
        return self.stall_value

    def charged(self) -> int | None:
        return self.charged_value

    def kill(self) -> None:
        self.killed += 1
        self.child.kill()


@pytest.mark.parametrize("stall, charged, thrashes", [
    (63.0, 1000, True),  # at the cap, stalled: killed after FLEXGNN_THRASH_S
    (63.0, 500, False),  # stalled but far below the cap: the machine's pressure, not this job's
    (10.0, 1000, False),  # at the cap but progressing (page cache at the limit is normal)
    (None, 1000, False),  # no PSI on this kernel: no watchdog
])
def test_a_job_that_thrashes_at_its_cap_is_killed_and_out_of_memory(monkeypatch, stall, charged, thrashes):
    import subprocess
    import sys

    monkeypatch.setenv(capped.THRASH_ENV, "0.3")
    run = capped.CappedRun(1000, memcap.Mechanism("cgroup1", None, "test"))
    group = _Meters(stall, charged)
    group.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    started = time.monotonic()
    returncode, thrash = run._wait(group.child, group, poll_s=0.05)
    if not thrashes:
        assert (returncode, thrash, group.killed) == (0, None, 0) and time.monotonic() - started >= 1.4
        return
    assert returncode < 0 and group.killed == 1 and time.monotonic() - started < 1.4
    assert thrash["stall_full_avg10"] == 63.0 and thrash["thrashing_s"] >= 0.3 and thrash["charged_bytes"] == 1000
    with pytest.raises(capped.OutOfMemory, match="thrashed at the cap .*63% of the time.*FLEXGNN_THRASH_S=0"):
        run._decide(returncode, memcap.Usage(1000, 0, 5), None, thrash)
    assert run.facts["oom_by"] == "thrashing" and run.facts["thrash"] == thrash


@pytest.mark.gpu
def test_device_cap_makes_an_allocation_past_the_budget_fail():
    device = torch.device("cuda:0")
    fraction = cap_device_memory(device, 256 * 2**20)
    try:
        assert fraction == pytest.approx(256 * 2**20 / torch.cuda.get_device_properties(0).total_memory)
        with pytest.raises(torch.OutOfMemoryError) as caught:
            torch.empty(512 * 2**20, dtype=torch.uint8, device=device)
        assert capped.allocation_facts(str(caught.value))["requested_bytes"] == 512 * 2**20
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)


def test_bad_cap_and_no_mechanism_are_config_errors_naming_the_field(compose, harness_dirs, monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="'hardware.memory_cap': cannot read 'lots'"):
        run(compose([*TINY, "hardware.memory_cap=lots"]))
    with pytest.raises(ConfigError, match="'hardware.memory_cap': with system.launch=env"):
        run(compose([*TINY, "system=ddp", "system.launch=env", "hardware.memory_cap=1GiB"]))
    (tmp_path / "mounts").write_text("proc /proc proc rw 0 0\n")
    (tmp_path / "cgroup").write_text("0::/\n")
    nowhere = memcap.Host(proc_mounts=tmp_path / "mounts", proc_cgroup=tmp_path / "cgroup", systemd_run=None)
    monkeypatch.setattr(memcap, "Host", lambda: nowhere)
    with pytest.raises(ConfigError, match="(?s)'hardware.memory_cap': no way to cap memory.*no cgroup2 file system"):
        run(compose([*TINY, "hardware.memory_cap=1GiB"]))
    assert not harness_dirs.runs_dir.exists()  # refused before anything was recorded


def test_job_over_a_small_cap_is_an_oom_record_and_a_finished_mlflow_run(compose, harness_dirs, mlflow_client,
                                                                         memcap_mechanism):
    record = run(compose([*TINY, "hardware.memory_cap=150MiB"]))  # python + torch alone need more
    assert record["status"] == "oom" and record["result"] is None
    assert "out of memory under hardware.memory_cap=157286400 bytes" in record["error"]
    facts = record["memory_cap"]
    assert facts["cap_bytes"] == 150 * 2**20 and facts["oom_by"] == "kernel" and facts["oom_kills"] >= 1
    assert record["config"]["hardware"]["memory_cap"] == "150MiB"
    (stable,) = (harness_dirs.runs_dir / "records").glob("*.json")  # kept like an ok record: a result
    assert json.loads(stable.read_text()) == record
    found = mlflow_client.get_run(record["tracking"]["run_id"])
    assert found.info.status == "FINISHED" and found.data.tags["status"] == "oom"
    assert found.data.metrics["mem/memory_cap_bytes"] == 150 * 2**20


@pytest.mark.slow
def test_allocator_refusal_in_the_capped_job_is_oom_with_the_bytes_asked(compose, memcap_mechanism):
    # 16 features x 2e9 hidden floats: one 128 GB weight, which the kernel refuses outright (no overcommit of that)
    record = run(compose([*TINY, "hardware.memory_cap=4GiB", "model.hidden=2000000000", "mlflow.enabled=false"]))
    assert record["status"] == "oom" and record["memory_cap"]["oom_by"] == "allocator"
    assert record["memory_cap"]["requested_bytes"] == 16 * 2_000_000_000 * 4
    assert "can't allocate memory" in record["error"]


def test_job_under_a_generous_cap_reports_the_kernels_peak(compose, mlflow_client, memcap_mechanism):
    record = run(compose([*TINY, "hardware.memory_cap=3GiB"]))
    assert record["status"] == "ok"
    peak = record["result"]["peak_bytes"]
    # the child imported torch and trained in the group: well over 50 MB charged, and never over the cap
    assert 50 * 2**20 < peak["job"] <= 3 * 2**30 and peak["job"] == record["memory_cap"]["peak_bytes"]
    assert record["memory_cap"]["oom_kills"] == 0
    assert record["memory_cap"]["allocator"] == capped.CAPPED_MALLOC  # what the child ran with
    found = mlflow_client.get_run(record["tracking"]["run_id"])
    assert found.data.metrics["mem/job_peak_bytes"] == peak["job"]


@pytest.mark.slow
def test_ddp_rank_killed_under_the_cap_ends_the_job_as_oom_within_seconds(compose, memcap_mechanism):
    # GAT with 16 heads x 256 hidden on 40k nodes: each rank's activations (about 1 GB) outgrow the cap while the
    # harness's child holding the small graph does not, so the kernel kills a rank; the collective timeout is 300 s.
    # (At 20k nodes, about 0.5 GB a rank, the job fitted 1 GiB in one CI run of two.)
    start = time.monotonic()
    record = run(compose([*TINY, "system=ddp", "model=gat", "model.heads=16", "model.hidden=256",
                          "dataset.num_nodes=40000", "dataset.avg_degree=20", "system.partition=contiguous",
                          "system.timeout_s=300", "hardware.memory_cap=1GiB", "mlflow.enabled=false"]))
    assert record["status"] == "oom" and record["memory_cap"]["oom_kills"] >= 1
    assert "without an error record" in record["memory_cap"]["job_error"]  # a rank died, the supervisor noticed
    assert time.monotonic() - start < 120  # seconds after the kill, not the collective timeout


@pytest.mark.slow
def test_sweep_records_an_oom_job_and_goes_on(run_harness, harness_dirs, mlflow_client, memcap_mechanism):
    done = run_harness("+sweep=speedup", "+debug=fast", "hydra.sweeper.only=in_memory", "system=pyg", "model=gcn",
                       "dataset.avg_degree=3", "hardware.memory_cap=150MiB,3GiB")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted((harness_dirs.runs_dir / "sweeps").glob("*/*/record.json"))]
    assert [(r["config"]["hardware"]["memory_cap"], r["status"]) for r in records] == [("150MiB", "oom"),
                                                                                        ("3GiB", "ok")]
    (sweep_dir,) = (harness_dirs.runs_dir / "sweeps").iterdir()
    parent = mlflow_client.get_run((sweep_dir / "mlflow_parent_run_id.txt").read_text().strip())
    assert parent.info.status == "FINISHED" and parent.data.tags["oom_jobs"] == "1"
    assert "oom" in (sweep_dir / "summary.md").read_text()


@pytest.mark.dgl
def test_dgl_worker_killed_under_the_cap_is_oom(compose, memcap_mechanism):
    # GAT, 8 heads x 256 hidden on 150k nodes: the worker's activations outgrow the cap; the kernel kills the worker
    # (a process the harness's child started), and the job ends as oom. (At 50k nodes the job fitted in 800 MiB once
    # capped jobs gave freed memory back: harness.capped.CAPPED_MALLOC.)
    record = run(compose([*TINY, "system=dgl", "model=gat", "model.heads=8", "model.hidden=256",
                          "dataset.num_nodes=150000", "dataset.avg_degree=10", "hardware.memory_cap=800MiB",
                          "mlflow.enabled=false"]))
    assert record["status"] == "oom" and record["memory_cap"]["oom_kills"] >= 1
    assert "DGL worker" in record["memory_cap"]["job_error"]


def test_the_systems_that_run_the_native_kernel_say_so(monkeypatch):
    """The harness builds ``flexgnn_core.native`` before a capped job of a system that declares ``NATIVE_KERNELS``
    (g++ needs about 1 GB: under a small cap the build itself would be the job's OOM)."""
    from harness.systems import uses_native

    assert [name for name in ("pyg", "flexgnn", "ddp") if uses_native(name)] == ["flexgnn", "ddp"]
    asked = []
    monkeypatch.setattr("flexgnn_core.native.describe", lambda: asked.append(1) or "native")

    class Refused(Exception):
        pass

    class Mechanism:
        description = "test"

        def create(self, cap, job_dir):
            raise Refused  # the group would be made here: the kernel must be ready before it

    for system, built in (("pyg", []), ("ddp", [1])):
        asked.clear()
        with pytest.raises(Refused):
            capped.CappedRun(cap_bytes=2**30, mechanism=Mechanism()).train({"system": {"name": system}})
        assert asked == built


def test_a_capped_job_gives_freed_memory_back_unless_the_user_chose_otherwise(monkeypatch):
    """glibc keeps freed blocks of up to 32 MiB in the heap by default, which a cap charges like live data (901 vs
    717 MiB anonymous peak on the 600k-node memory-wall job): the capped child runs with a fixed 4 MiB threshold."""
    for key in capped.CAPPED_MALLOC:
        monkeypatch.delenv(key, raising=False)
    run_ = capped.CappedRun(cap_bytes=2**30, mechanism=None)
    env = run_._child_env()
    assert {key: env[key] for key in capped.CAPPED_MALLOC} == {"MALLOC_MMAP_THRESHOLD_": "4194304",
                                                                 "MALLOC_TRIM_THRESHOLD_": "4194304"}
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert run_._child_env()["MALLOC_TRIM_THRESHOLD_"] == "0"  # the user's setting wins
