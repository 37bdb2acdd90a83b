"""A wall-clock worker of the gate's A/B layer: loads one graph, then trains on request and reports epoch times.

Started by ``harness.gate.wallclock`` as ``python PATH/ab_worker.py SPEC_JSON`` with ``PYTHONPATH`` set to the
tree under test (this checkout, or a temporary worktree of another commit), so it imports only entry points every
commit has: ``harness.systems.get_train_fn``, ``flexgnn_core.data.load_dataset``, ``flexgnn_core.models
.init_params``, ``ModelSpec``, ``TrainSpec``. Requests are JSON lines on stdin (``{"system", "model", "epochs",
"warmup"}``); answers are JSON lines on stdout after ``MARKER`` (anything else a library prints is ignored).
"""

from __future__ import annotations

import json
import sys
import traceback

MARKER = "GATE-AB "


def answer(payload: dict) -> None:
    print(MARKER + json.dumps(payload), flush=True)


def main(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    import flexgnn_core
    from flexgnn_core.data import load_dataset
    from flexgnn_core.models import init_params
    from flexgnn_core.spec import ModelSpec, TrainSpec
    from harness.systems import get_train_fn

    graph = load_dataset("synthetic", **spec["graph"])
    answer({"ready": True, "flexgnn_core": flexgnn_core.__file__, "num_edges": graph.num_edges})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            model = ModelSpec(kind=request["model"], **spec["model"])
            params = init_params(model, graph.num_features, graph.num_classes, seed=0)
            train = TrainSpec(epochs=request["epochs"], warmup_epochs=request["warmup"], device="cpu",
                              progress=False)
            options = spec["options"].get(request["system"], {})
            result = get_train_fn(request["system"])(graph, model, params, train, options)
            answer({"epoch_times_s": result.epoch_times_s[request["warmup"]:]})
        except Exception as error:  # reported to the gate, which says which arm failed and why
            answer({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=5)})


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
