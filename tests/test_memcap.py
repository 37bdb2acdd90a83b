"""The memory-cap mechanism (harness/memcap.py): detection on fake cgroup trees, the systemd reporter, and real
capped groups where this machine can make them (skipped loudly, with the reason, where it cannot)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import memcap

ALLOCATE = "import sys; b = bytearray(int(sys.argv[1])); b[::4096] = b'x' * len(b[::4096])"  # touch every page


def fake_host(root: Path, *, v1: bool = True, v2_controllers: str = "hugetlb", v2_path: str = "/",
              v2_enabled_at: str | None = None, systemd: bool = False, euid: int = 0) -> memcap.Host:
    """A cgroup tree under ``root`` shaped like a real one: mounts, this process's groups, the control files."""
    mounts = ["proc /proc proc rw 0 0", "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0"]
    own = ["0::" + v2_path]
    unified = root / "sys/fs/cgroup/unified"
    here = unified / v2_path.lstrip("/")
    here.mkdir(parents=True)
    for group in [here, *here.parents]:
        if unified in group.parents or group == unified:
            (group / "cgroup.controllers").write_text(v2_controllers + "\n")
            (group / "cgroup.subtree_control").write_text("")
    if v2_enabled_at is not None:
        (unified / v2_enabled_at.lstrip("/") / "cgroup.subtree_control").write_text("cpu memory\n")
    if v1:
        mounts.append("cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,relatime,memory 0 0")
        own.insert(0, "4:memory:/jobs/me")
        (root / "sys/fs/cgroup/memory/jobs/me").mkdir(parents=True)
        (root / "sys/fs/cgroup/memory/jobs/me/memory.limit_in_bytes").write_text("9223372036854771712\n")
    (root / "mounts").write_text("\n".join(mounts) + "\n")
    (root / "cgroup").write_text("\n".join(own) + "\n")
    if systemd:
        (root / "run/systemd/system").mkdir(parents=True)
    return memcap.Host(proc_mounts=root / "mounts", proc_cgroup=root / "cgroup", fs_root=root,
                       systemd_dir=root / "run/systemd/system", systemd_run="/usr/bin/systemd-run" if systemd else None,
                       euid=euid)


def test_hybrid_machine_without_v2_memory_controller_picks_cgroup1(tmp_path):
    # This machine's shape: cgroup2 mounted with hugetlb only (memory is bound to v1), v1 memory writable by root.
    mechanism = memcap.detect(fake_host(tmp_path))
    assert mechanism.kind == "cgroup1" and mechanism.parent == tmp_path / "sys/fs/cgroup/memory/jobs/me"


def test_delegated_cgroup2_is_preferred_and_the_group_goes_under_the_delegating_ancestor(tmp_path):
    host = fake_host(tmp_path, v2_controllers="cpu memory pids", v2_path="/user.slice/me.service/app.scope",
                     v2_enabled_at="/user.slice/me.service")
    mechanism = memcap.detect(host)
    assert mechanism.kind == "cgroup2"
    assert mechanism.parent == tmp_path / "sys/fs/cgroup/unified/user.slice/me.service"  # app.scope holds processes


def test_cgroup2_without_delegation_falls_through_and_root_uses_the_hierarchy_root(tmp_path):
    # A desktop: the memory controller reaches the login session's scope, but that scope holds processes (so it
    # cannot enable memory for children) and nothing writable above it delegates it.
    session = "/user.slice/user-1000.slice/session-1.scope"
    host = fake_host(tmp_path, v1=False, v2_controllers="cpu memory pids", v2_path=session,
                     v2_enabled_at="/user.slice/user-1000.slice", systemd=True, euid=1000)
    user = dataclasses.replace(host, writable=lambda path: False)
    assert "cgroup2 needs root or a delegated subtree" in memcap._cgroup2(user)
    mechanism = memcap.detect(user)
    assert mechanism.kind == "systemd" and mechanism.user
    # root may write anywhere: the nearest ancestor that enables memory for its children holds the group
    root = dataclasses.replace(host, euid=0, writable=lambda path: True)
    assert memcap.detect(root).parent == tmp_path / "sys/fs/cgroup/unified/user.slice/user-1000.slice"


def test_cgroup2_root_that_cannot_give_children_memory_falls_through(tmp_path):
    # A container's namespace root holds its processes, so enabling memory for children fails (EBUSY there; a
    # directory in place of the control file here), and the next mechanism is asked.
    host = fake_host(tmp_path, v2_controllers="memory", v2_path="/")
    control = tmp_path / "sys/fs/cgroup/unified/cgroup.subtree_control"
    control.unlink()
    control.mkdir()
    assert "cannot enable the memory controller for the children of" in memcap._cgroup2(host)
    assert memcap.detect(host).kind == "cgroup1"


