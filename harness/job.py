"""The unit of work of a run: calibrate (systems that plan), load the graph, train; the same in-process and in a
memory-capped child (``harness/capped.py``). Returns plain JSON values for the record."""

from __future__ import annotations

import logging
import time
from typing import Any

from harness.config import Settings
from harness.systems import calibrate

log = logging.getLogger("harness")


def train_job(settings: Settings, train_fn: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the graph and train; returns (graph statistics, result JSON with load time and peak memory)."""
    from flexgnn_core.data import load_dataset
    from flexgnn_core.machine import release_free_heap
    from flexgnn_core.models import init_params
    from flexgnn_core.spec import resolve_device

    device = resolve_device(settings.train.device)
    options, calibrate_s = calibrate(settings.system_name, settings.system_options, device)
    start = time.perf_counter()
    graph = load_dataset(settings.dataset_name, **settings.dataset_options)
    release_free_heap()  # the loader's freed temporaries back to the kernel: every system starts from what it holds
    load_s = time.perf_counter() - start
    stats = {**graph.stats(), "provenance": graph.provenance}
    log.info("%s %s (%d layers, hidden %d) on %s: %d nodes, %d edges, %d features, %d classes; %d epochs "
             "(%d warm-up) on %s; loaded in %.2f s", settings.system_name, settings.model.kind,
             settings.model.num_layers, settings.model.hidden, graph.name, graph.num_nodes, graph.num_edges,
             graph.num_features, graph.num_classes, settings.train.epochs, settings.train.warmup_epochs,
             settings.train.device, load_s)
    params = init_params(settings.model, graph.num_features, graph.num_classes, settings.train.seed)
    # No meter here: every system's peaks come from the shared loop's window, the training epochs only
    # (flexgnn_core.memory.TrainingPeak); a meter around train_fn would add this process's preprocessing, and on
    # CUDA it made a context on GPU 0 in the launcher and in every torchrun rank before the rank set its device.
    result = train_fn(graph, settings.model, params, settings.train, options)
    result.timings_s = {"load": load_s, **result.timings_s}
    if calibrate_s:  # measured (or loaded) before the data, by the harness's calibration step
        result.timings_s["calibrate"] = calibrate_s + result.timings_s.get("calibrate", 0.0)
    return stats, result.to_json()
