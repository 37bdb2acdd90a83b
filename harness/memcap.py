"""A hard memory cap on a whole process tree: a memory-limited control group, enforced by the kernel.

``detect()`` finds a mechanism that works on this machine, ``Mechanism.create(cap_bytes)`` makes a capped group,
``Group.command(argv)`` wraps a command so that it starts inside the group (its children inherit it),
``Group.usage()`` reads the group's meters (peak, OOM kills, limit hits), ``Group.kill()`` and ``Group.remove()``
clean up. Mechanisms, in order of preference:

1. ``cgroup2``: a child group with ``memory.max`` (and ``memory.swap.max = 0``) under the nearest group, from this
   process's own up to the hierarchy's root, that gives its children the memory controller and that this user may
   write: root, or a user inside a subtree delegated to them. (A group that holds processes cannot give its
   children controllers, cgroup2's no-internal-process rule; only the real root is exempt.)
2. ``cgroup1``: a child group of this process's memory-controller group with ``memory.limit_in_bytes`` (and
   ``memory.memsw.limit_in_bytes`` where swap accounting is on, so swap cannot stretch the cap): root.
3. ``systemd``: ``systemd-run --scope -p MemoryMax= -p MemorySwapMax=0`` (``--user`` when not root), where
   systemd runs the machine. systemd removes a scope's group when the job ends, so the job is wrapped in a small
   reporter (``python -m harness.memcap report FILE -- argv``) that reads the meters from inside before it exits.

The direct groups come first because the caller owns them: it reads the meters after the job ended, kills what is
left and removes the group; cgroup2 before cgroup1 because v1 is deprecated (and gone from current distributions).
No swap is allowed in any of them: the cap is memory the job may use, not memory plus swap.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

GROUP_PREFIX = "flexgnn-"
_START_IN_GROUP = 'echo $$ > "$0" && exec "$@"'  # sh: join the group (its cgroup.procs), then become the job


class MemcapUnavailable(RuntimeError):
    """No mechanism can cap memory here; the message says what each one lacks and how to get one."""


@dataclass(frozen=True)
class Host:
    """Where the machine's cgroup facts are read; tests point it at a fake tree (``fs_root`` prefixes mounts)."""

    proc_mounts: Path = Path("/proc/self/mounts")
    proc_cgroup: Path = Path("/proc/self/cgroup")
    fs_root: Path = Path("/")
    systemd_dir: Path = Path("/run/systemd/system")  # sd_booted(): systemd manages this machine
    systemd_run: str | None = field(default_factory=lambda: shutil.which("systemd-run"))
    euid: int = field(default_factory=os.geteuid)
    writable: Callable[[Path], bool] = lambda path: os.access(path, os.W_OK)

    def mount(self, fstype: str, option: str | None = None) -> Path | None:
        for line in self.proc_mounts.read_text().splitlines():
            _, point, kind, options = line.split()[:4]
            if kind == fstype and (option is None or option in options.split(",")):
                return self.fs_root / point.lstrip("/")
        return None

    def own_group(self, controller: str) -> str | None:
        """This process's group path in the hierarchy of ``controller`` ("" = cgroup2's unified hierarchy)."""
        for line in self.proc_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (controller == "" and controllers == "" and line.startswith("0:")) or \
                    (controller and controller in controllers.split(",")):
                return path
        return None


@dataclass(frozen=True)
class Usage:
    """A group's meters: peak bytes charged (None where the kernel has no peak file), OOM kills, limit hits."""

    peak_bytes: int | None
    oom_kills: int | None
    limit_hits: int | None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    return int(text.strip()) if text and text.strip().isdigit() else None


def _keyed(path: Path, key: str) -> int | None:
    """``key N`` from a flat keyed file such as ``memory.events`` or ``memory.oom_control``."""
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return None


def psi_full_avg10(text: str | None) -> float | None:
    """``full avg10`` of a pressure file (``/proc/pressure/memory``, cgroup2's ``memory.pressure``): the percentage
    of the last 10 s in which every task waited for memory; None where the kernel has no PSI."""
    for line in (text or "").splitlines():
        kind, *fields = line.split()
        if kind == "full":
            values = dict(field.split("=", 1) for field in fields)
            return float(values["avg10"]) if "avg10" in values else None
    return None


def cgroup2_usage(group: Path) -> Usage:
    return Usage(_int(group / "memory.peak"), _keyed(group / "memory.events", "oom_kill"),
                 _keyed(group / "memory.events", "max"))


def cgroup1_usage(group: Path) -> Usage:
    return Usage(_int(group / "memory.max_usage_in_bytes"), _keyed(group / "memory.oom_control", "oom_kill"),
                 _int(group / "memory.failcnt"))


