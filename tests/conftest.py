"""Harness fixtures: a real MLflow sqlite store and a runs directory in tmp_path, and config composition."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from flexgnn_core.machine import cores

REPO_ROOT = Path(__file__).resolve().parent.parent
# The flexgnn planner bounds every plan by the memory this machine has free now (flexgnn_core.machine), a reading
# that moves between two runs; tests that compare plans need it fixed: 16 GiB unless a test sets its own
# (tests/test_machine.py reads the real one).
os.environ.setdefault("FLEXGNN_MEMORY_ROOM_BYTES", str(16 * 2**30))
# The test suite never downloads DGL's 5 GB environment: a test that reaches a missing one sees it skipped or
# refused, as with auto-install off. `pytest -m dgl` needs it made beforehand (bash scripts/make_dgl_env.sh); tests
# of the first-use creation pass auto_install and a stand-in script explicitly (tests/test_dgl_env.py).
os.environ["FLEXGNN_DGL_AUTO_INSTALL"] = "0"
# Under pytest-xdist (the default: ``-n auto`` in pyproject.toml's addopts, workers as below) every worker is a
# process of its own: each gets an equal share of the cores for torch's intra-op threads, so two workers on 2 cores
# do not wait at each other's OpenMP barriers. Subprocesses started by tests inherit the share (OMP_NUM_THREADS).
MAX_WORKERS = 4  # each worker imports torch, PyG, Hydra and MLflow (~0.5 GB); more gains little on this suite


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per usable core (affinity, not the host's count), at most ``MAX_WORKERS``."""
    return max(1, min(cores(), MAX_WORKERS))


if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    _share = min(_share, int(os.environ.get("OMP_NUM_THREADS") or _share))  # a user's lower setting stands
    os.environ["OMP_NUM_THREADS"] = str(_share)
    torch.set_num_threads(_share)


def pytest_configure(config) -> None:
    """Build the native CPU kernel (flexgnn_core/native) once, in the controller, before any worker or test
    subprocess needs it: about 45 s on a machine that has never built it, a cache hit after that. Building inside a
    test that kills its subprocesses (signals, watchdogs) could leave torch's build lock behind."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    from flexgnn_core import native

    if native.enabled():
        sys.stderr.write("conftest: native CPU kernel (built on first use, ~45 s once per machine)... ")
        sys.stderr.write(f"{native.describe()}\n")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-graph tests: they gain nothing from threads, and OpenMP barriers on a
    shared 2-core machine cost milliseconds per sparse product. The thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def harness_dirs(tmp_path: Path) -> SimpleNamespace:
    """Where a test's runs go: ``runs_dir``, a sqlite MLflow ``uri``, and ``env`` for subprocesses."""
    runs_dir = tmp_path / "runs"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "FLEXGNN_RUNS_DIR": str(runs_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("FLEXGNN_CONF", None)
    return SimpleNamespace(root=tmp_path, runs_dir=runs_dir, uri=uri, env=env)


@pytest.fixture
def compose(harness_dirs: SimpleNamespace):
    """``compose(overrides)`` -> the composed ``conf/config.yaml``, recording into this test's tmp_path."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from harness.config import conf_dir

    def _compose(overrides: list[str] = (), return_hydra_config: bool = False):
        pinned = [f"runs_dir={harness_dirs.runs_dir}", f"mlflow.tracking_uri={harness_dirs.uri}"]
        with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
            return hydra_compose("config", overrides=[*pinned, *overrides], return_hydra_config=return_hydra_config)

    return _compose


@pytest.fixture
def run_harness(harness_dirs: SimpleNamespace):
    """``run_harness(*overrides)`` runs ``python -m harness`` in a subprocess from the repository root."""
    import subprocess

    def _run(*overrides: str, timeout: float = 300):
        return subprocess.run([sys.executable, "-m", "harness", *overrides], cwd=REPO_ROOT, env=harness_dirs.env,
                              capture_output=True, text=True, timeout=timeout)

    return _run


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory) -> Path:
    """An empty, migrated MLflow sqlite store, made once: creating one costs seconds of CPU per test otherwise."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_client(harness_dirs: SimpleNamespace, _mlflow_template_db: Path):
    """A client on this test's own real store (``harness_dirs.uri``), created before the test runs anything."""
    import shutil

    from mlflow.tracking import MlflowClient

    shutil.copyfile(_mlflow_template_db, harness_dirs.root / "mlflow.db")
    return MlflowClient(tracking_uri=harness_dirs.uri)


CLUSTER_MODULES = ("hydra_plugins.hydra_joblib_launcher", "hydra_plugins.hydra_submitit_launcher", "submitit")


def missing_cluster_extra() -> list[str]:
    """The launcher packages of the ``cluster`` extra that are not installed."""
    import importlib.util

    return [name for name in CLUSTER_MODULES if importlib.util.find_spec(name.split(".")[0]) is None
            or importlib.util.find_spec(name) is None]


def pytest_report_header(config) -> str | None:
    missing = missing_cluster_extra()
    if missing:
        return (f"cluster extra missing ({', '.join(missing)}): launcher tests are SKIPPED; "
                "pip install -e '.[test]' (or '.[cluster]') to run them")
    return None


@pytest.fixture
def cluster_extra():
    """Hydra's joblib and submitit launchers (the ``cluster`` extra), or a skip saying how to get them, also as a
    warning so that it shows in every test summary."""
    import warnings

    missing = missing_cluster_extra()
    if missing:
        warnings.warn(f"launcher tests skipped: the cluster extra is not installed ({', '.join(missing)}); "
                      "pip install -e '.[test]'")
        pytest.skip(f"the cluster extra is not installed ({', '.join(missing)}): pip install -e '.[test]'")


@pytest.fixture
def memcap_mechanism():
    """This machine's memory-cap mechanism (harness/memcap.py), or a skip that says why it has none, also as a
    warning so that the reason shows in every test summary, not only under ``-rs``."""
    import warnings

    from harness import memcap

    try:
        return memcap.detect()
    except memcap.MemcapUnavailable as error:
        warnings.warn(f"memory-cap tests skipped: {error}")
        pytest.skip(f"memory caps do not work on this machine: {error}")
