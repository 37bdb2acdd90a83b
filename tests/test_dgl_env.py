"""DGL's environment made on first use (``baselines/dgl_env.py``): opt-out, pins, one creation under a lock, and a
failed creation that becomes a skip.

These tests exercise the orchestration only: the environment lives in tmp_path and the creation script is a tiny
stand-in that makes ``bin/python`` and the marker (or fails), so nothing is downloaded. The real script is exercised
by ``bash scripts/make_dgl_env.sh`` and ``pytest -m dgl``.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from baselines import dgl_env, dgl_fullgraph
from flexgnn_core.spec import SystemUnavailable

PINS = "fake-dgl==1.0 fake-torch<2"


@pytest.fixture(autouse=True)
def _fresh_process_memory(monkeypatch):
    monkeypatch.setattr(dgl_env, "_failed_here", {})  # what this process remembers of failed creations


@pytest.fixture
def stand_in(tmp_path):
    """A pins file and a creation script that counts its runs, optionally waits for ``release`` (so a test can hold
    it mid-creation), then makes ``$FLEXGNN_DGL_ENV/bin/python`` and the marker, or fails like pip without network."""
    pins_file = tmp_path / "pins.txt"
    pins_file.write_text("# a comment\nfake-dgl==1.0\n\nfake-torch<2  # trailing comment\n")
    script = tmp_path / "make_env.sh"
    script.write_text(textwrap.dedent(f"""\
        set -eu
        echo run >> {tmp_path}/runs
        touch {tmp_path}/started
        for _ in $(seq 1200); do [ -e {tmp_path}/hold ] && [ ! -e {tmp_path}/release ] && sleep 0.05; done
        if [ -e {tmp_path}/fail ]; then echo "ERROR: Could not find a version (no network)"; exit 1; fi
        mkdir -p "$FLEXGNN_DGL_ENV/bin" && ln -sf {sys.executable} "$FLEXGNN_DGL_ENV/bin/python"
        echo "step 1 of 1: done"
        echo "{PINS}" > "$FLEXGNN_DGL_ENV/{dgl_env.ENV_MARKER}"
        """))
    runs = tmp_path / "runs"
    return {"script": script, "pins_file": pins_file, "env": tmp_path / "dgl-env", "root": tmp_path,
            "runs": lambda: len(runs.read_text().splitlines()) if runs.exists() else 0}


def _ensure(stand_in, auto_install=True, stream=None):
    return dgl_env.ensure_python(stand_in["env"], auto_install=auto_install, script=stand_in["script"],
                                 pins_file=stand_in["pins_file"], stream=stream or io.StringIO())


def test_pins_file_is_read_as_the_script_writes_the_marker(stand_in):
    assert dgl_env.read_pins(stand_in["pins_file"]) == PINS
    assert dgl_env.read_pins().startswith("torch==2.2.1 dgl==2.1.0 ")  # the real pins, in the script's order


def test_missing_environment_is_created_once_with_progress_on_the_stream(stand_in):
    stream = io.StringIO()
    python = _ensure(stand_in, stream=stream)
    assert python == stand_in["env"] / "bin" / "python" and python.exists() and stand_in["runs"]() == 1
    shown = stream.getvalue()
    assert "Creating it now, once for this machine (about 2.9 GB to download, 5.3 GB on disk" in shown
    assert "system.auto_install=false or FLEXGNN_DGL_AUTO_INSTALL=0" in shown
    assert "] step 1 of 1: done" in shown and "[dgl-env] ready after" in shown
    assert _ensure(stand_in) == python and stand_in["runs"]() == 1  # complete: reused, not made again


def test_auto_install_off_refuses_with_the_command_and_runs_nothing(stand_in):
    with pytest.raises(dgl_env.DGLEnvironmentMissing, match="automatic creation is off") as error:
        _ensure(stand_in, auto_install=False)
    assert f"FLEXGNN_DGL_ENV={stand_in['env']} bash scripts/make_dgl_env.sh" in str(error.value)
    assert stand_in["runs"]() == 0 and not stand_in["env"].exists()


def test_environment_made_with_other_pins_counts_as_missing_and_is_remade(stand_in):
    _ensure(stand_in)
    (stand_in["env"] / dgl_env.ENV_MARKER).write_text("fake-dgl==0.9 fake-torch<2\n")
    assert "made with other pins" in dgl_env.missing_reason(stand_in["env"], PINS)
    _ensure(stand_in)
    assert stand_in["runs"]() == 2 and dgl_env.missing_reason(stand_in["env"], PINS) is None


def test_failed_creation_raises_a_system_unavailable_with_the_error_and_is_not_retried_here(stand_in):
    (stand_in["root"] / "fail").touch()
    with pytest.raises(SystemUnavailable) as error:
        _ensure(stand_in)
    message = str(error.value)
    assert "failed (exit code 1)" in message and "Could not find a version (no network)" in message
    assert f"FLEXGNN_DGL_ENV={stand_in['env']} bash scripts/make_dgl_env.sh" in message
    with pytest.raises(SystemUnavailable, match="not retried in this process"):
        _ensure(stand_in)  # a sweep's next DGL job: skipped at once, not another wait on the network
    assert stand_in["runs"]() == 1
    dgl_env._failed_here.clear()  # a later run (a new process) tries again, and succeeds once the cause is gone
    (stand_in["root"] / "fail").unlink()
    assert _ensure(stand_in).exists() and stand_in["runs"]() == 2
    assert not (stand_in["root"] / ".dgl-env.failed").exists()


def test_script_that_exits_zero_without_the_marker_is_a_failure(stand_in):
    stand_in["script"].write_text("echo 'pretending to work'\n")
    with pytest.raises(dgl_env.DGLEnvironmentMissing, match="exit code 0; missing or incomplete"):
        _ensure(stand_in)


def _job(stand_in, name: str) -> multiprocessing.Process:
    """Another job in its own process asking for the same environment; its stderr and outcome go to files."""
    root = stand_in["root"]

    def run() -> None:
        with (root / f"{name}.log").open("w", buffering=1) as log:
            try:
                outcome = f"ok {_ensure(stand_in, stream=log)}"
            except dgl_env.DGLEnvironmentMissing as error:
                outcome = f"error {error}"
        (root / f"{name}.out").write_text(outcome)

    job = multiprocessing.get_context("fork").Process(target=run)  # fork: no second interpreter start-up
    job.start()
    return job


def _wait_for(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("fails", [False, True])
def test_parallel_jobs_wait_on_the_lock_and_share_one_creation(stand_in, fails):
    root = stand_in["root"]
    (root / "hold").touch()  # the stand-in script waits for `release` once started
    if fails:
        (root / "fail").touch()
    first = _job(stand_in, "first")
    _wait_for((root / "started").exists, "the first job to start creating")  # it holds the lock now
    second = _job(stand_in, "second")
    log = root / "second.log"
    _wait_for(lambda: log.exists() and "waiting for another process" in log.read_text(), "the second job to wait")
    (root / "release").touch()
    for job in (first, second):
        job.join(60)
    outcomes = [(root / f"{name}.out").read_text() for name in ("first", "second")]
    assert stand_in["runs"]() == 1  # the second job reused the first one's environment, or its error
    if fails:
        assert all(outcome.startswith("error") and "no network" in outcome for outcome in outcomes)
        assert "the attempt this job waited for" in outcomes[1]
    else:
        assert outcomes == [f"ok {stand_in['env'] / 'bin' / 'python'}"] * 2


def test_auto_install_option_beats_the_environment_variable(monkeypatch):
    monkeypatch.delenv(dgl_env.AUTO_INSTALL_VAR, raising=False)
    assert dgl_env.auto_install_enabled(None) is True  # the default: made on first use
    for value, expected in (("0", False), ("false", False), ("No", False), ("1", True), ("yes", True)):
        monkeypatch.setenv(dgl_env.AUTO_INSTALL_VAR, value)
        assert dgl_env.auto_install_enabled(None) is expected
    monkeypatch.setenv(dgl_env.AUTO_INSTALL_VAR, "0")
    assert dgl_env.auto_install_enabled(True) is True
    monkeypatch.setenv(dgl_env.AUTO_INSTALL_VAR, "maybe")
    with pytest.raises(ValueError, match="FLEXGNN_DGL_AUTO_INSTALL='maybe': expected 1 or 0"):
        dgl_env.auto_install_enabled(None)


def test_preflight_creates_the_environment_or_reports_the_failure_as_unavailable(stand_in, monkeypatch):
    monkeypatch.setattr(dgl_env, "CREATE_SCRIPT", stand_in["script"])
    monkeypatch.setattr(dgl_env, "PINS_FILE", stand_in["pins_file"])
    (stand_in["root"] / "fail").touch()
    options = {"env_dir": str(stand_in["env"]), "auto_install": True}
    with pytest.raises(SystemUnavailable, match="no network"):  # a sweep records the job as skipped with this
        dgl_fullgraph.preflight(options)
    dgl_env._failed_here.clear()
    (stand_in["root"] / "fail").unlink()
    dgl_fullgraph.preflight(options)
    assert (stand_in["env"] / dgl_env.ENV_MARKER).read_text().strip() == PINS


def _real_script(env: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(dgl_env.CREATE_SCRIPT)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FLEXGNN_DGL_ENV": str(env), **extra}, check=False)


def test_real_script_refuses_to_replace_a_directory_that_is_not_an_environment(tmp_path):
    precious = tmp_path / "my-data"
    precious.mkdir()
    (precious / "results.csv").write_text("keep me")
    done = _real_script(precious)
    assert done.returncode == 3 and "is not a Python environment; not replacing it" in done.stderr
    assert (precious / "results.csv").read_text() == "keep me"


def test_real_script_stops_at_once_on_an_unsuitable_python(tmp_path):
    done = _real_script(tmp_path / "env", FLEXGNN_DGL_PYTHON=str(tmp_path / "no-python"))
    assert done.returncode == 2 and "needs Python 3.8-3.12" in done.stderr and "FLEXGNN_DGL_PYTHON" in done.stderr
    assert not (tmp_path / "env").exists()
