"""Check the MLflow UI as a user sees it, in a real headless browser: the experiment's runs table, in the
model-training view, shows the sweep's runs with the speed-up column.

    python -m bench.mlflow_ui_check                       # a tiny sweep into a temporary dir, then the check
    python -m bench.mlflow_ui_check --uri sqlite:///$PWD/runs/mlflow.db --out ui/   # an existing store

It starts ``mlflow server`` from this Python environment on a free local port, opens the comparison view the
sweep saved (``harness.comparisons.view_url``) in headless Chromium (``apt-get install -y chromium``), lets the
page run its requests (``--virtual-time-budget``), reads the rendered DOM and saves a screenshot. It passes when
the page is the model-training runs table (not the GenAI overview), its header has ``speedup_vs_pyg``, and the
names of the sweep's ok child runs are on it. The last line on stdout is one JSON object (the checks, the URL,
the screenshot); the exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_SWEEP = ["+sweep=speedup", "+debug=fast", "hydra.sweeper.only=in_memory", "system=pyg,flexgnn", "model=gcn",
              "dataset.avg_degree=3"]


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("no Chromium found: install it (apt-get install -y chromium) and run again")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_sweep(root: Path) -> str:
    """A 2-job sweep (pyg and flexgnn) into ``root``; returns its MLflow store's URI."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "FLEXGNN_RUNS_DIR": str(root / "runs"), "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "harness", *TINY_SWEEP], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"the tiny sweep failed:\n{done.stderr[-3000:]}")
    return uri


def serve(uri: str, port: int, log: Path) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"], stdout=log.open("w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"mlflow server exited:\n{log.read_text()[-3000:]}")
            time.sleep(1)
    server.terminate()
    raise SystemExit("mlflow server did not answer /health within 180 s")


def render(url: str, out: Path, budget_ms: int = 30000) -> str:
    """The page's DOM after ``budget_ms`` of (virtual) time, and a screenshot ``out/runs_table.png``."""
    common = [browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1600,900", f"--virtual-time-budget={budget_ms}", f"--user-data-dir={out / 'profile'}"]
    subprocess.run([*common, f"--screenshot={out / 'runs_table.png'}", url], capture_output=True, timeout=300)
    done = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=300)
    return done.stdout


def text_of(dom: str) -> str:
    dom = re.sub(r"<style.*?</style>|<script.*?</script>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def check(uri: str, out: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from harness.comparisons import view_url

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("flexgnn-bench")
    runs = client.search_runs([experiment.experiment_id])
    children = [r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags and "speedup_vs_pyg" in
                r.data.metrics]
    port = free_port()
    server = serve(uri, port, out / "mlflow_server.log")
    try:
        url = view_url(f"http://127.0.0.1:{port}", experiment.experiment_id)
        page = text_of(render(url, out))
    finally:
        server.terminate()
        server.wait(timeout=30)
    (out / "runs_table.txt").write_text(page)
    header = page[page.find("Run Name"):][:600]
    checks = {
        "model_training_view": " Runs " in page and "Overview Observability" not in page,
        "speedup_column": "speedup_vs_pyg" in header,
        "child_runs_listed": bool(children) and all(name[:20] in page for name in children),
    }
    return {"ok": all(checks.values()), "checks": checks, "url": url, "children": children,
            "screenshot": str(out / "runs_table.png")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", help="an MLflow store made by a sweep (default: run a tiny sweep first)")
    parser.add_argument("--out", type=Path, help="where the screenshot and page text go (default: a temp dir)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="mlflow-ui-check-"))
    out.mkdir(parents=True, exist_ok=True)
    uri = args.uri or tiny_sweep(out)
    result = check(uri, out)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
