"""The contract every part of flexgnn-bench shares.

One module holds the shared types so that the data layer, every training system (PyG, DGL, DDP, FlexGNN) and the
harness agree by construction:

- ``Graph``: the graph container (CSR by destination), validated on construction.
- ``ModelSpec`` / ``TrainSpec``: what to train and how; semantics below are exact, every system follows them.
- ``RunResult``: what ``train`` returns; the harness turns it into the JSON run record.
- ``TrainFn``: the one ``train(...)`` signature every system implements.
- Metric names (split and unit in the name) and the tier / link names used in accounting.

Model semantics (all systems, fp32; ``A`` = cleaned graph: no self-loops, no duplicate edges):

- Layers: each model's own module in ``flexgnn_core/models/`` (``gcn``, ``sage``, ``gat``, ...) states its PyG
  layer, equation, parameters and activation; ``flexgnn_core.models.get(kind)`` is the registry.
- Dropout (``flexgnn_core.dropout``: masks keyed by seed, epoch, layer and global ids, identical in every system):
  input dropout on the features before layer 0 (``input_dropout``), hidden dropout after the activation between
  layers (``dropout``), and for attention models dropout of the attention coefficients after the softmax
  (``attention_dropout``, as PyG's ``GATConv``); kept entries are scaled by ``1 / (1 - p)``; training only. So
  layer ``l`` reads ``h_l = drop(act(z_{l-1}))`` (``h_0 = drop(x)``), keyed by layer ``l``. Nothing after the last
  layer.
- Loss: mean cross-entropy over ``train_mask`` vertices. Optimiser: ``torch.optim.Adam(lr, weight_decay)`` over
  every parameter (L2 added to the gradient, as torch's Adam does).
- Evaluation (``flexgnn_core.evaluate``): predictions are the argmax of the eval-mode logits, scored with OGB's
  ``Evaluator`` on OGB graphs and plain accuracy otherwise; ``TrainSpec.select="best_val"`` evaluates after every
  epoch and also reports the epoch of best validation accuracy (``RunResult.best_val``).
- Parameters: a flat ``{name: tensor}`` dict named like the PyG baseline's ``state_dict`` (``convs.{i}.lin.weight``
  etc.), built once from the seed by ``flexgnn_core.models.init_params``; every system loads exactly these.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import torch
from torch import Tensor

SCHEMA_VERSION = 1
SELECTIONS = ("last", "best_val")  # TrainSpec.select

TIERS = ("device", "host", "disk")
LINKS = ("h2d", "d2h", "disk_read", "disk_write", "net_send", "net_recv")

# Metric names carry split and unit (STYLE.md #10). Every system reports under these names.
TRAIN_LOSS = "train/loss"
TRAIN_ACC, VAL_ACC, TEST_ACC = "train/acc", "val/acc", "test/acc"
EPOCH_TIME_S = "time/epoch_s"
EPOCH_MEDIAN_S = "time/epoch_median_s"
PREPROCESS_S = "time/preprocess_s"
EVAL_S = "time/eval_s"
LOAD_S = "time/load_s"
PLAN_SOLVE_S = "plan/solve_s"
PLAN_CALIBRATE_S = "plan/calibrate_s"
DEVICE_PEAK_BYTES = "mem/device_peak_bytes"
HOST_PEAK_BYTES = "mem/host_peak_bytes"


class SystemUnavailable(RuntimeError):
    """A system that cannot run on this machine (a missing environment, library or device); the message says how
    to make it available. Single runs fail on it; sweeps record the job as skipped and go on."""


class GraphError(ValueError):
    """A graph that breaks the container's invariants; the message names the field and the fix."""


def _fail(field_name: str, problem: str, fix: str) -> None:
    raise GraphError(f"graph field '{field_name}': {problem}. Fix: {fix}")


