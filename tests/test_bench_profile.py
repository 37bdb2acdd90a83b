"""bench/profile_epoch.py: per-phase and per-op tables of training epochs only, naming the kernel and the tree."""

from __future__ import annotations

import re

import pytest

from bench import profile_epoch


@pytest.mark.parametrize("model", ["gat", "sage"])
def test_profile_counts_training_epochs_only_and_names_what_ran(tmp_path, model):
    out = tmp_path / "p.md"
    profile_epoch.main(["--model", model, "--nodes", "400", "--avg-degree", "5", "--features", "16", "--hidden",
                        "16", "--heads", "2", "--epochs", "3", "--out", str(out)])
    text = out.read_text()
    assert "3 epochs profiled" in text  # 3 training epochs; the evaluation forward is not one
    assert re.search(r"Tree: `.+` at commit `\w+", text)
    phases = dict(re.findall(r"^\| (\w+) \| ([\d.]+) \|$", text, flags=re.M))
    assert {"forward", "backward"} <= set(phases)
    assert float(phases["forward"]) >= float(phases.get("_forward_attention" if model == "gat" else
                                                        "_forward_linear", 0))  # phases nest inside an epoch
    from flexgnn_core import native

    if native.load() is not None:
        assert "`flexgnn::csr_spmm`" in text  # the native product is visible, not hidden in a phase
