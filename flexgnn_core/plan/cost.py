"""The cost model: measured rates as data plus small pure functions that predict a plan's epoch time.

A ``Hardware`` value holds rates (aggregation throughput in edge x feature-width units per second, dense matmul
FLOP/s, elementwise memory bandwidth, one copy bandwidth per link, a per-chunk-step overhead, and the fraction of
transfer time prefetching can hide under compute). ``predict(plan, problem, hw)`` adds up:

- compute: per layer a base term fixed by its order, plus per recomputable intermediate the cost of storing it
  (computing it once) or of recomputing it (``item_compute_s``); plus ``step_overhead_s`` per chunk step;
- transfers: ``simulate()``'s bytes per link (exactly the engine's) divided by that link's bandwidth (links
  summed: conservative), plus ``transfer_op_s`` per chunk-level transfer (an alpha-beta link model: on CPU the
  per-transfer cost is the prefetch hand-off and staging, ~100 us, which dominates at high P);
- overlap: ``epoch = max(compute, compute + transfer - overlap * compute)``: prefetching hides at most
  ``overlap x (P - 1) / P`` of the compute time's worth of transfers (each pass's first chunk has nothing to
  hide behind; none at P=1).

Every term is a sum of per-layer, per-intermediate and per-group-of-intermediates costs, which is what lets
``plan.solvers.optimal`` solve the placement exactly as a mixed-integer program over the same numbers
(``item_compute_s``, ``item_link_bytes``, ``joint_link_bytes``; a group is one product variable). Model-specific
dense work comes from the model's own declaration (``GNNModel.post_flops``); attention models add GAT's terms.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from flexgnn_core.plan.problem import FLOAT, Plan, Problem, intermediates, transform_width
from flexgnn_core.plan.simulate import link_terms, simulate

LINKS = ("h2d", "d2h", "disk_read", "disk_write", "ops")  # "ops": chunk-level transfers, at transfer_op_s each
RATE_FIELDS = ("agg_edge_width_per_s", "matmul_flop_per_s", "memory_bytes_per_s", "h2d_bytes_per_s",
               "d2h_bytes_per_s", "disk_read_bytes_per_s", "disk_write_bytes_per_s")
# 0: derived from another rate, or the term is not modelled
OPTIONAL_RATES = ("gat_edge_head_per_s", "gat_edge_per_s", "gather_bytes_per_s", "gat_softmax_edge_head_per_s",
                  "dropout_mask_per_s")
MASK_BYTES_PER_ENTRY = 256  # a dropout mask entry when not measured: about 16 int64 passes, each read and written


@dataclass(frozen=True)
class Hardware:
    """Rates of one machine (``source``: "measured" by calibrate.py, "datasheet" for a what-if profile, "unit")."""

    name: str
    agg_edge_width_per_s: float  # sparse aggregation: edges x feature width per second
    matmul_flop_per_s: float
    memory_bytes_per_s: float  # elementwise work on the device (activations, loss)
    h2d_bytes_per_s: float
    d2h_bytes_per_s: float
    disk_read_bytes_per_s: float
    disk_write_bytes_per_s: float
    step_overhead_s: float = 0.0  # fixed cost of one chunk step (dispatch, launches)
    overlap: float = 0.0  # share of compute time under which prefetched transfers hide as P grows (x (P-1)/P)
    source: str = "measured"
    gat_edge_head_per_s: float = 0.0  # GAT attention (scores, softmax, weighting) per edge and head; 0: agg rate / 4
    gat_edge_per_s: float = 0.0  # GAT per-edge index work whatever the heads (gathers by src/dst); 0: none
    gather_bytes_per_s: float = 0.0  # row gathers / scatter-adds of halo rows on the device; 0: memory rate / 2
    gat_softmax_edge_head_per_s: float = 0.0  # GAT's edge softmax alone (what recomputing att redoes); 0: a pass
    transfer_op_s: float = 0.0  # latency of one chunk-level off-device transfer (dispatch, staging, hand-off)
    dropout_mask_per_s: float = 0.0  # dropout mask entries made and applied per second; 0: memory rate / 256 B

    def __post_init__(self) -> None:
        for name in RATE_FIELDS + ("step_overhead_s", "overlap", "transfer_op_s") + OPTIONAL_RATES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"hardware.{name}={value!r} must be a finite number")
            if name in RATE_FIELDS and value <= 0:
                raise ValueError(f"hardware.{name}={value!r} must be > 0 (a rate per second)")
        for name in OPTIONAL_RATES:
            if getattr(self, name) < 0:
                raise ValueError(f"hardware.{name}={getattr(self, name)!r} must be >= 0 per second (0: derived or "
                                 "not modelled)")
        for name in ("step_overhead_s", "transfer_op_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"hardware.{name}={getattr(self, name)!r} must be >= 0 seconds")
        if not 0 <= self.overlap <= 1:
            raise ValueError(f"hardware.overlap={self.overlap!r} must be in [0, 1]")

    def link_bytes_per_s(self, link: str) -> float:
        """Bytes per second of a link; for ``ops`` (transfer counts), transfers per second."""
        if link == "ops":
            return 1 / self.transfer_op_s if self.transfer_op_s else math.inf
        return getattr(self, f"{link}_bytes_per_s")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Hardware":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown hardware field(s) {', '.join(sorted(unknown))}; valid: {', '.join(known)}")
        return cls(**data)


UNIT = Hardware("unit", 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, "unit")


@dataclass(frozen=True)
class Prediction:
    compute_s: float
    transfer_s: tuple[tuple[str, float], ...]  # per link
    hidden_s: float  # transfer time hidden under compute by prefetching
    epoch_s: float
    peak_bytes: tuple[tuple[str, int], ...]  # per tier, from simulate()
    link_bytes: tuple[tuple[str, int], ...]  # per link per epoch, from simulate()

    def to_json(self) -> dict:
        return {"compute_s": self.compute_s, "transfer_s": dict(self.transfer_s), "hidden_s": self.hidden_s,
                "epoch_s": self.epoch_s, "peak_bytes": dict(self.peak_bytes), "link_bytes": dict(self.link_bytes)}


# ---- compute ---------------------------------------------------------------------------------------------------
def agg_s(hw: Hardware, edges: int, width: int) -> float:
    return edges * width / hw.agg_edge_width_per_s


def attention_s(hw: Hardware, edges: int, heads: int) -> float:
    """One pass of GAT's per-edge attention work (scores, softmax, weighting) over ``edges`` x ``heads``, plus
    the per-edge index work whose cost does not grow with the heads (``gat_edge_per_s``)."""
    per_edge = edges / hw.gat_edge_per_s if hw.gat_edge_per_s else 0.0
    return per_edge + edges * heads / (hw.gat_edge_head_per_s or hw.agg_edge_width_per_s / 4)


def halo_s(hw: Hardware, rows: int, width: int) -> float:
    """One gather (or scatter-add) of ``rows`` halo rows of ``width`` floats on the device: random row access,
    the cost that grows with P as chunks read more distinct sources in all."""
    return rows * width * FLOAT / (hw.gather_bytes_per_s or hw.memory_bytes_per_s / 2)


def mm_s(hw: Hardware, rows: int, inner: int, cols: int) -> float:
    return 2 * rows * inner * cols / hw.matmul_flop_per_s


def mask_s(hw: Hardware, entries: int) -> float:
    """Making ``entries`` dropout mask entries (``flexgnn_core.dropout``) and applying them."""
    return entries / (hw.dropout_mask_per_s or hw.memory_bytes_per_s / MASK_BYTES_PER_ENTRY)


def input_reads_s(problem: Problem, hw: Hardware, rows: int) -> float:
    """Reading ``rows`` rows of the features under input dropout: their masks, and a gather of the rows where the
    engine would otherwise have indexed the buffer in place (halo reads, P > 1)."""
    d = problem.dims[0]
    return mask_s(hw, rows * d) + (halo_s(hw, rows, d) if problem.num_chunks > 1 else 0.0)


def dropout_s(problem: Problem, hw: Hardware, layer: int, order: str) -> float:
    """Layer ``layer``'s dropout masks that every plan makes (forward and backward): its input's rows read in
    place (input dropout; the halo reads that depend on the placement are in ``item_compute_s``), its dropped
    output (hidden dropout) and its attention (attention dropout)."""
    n, total = problem.num_nodes, 0.0
    if layer == 0 and problem.input_dropout:
        own = 2 * n * problem.model.self_rows + n * (order == "transform_first")  # root weight; dW's rows
        total += mask_s(hw, own * problem.dims[0])
        if order == "aggregate_first":  # the forward halo: layer 0 aggregates every epoch
            total += agg_s(hw, problem.num_edges, problem.dims[0]) + input_reads_s(problem, hw, problem.sum_halo_rows)
    if problem.hidden_dropout and layer < problem.num_layers - 1:
        total += 2 * mask_s(hw, n * problem.dims[layer + 1])
    if problem.attention_dropout:
        total += 2 * mask_s(hw, problem.num_edges * problem.heads)
    return total


def layer_base_s(problem: Problem, hw: Hardware, layer: int, order: str) -> float:
    """Compute of one layer (forward + backward) that does not depend on where its intermediates live."""
    n, e, chunks = problem.num_nodes, problem.num_edges, problem.num_chunks
    d, o = problem.dims[layer], problem.dims[layer + 1]
    first, last = layer == 0, layer == problem.num_layers - 1
    elementwise = n * o * FLOAT * (2 if last else 3) / hw.memory_bytes_per_s  # activation (+ grad) or loss
    post_forward, post_backward = problem.model.post_flops(d, o, order == "transform_first", first)
    post = n * (post_forward + post_backward) / hw.matmul_flop_per_s  # e.g. SAGE's root weight
    halo = problem.sum_halo_rows
    if order == "aggregate_first":  # forward reads device rows by global column; backward scatters to the halo
        forward = (0.0 if first else agg_s(hw, e, d)) + mm_s(hw, n, d, o)
        backward = mm_s(hw, n, o, d) + (0.0 if first else mm_s(hw, n, o, d) + agg_s(hw, e, d) + halo_s(hw, halo, d))
        steps = 2 * chunks
    else:
        t = transform_width(problem, layer)
        forward = agg_s(hw, e, t)
        backward = agg_s(hw, e, t) + (1 + (not first)) * mm_s(hw, n, t, d) + halo_s(hw, halo, t)
        steps = 3 * chunks
        if problem.attention:  # attention per edge and head forward and backward; gat_backward ~ 3 aggregations
            forward += attention_s(hw, e, problem.heads)
            backward += 2 * agg_s(hw, e, t) + attention_s(hw, e, problem.heads)
            # the halo rows of t gathered forward and backward (not at P=1: the halo is every row, in order), and
            # about four elementwise passes over them, each a read and a write (the scores forward and backward,
            # gat_backward's d_t and d_att_src)
            gathers = 0 if chunks == 1 else 2
            backward += gathers * halo_s(hw, halo, t) + 4 * 2 * halo * t * FLOAT / hw.memory_bytes_per_s
    return forward + backward + post + elementwise + steps * hw.step_overhead_s + dropout_s(problem, hw, layer, order)


def item_compute_s(problem: Problem, hw: Hardware, name: str, recomputed: bool) -> float:
    """Compute a recomputable intermediate costs when stored (made once per epoch) or when recomputed."""
    layer = int(name.lstrip("agt"))
    n, e, d = problem.num_nodes, problem.num_edges, problem.dims[layer]
    if name.startswith("agg"):  # stored agg0 is reused across epochs; recompute aggregates again in backward
        if not recomputed:
            return 0.0
        if layer == 0 and problem.input_dropout:  # forward is in the base; backward reads masked halo rows again
            return agg_s(hw, e, d) + input_reads_s(problem, hw, problem.sum_halo_rows)
        return agg_s(hw, e, d) * (2 if layer == 0 else 1)
    if name.startswith("att"):  # recompute: the edge softmax again in backward (its scores are made anyway)
        if not recomputed:
            return 0.0
        rate = hw.gat_softmax_edge_head_per_s
        return e * problem.heads / rate if rate else attention_s(hw, e, problem.heads)
    t = transform_width(problem, layer)  # t{layer}: stored = one whole transform pass (P more steps)
    if recomputed:  # transform only the halo rows inside each aggregation step (twice for GAT: fwd and bwd),
        # gathering h's halo rows instead (GAT: in place of t's, already in the layer's base)
        halo, passes = problem.sum_halo_rows, (2 if problem.attention else 1)
        if problem.num_chunks == 1:  # one chunk reads the whole buffer in place: no gather of h, nor of t
            gathered = 0.0
        else:
            gathered = halo_s(hw, halo, d) - (halo_s(hw, halo, t) if problem.attention else 0.0)
        masks = mask_s(hw, halo * d) if layer == 0 and problem.input_dropout else 0.0
        return passes * (mm_s(hw, halo, d, t) + gathered + masks)
    masks = mask_s(hw, n * d) if layer == 0 and problem.input_dropout else 0.0  # the transform pass reads h0 rows
    return mm_s(hw, n, d, t) + problem.num_chunks * hw.step_overhead_s + masks


def compute_s(plan: Plan, problem: Problem, hw: Hardware) -> float:
    where = dict(plan.placement)
    total = sum(layer_base_s(problem, hw, layer, order) for layer, order in enumerate(plan.orders))
    for item in intermediates(problem, plan.orders):
        if item.recomputable:
            total += item_compute_s(problem, hw, item.name, where[item.name] == "recompute")
    return total


# ---- transfers -------------------------------------------------------------------------------------------------
def item_link_bytes(problem: Problem, name: str, where: str) -> dict[str, int]:
    """Bytes per link per epoch (and for ``ops`` the count of chunk-level transfers) that intermediate ``name`` on
    ``where`` moves whatever else is placed where (``plan.link_terms`` with one condition)."""
    links = dict.fromkeys(LINKS, 0)
    for term in link_terms(problem):
        if len(term.when) == 1 and term.when[0][0] == name and where in term.when[0][1]:
            for link, nbytes in term.links:
                links[link] += nbytes
    return links


Condition = tuple[str, frozenset]  # (intermediate, the placements under which a term applies)


def joint_link_bytes(problem: Problem) -> list[tuple[tuple[Condition, ...], dict[str, int]]]:
    """Bytes per link per epoch that depend on two or more placements at once (``plan.link_terms`` with several
    conditions: a layer input off the device read more or less as its aggregate or transform is recomputed or
    stored; a column pass's reads and writes, and its walks over a host-placed graph)."""
    return [(term.when, dict(term.links)) for term in link_terms(problem) if len(term.when) >= 2]


def transfer_s(link_bytes: dict[str, int], hw: Hardware) -> dict[str, float]:
    return {link: link_bytes[link] / hw.link_bytes_per_s(link) for link in LINKS}


def overlap(problem: Problem, hw: Hardware) -> float:
    """The share of compute that can hide transfers at this P: each pass's first chunk fetches with nothing to
    hide behind (the engine prefetches chunk i+1 while chunk i computes), so ``overlap x (P - 1) / P``; none at
    P=1."""
    p = problem.num_chunks
    return hw.overlap * (p - 1) / p


def epoch_s(compute: float, transfer: float, hidden_share: float) -> float:
    return max(compute, compute + transfer - hidden_share * compute)


def predict(plan: Plan, problem: Problem, hw: Hardware) -> Prediction:
    """Predicted epoch time and peak bytes per tier of ``plan`` on ``problem`` (chunk stats must match P)."""
    if plan.num_chunks != problem.num_chunks:
        raise ValueError(f"plan.num_chunks={plan.num_chunks} but problem.num_chunks={problem.num_chunks}; predict "
                         "with the problem's chunk statistics for the plan's P (solvers.problem_for)")
    simulated = simulate(plan, problem)
    compute = compute_s(plan, problem, hw)
    per_link = transfer_s({**simulated["link_bytes"], "ops": simulated["transfer_ops"]}, hw)
    transfer = sum(per_link.values())
    epoch = epoch_s(compute, transfer, overlap(problem, hw))
    return Prediction(compute, tuple(per_link.items()), compute + transfer - epoch, epoch,
                      tuple(simulated["peak_bytes"].items()), tuple(simulated["link_bytes"].items()))
