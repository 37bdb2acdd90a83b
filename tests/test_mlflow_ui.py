"""The MLflow UI in a real headless browser (slow: a tiny sweep, an mlflow server and Chromium, minutes on 2 cores):
the runs table opens in the model-training view with the speed-up column and the sweep's runs
(``bench/mlflow_ui_check.py``); without the sweep's shared view the column is absent, so the check can fail."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def chromium():
    if not any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chromium here: apt-get install -y chromium")


def test_runs_table_shows_the_speedup_column_in_the_model_training_view(chromium, tmp_path, capsys):
    from bench.mlflow_ui_check import check, main
    from mlflow.tracking import MlflowClient

    assert main(["--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["checks"] == {"model_training_view": True, "speedup_column": True, "child_runs_listed": True}
    assert len(result["children"]) == 2 and (tmp_path / "runs_table.png").stat().st_size > 10_000

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the same store without the saved view: no speed-up column
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment_tag(client.get_experiment_by_name("flexgnn-bench").experiment_id,
                                 "mlflow.sharedViewState.comparisons")
    assert check(uri, tmp_path / "without_view")["checks"]["speedup_column"] is False
