"""The FlexGNN engine: exact full-graph GNN training in destination chunks, intermediates placed by a plan.

Forward runs layer by layer and chunk by chunk: fetch the chunk's needed source rows from the tier the layer input
lives on, aggregate (or transform, then aggregate), activate, and write the chunk's output rows to their tier; the
last layer turns logits straight into the loss and its gradient. Backward mirrors it with hand-written gradients:
fetch or recompute per the plan, accumulate weight gradients across chunks, scatter-add input gradients into the
layer-input gradient buffer (itself on a tier). Then Adam on the shared parameters. Layer 0's aggregate of the
fixed features is computed in the first epoch and reused (FlexGNN's release does the same).

Usage: ``train(graph, model, params, train_spec, options)`` (the ``spec.TrainFn`` signature, system "flexgnn");
options: ``policy``, ``num_chunks``, ``reorder``, ``order``, ``prefetch``, ``placement`` (a custom plan),
``device_budget_bytes``, ``host_budget_bytes``, ``disk_dir``, ``device_budget_fraction`` (the device budget as a
share of this problem's all-on-device peak at the configured ``num_chunks``, resolved to bytes before planning).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor

from flexgnn_core import cost, ops, solvers
from flexgnn_core.chunks import Chunk, build_chunks, relabel_csr, reorder
from flexgnn_core.loop import timed_training
from flexgnn_core.memory import PeakMemoryMeter
from flexgnn_core.models import masked_accuracy
from flexgnn_core.norm import add_self_loops_csr, gcn_norm_csr, mean_norm_csr
from flexgnn_core.plan import Plan, Problem, custom_plan, simulate, transform_width
from flexgnn_core.spec import Graph, ModelSpec, PlanInfeasible, RunResult, TrainSpec, resolve_device
from flexgnn_core.tiers import TierStore

SYSTEM = "flexgnn"
DEFAULTS = {"policy": "optimal", "num_chunks": 4, "reorder": "none", "order": "auto", "prefetch": True,
            "placement": None, "device_budget_bytes": None, "host_budget_bytes": None, "disk_dir": None,
            "print_plan": True, "hardware": None, "device_budget_fraction": None}


def model_graph(graph_rowptr: Tensor, graph_col: Tensor, kind: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """The CSR each model aggregates over, with its edge weights (GAT: self-loops, weights from attention)."""
    if kind == "gcn":
        return gcn_norm_csr(graph_rowptr, graph_col)
    if kind == "sage":
        return graph_rowptr, graph_col, mean_norm_csr(graph_rowptr, graph_col)
    rowptr, col = add_self_loops_csr(graph_rowptr, graph_col)
    return rowptr, col, None


class Engine:
    """Holds the chunks, the tier store, the device parameters and the plan. ``allocate()`` places the buffers;
    ``forward()`` returns the loss and leaves the logits' gradient in ``grad_h{L}``; ``backward()`` returns the
    parameter gradients."""

    def __init__(self, graph: Graph, model: ModelSpec, params: Mapping[str, Tensor], device: torch.device,
                 store: TierStore, options: Mapping[str, Any]):
        if model.dropout != 0:
            raise ValueError(f"model.dropout={model.dropout}: the flexgnn engine supports dropout=0 only")
        self.model, self.kind, self.device, self.store = model, model.kind, device, store
        self.num_layers, self.heads = model.num_layers, model.heads
        self.dims = model.dims(graph.num_features, graph.num_classes)
        start = time.perf_counter()
        num_chunks = options["num_chunks"]
        if not isinstance(num_chunks, int) or not 1 <= num_chunks <= graph.num_nodes:
            raise ValueError(f"num_chunks={num_chunks!r} must be an integer in [1, num_nodes={graph.num_nodes}]; "
                             f"{'raise' if not isinstance(num_chunks, int) or num_chunks < 1 else 'lower'} "
                             "num_chunks (each chunk holds at least one destination vertex)")
        self.order = reorder(graph.rowptr, graph.col, options["reorder"], num_chunks)
        rowptr, col = relabel_csr(graph.rowptr, graph.col, self.order)
        rowptr, col, values = model_graph(rowptr, col, self.kind)
        self.chunks = build_chunks(rowptr, col, values, num_chunks, self_loops=self.kind == "gat")
        self.num_nodes, self.num_edges = graph.num_nodes, int(col.numel())
        perm = self.order.perm
        self.x = graph.x[perm].contiguous()
        self.y = graph.y[perm].to(device)
        self.masks = {split: getattr(graph, f"{split}_mask")[perm] for split in ("train", "val", "test")}
        self.train_mask = self.masks["train"].to(device)
        self.num_train = int(self.masks["train"].sum())
        self.params = {name: value.detach().to(device, copy=True) for name, value in params.items()}
        self.preprocess_s = time.perf_counter() - start
        self._set_problem(num_chunks, options)
        if options["device_budget_fraction"] is not None:  # a share of what all-on-device needs at this P
            everything = simulate(solvers.SOLVERS["all_device"](self.problem), self.problem)["peak_bytes"]["device"]
            budget = math.ceil(options["device_budget_fraction"] * everything)
            options = {**options, "device_budget_bytes": budget}  # kept for a re-plan at optimal_p's P
            self.problem = dataclasses.replace(self.problem, device_budget_bytes=budget)
        start = time.perf_counter()
        hw = solvers.hardware_for(options["hardware"], device)
        if options["placement"] is not None:
            self.plan = custom_plan(self.problem, dict(options["placement"]))
        else:
            self.plan = solvers.solve(self.problem, options["policy"], hw)
        if self.plan.num_chunks != num_chunks:  # optimal_p chose another P: rebuild the blocks, re-plan exactly
            self.chunks = build_chunks(rowptr, col, values, self.plan.num_chunks, self_loops=self.kind == "gat")
            self._set_problem(self.plan.num_chunks, options)
            self.plan = Plan(**{**solvers.solve(self.problem, "optimal", hw).__dict__, "policy": self.plan.policy})
        self.plan_s = time.perf_counter() - start
        self.prediction = cost.predict(self.plan, self.problem, hw)
        self.prefetch = bool(options["prefetch"])

    def _set_problem(self, num_chunks: int, options: Mapping[str, Any]) -> None:
        self.problem = Problem(
            kind=self.kind, dims=tuple(self.dims), heads=self.heads, num_nodes=self.num_nodes,
            num_edges=self.num_edges, num_chunks=num_chunks,
            max_chunk_rows=max(c.rows for c in self.chunks), max_halo_rows=max(c.halo.numel() for c in self.chunks),
            max_chunk_edges=max(c.num_edges for c in self.chunks),
            sum_halo_rows=sum(int(c.halo.numel()) for c in self.chunks),
            graph_bytes=sum(c.nbytes() for c in self.chunks),
            param_bytes=sum(p.numel() * 4 for p in self.params.values()),
            device_budget_bytes=options["device_budget_bytes"], host_budget_bytes=options["host_budget_bytes"],
            order_rule=options["order"])

    # ---- storage -------------------------------------------------------------------------------------------
    def allocate(self) -> None:
        """Create every stored intermediate on its tier (refuses an infeasible plan, naming the minimum)."""
        if not self.plan.feasible:
            raise PlanInfeasible(f"plan '{self.plan.policy}' is infeasible: {self.plan.reason}", self.plan.to_json())
        where = dict(self.plan.placement)
        self.graph_on_device = where["graph"] == "device"
        self._block_bytes = 0
        if self.graph_on_device:
            self.chunks = [chunk.to(self.device) for chunk in self.chunks]
            self.store.counters.hold("device", self.problem.graph_bytes)
        else:
            self.store.counters.hold("host", self.problem.graph_bytes)
        self.store.counters.hold("device", 4 * self.problem.param_bytes + self.num_nodes * 9)
        self.buffers = {}
        n = self.num_nodes
        shapes = {"graph": None}
        for layer in range(self.num_layers):
            shapes[f"h{layer}"] = (n, self.dims[layer])
            shapes[f"agg{layer}"] = (n, self.dims[layer])
            shapes[f"t{layer}"] = shapes[f"grad_t{layer}"] = (n, transform_width(self.problem, layer))
            shapes[f"att{layer}"] = (self.num_edges, self.heads)
            shapes[f"grad_h{layer}"] = (n, self.dims[layer])
        shapes[f"grad_h{self.num_layers}"] = (n, self.dims[-1])
        for name, tier in self.plan.placement:
            if name != "graph" and tier != "recompute":
                self.buffers[name] = self.store.alloc(name, shapes[name], tier)
        self.buffers["h0"].write(slice(0, n), self.x.to(self.device) if self.buffers["h0"].tier == "device"
                                 else self.x)
        self.agg0_ready = False

    def _chunk(self, chunk: Chunk) -> Chunk:
        if self.graph_on_device:
            return chunk
        moved = chunk.to(self.device)
        if self.device.type == "cpu":  # a real copy, so that keeping the graph off the device costs here too
            moved = Chunk(**{k: (v.clone() if isinstance(v, Tensor) else v) for k, v in moved.__dict__.items()})
        self.store.counters.moved("h2d", chunk.nbytes())
        self.store.untrack(self._block_bytes)  # one block is live at a time: the previous one is dropped now
        self._block_bytes = chunk.nbytes()
        self.store.counters.hold("device", self._block_bytes)
        return moved

    def _rows(self, name: str, chunk: Chunk) -> Tensor:
        return self.buffers[name].read(slice(chunk.start, chunk.stop))

    def _halo(self, name: str, chunk: Chunk, gather: bool = False) -> tuple[Tensor, bool]:
        """The chunk's source rows of ``name``; ``(whole buffer, True)`` when it is on the device and the chunk's
        block can index it with global columns (no gather), or when the halo is every vertex."""
        buffer = self.buffers[name]
        if chunk.halo.numel() == self.num_nodes and buffer.tier == "device":
            return buffer.data, False  # halo = all vertices in order: local and global columns coincide
        if buffer.tier == "device" and not gather:
            return buffer.data, True
        return buffer.read(chunk.halo), False

    def _prefetched(self, fetch: Callable[[Chunk], dict], names: list[str]) -> Iterator[tuple[Chunk, dict]]:
        """``(chunk, fetch(chunk))`` in order; fetched one chunk ahead in the background when any of ``names``
        (the buffers ``fetch`` reads) lives off the device (``TierStore.prefetched``)."""
        off_device = any(self.buffers[n].tier != "device" for n in names if n in self.buffers)
        background = self.prefetch and off_device and len(self.chunks) > 1
        return self.store.prefetched(self.chunks, fetch, background)

    def _aggregate(self, chunk: Chunk, source: Tensor, whole: bool) -> Tensor:
        matrix = chunk.matrix(chunk.values, self.num_nodes if whole else None)
        return torch.sparse.mm(matrix, source)

    # ---- forward -------------------------------------------------------------------------------------------
    def forward(self, logits_out: Tensor | None = None) -> float:
        """One forward pass over all layers; returns the mean training loss (writes ``grad_h{L}``)."""
        self.loss_sum = torch.zeros((), device=self.device)
        self.logits_out = logits_out
        for layer in range(self.num_layers):
            order = self.plan.orders[layer]
            if order == "transform_first":
                self._forward_transform(layer)
            (self._forward_gat if self.kind == "gat" else self._forward_conv)(layer, order)
        self.agg0_ready = True
        return float(self.loss_sum) / self.num_train

    def _forward_transform(self, layer: int) -> None:
        """``t = h W^T`` for every row chunk (skipped when the plan recomputes ``t`` per chunk)."""
        if f"t{layer}" not in self.buffers:
            return
        weight = self.params[self._weight_name(layer)]
        for chunk, h in self._prefetched(lambda c: {"h": self._rows(f"h{layer}", c)}, [f"h{layer}"]):
            self.buffers[f"t{layer}"].write(slice(chunk.start, chunk.stop), h["h"] @ weight.t())

    def _weight_name(self, layer: int) -> str:
        return f"convs.{layer}." + ("lin_l.weight" if self.kind == "sage" else "lin.weight")

    def _bias_name(self, layer: int) -> str:
        return f"convs.{layer}." + ("lin_l.bias" if self.kind == "sage" else "bias")

    def _conv_inputs(self, layer: int, order: str, chunk: Chunk) -> dict:
        """Fetch what one GCN/SAGE chunk step reads (runs in the prefetch thread)."""
        out = {}
        if order == "aggregate_first" and f"agg{layer}" in self.buffers and layer == 0 and self.agg0_ready:
            out["agg"] = self._rows(f"agg{layer}", chunk)
        elif order == "aggregate_first":
            out["h_src"], out["whole"] = self._halo(f"h{layer}", chunk)
        elif f"t{layer}" not in self.buffers:  # t recomputed: transform only the halo rows
            out["h_src"], out["whole"] = self._halo(f"h{layer}", chunk, gather=True)
        else:
            out["h_src"], out["whole"] = self._halo(f"t{layer}", chunk)
        if self.kind == "sage":
            out["h_self"] = self._rows(f"h{layer}", chunk)
        return out

    def _forward_conv(self, layer: int, order: str) -> None:
        p = self.params
        weight, bias = p[self._weight_name(layer)], p[self._bias_name(layer)]
        if order == "aggregate_first":  # only what _conv_inputs reads: an off-device buffer it does not read must
            # not start the prefetch thread (h0 on the host cost 40% of a small GCN epoch when agg0 was reused)
            reused = layer == 0 and f"agg{layer}" in self.buffers and self.agg0_ready
            names = [f"agg{layer}" if reused else f"h{layer}"]
        else:
            names = [f"t{layer}" if f"t{layer}" in self.buffers else f"h{layer}"]
        names += [f"h{layer}"] * (self.kind == "sage")
        for chunk, got in self._prefetched(lambda c: self._conv_inputs(layer, order, c), names):
            chunk_dev = self._chunk(chunk)
            tracked = 0
            if order == "aggregate_first":
                agg = got["agg"] if "agg" in got else self._aggregate(chunk_dev, got["h_src"], got["whole"])
                if "agg" not in got and f"agg{layer}" in self.buffers:
                    self.buffers[f"agg{layer}"].write(slice(chunk.start, chunk.stop), agg)
                z = agg @ weight.t()
            else:
                source = got["h_src"] if f"t{layer}" in self.buffers else got["h_src"] @ weight.t()
                agg = z = self._aggregate(chunk_dev, source, got["whole"])
            z = z + bias
            if self.kind == "sage":
                z = z + got["h_self"] @ p[f"convs.{layer}.lin_r.weight"].t()
            tracked += self.store.track(agg, z)
            self._finish_rows(layer, chunk, z)
            self.store.untrack(tracked)

    def _finish_rows(self, layer: int, chunk: Chunk, z: Tensor) -> None:
        """Activate and store a hidden layer's rows, or turn the last layer's logits into loss and gradient."""
        rows = slice(chunk.start, chunk.stop)
        if layer < self.num_layers - 1:
            self.buffers[f"h{layer + 1}"].write(rows, ops.activate(self.kind, z))
            return
        if self.logits_out is not None:
            self.logits_out[rows] = z.detach().cpu()
        loss_sum, grad = ops.loss_and_grad(z, self.y[rows], self.train_mask[rows], self.num_train)
        self.loss_sum += loss_sum
        self.buffers[f"grad_h{layer + 1}"].write(rows, grad)

    def _gat_t_halo(self, layer: int, chunk: Chunk) -> Tensor:
        """This chunk's halo rows of ``t = h W^T`` as ``[H, heads, C]``: fetched, or recomputed from ``h``."""
        if f"t{layer}" in self.buffers:
            rows, _ = self._halo(f"t{layer}", chunk, gather=True)
        else:
            h_halo, _ = self._halo(f"h{layer}", chunk, gather=True)
            rows = h_halo @ self.params[f"convs.{layer}.lin.weight"].t()
        return rows.view(rows.shape[0], self.heads, -1)

    def _gat_alpha(self, layer: int, chunk: Chunk, chunk_dev: Chunk, t_halo: Tensor, write: bool) -> tuple:
        p = f"convs.{layer}."
        scores = ops.gat_scores(chunk_dev, t_halo, self.params[p + "att_src"], self.params[p + "att_dst"])
        edges = slice(chunk.edge_start, chunk.edge_start + chunk.num_edges)
        if f"att{layer}" in self.buffers and not write:
            return scores, self.buffers[f"att{layer}"].read(edges)
        alpha = ops.edge_softmax(chunk_dev, scores)
        if write and f"att{layer}" in self.buffers:
            self.buffers[f"att{layer}"].write(edges, alpha)
        return scores, alpha

    def _forward_gat(self, layer: int, order: str) -> None:
        names = [f"t{layer}" if f"t{layer}" in self.buffers else f"h{layer}"]
        for chunk, got in self._prefetched(lambda c: {"t": self._gat_t_halo(layer, c)}, names):
            chunk_dev = self._chunk(chunk)
            t_halo = got["t"]
            scores, alpha = self._gat_alpha(layer, chunk, chunk_dev, t_halo, write=True)
            out = ops.gat_aggregate(chunk_dev, alpha, t_halo)
            tracked = self.store.track(scores, alpha, alpha, out)  # alpha twice: exp and softmax
            z = out.flatten(1) if layer < self.num_layers - 1 else out.mean(dim=1)
            self._finish_rows(layer, chunk, z + self.params[f"convs.{layer}.bias"])
            self.store.untrack(tracked)

    # ---- backward ------------------------------------------------------------------------------------------
    def backward(self) -> dict[str, Tensor]:
        grads = {name: torch.zeros_like(value) for name, value in self.params.items()}
        for layer in reversed(range(self.num_layers)):
            if layer > 0:
                self.buffers[f"grad_h{layer}"].zero_()
            order = self.plan.orders[layer]
            if order == "transform_first":
                self.buffers[f"grad_t{layer}"].zero_()
            if self.kind == "gat":
                self._backward_gat(layer, grads)
            else:
                self._backward_conv(layer, order, grads)
            if order == "transform_first":
                self._backward_transform(layer, grads)
        return grads

    def _out_grad(self, layer: int, chunk: Chunk) -> dict:
        """The gradient of this layer's output rows, through the activation (read from the stored output)."""
        g = self._rows(f"grad_h{layer + 1}", chunk)
        if layer < self.num_layers - 1:
            g = ops.activation_grad(self.kind, self._rows(f"h{layer + 1}", chunk), g)
        return {"g": g}

    def _backward_conv(self, layer: int, order: str, grads: dict) -> None:
        p = self.params
        weight_name, bias_name = self._weight_name(layer), self._bias_name(layer)

        def fetch(chunk: Chunk) -> dict:
            got = self._out_grad(layer, chunk)
            if order == "aggregate_first":
                if f"agg{layer}" in self.buffers:
                    got["agg"] = self._rows(f"agg{layer}", chunk)
                else:
                    got["h_src"], got["whole"] = self._halo(f"h{layer}", chunk)
            if self.kind == "sage":
                got["h_self"] = self._rows(f"h{layer}", chunk)
            return got

        names = [f"grad_h{layer + 1}", f"h{layer + 1}"]  # what fetch reads (h{layer+1}: activation gradient)
        if order == "aggregate_first":
            names.append(f"agg{layer}" if f"agg{layer}" in self.buffers else f"h{layer}")
        names += [f"h{layer}"] * (self.kind == "sage")
        for chunk, got in self._prefetched(fetch, names):
            chunk_dev = self._chunk(chunk)
            g = got["g"]
            tracked = self.store.track(g)
            grads[bias_name] += g.sum(0)
            if self.kind == "sage":
                grads[f"convs.{layer}.lin_r.weight"] += g.t() @ got["h_self"]
                if layer > 0:
                    self.buffers[f"grad_h{layer}"].add(slice(chunk.start, chunk.stop),
                                                       g @ p[f"convs.{layer}.lin_r.weight"])
            if order == "aggregate_first":
                agg = got["agg"] if "agg" in got else self._aggregate(chunk_dev, got["h_src"], got["whole"])
                tracked += self.store.track(*self.store.fresh(agg)) if "agg" not in got else 0
                grads[weight_name] += g.t() @ agg
                if layer > 0:
                    d_agg = g @ p[weight_name]
                    self._scatter(f"grad_h{layer}", chunk, chunk_dev, d_agg)
            else:
                self._scatter(f"grad_t{layer}", chunk, chunk_dev, g)
            self.store.untrack(tracked)

    def _scatter(self, name: str, chunk: Chunk, chunk_dev: Chunk, d_rows: Tensor) -> None:
        """``grad[src] += A_chunk^T d_rows``: the transposed halo block, then a scatter-add into the buffer."""
        d_halo = torch.sparse.mm(chunk_dev.matrix_t(chunk_dev.values), d_rows)
        tracked = self.store.track(d_halo)
        self.buffers[name].add(chunk_dev.halo, d_halo)
        self.store.untrack(tracked)

    def _backward_transform(self, layer: int, grads: dict) -> None:
        """``dW += dt^T h`` and ``dh += dt W`` per row chunk, from the scatter-added ``grad_t``."""
        weight_name = self._weight_name(layer)
        fetch = lambda c: {"gt": self._rows(f"grad_t{layer}", c), "h": self._rows(f"h{layer}", c)}  # noqa: E731
        for chunk, got in self._prefetched(fetch, [f"grad_t{layer}", f"h{layer}"]):
            grads[weight_name] += got["gt"].t() @ got["h"]
            if layer > 0:
                self.buffers[f"grad_h{layer}"].add(slice(chunk.start, chunk.stop), got["gt"] @ self.params[weight_name])

    def _backward_gat(self, layer: int, grads: dict) -> None:
        p = f"convs.{layer}."
        att_src, att_dst = self.params[p + "att_src"], self.params[p + "att_dst"]
        last = layer == self.num_layers - 1

        def fetch(chunk: Chunk) -> dict:
            got = self._out_grad(layer, chunk)
            got["t"] = self._gat_t_halo(layer, chunk)
            return got

        # what fetch reads (a stored att is read in the loop, by edge range)
        names = [f"grad_h{layer + 1}", f"h{layer + 1}", f"t{layer}" if f"t{layer}" in self.buffers else f"h{layer}"]
        for chunk, got in self._prefetched(fetch, names):
            chunk_dev = self._chunk(chunk)
            g, t_halo = got["g"], got["t"]
            grads[p + "bias"] += g.sum(0)
            d_out = (g.unsqueeze(1).expand(-1, self.heads, -1) / self.heads if last
                     else g.view(g.shape[0], self.heads, -1))
            scores, alpha = self._gat_alpha(layer, chunk, chunk_dev, t_halo, write=False)
            tracked = self.store.track(scores, alpha, alpha, alpha, t_halo)  # t_halo: d_t in gat_backward
            d_t, d_att_src, d_att_dst = ops.gat_backward(chunk_dev, t_halo, alpha, scores, d_out, att_src, att_dst)
            grads[p + "att_src"] += d_att_src
            grads[p + "att_dst"] += d_att_dst
            self.buffers[f"grad_t{layer}"].add(chunk_dev.halo, d_t.flatten(1))
            self.store.untrack(tracked)


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(DEFAULTS) - {"name"}
    if unknown:
        raise ValueError(f"unknown flexgnn option(s) {', '.join(sorted(unknown))}; valid: {', '.join(DEFAULTS)}")
    merged = {**DEFAULTS, **{k: v for k, v in options.items() if k != "name"}}
    for key in ("device_budget_bytes", "host_budget_bytes"):
        value = merged[key]
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{key}={value!r} must be a positive integer number of bytes or None (unlimited)")
    fraction = merged["device_budget_fraction"]
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"device_budget_fraction={fraction!r} must be a number in (0, 1] (a share of the "
                             "all-on-device peak) or None")
        if merged["device_budget_bytes"] is not None:
            raise ValueError(f"device_budget_fraction={fraction!r} and device_budget_bytes="
                             f"{merged['device_budget_bytes']!r} are both set; set only one of them")
    return merged


