"""The one timed training loop every system runs, so that epoch times are comparable by construction.

Warm-up epochs train like the others (loss curves stay comparable across systems) but are excluded from the
median; the device is synchronised before every clock read; evaluation is timed apart from training.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

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
    evaluate: Callable[[], Mapping[str, float]],
    final_params: Callable[[], Mapping[str, Tensor]] | None = None,
    timings_s: Mapping[str, float] | None = None,
    **result_fields: Any,
) -> RunResult:
    """Run ``train.epochs`` calls of ``step(epoch) -> loss`` (one full-graph epoch with its optimiser update),
    timing each with the device synchronised, then ``evaluate() -> {"train": acc, "val": acc, "test": acc}``.

    ``result_fields`` are passed on to ``RunResult`` (``plan``, ``io_bytes``, ``tier_peak_bytes``, ``extra``).
    """
    losses: list[float] = []
    times: list[float] = []
    bar = _progress(train.progress)
    task = bar.add_task(f"{system} epochs", total=train.epochs, status="") if bar else None
    if bar:
        bar.start()
    try:
        for epoch in range(train.epochs):
            synchronize(device)
            start = time.perf_counter()
            loss = float(step(epoch))
            synchronize(device)
            times.append(time.perf_counter() - start)
            losses.append(loss)
            if bar:
                bar.update(task, advance=1, status=f"loss {loss:.4f}  {times[-1]:.3f} s")
    finally:
        if bar:
            bar.stop()
    synchronize(device)
    start = time.perf_counter()
    accuracy = {split: float(acc) for split, acc in evaluate().items()}
    synchronize(device)
    all_timings = dict(timings_s or {})
    all_timings["eval"] = time.perf_counter() - start
    params = None
    if final_params is not None:
        params = {name: value.detach().to("cpu", copy=True) for name, value in final_params().items()}
    return RunResult(system=system, epoch_losses=losses, epoch_times_s=times, warmup_epochs=train.warmup_epochs,
                     accuracy=accuracy, device=str(device), timings_s=all_timings, final_params=params,
                     **result_fields)
