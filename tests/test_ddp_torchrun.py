"""``system.launch=torchrun``: the DDP baseline's ranks started by torchrun inside the job, as a DDP job runs in a
Slurm allocation of R GPUs (issue 16); here on CPU with gloo. Each test starts torchrun and R ranks (each imports
torch: tens of seconds on a loaded 2-core machine)."""

from __future__ import annotations

import pytest
import torch

from baselines.ddp_fullgraph import DistributedJobError
from test_ddp import _reference_losses, _run  # tests/ is on sys.path under pytest (no __init__.py)


def test_torchrun_ranks_train_the_same_losses_as_pyg():
    graph, model, params, result = _run("sage", 2, launch="torchrun")
    expected = _reference_losses(graph, model, params)
    torch.testing.assert_close(torch.tensor(result.epoch_losses), torch.tensor(expected), rtol=1e-5, atol=0)
    assert result.extra["world_size"] == 2 and len(set(result.extra["rank_pids"])) == 2
    assert result.io_bytes["net_send"] > 0  # halos really travelled between the two rank processes


@pytest.mark.slow
def test_a_failing_torchrun_rank_ends_the_job_with_its_traceback():
    with pytest.raises(DistributedJobError, match=r"rank 1 raised RuntimeError: injected fault[\s\S]*Traceback"):
        _run("gcn", 2, launch="torchrun", fail_rank=1, fail_epoch=1)
