"""The same contracts on CUDA (``pytest -m gpu`` on a GPU machine; deselected by default, skipped without CUDA).

CPU tests cover the logic; these check what only a GPU exercises: pinned host buffers, the side-stream prefetch,
device copies of every tier, and the device budget against ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import pytest
import torch

from baselines import pyg_fullgraph
from flexgnn_core import system as engine  # the flexgnn system: prepare, solve, execute
from flexgnn_core import models
from flexgnn_core.models import init_params
from flexgnn_core.spec import ModelSpec, TrainSpec
from graphs import tricky_graph

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine)")]

GRAPH = tricky_graph(num_nodes=64)


def _train(system, kind: str, device: str, options: dict):
    model = ModelSpec(kind=kind, num_layers=3, hidden=16, heads=2)
    params = init_params(model, GRAPH.num_features, GRAPH.num_classes, seed=0)
    spec = TrainSpec(epochs=4, warmup_epochs=0, progress=False, device=device)
    return system.train(GRAPH, model, params, spec, options)


@pytest.mark.parametrize("kind", models.names())
def test_pyg_on_cuda_equals_pyg_on_cpu(kind):
    cpu = _train(pyg_fullgraph, kind, "cpu", {})
    gpu = _train(pyg_fullgraph, kind, "cuda", {})
    torch.testing.assert_close(torch.tensor(gpu.epoch_losses), torch.tensor(cpu.epoch_losses), rtol=1e-5, atol=0)


@pytest.mark.parametrize("kind", models.names())
@pytest.mark.parametrize("policy", ["all_device", "all_host", "all_disk", "recompute", "optimal"])
def test_engine_on_cuda_matches_pyg(kind, policy):
    reference = _train(pyg_fullgraph, kind, "cuda", {})
    result = _train(engine, kind, "cuda", {"policy": policy, "num_chunks": 5, "print_plan": False})
    torch.testing.assert_close(torch.tensor(result.epoch_losses), torch.tensor(reference.epoch_losses),
                               rtol=1e-5, atol=0)
    for name, value in reference.final_params.items():
        torch.testing.assert_close(result.final_params[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["gcn", "gat"])
def test_engine_keeps_the_cuda_allocator_within_a_tight_budget(kind):
    loose = _train(engine, kind, "cuda", {"policy": "all_device", "num_chunks": 8, "print_plan": False})
    budget = max(loose.tier_peak_bytes["device"] // 2, loose.plan["min_device_budget_bytes"])
    tight = _train(engine, kind, "cuda", {"policy": "flexgnn_greedy", "num_chunks": 8, "print_plan": False,
                                          "device_budget_bytes": budget})
    assert tight.extra["device_within_budget"] is True and tight.extra["cuda_within_budget"] is True
    assert tight.io_bytes["h2d"] > 0
    torch.testing.assert_close(torch.tensor(tight.epoch_losses), torch.tensor(loose.epoch_losses), rtol=1e-5, atol=0)
