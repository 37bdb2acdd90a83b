"""The planner never plans more than the machine holds, and a budget some P meets is never refused by default.

- ``flexgnn_core.machine`` reads the memory a run may take (``MemAvailable``, a memory cgroup's limit minus its
  usage, a margin kept free), checked here on fake /proc and /sys trees for cgroup v1 and v2;
- with no budget given, the flexgnn system bounds device + host by that room (a machine made to look small through
  ``FLEXGNN_MEMORY_ROOM_BYTES`` spills to disk and stays within it, by the engine's own counters);
- the default planner picks P: a device budget that the fixed P=4 cannot meet is met at a larger P; a budget no P
  meets is an infeasible result that says so.
"""

from __future__ import annotations

import pytest
import torch

from flexgnn_core import machine, system
from flexgnn_core.data import load_dataset
from flexgnn_core.models import init_params
from flexgnn_core.spec import ModelSpec, TrainSpec

GRAPH = load_dataset("synthetic", num_nodes=3000, avg_degree=6.0, num_features=32, num_classes=4)
MODEL = ModelSpec(kind="gcn", num_layers=2, hidden=64)
PARAMS = init_params(MODEL, GRAPH.num_features, GRAPH.num_classes, seed=0)
TRAIN = TrainSpec(epochs=2, warmup_epochs=0, progress=False, device="cpu")