def test_groups_are_created_with_the_cap_in_the_mechanisms_own_file(tmp_path):
    v1 = memcap.detect(fake_host(tmp_path / "a")).create(3 * 2**30)
    assert (v1.path / "memory.limit_in_bytes").read_text() == str(3 * 2**30) and v1.path.name.startswith("flexgnn-")
    host = fake_host(tmp_path / "b", v1=False, v2_controllers="memory", v2_path="/job", v2_enabled_at="/")
    v2 = memcap.detect(host).create(2**30)
    assert v2.path.parent == tmp_path / "b/sys/fs/cgroup/unified"
    assert (v2.path / "memory.max").read_text() == "1073741824"
    assert v2.command(["python", "x.py"]) == ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"',
                                              str(v2.path / "cgroup.procs"), "python", "x.py"]
    (v2.path / "memory.peak").write_text("5000\n")
    (v2.path / "memory.events").write_text("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n")
    assert v2.usage() == memcap.Usage(5000, 1, 2)


def test_systemd_scope_wraps_the_job_in_the_reporter_with_the_cap_and_no_swap(tmp_path):
    mechanism = memcap.detect(fake_host(tmp_path, v1=False, systemd=True, euid=1000))
    group = mechanism.create(512 * 2**20, tmp_path)
    command = group.command(["python", "-m", "harness.capped", "JOB"])
    assert command[:4] == ["systemd-run", "--scope", "--quiet", "--collect"] and "--user" in command
    assert "MemoryMax=536870912" in command and "MemorySwapMax=0" in command
    assert command[command.index("--") + 1:] == [sys.executable, "-m", "harness.memcap", "report", str(group.path),
                                                 "--", "python", "-m", "harness.capped", "JOB"]


def test_no_mechanism_is_a_clear_error_naming_what_each_one_lacks(tmp_path):
    with pytest.raises(memcap.MemcapUnavailable) as caught:
        memcap.detect(fake_host(tmp_path, v1=False))
    message = str(caught.value)
    assert "cgroup2: the memory controller is not enabled" in message and "cgroup.controllers: 'hugetlb'" in message
    assert "cgroup1: no cgroup v1 memory controller is mounted" in message
    assert "systemd: systemd-run is not installed" in message and "Fix: run as root" in message


def test_reporter_runs_the_job_and_reads_the_scope_meters(tmp_path):
    host = fake_host(tmp_path, v1=False, v2_controllers="memory", v2_path="/run-x.scope")
    scope = tmp_path / "sys/fs/cgroup/unified/run-x.scope"
    (scope / "memory.max").write_text("1073741824\n")
    (scope / "memory.peak").write_text("123456789\n")
    (scope / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n")
    report = tmp_path / "report.json"
    assert memcap.report(report, [sys.executable, "-c", "raise SystemExit(3)"], host) == 3
    facts = json.loads(report.read_text())
    assert (facts["returncode"], facts["peak_bytes"], facts["oom_kills"], facts["limit_hits"]) == (3, 123456789, 1, 7)
    group = memcap.Group("systemd", 2**30, report, unit="run-x")
    assert group.usage() == memcap.Usage(123456789, 1, 7)

    (scope / "memory.max").write_text("max\n")  # the controller is not delegated: the cap would not hold
    assert memcap.report(report, [sys.executable, "-c", "raise SystemExit(0)"], host) == 1
    with pytest.raises(memcap.MemcapUnavailable, match="memory.max is 'max', so the cap is not enforced"):
        group.usage()


def test_real_group_kills_a_job_over_the_cap_and_counts_it(memcap_mechanism):
    group = memcap_mechanism.create(64 * 2**20)
    try:
        done = subprocess.run(group.command([sys.executable, "-c", ALLOCATE, str(256 * 2**20)]), timeout=60)
        usage = group.usage()
    finally:
        group.kill()
        group.remove()
    assert done.returncode == -9 and usage.oom_kills == 1
    assert usage.peak_bytes is None or 0 < usage.peak_bytes <= 64 * 2**20
    assert not group.path.exists() or group.mechanism == "systemd"  # removed


def test_real_group_meters_a_job_under_the_cap(memcap_mechanism):
    group = memcap_mechanism.create(1024 * 2**20)
    try:
        done = subprocess.run(group.command([sys.executable, "-c", ALLOCATE, str(200 * 2**20)]), timeout=60)
        usage = group.usage()
    finally:
        group.remove()
    assert done.returncode == 0 and usage.oom_kills == 0
    assert usage.peak_bytes is None or 200 * 2**20 <= usage.peak_bytes <= 1024 * 2**20  # the child was in the group
