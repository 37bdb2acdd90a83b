"""The executor: runs a feasible plan, chunk by chunk, with hand-written gradients (STYLE #18).

Forward runs layer by layer and chunk by chunk: fetch the chunk's needed source rows from the tier the layer input
lives on, aggregate (or transform, then aggregate), apply the model's post part (``GNNModel.post``), activate, and
write the chunk's output rows to their tier; the last layer turns logits straight into the loss and its gradient.
Backward mirrors it: fetch or recompute per the plan, the model's ``post_backward``, weight gradients accumulated
across chunks, input gradients scatter-added into the layer-input gradient buffer (itself on a tier). Layer 0's
aggregate of the fixed features is computed in the first epoch and reused (FlexGNN's release does the same), unless
input dropout changes the features every epoch (``Problem.input_dropout``). Dropout masks are made per chunk where
rows are read or written, in forward and again in backward (``engine.dropping``), never stored.

A wide layer whose input (or input gradient) is on disk, its aggregate stored, aggregates by 64-column blocks
instead (``plan.simulate.column_passes``): each block of ``h{l}`` read with one sweep, aggregated for every row into
``agg{l}``, whose rows the chunk steps then read; backward, the chunk steps overwrite ``agg{l}``'s rows (read for
dW) with the aggregate's gradient, each block of it scattered through ``A^T`` into the same block of ``grad_h{l}``.

Two families of layer step: ``linear`` (fixed edge weights: GCN, SAGE, GIN, ...) and ``attention`` (GAT). Every
byte counter lives in the ``TierStore``; the executor only reads and writes through it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flexgnn_core import kernels, models, native
from flexgnn_core.engine.chunks import Chunk
from flexgnn_core.engine.dropping import Dropping
from flexgnn_core.engine.prepare import Prepared
from flexgnn_core.engine.tiers import TierStore
from flexgnn_core.plan import Plan, transform_width
from flexgnn_core.plan.simulate import column_passes


class Engine:
    """Holds the chunks, the tier store, the device parameters and the plan. ``allocate()`` places the buffers;
    ``forward()`` returns the loss and leaves the logits' gradient in ``grad_h{L}``; ``backward()`` fills
    ``grads`` (one persistent tensor per parameter, zeroed each epoch)."""

    def __init__(self, prepared: Prepared, plan: Plan, params, device: torch.device, store: TierStore,
                 prefetch: bool = True, seed: int = 0):
        if not plan.feasible:
            raise ValueError(f"plan '{plan.policy}' is infeasible ({plan.reason}); the engine runs feasible plans "
                             "only")
        if plan.num_chunks != len(prepared.chunks):
            raise ValueError(f"plan.num_chunks={plan.num_chunks} but the graph is cut into {len(prepared.chunks)} "
                             "chunks; rechunk the prepared graph at the plan's P (engine.prepare.rechunk)")
        self.prepared, self.plan, self.device, self.store = prepared, plan, device, store
        self.problem, self.chunks = prepared.problem, prepared.chunks
        self.spec = prepared.spec
        self.model = models.get(self.spec.kind)
        self.num_layers, self.num_nodes = self.problem.num_layers, self.problem.num_nodes
        self.dims = self.problem.dims
        self.prefetch = prefetch
        self.y = prepared.y.to(device)
        self.train_mask = prepared.masks["train"].to(device)
        self.num_train = int(prepared.masks["train"].sum())
        self.params = {name: value.detach().to(device, copy=True) for name, value in params.items()}
        self.layer = [models.layer_view(self.params, layer) for layer in range(self.num_layers)]
        self.grads = {name: torch.zeros_like(value) for name, value in self.params.items()}
        self.drop = Dropping(self.spec, prepared.order.perm, seed, self.problem.attention, device)
        placement = dict(plan.placement)
        self.columns = [column_passes(self.problem, placement, layer) for layer in range(self.num_layers)]

    # ---- storage -------------------------------------------------------------------------------------------
    def allocate(self) -> None:
        """Create every stored intermediate on its tier and copy the features into ``h0``, a block at a time."""
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
        shapes = {}
        for layer in range(self.num_layers):
            shapes[f"h{layer}"] = shapes[f"agg{layer}"] = shapes[f"grad_h{layer}"] = (n, self.dims[layer])
            shapes[f"t{layer}"] = shapes[f"grad_t{layer}"] = (n, transform_width(self.problem, layer))
            shapes[f"att{layer}"] = (self.problem.num_edges, self.problem.heads)
        shapes[f"grad_h{self.num_layers}"] = (n, self.dims[-1])
        for name, tier in self.plan.placement:
            if name != "graph" and tier != "recompute":
                self.buffers[name] = self.store.alloc(name, shapes[name], tier)
        x, h0 = self.prepared.x, self.buffers["h0"]
        rows = max(1, (64 * 2**20) // max(1, x.shape[1] * 4))  # never a whole [N, F] copy beside h0
        for start in range(0, n, rows):
            block = slice(start, min(n, start + rows))
            h0.write(block, x[block].to(self.device) if h0.tier == "device" else x[block])
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

    def stored(self, name: str) -> bool:
        return name in self.buffers

    def _rows(self, name: str, chunk: Chunk) -> Tensor:
        rows = slice(chunk.start, chunk.stop)
        got = self.buffers[name].read(rows)
        return self.drop.rows(0, rows, got) if name == "h0" else got  # the features, with input dropout

    def _halo(self, name: str, chunk: Chunk, gather: bool = False) -> tuple[Tensor, bool]:
        """The chunk's source rows of ``name``; ``(whole buffer, True)`` when it is on the device and the chunk's
        block can index it with global columns (no gather), or when the halo is every vertex. The features with
        input dropout are always the halo's own rows, masked."""
        buffer = self.buffers[name]
        dropped = name == "h0" and self.drop.on_input(0)
        if chunk.width == self.num_nodes and buffer.tier == "device":
            whole = buffer.data  # halo = all vertices in order: local and global columns coincide
            return (self.drop.rows(0, slice(0, self.num_nodes), whole) if dropped else whole), False
        if buffer.tier == "device" and not gather and not dropped:
            return buffer.data, True
        if name == "h0" and buffer.tier == "disk" and not self.agg0_ready and self.stored("agg0") and not dropped:
            return self._feature_halo(chunk), False
        got = buffer.read(chunk.halo)
        return (self.drop.rows(0, chunk.halo, got) if dropped else got), False

    def _feature_halo(self, chunk: Chunk) -> Tensor:
        """The halo rows of the features for the one pass that builds a stored ``agg0``, from the caller's ``x``
        (host memory or a memory-mapped file) rather than ``h0`` on disk: a halo is scattered over the whole file,
        so each chunk's gather would read (nearly) all of it through ``O_DIRECT`` (P x the file: 131 GB for one
        pass at 1M nodes, P=512); ``x`` holds the same values and its pages stay cached. Not counted on a link,
        like the rest of that one-off pass (``simulate`` predicts steady-state epochs)."""
        x = self.prepared.x
        return x[chunk.halo.to(x.device)].to(self.device)

    def _passes(self, fetch) -> object:
        return self.store.prefetched(self.chunks, fetch, self.prefetch)

    def _aggregate(self, chunk: Chunk, source: Tensor, whole: bool) -> Tensor:
        if whole:
            return native.csr_mm(chunk.crow, chunk.src_global, chunk.values, source, self.num_nodes)
        return kernels.spmm(chunk, chunk.values, source)

    def _scatter(self, name: str, chunk_dev: Chunk, d_rows: Tensor) -> None:
        """``grad[src] += A_chunk^T d_rows``: the transposed halo block, then a scatter-add into the buffer."""
        d_halo = kernels.spmm_t(chunk_dev, chunk_dev.values, d_rows)
        tracked = self.store.track(d_halo)
        self.buffers[name].add(chunk_dev.halo, d_halo)
        self.store.untrack(tracked)

    # ---- forward -------------------------------------------------------------------------------------------
    def forward(self, logits_out: Tensor | None = None, epoch: int | None = None) -> float:
        """One forward pass over all layers; returns the mean training loss (writes ``grad_h{L}``). ``epoch``
        keys the dropout masks of a training pass (None: evaluation, nothing dropped)."""
        self.drop.epoch = epoch
        self.loss_sum = torch.zeros((), device=self.device)
        self.logits_out = logits_out
        for layer in range(self.num_layers):
            order = self.plan.orders[layer]
            if order == "transform_first":
                self._forward_transform(layer)
            if self.model.family == "attention":
                self._forward_attention(layer)
            else:
                self._forward_linear(layer, order)
        self.agg0_ready = True
        self.store.flush()
        return float(self.loss_sum) / self.num_train

    def _first_weight(self, layer: int) -> Tensor:
        return self.layer[layer][self.model.first_weight]

    def _forward_transform(self, layer: int) -> None:
        """``t = h W^T`` for every row chunk (skipped when the plan recomputes ``t`` per chunk)."""
        if not self.stored(f"t{layer}"):
            return
        weight = self._first_weight(layer)
        for chunk, got in self._passes(lambda c: {"h": self._rows(f"h{layer}", c)}):
            self.buffers[f"t{layer}"].write(slice(chunk.start, chunk.stop), got["h"] @ weight.t())

    def _linear_inputs(self, layer: int, order: str, chunk: Chunk, by_columns: bool = False) -> dict:
        """Fetch what one linear-family chunk step reads (runs in the prefetch thread)."""
        out = {}
        reuse = self.agg0_ready and not self.problem.input_dropout  # dropped features change every epoch
        if by_columns or (order == "aggregate_first" and layer == 0 and self.stored("agg0") and reuse):
            out["agg"] = self._rows(f"agg{layer}", chunk)
        elif order == "aggregate_first":
            out["h_src"], out["whole"] = self._halo(f"h{layer}", chunk)
        elif not self.stored(f"t{layer}"):  # t recomputed: transform only the halo rows
            out["h_src"], out["whole"] = self._halo(f"h{layer}", chunk, gather=True)
        else:
            out["h_src"], out["whole"] = self._halo(f"t{layer}", chunk)
        if self.model.self_rows:
            out["h_self"] = self._rows(f"h{layer}", chunk)
        return out

    def _column_pass(self, source: str, target: str, step, add: bool = False) -> None:
        """For each column block: read it from ``source`` for every row (one sweep; the next block is fetched
        while this one is worked on), build the same block of ``target`` for every row, starting from zeros, with
        ``step(chunk, chunk_dev, block, out)`` per chunk, and write it (``add``: add it) to ``target``."""
        fetch = lambda j: {"block": self.buffers[source].read_columns(j)}  # noqa: E731
        for j, got in self.store.prefetched(range(len(self.buffers[source].columns)), fetch, self.prefetch):
            out = torch.zeros((self.num_nodes, got["block"].shape[1]), device=self.device)
            tracked = self.store.track(out)
            for chunk in self.chunks:
                step(chunk, self._chunk(chunk), got["block"], out)
            self.buffers[target].write_columns(j, out, add=add)
            self.store.untrack(tracked)
            del out, got  # now: else they live beside the next output and the block after next (5 blocks, not 3)

    def _forward_linear(self, layer: int, order: str) -> None:
        transformed = order == "transform_first"
        last = layer == self.num_layers - 1
        by_columns = self.columns[layer][0]
        if by_columns:  # h on disk: aggregate by column blocks into agg, then the chunk steps read agg's rows

            def aggregate(chunk: Chunk, chunk_dev: Chunk, block: Tensor, out: Tensor) -> None:
                out[chunk.start:chunk.stop] = self._aggregate(chunk_dev, block, True)

            self._column_pass(f"h{layer}", f"agg{layer}", aggregate)
        for chunk, got in self._passes(lambda c: self._linear_inputs(layer, order, c, by_columns)):
            chunk_dev = None if by_columns else self._chunk(chunk)
            if not transformed:
                x = got["agg"] if "agg" in got else self._aggregate(chunk_dev, got["h_src"], got["whole"])
                if "agg" not in got and self.stored(f"agg{layer}"):
                    self.buffers[f"agg{layer}"].write(slice(chunk.start, chunk.stop), x)
            else:
                source = got["h_src"]
                if not self.stored(f"t{layer}"):
                    source = source @ self._first_weight(layer).t()
                x = self._aggregate(chunk_dev, source, got["whole"])
            z = self.model.post(self.layer[layer], x, got.get("h_self"), transformed, last)
            tracked = self.store.track(x, z)
            self._finish_rows(layer, chunk, z)
            self.store.untrack(tracked)

    def _finish_rows(self, layer: int, chunk: Chunk, z: Tensor) -> None:
        """Activate and store a hidden layer's rows, or turn the last layer's logits into loss and gradient."""
        rows = slice(chunk.start, chunk.stop)
        if layer < self.num_layers - 1:
            out = self.drop.rows(layer + 1, rows, kernels.activate(self.model.activation, z))
            self.buffers[f"h{layer + 1}"].write(rows, out)
            return
        if self.logits_out is not None:
            self.logits_out[rows] = z.detach().cpu()
        loss_sum, grad = kernels.loss_and_grad(z, self.y[rows], self.train_mask[rows], self.num_train)
        self.loss_sum += loss_sum
        self.buffers[f"grad_h{layer + 1}"].write(rows, grad)

    def _t_halo(self, layer: int, chunk: Chunk) -> Tensor:
        """This chunk's halo rows of ``t = h W^T`` as ``[H, heads, C]``: fetched, or recomputed from ``h``."""
        if self.stored(f"t{layer}"):
            rows, _ = self._halo(f"t{layer}", chunk, gather=True)
        else:
            h_halo, _ = self._halo(f"h{layer}", chunk, gather=True)
            rows = h_halo @ self._first_weight(layer).t()
        return rows.view(rows.shape[0], self.problem.heads, -1)

    def _attention(self, layer: int, chunk: Chunk, chunk_dev: Chunk, t_halo: Tensor, write: bool) -> tuple:
        p = self.layer[layer]
        scores = kernels.gat_scores(chunk_dev, t_halo, p["att_src"], p["att_dst"])
        edges = slice(chunk.edge_start, chunk.edge_start + chunk.num_edges)
        drop = self.drop.edges(layer, chunk_dev, self.problem.heads)  # the attention dropout factor, or None
        if self.stored(f"att{layer}") and not write:
            return scores, self.buffers[f"att{layer}"].read(edges), drop
        alpha = kernels.edge_softmax(chunk_dev, scores)
        if write and self.stored(f"att{layer}"):
            self.buffers[f"att{layer}"].write(edges, alpha)
        return scores, alpha, drop

    def _forward_attention(self, layer: int) -> None:
        last = layer == self.num_layers - 1
        for chunk, got in self._passes(lambda c: {"t": self._t_halo(layer, c)}):
            chunk_dev = self._chunk(chunk)
            t_halo = got["t"]
            scores, alpha, drop = self._attention(layer, chunk, chunk_dev, t_halo, write=True)
            weights = alpha if drop is None else alpha * drop
            out = kernels.gat_aggregate(chunk_dev, weights, t_halo)
            tracked = self.store.track(scores, alpha, weights, out)  # weights: exp, or the dropped softmax
            self._finish_rows(layer, chunk, self.model.post(self.layer[layer], out, None, True, last))
            self.store.untrack(tracked)

    # ---- backward ------------------------------------------------------------------------------------------
    def backward(self) -> dict[str, Tensor]:
        for grad in self.grads.values():
            grad.zero_()
        for layer in reversed(range(self.num_layers)):
            order = self.plan.orders[layer]
            # without self rows, grad_h{l} has one writer: the transform backward's rows or the column pass's blocks
            sets = not self.model.self_rows and (order == "transform_first" or self.columns[layer][1])
            if layer > 0 and not sets:
                self.buffers[f"grad_h{layer}"].zero_()
            if order == "transform_first":
                self.buffers[f"grad_t{layer}"].zero_()
            if self.model.family == "attention":
                self._backward_attention(layer)
            else:
                self._backward_linear(layer, order)
            if order == "transform_first":
                self._backward_transform(layer)
        self.store.flush()
        return self.grads

    def _add_grads(self, layer: int, grads: dict[str, Tensor]) -> None:
        for suffix, grad in grads.items():
            self.grads[f"convs.{layer}.{suffix}"] += grad

    def _out_grad(self, layer: int, chunk: Chunk) -> dict:
        """The gradient of this layer's output rows, through the activation (read from the stored output)."""
        g = self._rows(f"grad_h{layer + 1}", chunk)
        if layer < self.num_layers - 1:
            rows = slice(chunk.start, chunk.stop)
            out = self.drop.undropped(layer + 1, self._rows(f"h{layer + 1}", chunk))
            g = kernels.activation_grad(self.model.activation, out, self.drop.gradient(layer + 1, rows, g))
        return {"g": g}

    def _backward_linear(self, layer: int, order: str) -> None:
        transformed, last = order == "transform_first", layer == self.num_layers - 1
        needs_x = not (transformed and self.model.affine_post)  # the aggregate itself (agg-first: for dW)

        def fetch(chunk: Chunk) -> dict:
            got = self._out_grad(layer, chunk)
            if needs_x and self.stored(f"agg{layer}"):
                got["agg"] = self._rows(f"agg{layer}", chunk)
            elif needs_x:
                got["h_src"], got["whole"] = self._halo(f"h{layer}", chunk)
            if self.model.self_rows:
                got["h_self"] = self._rows(f"h{layer}", chunk)
            return got

        by_columns = self.columns[layer][1]  # grad_h on disk: d_x goes to agg's rows, then scattered by blocks
        for chunk, got in self._passes(fetch):
            chunk_dev = None if by_columns else self._chunk(chunk)
            g = got["g"]
            tracked = self.store.track(g)
            x = got.get("agg")
            if needs_x and x is None:
                x = self._aggregate(chunk_dev, got["h_src"], got["whole"])
                tracked += self.store.track(*self.store.fresh(x))
            d_x, d_self, grads = self.model.post_backward(self.layer[layer], x, got.get("h_self"), transformed, last,
                                                          g, need_x=transformed or layer > 0, need_self=layer > 0)
            self._add_grads(layer, grads)
            if d_self is not None:
                self.buffers[f"grad_h{layer}"].add(slice(chunk.start, chunk.stop), d_self)
            if transformed:
                self._scatter(f"grad_t{layer}", chunk_dev, d_x)
            elif by_columns:  # agg's rows were read (for dW) by this step: they now hold the aggregate's gradient
                self.buffers[f"agg{layer}"].write(slice(chunk.start, chunk.stop), d_x)
            elif layer > 0:
                self._scatter(f"grad_h{layer}", chunk_dev, d_x)
            self.store.untrack(tracked)
        if by_columns:

            def scatter(chunk: Chunk, chunk_dev: Chunk, block: Tensor, out: Tensor) -> None:
                d_halo = kernels.spmm_t(chunk_dev, chunk_dev.values, block[chunk.start:chunk.stop])
                tracked = self.store.track(d_halo)
                out.index_add_(0, kernels.long_index(chunk_dev.halo), d_halo)
                self.store.untrack(tracked)

            self._column_pass(f"agg{layer}", f"grad_h{layer}", scatter, add=self.model.self_rows)

    def _backward_transform(self, layer: int) -> None:
        """``dW += dt^T h`` and ``dh += dt W`` per row chunk, from the scatter-added ``grad_t``."""
        name = f"convs.{layer}.{self.model.first_weight}"
        fetch = lambda c: {"gt": self._rows(f"grad_t{layer}", c), "h": self._rows(f"h{layer}", c)}  # noqa: E731
        for chunk, got in self._passes(fetch):
            self.grads[name] += got["gt"].t() @ got["h"]
            if layer > 0:  # set (no self rows: nothing else adds to it), else added to the self rows' part
                rows, d_h = slice(chunk.start, chunk.stop), got["gt"] @ self.params[name]
                if self.model.self_rows:
                    self.buffers[f"grad_h{layer}"].add(rows, d_h)
                else:
                    self.buffers[f"grad_h{layer}"].write(rows, d_h)

    def _backward_attention(self, layer: int) -> None:
        p, last = self.layer[layer], layer == self.num_layers - 1

        def fetch(chunk: Chunk) -> dict:
            got = self._out_grad(layer, chunk)
            got["t"] = self._t_halo(layer, chunk)
            return got

        for chunk, got in self._passes(fetch):
            chunk_dev = self._chunk(chunk)
            g, t_halo = got["g"], got["t"]
            d_out, _, grads = self.model.post_backward(p, None, None, True, last, g, need_x=True, need_self=False)
            self._add_grads(layer, grads)
            scores, alpha, drop = self._attention(layer, chunk, chunk_dev, t_halo, write=False)
            tracked = self.store.track(scores, alpha, alpha, alpha, t_halo)  # t_halo: d_t in gat_backward
            d_t, d_att_src, d_att_dst = kernels.gat_backward(chunk_dev, t_halo, alpha, scores, d_out, p["att_src"],
                                                             p["att_dst"], drop)
            self._add_grads(layer, {"att_src": d_att_src, "att_dst": d_att_dst})
            self.buffers[f"grad_t{layer}"].add(chunk_dev.halo, d_t.flatten(1))
            self.store.untrack(tracked)
