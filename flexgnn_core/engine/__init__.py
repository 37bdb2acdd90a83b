"""The FlexGNN engine: prepare a graph into chunks, then execute a given plan over tiered buffers.

- ``prepare``: graph and model -> ``Prepared`` (reordering, the model's CSR, chunks, the planning ``Problem``);
- ``chunks``, ``tiers``: the destination chunks and the device / host / disk buffers with every byte counter;
- ``executor``: the chunked forward and backward of a feasible ``Plan``;
- ``run.execute``: the timed training loop around it.

It plans nothing: importing it loads neither the solvers nor the calibration (``flexgnn_core.system`` is the
``flexgnn`` system, which prepares, calibrates, solves and then calls ``execute``).
"""

from flexgnn_core.engine.executor import Engine
from flexgnn_core.engine.prepare import Prepared, prepare, rechunk
from flexgnn_core.engine.run import execute
from flexgnn_core.engine.tiers import TierStore

__all__ = ["Engine", "Prepared", "TierStore", "execute", "prepare", "rechunk"]