@dataclass
class Group:
    """One capped group. ``path`` is its directory (cgroup1/2) or the reporter's file (systemd)."""

    mechanism: str
    cap_bytes: int
    path: Path
    unit: str | None = None  # systemd's scope name
    user: bool = False  # systemd --user

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped so that the process starts inside the group."""
        if self.mechanism == "systemd":
            return [*systemd_run_prefix(self.cap_bytes, self.unit, self.user), sys.executable, "-m", "harness.memcap",
                    "report", str(self.path), "--", *argv]
        return ["/bin/sh", "-c", _START_IN_GROUP, str(self.path / "cgroup.procs"), *argv]

    def usage(self) -> Usage:
        if self.mechanism == "cgroup2":
            return cgroup2_usage(self.path)
        if self.mechanism == "cgroup1":
            return cgroup1_usage(self.path)
        report = json.loads(_read(self.path) or "{}")
        if "error" in report:
            raise MemcapUnavailable(f"systemd scope {self.unit}: {report['error']}")
        return Usage(report.get("peak_bytes"), report.get("oom_kills"), report.get("limit_hits"))

    def charged(self) -> int | None:
        """Bytes charged to the group now (None for systemd's scope, whose files its reporter reads)."""
        name = {"cgroup2": "memory.current", "cgroup1": "memory.usage_in_bytes"}.get(self.mechanism)
        return _int(self.path / name) if name else None

    def stall(self) -> float | None:
        """PSI ``full avg10`` for the group: its own ``memory.pressure`` on cgroup2; on cgroup1, which has no
        per-group PSI, the machine's ``/proc/pressure/memory`` (read it only while the group is at its cap: then the
        group is what stalls); None for systemd's scope or a kernel without PSI."""
        if self.mechanism == "cgroup2":
            return psi_full_avg10(_read(self.path / "memory.pressure"))
        if self.mechanism == "cgroup1":
            return psi_full_avg10(_read(Path("/proc/pressure/memory")))
        return None

    def pids(self) -> list[int]:
        if self.mechanism == "systemd":
            return []
        return [int(pid) for pid in (_read(self.path / "cgroup.procs") or "").split()]

    def kill(self, timeout_s: float = 5.0) -> None:
        """SIGKILL every process still in the group and wait until it is empty (or ``timeout_s`` passed)."""
        if self.mechanism == "systemd":
            subprocess.run(["systemctl", *(["--user"] if self.user else []), "kill", "--signal=SIGKILL",
                            f"{self.unit}.scope"], capture_output=True)
            return
        deadline = time.monotonic() + timeout_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def remove(self) -> None:
        """Delete the group once empty (a cgroup directory is removed with rmdir, its files go with it)."""
        if self.mechanism == "systemd":
            self.path.unlink(missing_ok=True)
            return
        for _ in range(100):  # the kernel may need a moment after the last process exited
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)


def systemd_run_prefix(cap_bytes: int, unit: str | None, user: bool) -> list[str]:
    return ["systemd-run", "--scope", "--quiet", "--collect", *(["--user"] if user else []),
            *(["--unit", unit] if unit else []), "-p", f"MemoryMax={cap_bytes}", "-p", "MemorySwapMax=0", "--"]


@dataclass(frozen=True)
class Mechanism:
    """How to make a capped group here: ``kind`` (cgroup2, cgroup1, systemd) and the parent directory."""

    kind: str
    parent: Path | None
    description: str
    user: bool = False

    def create(self, cap_bytes: int, scratch_dir: Path | None = None) -> Group:
        """A new group capped at ``cap_bytes``; ``scratch_dir`` holds the systemd reporter's file."""
        name = f"{GROUP_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
        if self.kind == "systemd":
            report = Path(scratch_dir or "/tmp") / f"{name}.json"
            return Group("systemd", cap_bytes, report, unit=name, user=self.user)
        _remove_stale_groups(self.parent)
        path = self.parent / name
        path.mkdir()
        group = Group(self.kind, cap_bytes, path)
        try:
            if self.kind == "cgroup2":
                (path / "memory.max").write_text(str(cap_bytes))
                if (path / "memory.swap.max").exists():
                    (path / "memory.swap.max").write_text("0")
            else:
                (path / "memory.limit_in_bytes").write_text(str(cap_bytes))
                if (path / "memory.memsw.limit_in_bytes").exists():  # after the memory limit: memsw >= memory
                    (path / "memory.memsw.limit_in_bytes").write_text(str(cap_bytes))
        except OSError:
            group.remove()
            raise
        return group


def _remove_stale_groups(parent: Path) -> None:
    """Empty groups left by a harness that was killed (its pid is in the name) are removed."""
    for stale in parent.glob(f"{GROUP_PREFIX}*"):
        pid = stale.name[len(GROUP_PREFIX):].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and not (_read(stale / "cgroup.procs") or "").split():
            try:
                stale.rmdir()
            except OSError:
                pass


