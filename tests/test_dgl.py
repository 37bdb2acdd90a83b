"""The DGL baseline against the PyG baseline, and its fail-fast path when the pinned environment is missing.

Parity tests are marked ``dgl``: they need the pinned environment (``bash scripts/make_dgl_env.sh``) and run with
``pytest -m dgl``. Each starts one worker process (a few seconds: the DGL environment's torch and DGL import).
"""

from __future__ import annotations

import pytest
import torch

from baselines import dgl_fullgraph, pyg_fullgraph
from flexgnn_core import models
from flexgnn_core.data.storage import save_graph
from flexgnn_core.models import init_params
from flexgnn_core.spec import ModelSpec, TrainSpec
from graphs import tricky_graph  # tests/ is on sys.path under pytest (no __init__.py)

# Achieved on this machine: at most 1e-7 relative (fp32 rounding: the two libraries sum in different orders).
LOSS_RTOL = 1e-4
EPOCHS = 8


def _both(model: ModelSpec, directed: bool = True, options: dict | None = None):
    graph = tricky_graph(directed=directed)
    params = init_params(model, graph.num_features, graph.num_classes, seed=3)
    train = TrainSpec(epochs=EPOCHS, warmup_epochs=1, device="cpu", progress=False)
    if options and options.get("graph_dir"):
        save_graph(graph, options["graph_dir"])
    dgl_result = dgl_fullgraph.train(graph, model, params, train, options or {})
    pyg_result = pyg_fullgraph.train(graph, model, params, train, {})
    return dgl_result, pyg_result, params


def _assert_parity(model: ModelSpec, directed: bool = True, options: dict | None = None):
    dgl_result, pyg_result, params = _both(model, directed, options)
    assert dgl_result.system == "dgl" and len(dgl_result.epoch_times_s) == EPOCHS
    torch.testing.assert_close(torch.tensor(dgl_result.epoch_losses, dtype=torch.float64),
                               torch.tensor(pyg_result.epoch_losses, dtype=torch.float64), rtol=LOSS_RTOL, atol=0)
    assert dgl_result.accuracy == pytest.approx(pyg_result.accuracy, abs=1e-6)
    assert set(dgl_result.final_params) == set(params)
    assert dgl_result.peak_bytes["host"] > 0
    return dgl_result, pyg_result


@pytest.mark.dgl
@pytest.mark.parametrize("kind", models.names())
def test_every_registered_model_matches_pyg(kind):
    """Every model of the registry maps onto DGL's own layers (baselines/dgl_worker.py) with PyG's losses."""
    _assert_parity(ModelSpec(kind=kind, num_layers=2, hidden=16, heads=2))


@pytest.mark.dgl
@pytest.mark.parametrize("kind", ["gcn", "sage"])
@pytest.mark.parametrize("num_layers", [2, 3])
def test_gcn_sage_match_pyg_on_directed_graph(kind, num_layers):
    dgl_result, pyg_result = _assert_parity(ModelSpec(kind=kind, num_layers=num_layers, hidden=16))
    for name, value in pyg_result.final_params.items():
        torch.testing.assert_close(dgl_result.final_params[name], value, rtol=0, atol=1e-5, msg=name)
    if kind == "gcn":  # in-degree != out-degree somewhere: DGL's norm='both' would differ, PyG's weights are passed
        assert dgl_result.extra["gcn_norm"] == "none"


@pytest.mark.dgl
def test_gcn_uses_dgl_both_norm_on_undirected_graph_from_a_saved_copy(tmp_path):
    options = {"graph_dir": str(tmp_path / "graph"), "disk_dir": str(tmp_path / "jobs")}
    dgl_result, _ = _assert_parity(ModelSpec(kind="gcn", num_layers=2, hidden=16), directed=False, options=options)
    assert dgl_result.extra["gcn_norm"] == "both"
    assert "graph_write" not in dgl_result.timings_s  # the saved copy was used, not a fresh one
    assert (tmp_path / "jobs").is_dir() and not any((tmp_path / "jobs").iterdir())  # job directory cleaned up


@pytest.mark.dgl
@pytest.mark.parametrize("num_layers", [2, 3])
def test_multi_head_gat_matches_pyg(num_layers):
    model = ModelSpec(kind="gat", num_layers=num_layers, hidden=16, heads=4)
    dgl_result, pyg_result = _assert_parity(model)
    for name, value in pyg_result.final_params.items():
        # The last layer's att_dst has a near-zero true gradient (softmax over a vertex's in-edges ignores a
        # per-destination shift except where LeakyReLU bends), so Adam turns rounding noise into steps of about
        # lr per epoch in each run. Every other parameter matches to fp32 rounding.
        atol = 2 * model.lr * EPOCHS if name == f"convs.{num_layers - 1}.att_dst" else 1e-5
        torch.testing.assert_close(dgl_result.final_params[name], value, rtol=0, atol=atol, msg=name)


def test_missing_environment_with_auto_install_off_fails_fast_with_the_creation_command(tmp_path):
    graph = tricky_graph()
    model = ModelSpec(kind="gcn", num_layers=2, hidden=8)
    params = init_params(model, graph.num_features, graph.num_classes, seed=0)
    missing = tmp_path / "no-dgl-env"
    options = {"env_dir": str(missing), "auto_install": False}
    with pytest.raises(dgl_fullgraph.DGLEnvironmentMissing) as error:
        dgl_fullgraph.train(graph, model, params, TrainSpec(epochs=2, progress=False), options)
    assert f"FLEXGNN_DGL_ENV={missing} bash scripts/make_dgl_env.sh" in str(error.value)
    assert "auto_install=false" in str(error.value)
    assert not missing.exists()
    with pytest.raises(dgl_fullgraph.DGLEnvironmentMissing, match="bash scripts/make_dgl_env.sh"):
        dgl_fullgraph.preflight(options)


def test_graph_dir_holding_another_graph_is_rejected(tmp_path):
    saved = tricky_graph(num_nodes=40)
    save_graph(saved, tmp_path / "graph")
    graph = tricky_graph()
    model = ModelSpec(kind="gcn", num_layers=2, hidden=8)
    params = init_params(model, graph.num_features, graph.num_classes, seed=0)
    with pytest.raises(ValueError, match="option graph_dir=.* holds a graph with .*40"):
        dgl_fullgraph.train(graph, model, params, TrainSpec(epochs=2, progress=False),
                            {"graph_dir": str(tmp_path / "graph")})


def test_unknown_option_is_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['env'\].*env_dir"):
        dgl_fullgraph.parse_options({"env": "/tmp/x"})
    with pytest.raises(ValueError, match="option auto_install='no' must be true, false or null"):
        dgl_fullgraph.parse_options({"auto_install": "no"})
    parsed = dgl_fullgraph.parse_options({"disk_dir": "/data/tmp"})  # its one hardware key (HARDWARE_KEYS)
    assert parsed["env_dir"] is None and parsed["disk_dir"] == "/data/tmp"
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['device_budget_bytes'\]"):  # the harness never
        dgl_fullgraph.parse_options({"device_budget_bytes": 2**30})  # passes a budget to a system without one
