"""Execute a feasible plan in the shared timed loop: the last step of a FlexGNN run (STYLE #4b).

``execute(prepared, plan, params, train)`` allocates the plan's buffers on their tiers, trains with Adam (the
model's weight decay) in ``flexgnn_core.loop.timed_training`` (warm-up excluded, median reported; evaluation as
``train.select`` says, scored by ``evaluation``) and returns the ``RunResult`` with the store's counters: accounted
peak per tier, bytes per link, prefetch overlap. It plans nothing and measures no hardware: the plan comes in as a
value. Bytes per link include the evaluation passes (one forward each).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from flexgnn_core import machine, native
from flexgnn_core.engine.executor import Engine
from flexgnn_core.evaluate import Evaluation, predictions
from flexgnn_core.engine.prepare import Prepared
from flexgnn_core.engine.tiers import TierStore
from flexgnn_core.loop import timed_training
from flexgnn_core.memory import release_cublas_workspaces
from flexgnn_core.plan import Plan
from flexgnn_core.plan.problem import staging_bytes
from flexgnn_core.spec import RunResult, TrainSpec, resolve_device

SYSTEM = "flexgnn"


def execute(prepared: Prepared, plan: Plan, params: Mapping[str, Tensor], train: TrainSpec,
            disk_dir: str | None = None, prefetch: bool = True, timings_s: Mapping[str, float] | None = None,
            extra: Mapping[str, Any] | None = None, evaluation: Evaluation | None = None) -> RunResult:
    """Train with ``plan`` on the prepared graph; ``params`` are copied, never modified. ``evaluation`` scores
    predictions in the graph's own vertex order (default: accuracy on the prepared labels and masks)."""
    device = resolve_device(train.device)
    if evaluation is None:
        order = prepared.order.perm
        evaluation = Evaluation(_in_graph_order(prepared.y, order),
                                {split: _in_graph_order(mask, order) for split, mask in prepared.masks.items()})
    io_before = machine.process_io()
    with TierStore(device, disk_dir, staging_bytes(prepared.problem)) as store:
        engine = Engine(prepared, plan, params, device, store, prefetch=prefetch, seed=train.seed)
        engine.allocate()
        spec = prepared.spec
        optimizer = torch.optim.Adam(list(engine.params.values()), lr=spec.lr, weight_decay=spec.weight_decay)
        for name, value in engine.params.items():
            value.grad = engine.grads[name]  # backward refills these tensors in place: no second set per epoch

        def step(epoch: int) -> float:
            loss = engine.forward(epoch=epoch)
            engine.backward()
            optimizer.step()
            return loss

        def evaluate() -> Tensor:
            logits = torch.empty(engine.num_nodes, engine.dims[-1])
            engine.forward(logits_out=logits)
            return _in_graph_order(predictions(logits), prepared.order.perm)

        result = timed_training(system=SYSTEM, train=train, device=device, step=step, evaluate=evaluate,
                                evaluation=evaluation, final_params=lambda: engine.params,
                                timings_s=dict(timings_s or {}), plan=plan.to_json())
        counters = store.counters
        io_after, disk_actual = machine.process_io(), store.disk_actual()
        library = release_cublas_workspaces(device)  # allocator bytes no plan places (CUDA; None elsewhere)
        result.tier_peak_bytes = dict(counters.peak)
        result.io_bytes = dict(counters.links)
        budget = plan.device_budget_bytes
        result.extra = {
            **result.extra, **dict(extra or {}), "policy": plan.policy, "num_chunks": plan.num_chunks,
            "prefetch_fetch_s": counters.fetch_s, "prefetch_wait_s": counters.wait_s,
            "prefetch_hidden_s": counters.hidden_s, "device_budget_bytes": budget,
            # each disk file's own total (whole aligned blocks: equal to io_bytes' disk links, a cross-check),
            # and what this process made the storage devices read and write over the same window (/proc/self/io)
            "disk_actual_bytes": disk_actual, "disk_modes": sorted(store.disk_modes),
            "proc_io_bytes": None if io_before is None or io_after is None else
            {key: io_after[key] - io_before[key] for key in io_after},
            "threads": {"torch": torch.get_num_threads(), "prefetch": 1 if prefetch else 0,
                        "cores": machine.cores()},
            # what the chunks' CSR products ran on (flexgnn_core.native): "native" or torch.sparse.mm and why
            "spmm_kernel": native.describe() if device.type == "cpu" else "torch.sparse.mm (cuda)",
            "device_within_budget": None if budget is None else counters.peak["device"] <= budget,
            "cuda_library_bytes": library,
            "cuda_within_budget": (None if budget is None or device.type != "cuda"
                                   else result.peak_bytes["device"] - (library or 0) <= budget),
        }
    return result


def _in_graph_order(values: Tensor, perm: Tensor) -> Tensor:
    """Per-vertex ``values`` in reordered ids back in the graph's own order (``perm[new] = old``)."""
    out = torch.empty_like(values)
    out[perm] = values
    return out