def _train(**options):
    return system.train(GRAPH, MODEL, PARAMS, TRAIN, {"print_plan": False, "hardware": "h200", **options})


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_limit_minus_usage_of_the_tightest_ancestor(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("9:cpu:/\n4:memory:/job/step\n0::/\n")
    root = tmp_path / "sys"
    _write(root / "memory" / "job" / "step" / "memory.limit_in_bytes", str(2**63 - 4096))  # unlimited
    _write(root / "memory" / "job" / "step" / "memory.usage_in_bytes", "100")
    _write(root / "memory" / "job" / "memory.limit_in_bytes", str(1000))
    _write(root / "memory" / "job" / "memory.usage_in_bytes", "400")
    assert machine.cgroup_room(proc, root) == 600


def test_cgroup_v2_max_and_current(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/user.slice/job\n")
    root = tmp_path / "sys"
    _write(root / "cgroup.controllers", "memory cpu")
    _write(root / "user.slice" / "job" / "memory.max", "5000")
    _write(root / "user.slice" / "job" / "memory.current", "1500")
    _write(root / "user.slice" / "memory.max", "max")
    _write(root / "user.slice" / "memory.current", "9999")
    assert machine.cgroup_room(proc, root) == 3500
    proc.write_text("0::/\n")
    assert machine.cgroup_room(proc, root) is None  # the root has no limit files: unlimited


def test_a_groups_clean_page_cache_is_not_counted_as_used(tmp_path):
    """Mapped graph pages and other clean page cache are dropped by the kernel before it kills the job: v2 counts
    file pages less tmpfs (shmem), dirty and writeback ones as reclaimable; v1 its total_cache less the same."""
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job\n")
    root = tmp_path / "sys"
    _write(root / "cgroup.controllers", "memory")
    _write(root / "job" / "memory.max", "5000")
    _write(root / "job" / "memory.current", "4000")
    _write(root / "job" / "memory.stat", "anon 1000\nfile 2900\nshmem 300\nfile_dirty 100\nfile_writeback 50\n")
    assert machine.cgroup_room(proc, root) == 5000 - (4000 - (2900 - 300 - 100 - 50))
    proc.write_text("4:memory:/job\n")
    _write(root / "memory" / "job" / "memory.limit_in_bytes", "5000")
    _write(root / "memory" / "job" / "memory.usage_in_bytes", "4000")
    _write(root / "memory" / "job" / "memory.stat", "cache 10\ntotal_cache 2000\ntotal_shmem 0\ntotal_dirty 500\n"
           "total_writeback 0\n")
    assert machine.cgroup_room(proc, root) == 5000 - (4000 - 1500)
    _write(root / "memory" / "job" / "memory.stat", "")  # unreadable statistics: usage as read
    assert machine.cgroup_room(proc, root) == 1000


def test_a_cap_is_compared_with_what_the_process_cannot_drop(tmp_path, monkeypatch):
    status = tmp_path / "status"
    status.write_text("VmRSS:\t 900 kB\nRssAnon:\t 500 kB\nRssFile:\t 350 kB\nRssShmem:\t 50 kB\n")
    assert machine.held_bytes(status) == 550 * 1024
    status.write_text("VmRSS:\t 900 kB\n")  # no split (old kernels): the whole RSS
    assert machine.held_bytes(status) > 0
    monkeypatch.delenv(machine.ROOM_ENV, raising=False)
    monkeypatch.setattr(machine, "held_bytes", lambda: 300 * 2**20)
    monkeypatch.setattr(machine, "cgroup_room", lambda: None)
    room = machine.memory_room(cap_bytes=2**30)
    assert room.source == "hardware.memory_cap" and room.bytes == 2**30 - 300 * 2**20 - machine.MIN_MARGIN


def test_memory_room_takes_the_least_reading_and_keeps_a_margin(monkeypatch):
    monkeypatch.delenv(machine.ROOM_ENV, raising=False)
    monkeypatch.setattr(machine, "mem_available", lambda: 10 * 2**30)
    monkeypatch.setattr(machine, "cgroup_room", lambda: 4 * 2**30)
    room = machine.memory_room()
    assert room.source == "memory cgroup" and room.margin_bytes == max(machine.MIN_MARGIN, 4 * 2**30 // 20)
    assert room.bytes == 4 * 2**30 - room.margin_bytes
    monkeypatch.setattr(machine, "cgroup_room", lambda: None)
    assert machine.memory_room().source == "MemAvailable"
    monkeypatch.setenv(machine.ROOM_ENV, "12345")
    assert machine.memory_room() == machine.Room(12345, 0, f"${machine.ROOM_ENV}")


def test_a_machine_made_small_gets_a_plan_within_its_memory(monkeypatch, tmp_path):
    roomy = _train(policy="optimal")
    everything = roomy.tier_peak_bytes["device"] + roomy.tier_peak_bytes["host"]
    # the budget is the room plus what is already resident or released before training (the graph blocks, the
    # model's CSR); a machine whose room leaves device + host at 60% of what all on the device takes:
    monkeypatch.setenv(machine.ROOM_ENV, "0")
    resident = _train(policy="all_disk", num_chunks=4).extra["machine_budgets"]["memory_budget_bytes"]
    room = int(0.6 * everything) - resident
    assert room > 0
    monkeypatch.setenv(machine.ROOM_ENV, str(room))
    small = _train(policy="optimal", disk_dir=str(tmp_path))
    assert small.status == "ok", small.reason
    assert small.extra["machine_budgets"]["memory_budget_bytes"] >= room
    budget = small.plan["memory_budget_bytes"]
    assert small.tier_peak_bytes["device"] + small.tier_peak_bytes["host"] <= budget  # the engine's own counters
    assert small.io_bytes["disk_write"] > 0  # what did not fit went to disk
    torch.testing.assert_close(torch.tensor(small.epoch_losses), torch.tensor(roomy.epoch_losses), rtol=1e-5, atol=0)


def test_the_default_planner_picks_a_p_that_meets_a_budget_the_fixed_p_cannot(tmp_path):
    fixed = _train(num_chunks=4, device_budget_fraction=0.1, disk_dir=str(tmp_path))
    assert fixed.status == "infeasible" and "minimum for P=4" in fixed.reason
    chosen = _train(device_budget_fraction=0.1, disk_dir=str(tmp_path))  # num_chunks null: the planner picks P
    assert chosen.status == "ok" and chosen.plan["num_chunks"] > 4 and chosen.extra["search_p"]
    assert chosen.tier_peak_bytes["device"] <= chosen.plan["device_budget_bytes"]


def test_a_budget_too_small_for_any_p_is_refused_saying_what_is_missing():
    refused = _train(device_budget_bytes=1000)
    assert refused.status == "infeasible" and not refused.epoch_losses
    assert "no P in 1..1024 fits" in refused.reason and "minimum for P=1024" in refused.reason


@pytest.mark.parametrize("policy", ["flexgnn_greedy", "hongtu_like", "all_host"])
def test_every_solver_searches_p_by_default(policy, tmp_path):
    result = _train(policy=policy, device_budget_fraction=0.2, disk_dir=str(tmp_path))
    if result.status == "ok":
        assert result.tier_peak_bytes["device"] <= result.plan["device_budget_bytes"]
    else:  # a rule that cannot meet the budget at any P says so
        assert "no P in" in result.reason
