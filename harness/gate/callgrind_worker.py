"""Runs under callgrind, started by ``harness.gate.instructions``: one training epoch per case, counted alone.

``valgrind --tool=callgrind --instr-atstart=no --collect-atstart=no python -m harness.gate.callgrind_worker
HELPER.so CASE...``. The interpreter's start, the imports, planning, the first epoch and evaluation run
uninstrumented (fast). At the end of epoch 1 the helper's client requests zero the counters and turn
instrumentation and collection on; at the end of epoch 2 they turn both off and dump the counts under the case's
name (pytest-codspeed's sequence). So each dump holds exactly one steady-state epoch: forward, backward, Adam step,
in every thread. Outside valgrind the requests do nothing.
"""

from __future__ import annotations

import ctypes
import sys

import torch

from harness.gate import cases

MEASURED_EPOCH = 2  # epoch 1 computes layer 0's aggregate once; epoch 2 is a steady-state epoch


def main(helper_path: str, names: list[str]) -> None:
    helper = ctypes.CDLL(helper_path)
    torch.set_num_threads(1)  # OpenMP workers spin-wait: instruction counts would depend on the scheduler
    for case in [case for case in cases.CASES if case.name in names]:
        def around_measured_epoch(epoch: int) -> None:
            if epoch == MEASURED_EPOCH - 1:
                helper.gate_start()
            elif epoch == MEASURED_EPOCH:
                helper.gate_stop(case.name.encode())

        with cases.epoch_ends(around_measured_epoch):
            cases.run_case(case, MEASURED_EPOCH)
        print(f"callgrind worker: {case.name} measured", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
