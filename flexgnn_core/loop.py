"""The one timed training loop every system runs, so that epoch times are comparable by construction.

Warm-up epochs train like the others (loss curves stay comparable across systems) but are excluded from the
median; the device is synchronised before every clock read; evaluation is timed apart from training
(``timings_s["eval"]``, every evaluation of the run summed). Evaluation is shared too: a system hands over its
predictions and ``flexgnn_core.evaluate.Evaluation`` scores them (OGB's ``Evaluator`` on OGB graphs).

Model selection (``TrainSpec.select``): ``last`` evaluates once after the last epoch; ``best_val`` evaluates after
every epoch's update (as OGB's examples do), outside the epoch's clock, and keeps the parameters and accuracies of
the epoch with the best validation accuracy (the first one on ties) beside the last epoch's.

Memory: ``peak_bytes`` is measured here too, over the training epochs only (``memory.TrainingPeak``): the same
window for every system, so one system's preprocessing or evaluation peak never counts against it alone.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from flexgnn_core.evaluate import Evaluation
from flexgnn_core.memory import TrainingPeak
from flexgnn_core.spec import RunResult, TrainSpec


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # stderr: stdout's last line belongs to the run record
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeRemainingColumn(), transient=True,
                    console=Console(stderr=True))


def timed_training(
    *,
    system: str,
    train: TrainSpec,
    device: torch.device,
    step: Callable[[int], float],
    evaluate: Callable[[], Tensor],
    evaluation: Evaluation,
    final_params: Callable[[], Mapping[str, Tensor]] | None = None,
    timings_s: Mapping[str, float] | None = None,
    **result_fields: Any,
) -> RunResult:
    """Run ``train.epochs`` calls of ``step(epoch) -> loss`` (one full-graph epoch with its optimiser update),
    timing each with the device synchronised; ``evaluate() -> predictions`` (int [N], eval mode, the graph's vertex
    order) scored by ``evaluation``: once at the end, or after every epoch with ``train.select == "best_val"``.

    ``result_fields`` are passed on to ``RunResult`` (``plan``, ``io_bytes``, ``tier_peak_bytes``, ``extra``).
    ``peak_bytes`` is measured here, over the training epochs only (``memory.TrainingPeak``), for every system.
    """
    losses: list[float] = []
    times: list[float] = []
    every_epoch = train.select == "best_val"
    scored = _Scoring(evaluate, evaluation, device, final_params if every_epoch else None)
    bar = _progress(train.progress)
    task = bar.add_task(f"{system} epochs", total=train.epochs, status="") if bar else None
    if bar:
        bar.start()
    meter = TrainingPeak(device)  # the one memory window of every system: the training epochs (warm-up included)
    try:
        for epoch in range(train.epochs):
            synchronize(device)
            meter.open()
            start = time.perf_counter()
            loss = float(step(epoch))
            synchronize(device)
            times.append(time.perf_counter() - start)
            meter.close()
            losses.append(loss)
            if every_epoch:
                scored(epoch)
            if bar:
                val = f"  val {scored.last['val']:.4f}" if every_epoch else ""
                bar.update(task, advance=1, status=f"loss {loss:.4f}  {times[-1]:.3f} s{val}")
    finally:
        if bar:
            bar.stop()
    if not every_epoch:
        scored(train.epochs - 1)
    all_timings = {**dict(timings_s or {}), "eval": scored.seconds}
    params = _cpu_copy(final_params()) if final_params is not None else None
    result = RunResult(system=system, epoch_losses=losses, epoch_times_s=times, warmup_epochs=train.warmup_epochs,
                     accuracy=scored.last, device=str(device), timings_s=all_timings, final_params=params,
                     best_val=scored.best if every_epoch else None,
                     epoch_val_acc=scored.val_history if every_epoch else None, evaluator=evaluation.name,
                     best_params=scored.best_params, predictions=scored.predictions,
                     peak_bytes=meter.peak_bytes, **{**result_fields, "extra": dict(result_fields.get("extra") or {})})
    result.extra["host_peak_reset"] = meter.host_reset
    return result


def _cpu_copy(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {name: value.detach().to("cpu", copy=True) for name, value in params.items()}


class _Scoring:
    """Evaluations of one run, timed apart: the last scores, the best validation epoch, its parameters and the
    predictions of both (``RunResult.predictions``: a system that scores elsewhere may score them again)."""

    def __init__(self, evaluate, evaluation: Evaluation, device: torch.device, final_params) -> None:
        self.evaluate, self.evaluation, self.device, self.final_params = evaluate, evaluation, device, final_params
        self.seconds = 0.0
        self.last: dict[str, float] = {}
        self.best: dict[str, Any] | None = None
        self.best_params: dict[str, Tensor] | None = None
        self.val_history: list[float] = []
        self.predictions: dict[str, Tensor] = {}

    def __call__(self, epoch: int) -> None:
        synchronize(self.device)
        start = time.perf_counter()
        pred = self.evaluate()
        self.last = {split: float(acc) for split, acc in self.evaluation(pred).items()}
        self.val_history.append(self.last["val"])
        self.predictions["final"] = pred
        if self.best is None or self.last["val"] > self.best["val"]:
            self.best = {"epoch": epoch, **self.last}
            self.predictions["best_val"] = pred
            if self.final_params is not None:
                self.best_params = _cpu_copy(self.final_params())
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
