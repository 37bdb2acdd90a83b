"""Every config group file composes into a valid run; sizes and names are checked with errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import MissingConfigException

from harness.config import DATASET_NAMES, ConfigError, conf_dir, parse_bytes, validate
from harness.systems import SYSTEMS
from harness.sweep import count_jobs

CONF = conf_dir()


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def test_default_run_is_the_documented_one(compose):
    settings = validate(compose())
    assert settings.system_name == "pyg" and settings.model.kind == "gcn" and settings.dataset_name == "synthetic"
    assert settings.dataset_options == {"num_nodes": 20000, "avg_degree": 10.0, "num_features": 64,
                                        "num_classes": 8, "seed": 0}
    assert (settings.model.num_layers, settings.model.hidden) == (2, 128)
    assert settings.train.epochs == 30 and settings.train.warmup_epochs == 1 and settings.train.device == "auto"
    assert settings.system_options == {"path": "auto"}  # pyg's own key; unlimited hardware adds no keys


@pytest.mark.parametrize("dataset", options("dataset"))
def test_every_dataset_file_composes(compose, dataset):
    extra = {"saved": ["dataset.path=/some/graph_dir"],
             "files": ["dataset.edges=e.npy", "dataset.features=x.npy", "dataset.labels=y.npy"]}.get(dataset, [])
    settings = validate(compose([f"dataset={dataset}", *extra]))
    assert settings.dataset_name in DATASET_NAMES
    if dataset.startswith("ogbn-"):
        assert settings.dataset_name == dataset and settings.dataset_options["download"] is False


@pytest.mark.parametrize("model", options("model"))
def test_every_model_file_composes(compose, model):
    assert validate(compose([f"model={model}"])).model.kind == model


@pytest.mark.parametrize("system", options("system"))
def test_every_system_file_names_a_registered_system(compose, system):
    assert system in SYSTEMS
    assert validate(compose([f"system={system}"])).system_name == system


@pytest.mark.parametrize("hardware", options("hardware"))
def test_every_hardware_file_composes(compose, hardware):
    assert validate(compose([f"hardware={hardware}"])).train.device == hardware


def test_every_dataset_name_has_a_preset():
    presets = {(CONF / "dataset" / f"{name}.yaml").read_text() for name in options("dataset")}
    for name in DATASET_NAMES:
        assert any(f"\nname: {name}\n" in text for text in presets), name


def test_knobs_reach_the_train_inputs(compose):
    settings = validate(compose(["model=gat", "system=flexgnn", "dataset.num_nodes=1234", "dataset.avg_degree=3.5", "train.epochs=7",
                                 "train.seed=3", "hardware.device=cpu", "hardware.device_budget_bytes=512MiB",
                                 "hardware.host_budget_bytes=2GB", "hardware.disk_dir=/tmp/spill"]))
    assert settings.dataset_options["num_nodes"] == 1234 and settings.dataset_options["avg_degree"] == 3.5
    assert (settings.train.epochs, settings.train.seed, settings.train.device) == (7, 3, "cpu")
    assert {key: settings.system_options[key] for key in ("device_budget_bytes", "host_budget_bytes", "disk_dir")} \
        == {"device_budget_bytes": 512 * 2**20, "host_budget_bytes": 2 * 10**9, "disk_dir": "/tmp/spill"}
    assert settings.system_options["policy"]  # flexgnn's own keys pass through untouched


@pytest.mark.parametrize("planner", options("planner"))
def test_every_planner_becomes_the_flexgnn_policy(compose, planner):
    settings = validate(compose(["system=flexgnn", f"planner={planner}", "hardware.profile=h100-pcie4-nvme5",
                                 "hardware.device_budget_bytes=64MiB"]))
    assert settings.system_options["policy"] == planner and settings.system_options["hardware"] == "h100-pcie4-nvme5"
    assert settings.system_options["device_budget_bytes"] == 64 * 2**20


def test_flexgnn_defaults_to_the_optimal_planner_on_measured_rates(compose):
    settings = validate(compose(["system=flexgnn"]))
    assert settings.system_options["policy"] == "optimal" and "hardware" not in settings.system_options


@pytest.mark.parametrize("override", ["planner=optimal", "hardware.profile=h200"])
def test_planning_knobs_refuse_systems_that_do_not_plan(compose, override):
    with pytest.raises(ConfigError, match="system=flexgnn"):
        validate(compose(["system=pyg", override]))


def test_debug_fast_shrinks_any_run(compose):
    for model in options("model"):
        settings = validate(compose([f"model={model}", "+debug=fast"]))
        assert settings.dataset_options["num_nodes"] <= 2000 and settings.train.epochs <= 3
        assert settings.train.device == "cpu" and settings.train.progress is False


def test_speedup_sweep_composes_every_job(compose):
    from hydra_plugins.flexgnn_grids.grids_sweeper import expand

    cfg = compose(["+sweep=speedup"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    grids = cfg.hydra.sweeper.grids
    in_memory = grids.in_memory
    systems, models, degrees = (str(in_memory[key]).split(",") for key in ("system", "model", "dataset.avg_degree"))
    assert set(systems) == set(SYSTEMS) and set(models) == {"gcn", "sage", "gat"} and len(degrees) >= 2
    capped = {str(grid.system) + (f"[{grid.get('planner')}]" if grid.get("planner") else "")
              for grid in grids.values() if grid.get("hardware.memory_cap")}
    assert {"pyg,dgl,flexgnn", "flexgnn[flexgnn_greedy,hongtu_like]", "ddp"} <= capped  # the claims' systems
    jobs = expand(grids, [])
    assert count_jobs(cfg) == len(jobs) > len(systems) * len(models) * len(degrees)
    for overrides in jobs:  # every job composes and validates; DDP holds R x the single-device cap
        settings = validate(compose(overrides))
        if settings.system_name == "ddp" and settings.memory_cap_bytes:
            single = parse_bytes(grids.capped["hardware.memory_cap"], "hardware.memory_cap")
            assert settings.memory_cap_bytes == settings.system_options["world_size"] * single
    first_comment = (CONF / "sweep" / "speedup.yaml").read_text().splitlines()[1]
    assert first_comment == "# python -m harness +sweep=speedup"


def test_claims_sweep_composes_and_is_the_larger_capped_grid(compose):
    from hydra_plugins.flexgnn_grids.grids_sweeper import expand

    claims = compose(["+sweep=claims"], return_hydra_config=True)
    main = compose(["+sweep=speedup", "hydra.sweeper.only=[capped,capped_planners,ddp2_capped,ddp4_capped]"],
                   return_hydra_config=True)
    assert count_jobs(claims) == len(expand(claims.hydra.sweeper.grids, [])) > count_jobs(main)
    first_comment = (CONF / "sweep" / "claims.yaml").read_text().splitlines()[1]
    assert first_comment == "# python -m harness +sweep=claims"
    validate(compose(expand(claims.hydra.sweeper.grids, [])[-1]))  # the largest DDP job


def test_command_line_sweep_overrides_replace_the_sweep_file(compose):
    from omegaconf import open_dict

    cfg = compose(["+sweep=speedup", "hydra.sweeper.only=in_memory"], return_hydra_config=True)
    with open_dict(cfg):  # what `python -m harness +sweep=speedup model=gcn,sage dataset.avg_degree=3` passes
        cfg.hydra.overrides.task = ["+sweep=speedup", "model=gcn,sage", "dataset.avg_degree=3"]
    assert count_jobs(cfg) == 2 * len(str(cfg.hydra.sweeper.grids.in_memory.system).split(","))


@pytest.mark.parametrize(("value", "expected"), [(None, None), (1024, 1024), ("1024", 1024), ("512MiB", 2**29),
                                                 ("2GB", 2 * 10**9), ("1.5GiB", 3 * 2**29), ("64 kb", 64000)])
def test_parse_bytes_reads_sizes(value, expected):
    assert parse_bytes(value, "hardware.device_budget_bytes") == expected


@pytest.mark.parametrize("value", [0, -1, "-2GB", "0MiB", "lots", "12 parsecs", True, float("nan")])
def test_parse_bytes_rejects_garbage_naming_the_field(value):
    with pytest.raises(ConfigError, match=r"hardware\.host_budget_bytes.*Fix: set hardware\.host_budget_bytes"):
        parse_bytes(value, "hardware.host_budget_bytes")


@pytest.mark.parametrize("group", ["system", "model", "dataset", "hardware"])
def test_unknown_group_option_lists_the_valid_ones(compose, group):
    with pytest.raises(MissingConfigException) as caught:
        compose([f"{group}=nonesuch"])
    message = str(caught.value)
    assert f"Could not find '{group}/nonesuch'" in message
    assert all(option in message for option in options(group))


def test_conf_dir_env_var_must_point_at_a_conf_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEXGNN_CONF", str(tmp_path))
    with pytest.raises(ConfigError, match="FLEXGNN_CONF"):
        conf_dir()
    monkeypatch.setenv("FLEXGNN_CONF", str(CONF))
    assert conf_dir() == Path(CONF)


def test_required_dataset_paths_are_named_when_missing(compose):
    with pytest.raises(ConfigError, match=r"config field 'dataset'.*path"):
        validate(compose(["dataset=saved"]))


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (CONF.parent / ".ci" / "run").read_text()
    (line,) = [line for line in ci.splitlines() if line.startswith("README_TEST_COMMAND=")]
    command = line.split("=", 1)[1].strip('"')
    assert "pip install torch==2.13.0 " in command and command.endswith("pytest")
    assert command in (CONF.parent / "README.md").read_text()
