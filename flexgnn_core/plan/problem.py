"""The planning problem and the plan, as plain values (STYLE #14).

- ``Problem``: everything a solver may look at (graph and chunk statistics, model dims, budgets).
- ``intermediates(problem, orders)``: the named whole-graph tensors of one training epoch, per layer:
  ``h{l}`` layer input (``h0`` = features), ``agg{l}`` aggregate (aggregate-first layers), ``t{l}`` transformed
  input (transform-first layers and attention models), ``att{l}`` attention per edge and head, ``grad_h{l}``
  gradient of ``h{l}`` (``grad_h{L}`` = logits gradient), ``grad_t{l}`` gradient of ``t{l}``, and ``graph`` (the
  chunk blocks).
- ``Plan``: frozen, printable, JSON round-trippable; infeasible is a value with a reason, not an exception.
- ``Budgets``: the device and host budgets, validated once (``hardware.device_budget_bytes`` etc. in the harness).

Model-specific facts come from the model registry (``flexgnn_core.models``): its family, whether its post part
reads the layer's own rows, whether transform-first is allowed, and the width of its transform.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from flexgnn_core import models
from flexgnn_core.dropout import BLOCK_ELEMENTS
from flexgnn_core.plan.blocks import ALIGN, aligned
from flexgnn_core.spec import TIERS

PLACEMENTS = TIERS + ("recompute",)
ORDERS = ("aggregate_first", "transform_first")
ORDER_RULES = ("auto",) + ORDERS
FLOAT = 4
# The disk tier moves rows through page-aligned staging buffers in host memory, one per thread that touches it
# (the engine's, the prefetch thread and the write-behind thread), held whenever anything is on disk
# (engine/diskfile.py): each as large as the largest transfer a step makes, at most MAX_STAGING_BYTES (larger
# transfers go in pieces).
MAX_STAGING_BYTES = 8 * 2**20
STAGING_THREADS = 3


@dataclass(frozen=True)
class Budgets:
    """Device and host memory budgets in bytes (None = unlimited), or the device budget as a share of the
    all-on-device peak (``device_budget_fraction``, resolved to bytes against the problem before solving).
    Validated here, once, whoever sets them; errors name the ``hardware.`` field."""

    device_budget_bytes: int | None = None
    host_budget_bytes: int | None = None
    device_budget_fraction: float | None = None

    def __post_init__(self) -> None:
        for name in ("device_budget_bytes", "host_budget_bytes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"hardware.{name}={value!r} must be a positive integer number of bytes or None "
                                 "(unlimited)")
        fraction = self.device_budget_fraction
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
                raise ValueError(f"hardware.device_budget_fraction={fraction!r} must be a number in (0, 1] (a share "
                                 "of the all-on-device peak) or None")
            if self.device_budget_bytes is not None:
                raise ValueError(f"hardware.device_budget_fraction={fraction!r} and hardware.device_budget_bytes="
                                 f"{self.device_budget_bytes!r} are both set, and each sets the device budget; set "
                                 "only one of them")


@dataclass(frozen=True)
class Problem:
    """Plain-value description of one training job (``dims`` = layer widths ``[in, hidden.., classes]``)."""

    kind: str
    dims: tuple[int, ...]
    heads: int
    num_nodes: int
    num_edges: int  # edges the model aggregates over (self-loops included where the model adds them)
    num_chunks: int
    max_chunk_rows: int
    max_halo_rows: int
    max_chunk_edges: int
    sum_halo_rows: int
    graph_bytes: int
    param_bytes: int
    device_budget_bytes: int | None = None  # None = unlimited
    host_budget_bytes: int | None = None
    order_rule: str = "auto"
    # Dropout (masks made per chunk where rows are read: flexgnn_core.engine.dropping). Input dropout changes the
    # features every epoch, so layer 0's aggregate is made every epoch like any other layer's (never reused).
    input_dropout: bool = False
    hidden_dropout: bool = False
    attention_dropout: bool = False
    # device + host together (on a CPU machine one RAM holds both; under a memory cap); None = no joint bound
    memory_budget_bytes: int | None = None
    # The disk tier's graph-dependent block sums (plan.blocks), measured on the chunks (engine.prepare): per row
    # size in bytes, what one gather of every chunk's halo moves; for per-edge buffers (attention), what one pass
    # over every chunk's edge range moves and the partial blocks a write of it reads first. Empty / None (a
    # problem made by hand): the halo rows themselves, and near-equal edge ranges.
    disk_halo_bytes: tuple[tuple[int, int], ...] = ()
    disk_edge_bytes: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        Budgets(self.device_budget_bytes, self.host_budget_bytes)  # the one validation of budgets
        if self.memory_budget_bytes is not None and (isinstance(self.memory_budget_bytes, bool) or
                                                     not isinstance(self.memory_budget_bytes, int)):
            raise ValueError(f"memory_budget_bytes={self.memory_budget_bytes!r} must be an integer or None")

    @property
    def num_layers(self) -> int:
        return len(self.dims) - 1

    @property
    def model(self) -> models.GNNModel:
        return models.get(self.kind)

    @property
    def attention(self) -> bool:
        return self.model.family == "attention"


@dataclass(frozen=True)
class Intermediate:
    name: str
    layer: int
    nbytes: int
    recomputable: bool
    tiers: tuple[str, ...] = TIERS


def transform_width(problem: Problem, layer: int) -> int:
    """Width of ``t{layer}`` (the model's first weight applied): GAT = heads x channels per head."""
    last = layer == problem.num_layers - 1
    return problem.model.transform_width(problem.heads, problem.dims[layer + 1], last)


def layer_orders(problem: Problem) -> tuple[str, ...]:
    """Attention models always transform first; models whose post part is not affine always aggregate first;
    others follow ``order_rule``, where ``auto`` transforms first when that narrows the aggregated width (layer 0
    stays aggregate-first: its aggregate of fixed features is computed once; with input dropout there is no such
    reuse, and layer 0 follows the width rule too)."""
    if problem.order_rule not in ORDER_RULES:
        raise ValueError(f"order='{problem.order_rule}' is unknown; valid: {', '.join(ORDER_RULES)}")
    model = problem.model
    orders = []
    for layer in range(problem.num_layers):
        if model.family == "attention":
            orders.append("transform_first")
        elif not model.affine_post:
            orders.append("aggregate_first")
        elif problem.order_rule == "auto":
            narrower = problem.dims[layer + 1] < problem.dims[layer]
            reused = layer == 0 and not problem.input_dropout
            orders.append("transform_first" if narrower and not reused else "aggregate_first")
        else:
            orders.append(problem.order_rule)
    return tuple(orders)


def free_orders(problem: Problem) -> bool:
    """Whether a solver may choose each layer's order (else ``layer_orders`` fixes them)."""
    model = problem.model
    return model.family != "attention" and model.affine_post and problem.order_rule == "auto"


def intermediates(problem: Problem, orders: tuple[str, ...]) -> list[Intermediate]:
    """Named intermediates, first layer to last (the graph blocks first)."""
    n = problem.num_nodes
    items = [Intermediate("graph", -1, problem.graph_bytes, False, ("device", "host"))]
    for layer, order in enumerate(orders):
        width = problem.dims[layer]
        items.append(Intermediate(f"h{layer}", layer, n * width * FLOAT, False))
        if order == "aggregate_first":
            items.append(Intermediate(f"agg{layer}", layer, n * width * FLOAT, True))
        else:
            t_width = transform_width(problem, layer)
            items.append(Intermediate(f"t{layer}", layer, n * t_width * FLOAT, True))
            items.append(Intermediate(f"grad_t{layer}", layer, n * t_width * FLOAT, False))
        if problem.attention:
            items.append(Intermediate(f"att{layer}", layer, problem.num_edges * problem.heads * FLOAT, True))
        if layer > 0:
            items.append(Intermediate(f"grad_h{layer}", layer, n * width * FLOAT, False))
    last = problem.num_layers
    items.append(Intermediate(f"grad_h{last}", last, n * problem.dims[last] * FLOAT, False))
    return items


def staging_bytes(problem: Problem) -> int:
    """One disk staging buffer: the largest rows-or-halo transfer of the widest row, in whole aligned blocks plus a
    block at each end, at most ``MAX_STAGING_BYTES``. ``STAGING_THREADS`` of them are held while anything is on
    disk."""
    widths = list(problem.dims) + [transform_width(problem, layer) for layer in range(problem.num_layers)]
    rows = max(problem.max_chunk_rows, problem.max_halo_rows) * max(widths)
    edges = problem.max_chunk_edges * problem.heads if problem.attention else 0  # att{l}: a chunk's edge range
    largest = max(rows, edges) * FLOAT
    return min(MAX_STAGING_BYTES, aligned(largest) + 2 * ALIGN)


def fixed_device_bytes(problem: Problem) -> int:
    """Always on the device: parameters, their gradients and Adam's two moments; labels and train mask."""
    return 4 * problem.param_bytes + problem.num_nodes * 9


def working_set_bytes(problem: Problem) -> int:
    """Upper bound on one chunk step's device tensors (two chunks' inputs in flight while prefetching)."""
    widths = list(problem.dims) + [transform_width(problem, layer) for layer in range(problem.num_layers)]
    wide = max(widths)
    halo = problem.max_halo_rows * wide * FLOAT
    rows = problem.max_chunk_rows * wide * FLOAT
    edges = problem.max_chunk_edges * FLOAT * (problem.heads * 8 if problem.attention else 2)
    block = problem.graph_bytes * problem.max_chunk_edges // max(problem.num_edges, 1)
    return 3 * halo + 6 * rows + edges + 2 * block + dropout_working_bytes(problem)


def dropout_working_bytes(problem: Problem) -> int:
    """Device bytes of one chunk step's dropout: the mask generator's int64 blocks, a halo's mask and its masked
    copy (input dropout), one more attention tensor (attention dropout) and a row mask (hidden dropout)."""
    if not (problem.input_dropout or problem.hidden_dropout or problem.attention_dropout):
        return 0
    total = 3 * 8 * BLOCK_ELEMENTS
    if problem.input_dropout:
        total += problem.max_halo_rows * problem.dims[0] * (FLOAT + 1)
    if problem.hidden_dropout:
        total += problem.max_chunk_rows * max(problem.dims[1:]) * (FLOAT + 1)
    if problem.attention_dropout:
        total += problem.max_chunk_edges * problem.heads * (FLOAT + 1)
    return total


@dataclass(frozen=True)
class Plan:
    """Where every intermediate lives, how the graph is chunked and each layer ordered, and what that costs."""

    policy: str
    num_chunks: int
    orders: tuple[str, ...]
    placement: tuple[tuple[str, str], ...]  # (intermediate, device | host | disk | recompute)
    device_budget_bytes: int | None
    host_budget_bytes: int | None
    predicted_peak_bytes: tuple[tuple[str, int], ...]  # per tier
    min_device_budget_bytes: int
    feasible: bool
    reason: str = ""
    memory_budget_bytes: int | None = None  # device + host together (see Problem)

    def where(self, name: str) -> str:
        return dict(self.placement)[name]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["placement"] = dict(self.placement)
        out["predicted_peak_bytes"] = dict(self.predicted_peak_bytes)
        out["orders"] = list(self.orders)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Plan":
        fields = dict(data)
        fields["placement"] = tuple(fields["placement"].items())
        fields["predicted_peak_bytes"] = tuple(fields["predicted_peak_bytes"].items())
        fields["orders"] = tuple(fields["orders"])
        return cls(**fields)

    def __str__(self) -> str:
        mib = lambda b: "unlimited" if b is None else f"{b / 2**20:.1f} MiB"  # noqa: E731
        lines = [f"plan {self.policy}: P={self.num_chunks} feasible={self.feasible}"
                 + (f" ({self.reason})" if self.reason else ""),
                 f"  budgets: device {mib(self.device_budget_bytes)}, host {mib(self.host_budget_bytes)}, "
                 f"device + host {mib(self.memory_budget_bytes)}; min device {mib(self.min_device_budget_bytes)}",
                 "  predicted peak: " + ", ".join(f"{t} {mib(b)}" for t, b in self.predicted_peak_bytes),
                 "  orders: " + ", ".join(self.orders),
                 "  placement: " + ", ".join(f"{name}={where}" for name, where in self.placement)]
        return "\n".join(lines)


def check_placement(placement: dict[str, str], problem: Problem, orders: tuple[str, ...]) -> None:
    """Raise if a placement names an unknown intermediate or tier, or recomputes what cannot be recomputed."""
    known = {item.name: item for item in intermediates(problem, orders)}
    for name, where in placement.items():
        if name not in known:
            raise ValueError(f"plan names unknown intermediate '{name}'; valid: {', '.join(known)}")
        item = known[name]
        valid = item.tiers + (("recompute",) if item.recomputable else ())
        if where not in valid:
            raise ValueError(f"plan puts '{name}' on unknown or invalid tier '{where}'; valid for it: "
                             f"{', '.join(valid)}")
    missing = [name for name in known if name not in placement]
    if missing:
        raise ValueError(f"plan has no placement for {', '.join(missing)}; give each one of {', '.join(PLACEMENTS)}")