def _count_nonfinite_rows(x: Tensor, block_bytes: int = 64 * 2**20) -> int:
    """Rows of ``x`` holding NaN or Inf, checked in row blocks so a memory-mapped [N, F] is never copied whole."""
    rows = max(1, block_bytes // max(1, x.shape[1] * x.element_size())) if x.dim() == 2 else x.shape[0]
    return sum(int((~torch.isfinite(x[i:i + rows])).any(dim=1).sum()) for i in range(0, x.shape[0], rows))


@dataclass(eq=False)
class Graph:
    """A node-classification graph stored as CSR by destination.

    The in-neighbours of vertex ``v`` are ``col[rowptr[v]:rowptr[v+1]]`` (edge ``col[e] -> v``). Graphs from the
    data layer are *cleaned*: sorted columns per row, no duplicate edges, no self-loops (models that need
    self-loops add exactly one per vertex in their normalisation).

    Shapes: ``rowptr`` int64 [N+1], ``col`` int64 [E], ``x`` float32 [N, F], ``y`` int64 [N] with -1 meaning
    unlabelled, masks bool [N]. Tensors may be memory-mapped (read-only) views of the on-disk format.
    """

    name: str
    rowptr: Tensor
    col: Tensor
    x: Tensor
    y: Tensor
    train_mask: Tensor
    val_mask: Tensor
    test_mask: Tensor
    num_classes: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_nodes(self) -> int:
        return int(self.rowptr.numel()) - 1

    @property
    def num_edges(self) -> int:
        return int(self.col.numel())

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    def in_degree(self) -> Tensor:
        return self.rowptr[1:] - self.rowptr[:-1]

    def edge_index(self) -> Tensor:
        """[2, E] (source, destination) in CSR order; what PyG calls ``edge_index``."""
        dst = torch.repeat_interleave(torch.arange(self.num_nodes), self.in_degree())
        return torch.stack([self.col, dst])

    def stats(self) -> dict[str, Any]:
        deg = self.in_degree()
        return {
            "name": self.name,
            "num_nodes": self.num_nodes,
            "num_edges": self.num_edges,
            "num_features": self.num_features,
            "num_classes": self.num_classes,
            "avg_in_degree": self.num_edges / max(self.num_nodes, 1),
            "max_in_degree": int(deg.max()) if self.num_nodes else 0,
            "num_train": int(self.train_mask.sum()),
            "num_val": int(self.val_mask.sum()),
            "num_test": int(self.test_mask.sum()),
        }

    def validate(self) -> None:
        """Check every invariant; raise ``GraphError`` naming the field and the fix."""
        if not isinstance(self.name, str) or not self.name:
            _fail("name", "must be a non-empty string", "give the graph a name")
        for name, dtype in (("rowptr", torch.int64), ("col", torch.int64), ("x", torch.float32),
                            ("y", torch.int64), ("train_mask", torch.bool), ("val_mask", torch.bool),
                            ("test_mask", torch.bool)):
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                _fail(name, f"must be a torch.Tensor, got {type(value).__name__}", "convert with torch.as_tensor")
            if value.dtype != dtype:
                _fail(name, f"dtype is {value.dtype}, expected {dtype}", f"cast with .to({dtype})")
        if self.rowptr.dim() != 1 or self.rowptr.numel() < 2:
            _fail("rowptr", f"shape {tuple(self.rowptr.shape)} is not [N+1] with N >= 1",
                  "build the CSR row pointer over destinations (length num_nodes + 1)")
        n, e = self.num_nodes, self.col.numel()
        if int(self.rowptr[0]) != 0 or int(self.rowptr[-1]) != e:
            _fail("rowptr", f"must start at 0 and end at len(col)={e}, got {int(self.rowptr[0])}.."
                  f"{int(self.rowptr[-1])}", "rebuild the row pointer from the edge list")
        if n > 0 and bool((self.rowptr[1:] < self.rowptr[:-1]).any()):
            _fail("rowptr", "is not monotone non-decreasing", "rebuild it as a cumulative sum of in-degrees")
        if self.col.dim() != 1:
            _fail("col", f"shape {tuple(self.col.shape)} is not [E]", "flatten the source index array")
        if e and (int(self.col.min()) < 0 or int(self.col.max()) >= n):
            _fail("col", f"edge source index out of range [0, {n}): min {int(self.col.min())}, "
                  f"max {int(self.col.max())}", "drop edges to unknown vertices or fix num_nodes")
        if self.x.dim() != 2 or self.x.shape[0] != n:
            _fail("x", f"shape {tuple(self.x.shape)} is not [num_nodes={n}, F]",
                  "provide one feature row per vertex")
        if self.x.shape[1] < 1:
            _fail("x", "has zero feature columns", "provide at least one feature per vertex")
        bad = _count_nonfinite_rows(self.x)
        if bad:
            _fail("x", f"contains NaN or Inf in {bad} rows", "impute or drop non-finite feature values")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            _fail("num_classes", f"is {self.num_classes!r}, must be an integer >= 2", "set the class count")
        if self.y.shape != (n,):
            _fail("y", f"shape {tuple(self.y.shape)} is not [num_nodes={n}]", "provide one label per vertex")
        if n and (int(self.y.min()) < -1 or int(self.y.max()) >= self.num_classes):
            _fail("y", f"labels outside [-1, {self.num_classes}): min {int(self.y.min())}, max {int(self.y.max())}",
                  "use -1 for unlabelled vertices and 0..num_classes-1 for classes")
        for name in ("train_mask", "val_mask", "test_mask"):
            mask = getattr(self, name)
            if mask.shape != (n,):
                _fail(name, f"shape {tuple(mask.shape)} is not [num_nodes={n}]", "provide one flag per vertex")
            if not bool(mask.any()):
                _fail(name, "selects no vertex (empty split)", "give the split at least one labelled vertex")
            if bool((self.y[mask] < 0).any()):
                _fail(name, "selects unlabelled vertices (label -1)", "remove unlabelled vertices from the split")


@dataclass(frozen=True)
class ModelSpec:
    """What to train: the architecture and its optimiser (semantics in the module docstring)."""

    kind: str = "gcn"  # a registered model (flexgnn_core.models.names()); checked by flexgnn_core.models.check
    num_layers: int = 2
    hidden: int = 128
    heads: int = 4
    dropout: float = 0.0  # hidden dropout: after the activation between layers
    lr: float = 0.01
    input_dropout: float | None = None  # on the features before layer 0; None = the same rate as ``dropout``
    attention_dropout: float | None = None  # attention models: on alpha after the softmax; None = ``dropout``
    weight_decay: float = 0.0  # Adam's L2 (torch.optim.Adam(weight_decay=...)) on every parameter

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"model.kind must be a model name, got {self.kind!r}")
        for name in ("num_layers", "hidden", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        for name in ("dropout", "input_dropout", "attention_dropout"):
            value = getattr(self, name)
            if value is None and name != "dropout":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"model.lr must be a positive number, got {self.lr!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not math.isfinite(wd) or wd < 0:
            raise ValueError(f"model.weight_decay must be a number >= 0, got {wd!r}")

    @property
    def input_rate(self) -> float:
        """The input dropout rate in effect (``input_dropout``, or ``dropout`` when that is None)."""
        return float(self.dropout if self.input_dropout is None else self.input_dropout)

    @property
    def attention_rate(self) -> float:
        """The attention dropout rate in effect (``attention_dropout``, or ``dropout`` when that is None)."""
        return float(self.dropout if self.attention_dropout is None else self.attention_dropout)

    def dims(self, in_dim: int, num_classes: int) -> list[int]:
        """Layer widths ``[in, hidden, ..., num_classes]`` (GAT hidden widths are heads concatenated)."""
        return [in_dim] + [self.hidden] * (self.num_layers - 1) + [num_classes]


@dataclass(frozen=True)
class TrainSpec:
    """How to train: epochs (warm-up epochs included and trained, excluded from timing), seed and device."""

    epochs: int = 20
    warmup_epochs: int = 1
    seed: int = 0
    device: str = "auto"  # "auto" = cuda when available else cpu; or "cpu", "cuda", "cuda:1"
    progress: bool = True
    # "last": evaluate once after the last epoch; "best_val": evaluate after every epoch (timed apart from the
    # epochs) and also report the epoch of best validation accuracy, keeping its parameters
    select: str = "last"

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"train.epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.warmup_epochs, int) or not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"train.warmup_epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs!r}")
        if self.select not in SELECTIONS:
            raise ValueError(f"train.select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device='{name}' but CUDA is not available here; use device=cpu or device=auto")
    return device


