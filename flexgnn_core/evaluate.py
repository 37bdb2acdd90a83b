"""How every system scores its predictions: OGB's own ``Evaluator`` on OGB graphs, plain accuracy otherwise.

A system's evaluation produces *predictions* (the argmax of its eval-mode logits, one class per vertex in the
graph's own vertex order); ``Evaluation`` turns them into ``{"train", "val", "test"}`` accuracies, the same way in
every system, inside the shared loop (``flexgnn_core.loop``). For a graph from ``flexgnn_core.data.ogb``
(``provenance["source"] == "ogb"``) the scores come from ``ogb.nodeproppred.Evaluator(name).eval`` with OGB's
``[n, 1]`` input format, as OGB's leaderboard examples compute them; for any other graph from ``accuracy``, the share
of a split's vertices whose prediction equals the label (the same formula as OGB's ``acc``, which
``tests/test_evaluate.py`` checks).

``Evaluation`` holds only CPU labels and split masks, so it pickles into DDP ranks. The DGL worker's environment
has no ``ogb`` (adding it would rebuild a 5 GB environment), so there ``allow_fallback=True`` scores with
``accuracy`` and says so in ``name``; the DGL baseline then scores the worker's final and best-validation
predictions again with OGB's ``Evaluator`` in the main environment (``baselines/dgl_fullgraph.py``).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import torch
from torch import Tensor

SPLITS = ("train", "val", "test")
ACCURACY = "accuracy"


def accuracy(pred: Tensor, y: Tensor, mask: Tensor) -> float:
    """Share of ``mask``'s vertices whose prediction equals the label."""
    picked = mask.cpu()
    return float((pred.cpu()[picked] == y.cpu()[picked]).double().mean())


@functools.lru_cache(maxsize=None)
def _ogb_evaluator(name: str) -> Any:
    from ogb.nodeproppred import Evaluator  # about seconds to import (pandas, sklearn): only on OGB graphs

    return Evaluator(name)


def ogb_name(provenance: Mapping[str, Any]) -> str | None:
    """The OGB dataset name of a graph loaded by ``flexgnn_core.data.ogb``, else None."""
    if provenance.get("source") == "ogb":
        return str(provenance["dataset"])
    return None


class Evaluation:
    """Scores predictions per split: ``evaluation(pred)`` with ``pred`` int [N] -> ``{split: accuracy}``.

    Args:
        y: labels [N] (-1 = unlabelled), in the graph's vertex order.
        masks: ``{"train", "val", "test"}`` bool [N].
        ogb: the OGB dataset name (``ogbn-arxiv`` ...) whose ``Evaluator`` scores, or None for ``accuracy``.
        allow_fallback: when ``ogb`` is set but the ``ogb`` package is missing here, score with ``accuracy`` (the
            same formula) instead of failing; ``name`` then says so.
    """

    def __init__(self, y: Tensor, masks: Mapping[str, Tensor], ogb: str | None = None,
                 allow_fallback: bool = False) -> None:
        self.y = y.detach().cpu()
        self.masks = {split: masks[split].detach().cpu() for split in SPLITS}
        self.ogb = ogb
        self.name = ACCURACY if ogb is None else f"ogb.nodeproppred.Evaluator('{ogb}')"
        if ogb is not None:
            try:
                _ogb_evaluator(ogb)
            except ImportError:
                if not allow_fallback:
                    raise ImportError(f"dataset '{ogb}' is scored with OGB's Evaluator, but the 'ogb' package is not "
                                      "installed; install it with `pip install ogb>=1.3.6`") from None
                self.ogb = None
                self.name = f"{ACCURACY} (ogb is not installed here; OGB's Evaluator('{ogb}') computes the same)"

    @classmethod
    def of(cls, graph: Any, allow_fallback: bool = False) -> "Evaluation":
        """The evaluation of a ``spec.Graph``: OGB's ``Evaluator`` when the data layer loaded it from OGB."""
        masks = {"train": graph.train_mask, "val": graph.val_mask, "test": graph.test_mask}
        return cls(graph.y, masks, ogb_name(graph.provenance), allow_fallback)

    def __call__(self, pred: Tensor) -> dict[str, float]:
        pred = pred.detach().cpu().to(torch.int64)
        if pred.shape != self.y.shape:
            raise ValueError(f"predictions have shape {tuple(pred.shape)}, expected one per vertex "
                             f"{tuple(self.y.shape)}")
        if self.ogb is None:
            return {split: accuracy(pred, self.y, mask) for split, mask in self.masks.items()}
        evaluator = _ogb_evaluator(self.ogb)
        return {split: float(evaluator.eval({"y_true": self.y[mask].view(-1, 1).numpy(),
                                             "y_pred": pred[mask].view(-1, 1).numpy()})["acc"])
                for split, mask in self.masks.items()}

    def __repr__(self) -> str:
        return f"Evaluation({self.name}, {self.y.numel()} vertices)"


def predictions(logits: Tensor) -> Tensor:
    """The predicted class per row of ``logits`` [N, C], on the CPU."""
    return logits.argmax(dim=-1).cpu()
