"""bench/profile_epoch.py: per-phase and per-op tables of training epochs only, naming the kernel and the tree."""

from __future__ import annotations

import re

import pytest

from bench import profile_epoch


@pytest.mark.parametrize("model", ["gat", "sage"])
def test_profile_counts_training_epochs_only_and_names_what_ran(model):
    argv = ["--model", model, "--nodes", "400", "--avg-degree", "5", "--features", "16", "--hidden", "16",
            "--heads", "2", "--epochs", "3"]
    args = profile_epoch.parse_args(argv)
    got = profile_epoch.profile(args)
    text = profile_epoch.render(args, argv, got)
    assert "3 epochs profiled" in text, text  # 3 training epochs; the evaluation forward is not one
    assert re.search(r"Tree: `.+` at commit `\w+", text), text
    phases = dict(re.findall(r"^\| (\w+) \| ([\d.]+) \|$", text, flags=re.M))
    nested = "_forward_attention" if model == "gat" else "_forward_linear"  # a phase inside the forward
    assert {"forward", "backward", nested} <= set(phases), text  # named, not compared: times are not asserted
    from flexgnn_core import native

    if native.load() is not None:  # the native product is an op of its own, not hidden in a phase
        calls = round(got["ops"]["flexgnn::csr_spmm"][0] * got["epochs"])
        # GAT: 2 layers x (forward + backward) per epoch; SAGE: layer 1 forward + backward per epoch, plus layer 0's
        # aggregate once, in the first epoch (it is kept)
        assert calls == (12 if model == "gat" else 7), text  # with evaluation counted GAT would show 14
    from flexgnn_core.engine.executor import Engine

    assert Engine.forward.__name__ == "forward", Engine.forward  # the wrappers are gone again