def _cgroup2(host: Host) -> Mechanism | str:
    mount = host.mount("cgroup2")
    if mount is None:
        return "no cgroup2 file system is mounted"
    own = host.own_group("")
    if own is None:
        return f"cgroup2 is mounted at {mount} but this process has no '0::' line in {host.proc_cgroup}"
    here = mount / own.lstrip("/")
    if "memory" not in (_read(here / "cgroup.controllers") or "").split():
        return (f"the memory controller is not enabled for this process's group {here} (cgroup.controllers: "
                f"'{(_read(here / 'cgroup.controllers') or '').strip()}'; on a hybrid system it is bound to cgroup v1)")
    for parent in [here, *here.parents]:  # the nearest group that gives its children the memory controller
        if parent != mount and mount not in parent.parents:
            break
        enabled = "memory" in (_read(parent / "cgroup.subtree_control") or "").split()
        if enabled and host.writable(parent):
            return Mechanism("cgroup2", parent, f"cgroup2 memory.max under {parent}")
        if parent == mount and host.writable(parent):
            try:  # the hierarchy's root may give its children memory; a namespace's root holding processes may not
                (parent / "cgroup.subtree_control").write_text("+memory")
            except OSError as error:
                return f"cannot enable the memory controller for the children of {parent} ({error})"
            return Mechanism("cgroup2", parent, f"cgroup2 memory.max under {parent}")
    return (f"no group from {here} up to {mount} is writable by uid {host.euid} with the memory controller "
            "enabled for its children (cgroup.subtree_control): cgroup2 needs root or a delegated subtree")


def _cgroup1(host: Host) -> Mechanism | str:
    mount = host.mount("cgroup", "memory")
    if mount is None:
        return "no cgroup v1 memory controller is mounted"
    own = host.own_group("memory") or "/"
    here = mount / own.lstrip("/")
    if not (here / "memory.limit_in_bytes").exists():
        return f"{here} (this process's memory group) has no memory.limit_in_bytes"
    if not host.writable(here):
        return f"{here} (this process's memory group) is not writable by uid {host.euid}: cgroup v1 needs root"
    return Mechanism("cgroup1", here, f"cgroup v1 memory.limit_in_bytes under {here}")


def _systemd(host: Host) -> Mechanism | str:
    if host.systemd_run is None:
        return "systemd-run is not installed"
    if not host.systemd_dir.is_dir():
        return f"systemd does not run this machine (no {host.systemd_dir})"
    user = host.euid != 0
    return Mechanism("systemd", None, f"systemd-run {'--user ' if user else ''}--scope -p MemoryMax=", user=user)


MECHANISMS = {"cgroup2": _cgroup2, "cgroup1": _cgroup1, "systemd": _systemd}


def detect(host: Host | None = None) -> Mechanism:
    """The first mechanism that works here, or ``MemcapUnavailable`` saying what each one is missing."""
    host = host or Host()
    reasons = []
    for kind, probe in MECHANISMS.items():
        try:
            found = probe(host)
        except OSError as error:
            found = f"cannot read the cgroup setup ({error})"
        if isinstance(found, Mechanism):
            return found
        reasons.append(f"  {kind}: {found}")
    raise MemcapUnavailable("no way to cap memory on this machine:\n" + "\n".join(reasons) + "\nFix: run as root "
                            "(cgroup v1 or v2), or from a delegated cgroup2 subtree (e.g. inside `systemd-run --user "
                            "--scope -p Delegate=yes bash`), or on a machine that systemd runs; or drop "
                            "hardware.memory_cap")


def report(report_path: Path, argv: list[str], host: Host | None = None) -> int:
    """Inside a systemd scope: run ``argv``, then write the scope's meters to ``report_path``; returns the job's
    exit status (a negative signal number when a signal ended it)."""
    host = host or Host()
    group = (host.mount("cgroup2") or Path("/sys/fs/cgroup")) / (host.own_group("") or "/").lstrip("/")
    limit = (_read(group / "memory.max") or "").strip()
    facts = {"group": str(group), "memory_max": limit}
    if not limit.isdigit():  # e.g. systemd --user without the memory controller delegated to the user's manager
        facts["error"] = (f"the scope's memory.max is '{limit or 'missing'}', so the cap is not enforced; "
                          "systemd must delegate the memory controller (systemd >= 244 does for user managers)")
        report_path.write_text(json.dumps(facts))
        return 1
    job = subprocess.Popen(argv)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: job.send_signal(number))
    returncode = job.wait()
    usage = cgroup2_usage(group)
    report_path.write_text(json.dumps({**facts, "returncode": returncode, "peak_bytes": usage.peak_bytes,
                                       "oom_kills": usage.oom_kills, "limit_hits": usage.limit_hits}))
    return returncode


def main(argv: list[str]) -> None:
    """``python -m harness.memcap report FILE -- COMMAND...``: what a systemd scope runs (``Group.command``)."""
    if argv[:1] != ["report"] or "--" not in argv or argv.index("--") != 2 or len(argv) < 4:
        sys.exit("usage: python -m harness.memcap report REPORT_FILE -- COMMAND [ARG...]")
    status = report(Path(argv[1]), argv[3:])
    sys.exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main(sys.argv[1:])
