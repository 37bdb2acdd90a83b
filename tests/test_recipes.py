"""Training recipes in ``conf/recipe/``: each composes into the settings it documents, and ``+recipe=kipf`` runs on a
user's own graph files for pyg and flexgnn, printing the test accuracy at the best validation epoch."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from harness.config import validate
from harness.run import run

OGB = {"ogbn-arxiv-gcn": ("ogbn-arxiv", "gcn", 500), "ogbn-arxiv-sage": ("ogbn-arxiv", "sage", 500),
       "ogbn-products-gcn": ("ogbn-products", "gcn", 300), "ogbn-products-sage": ("ogbn-products", "sage", 300)}


def test_kipf_is_kipf_and_welling(compose):
    settings = validate(compose(["+recipe=kipf"]))
    model, train = settings.model, settings.train
    assert (model.kind, model.num_layers, model.hidden, model.lr) == ("gcn", 2, 16, 0.01)
    assert (model.dropout, model.input_rate, model.weight_decay) == (0.5, 0.5, 5e-4)
    assert (train.epochs, train.select) == (200, "best_val")
    other = validate(compose(["+recipe=kipf", "model=sage"])).model  # the command line picks another model,
    assert (other.kind, other.hidden, other.dropout, other.weight_decay) == ("sage", 16, 0.5, 5e-4)  # same recipe


@pytest.mark.parametrize("recipe", sorted(OGB))
def test_ogb_recipes_are_ogbs_full_batch_examples(compose, recipe):
    dataset, kind, epochs = OGB[recipe]
    settings = validate(compose([f"+recipe={recipe}", "system=flexgnn"]))
    model = settings.model
    assert (settings.dataset_name, model.kind, model.num_layers, model.hidden, model.lr) == (dataset, kind, 3, 256,
                                                                                             0.01)
    assert (model.dropout, model.input_rate, model.weight_decay) == (0.5, 0.0, 0.0)  # hidden dropout only
    assert (settings.train.epochs, settings.train.select) == (epochs, "best_val")
    assert settings.system_name == "flexgnn"


@pytest.fixture
def user_files(tmp_path) -> list[str]:
    """A user's tiny graph as .npy files (a ring with chords; labels that the features and neighbours show)."""
    n, rng = 60, np.random.default_rng(0)
    src = np.arange(n)
    edges = np.concatenate([np.stack([src, (src + 1) % n]), np.stack([src, (src + 7) % n])], axis=1)
    labels = (np.arange(n) // 20).astype(np.int64)
    features = rng.standard_normal((n, 6)) + np.eye(6)[labels]
    for name, array in (("edges", edges), ("x", features), ("y", labels)):
        np.save(tmp_path / f"{name}.npy", array)
    return ["dataset=files", f"dataset.edges={tmp_path / 'edges.npy'}", f"dataset.features={tmp_path / 'x.npy'}",
            f"dataset.labels={tmp_path / 'y.npy'}", "dataset.train_frac=0.5", "dataset.val_frac=0.25",
            "train.progress=false", "hardware.device=cpu"]


def test_kipf_recipe_on_a_users_files_prints_test_accuracy_at_best_validation(compose, mlflow_client, user_files,
                                                                               caplog):
    """In process (the entry point's subprocess is tests/test_harness_run.py's): the recipe's 200 epochs, the line
    a user reads, and pyg and flexgnn agreeing on it."""
    records = {}
    for system in ("pyg", "flexgnn"):
        extra = ["hardware.profile=h200"] if system == "flexgnn" else []  # plan on a datasheet: no calibration
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="harness"):
            record = run(compose(["+recipe=kipf", f"system={system}", *user_files, *extra]))
        assert record["status"] == "ok"
        best = record["result"]["best_val"]
        printed = re.search(r"at best val \(epoch (\d+), val ([0-9.]+)\): test acc ([0-9.]+)", caplog.text)
        assert printed, caplog.text[-2000:]
        assert (int(printed[1]), float(printed[3])) == (best["epoch"], round(best["test"], 4))
        assert len(record["result"]["epoch_losses"]) == len(record["result"]["epoch_val_acc"]) == 200
        assert record["config"]["model"]["hidden"] == 16 and record["result"]["evaluator"] == "accuracy"
        records[system] = record["result"]
    assert records["flexgnn"]["best_val"] == pytest.approx(records["pyg"]["best_val"])  # exact: the same masks
    np.testing.assert_allclose(records["flexgnn"]["epoch_losses"], records["pyg"]["epoch_losses"], rtol=1e-5)
    assert records["pyg"]["best_val"]["test"] > 0.5  # three classes: it learned
