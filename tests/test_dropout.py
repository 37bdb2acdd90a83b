"""The dropout masks (``flexgnn_core/dropout.py``) are pure functions of what they drop, with the bits pinned.

Every system asks for the masks of the rows or edges it holds, in its own order and subsets; these tests check
that a mask entry depends only on (seed, epoch, layer, id, column / head), that the hash is lowbias32 computed
exactly (against plain Python integers), that rates and scaling are right, and that the DGL worker's environment
(torch 2.2.1) draws bit-identical masks (``dgl`` marker: needs that environment).
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from flexgnn_core import dropout

M32 = 2**32 - 1


def lowbias32(values: np.ndarray) -> np.ndarray:
    """Chris Wellons' lowbias32 in numpy's uint32, whose products wrap modulo 2^32 natively: an arithmetic path
    independent of ``dropout._mix_``'s int64 one."""
    x = values.astype(np.uint32)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    return x


def test_the_tensor_hash_is_lowbias32_exactly_at_the_edges_of_32_bits():
    values = [0, 1, 2, 2**31 - 1, 2**31, 2**31 + 1, M32 - 1, M32] + torch.randint(0, 2**32, (2000,)).tolist()
    got = dropout._mix_(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == lowbias32(np.array(values, dtype=np.uint64)).tolist()
    assert [dropout._mix(v) for v in values] == got


def test_the_mask_bits_are_pinned():
    """The packed bits of a few masks: a change of hash, key chaining or threshold shows here (every system would
    still agree with the others, but records made before the change could no longer be reproduced)."""
    keep = dropout.node_keep(seed=0, epoch=3, layer=1, ids=torch.arange(6), width=8, p=0.5)
    edges = dropout.edge_keep(7, 0, 2, torch.tensor([0, 5, 9]), torch.tensor([1, 1, 9]), heads=4, p=0.3)
    assert _packed(keep) == EXPECTED_NODE_BITS
    assert _packed(edges) == EXPECTED_EDGE_BITS


def _packed(keep: torch.Tensor) -> str:
    return "".join("1" if bit else "0" for bit in keep.flatten().tolist())


EXPECTED_NODE_BITS = "010110011111111100100101010001110110011111010001"
EXPECTED_EDGE_BITS = "110010101001"


def test_a_row_draws_the_same_whatever_rows_come_with_it():
    ids = torch.arange(1000) * 7919 % 4001  # ids in no particular order
    whole = dropout.node_keep(1, 2, 3, ids, 16, 0.5)
    order = torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(dropout.node_keep(1, 2, 3, ids[order], 16, 0.5), whole[order])
    assert torch.equal(dropout.node_keep(1, 2, 3, ids[100:137], 16, 0.5), whole[100:137])


def test_an_edge_draws_the_same_whatever_edges_come_with_it():
    src, dst = torch.randint(0, 500, (2000,)), torch.randint(0, 500, (2000,))
    whole = dropout.edge_keep(0, 1, 1, src, dst, 3, 0.4)
    order = torch.randperm(src.numel(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(dropout.edge_keep(0, 1, 1, src[order], dst[order], 3, 0.4), whole[order])
    swapped = dropout.edge_keep(0, 1, 1, dst, src, 3, 0.4)  # u -> v and v -> u are different edges
    assert not torch.equal(swapped, whole)


def test_masks_are_made_in_blocks_without_changing_them(monkeypatch):
    ids = torch.arange(3000)
    whole = dropout.node_keep(5, 0, 0, ids, 40, 0.5)
    monkeypatch.setattr(dropout, "BLOCK_ELEMENTS", 7 * 40 + 3)
    assert torch.equal(dropout.node_keep(5, 0, 0, ids, 40, 0.5), whole)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_share_kept_is_one_minus_p_and_kept_entries_are_scaled(p):
    ids = torch.arange(20000)
    keep = dropout.node_keep(0, 0, 0, ids, 50, p)
    assert abs(float(keep.float().mean()) - (1 - p)) < 0.005  # 10^6 entries: 5 standard deviations ~ 0.0025
    h = torch.rand(20000, 50) + 0.5
    out = dropout.nodes(h, ids, p, 0, 0, 0)
    assert torch.equal(out == 0, ~keep)
    torch.testing.assert_close(out[keep], h[keep] / (1 - p))
    assert dropout.nodes(h, ids, 0.0, 0, 0, 0) is h


def test_every_key_part_changes_the_mask_and_columns_are_not_rows():
    ids = torch.arange(400)
    base = dropout.node_keep(0, 0, 0, ids, 32, 0.5)
    for changed in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (2**40, 0, 0)]:
        other = dropout.node_keep(*changed, ids, 32, 0.5)
        assert 0.4 < float((other != base).float().mean()) < 0.6, changed  # independent: about half differ
    square = base[:32, :32]
    assert float((square != square.T).float().mean()) > 0.3  # vertex i's column j is not vertex j's column i
    assert float((base[1:] != base[:-1]).float().mean()) > 0.4  # neighbouring ids are independent


def test_ids_out_of_32_bits_and_bad_rates_are_refused():
    with pytest.raises(ValueError, match=r"vertex ids must be in \[0, 2\^32\)"):
        dropout.node_keep(0, 0, 0, torch.tensor([2**32]), 4, 0.5)
    with pytest.raises(ValueError, match=r"source ids must be in \[0, 2\^32\)"):
        dropout.edge_keep(0, 0, 0, torch.tensor([-1]), torch.tensor([0]), 1, 0.5)
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        dropout.threshold(1.0)


_DGL_ENV_PYTHON = os.path.join(os.environ.get("FLEXGNN_DGL_ENV") or os.path.expanduser(
    "~/.cache/flexgnn-bench/dgl-env"), "bin", "python")
_MASKS = """
import torch
from flexgnn_core import dropout
ids = torch.arange(0, 3000 * 1_000_003, 1_000_003) % (2**32)
node = dropout.node_keep(12, 7, 2, ids, 33, 0.37)
edge = dropout.edge_keep(12, 7, 2, ids[:500], ids[500:1000], 5, 0.6)
result = {"torch": torch.__version__, "node": node.flatten().tolist(), "edge": edge.flatten().tolist()}
"""


@pytest.mark.dgl
def test_the_dgl_environment_draws_bit_identical_masks():
    """The DGL worker runs in torch 2.2.1 and imports this module; its masks must be these, bit for bit."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = _MASKS + "import json; print(json.dumps(result))\n"
    done = subprocess.run([_DGL_ENV_PYTHON, "-c", script], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": root}, timeout=300, check=True)
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert theirs["torch"].startswith("2.2.1") and theirs["torch"] != torch.__version__
    here: dict = {}
    exec(_MASKS, here)  # noqa: S102 (our own constant: the same masks in this environment)
    assert theirs["node"] == here["result"]["node"] and theirs["edge"] == here["result"]["edge"]