def train(graph: Graph, model: ModelSpec, params: Mapping[str, Tensor], train: TrainSpec,
          options: Mapping[str, Any]) -> RunResult:
    """Train ``model`` on the whole ``graph`` with the FlexGNN engine (see the module docstring)."""
    opts = _options(options)
    device = resolve_device(train.device)
    torch.manual_seed(train.seed)
    with TierStore(device, opts["disk_dir"]) as store:
        engine = Engine(graph, model, params, device, store, opts)
        if opts["print_plan"]:
            guess = engine.prediction
            print(f"{engine.plan}\n  predicted epoch {guess.epoch_s:.4g} s (compute {guess.compute_s:.4g} s, "
                  f"transfers {sum(dict(guess.transfer_s).values()):.4g} s)", file=sys.stderr)
        engine.allocate()
        optimizer = torch.optim.Adam(list(engine.params.values()), lr=model.lr)

        def step(epoch: int) -> float:
            loss = engine.forward()
            for name, grad in engine.backward().items():
                engine.params[name].grad = grad
            optimizer.step()
            return loss

        def evaluate() -> dict[str, float]:
            logits = torch.empty(engine.num_nodes, engine.dims[-1])
            engine.forward(logits_out=logits)
            return masked_accuracy(logits, engine.y.cpu(), engine.masks)

        with PeakMemoryMeter(device) as meter:
            result = timed_training(
                system=SYSTEM, train=train, device=device, step=step, evaluate=evaluate,
                final_params=lambda: engine.params,
                timings_s={"preprocess": engine.preprocess_s, "plan": engine.plan_s},
                plan=engine.plan.to_json())
        counters = store.counters
        result.peak_bytes = meter.peak_bytes
        result.tier_peak_bytes = dict(counters.peak)
        result.io_bytes = dict(counters.links)
        budget = engine.problem.device_budget_bytes  # resolved from device_budget_fraction when that is set
        result.extra = {
            "policy": engine.plan.policy, "num_chunks": engine.problem.num_chunks, "reorder": opts["reorder"],
            "predicted_epoch_s": engine.prediction.epoch_s, "prediction": engine.prediction.to_json(),
            "prefetch_fetch_s": counters.fetch_s, "prefetch_wait_s": counters.wait_s,
            "prefetch_hidden_s": counters.hidden_s,
            "device_budget_bytes": budget, "device_budget_fraction": opts["device_budget_fraction"],
            "device_within_budget": None if budget is None else counters.peak["device"] <= budget,
            "cuda_within_budget": (None if budget is None or device.type != "cuda"
                                   else meter.peak_bytes["device"] <= budget),
        }
    return result
