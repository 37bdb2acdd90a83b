"""The grids sweeper (hydra_plugins/flexgnn_grids): several named cartesian grids as one multirun, in a fixed order,
each job labelled with its grid; the command line applies to every grid and wins; ``only`` picks grids."""

from __future__ import annotations

import pytest

from hydra_plugins.flexgnn_grids.grids_sweeper import expand

GRIDS = {"small": {"system": "pyg,flexgnn", "model": "gcn"},
         "capped": {"system": "pyg", "dataset.num_nodes": "100,200,300", "hardware.memory_cap": "1GiB"}}


def test_grids_run_one_after_another_each_job_labelled():
    jobs = expand(GRIDS, [])
    assert jobs == [
        ["system=pyg", "model=gcn", "+grid=small"], ["system=flexgnn", "model=gcn", "+grid=small"],
        ["system=pyg", "dataset.num_nodes=100", "hardware.memory_cap=1GiB", "+grid=capped"],
        ["system=pyg", "dataset.num_nodes=200", "hardware.memory_cap=1GiB", "+grid=capped"],
        ["system=pyg", "dataset.num_nodes=300", "hardware.memory_cap=1GiB", "+grid=capped"]]


def test_the_command_line_applies_to_every_grid_and_wins():
    jobs = expand(GRIDS, ["system=dgl", "train.epochs=2,3"])
    assert len(jobs) == 2 + 6  # each grid: its own axes x the command line's sweep
    assert all("system=dgl" in job and "system=pyg" not in job for job in jobs)
    assert sum("train.epochs=3" in job for job in jobs) == 4


def test_only_picks_grids_and_names_an_unknown_one():
    assert [job[-1] for job in expand(GRIDS, [], only="capped")] == ["+grid=capped"] * 3
    assert len(expand(GRIDS, [], only=["small", "capped"])) == 5
    assert len(expand({**GRIDS, "capped": None}, [])) == 2  # hydra.sweeper.grids.capped=null leaves it out
    with pytest.raises(ValueError, match=r"hydra\.sweeper\.only=bigger: no grid named \['bigger'\]"):
        expand(GRIDS, [], only="bigger")
    with pytest.raises(ValueError, match=r"hydra\.sweeper\.grids\.small must be a mapping"):
        expand({"small": "system=pyg"}, [])