@dataclass
class RunResult:
    """What a system's ``train`` returns. JSON-ready except ``final_params`` (kept for parity checks).

    ``status`` is ``"ok"``, or ``"infeasible"`` when a planning system found no plan that fits its budgets: then
    nothing was trained, ``reason`` says why and names the minimum, and ``plan`` is the plan that did not fit."""

    system: str
    epoch_losses: list[float]
    epoch_times_s: list[float]
    warmup_epochs: int
    accuracy: dict[str, float]  # {"train": .., "val": .., "test": ..}
    device: str
    peak_bytes: dict[str, int | None] = field(default_factory=dict)  # measured: "device", "host"
    tier_peak_bytes: dict[str, int | None] = field(default_factory=dict)  # accounted per tier (engines that do)
    io_bytes: dict[str, int] = field(default_factory=dict)  # per link in LINKS, whole run
    timings_s: dict[str, float] = field(default_factory=dict)  # "preprocess", "eval", "plan", ...
    plan: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    final_params: dict[str, Tensor] | None = None
    status: str = "ok"
    reason: str = ""
    # train.select=best_val: {"epoch" (0-based), "train", "val", "test"} of the epoch with the best validation
    # accuracy (the first on ties), and the validation accuracy after every epoch; None otherwise
    best_val: dict[str, Any] | None = None
    epoch_val_acc: list[float] | None = None
    evaluator: str = "accuracy"  # what scored the predictions (flexgnn_core.evaluate): "accuracy" or OGB's
    best_params: dict[str, Tensor] | None = None  # the parameters after the best validation epoch (best_val)
    predictions: dict[str, Tensor] | None = None  # "final" and "best_val" predicted classes [N] (not in JSON)

    @property
    def timed_epoch_times_s(self) -> list[float]:
        return self.epoch_times_s[self.warmup_epochs:]

    @property
    def median_epoch_s(self) -> float | None:
        timed = self.timed_epoch_times_s
        return statistics.median(timed) if timed else None

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "status": self.status,
            "reason": self.reason,
            "device": self.device,
            "epoch_losses": self.epoch_losses,
            "epoch_times_s": self.epoch_times_s,
            "warmup_epochs": self.warmup_epochs,
            "median_epoch_s": self.median_epoch_s,
            "accuracy": self.accuracy,
            "best_val": self.best_val,
            "epoch_val_acc": self.epoch_val_acc,
            "evaluator": self.evaluator,
            "peak_bytes": self.peak_bytes,
            "tier_peak_bytes": self.tier_peak_bytes,
            "io_bytes": self.io_bytes,
            "timings_s": self.timings_s,
            "plan": self.plan,
            "extra": self.extra,
        }


class TrainFn(Protocol):
    """The signature every system implements (``baselines/*.py`` and ``flexgnn_core.engine``).

    ``params`` comes from ``flexgnn_core.models.init_params`` and must not be modified in place; ``options`` holds
    the system's own settings (plan policy, budgets, world size, ...) as plain values. Systems use the shared
    timed loop ``flexgnn_core.loop.timed_training`` so that timing is the same for all.
    """

    def __call__(self, graph: Graph, model: ModelSpec, params: Mapping[str, Tensor], train: TrainSpec,
                 options: Mapping[str, Any]) -> RunResult: ...
