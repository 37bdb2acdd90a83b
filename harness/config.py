"""Typed config schemas (Hydra ConfigStore) and the one validation step from a composed config to train inputs.

YAML files under ``conf/`` only set values; the shapes live here. ``validate(cfg)`` turns a composed config into
``Settings`` (a ``ModelSpec``, a ``TrainSpec``, the dataset call and the system options) or raises ``ConfigError``
naming the field and the fix, before anything is loaded, trained or recorded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from flexgnn_core import models
from flexgnn_core.data import DATASETS
from flexgnn_core.plan import Budgets
from flexgnn_core.spec import ModelSpec, TrainSpec
from harness.errors import ConfigError
from harness.systems import SYSTEMS, SystemUnavailable, hardware_keys
from harness.resume import sweep_dir

CONF_ENV = "FLEXGNN_CONF"
DATASET_NAMES = DATASETS  # the data layer's list is the one list of valid dataset names
# Dataset knobs that are sizes: zero or negative is always a mistake, whatever the dataset.
DATASET_SIZE_KEYS = ("num_nodes", "avg_degree", "num_features", "num_classes")
HARDWARE_BYTE_KEYS = ("device_budget_bytes", "host_budget_bytes")
# hardware-group key -> the option name a system declares in its HARDWARE_KEYS
HARDWARE_OPTIONS = {"device_budget_bytes": "device_budget_bytes", "host_budget_bytes": "host_budget_bytes",
                    "device_budget_fraction": "device_budget_fraction", "disk_dir": "disk_dir", "profile": "hardware",
                    "memory_cap": "memory_cap"}

def conf_dir() -> Path:
    """The top-level ``conf/`` of this checkout (``$FLEXGNN_CONF`` overrides, e.g. for a non-editable install)."""
    path = Path(os.environ.get(CONF_ENV) or Path(__file__).resolve().parent.parent / "conf")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"no config.yaml in '{path}'. Fix: run from a clone installed with `pip install -e .`, "
                          f"or point {CONF_ENV} at the repository's conf/ directory")
    return path


# --- schemas -------------------------------------------------------------------------------------------------


@dataclass
class SyntheticDatasetConfig:
    """``flexgnn_core.data.load_dataset("synthetic", ...)``; ``null`` knobs take the data layer's default."""

    name: str = "synthetic"
    num_nodes: int = 20000
    avg_degree: float = 10.0
    num_features: int = 64
    num_classes: int = 8
    skew: Optional[float] = None
    homophily: Optional[float] = None
    feature_noise: Optional[float] = None
    train_frac: Optional[float] = None
    val_frac: Optional[float] = None
    seed: int = 0


@dataclass
class SyntheticLargeDatasetConfig(SyntheticDatasetConfig):
    """``load_dataset("synthetic_large", ...)``: the synthetic model written once to ``root`` in bounded memory
    (``flexgnn_core.data.synthetic_stream``), then memory-mapped; for graphs larger than RAM."""

    name: str = "synthetic_large"
    root: str = "${oc.env:FLEXGNN_DATA,data}/synthetic"
    memory_bytes: int = 1 << 30  # working memory of the generator's bucket passes
    mmap: bool = True


@dataclass
class OgbDatasetConfig:
    name: str = MISSING
    root: str = "${oc.env:FLEXGNN_DATA,data}"  # holds ogb's dataset folders, e.g. data/ogbn_arxiv
    download: bool = False  # needs internet
    mmap: bool = True
    url: Optional[str] = None  # a mirror (or file:// URL) of OGB's zip


@dataclass
class FilesDatasetConfig:
    """A user's graph from files (formats in ``flexgnn_core.data.files``); split by index files or fractions."""

    name: str = "files"
    edges: str = MISSING
    features: str = MISSING
    labels: str = MISSING
    train_idx: Optional[str] = None
    val_idx: Optional[str] = None
    test_idx: Optional[str] = None
    train_frac: Optional[float] = None
    val_frac: Optional[float] = None
    split_seed: int = 0
    num_classes: Optional[int] = None
    symmetrize: bool = True
    allow_empty: bool = False  # an edge list with no edges (after cleaning) is refused unless this is true


@dataclass
class SavedDatasetConfig:
    name: str = "saved"
    path: str = MISSING
    allow_empty: bool = False


@dataclass
class ModelConfig:
    """``flexgnn_core.spec.ModelSpec``: dropout rates and weight decay are exact across systems (spec.py)."""

    kind: str = "gcn"
    num_layers: int = 2
    hidden: int = 128
    heads: int = 4
    dropout: float = 0.0  # hidden dropout, after the activation between layers
    lr: float = 0.01
    input_dropout: Optional[float] = None  # on the features before layer 0; null = model.dropout
    attention_dropout: Optional[float] = None  # GAT: on the attention after the softmax; null = model.dropout
    weight_decay: float = 0.0  # Adam's L2 on every parameter (torch.optim.Adam(weight_decay=...))


@dataclass
class HardwareConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    device_budget_bytes: Any = None  # int bytes or "512MiB" / "2GB"; null = unlimited
    host_budget_bytes: Any = None
    # The device budget as a share of the planner's all-on-device peak, in (0, 1]; instead of
    # device_budget_bytes (not both). Only systems that plan (flexgnn) understand it.
    device_budget_fraction: Optional[float] = None
    disk_dir: Optional[str] = None  # null = a temporary directory chosen by the system
    # Planning what-ifs: a datasheet profile (h200, h100, a100 or gpu-link-disk such as h100-pcie4-nvme5,
    # flexgnn_core/calibrate.py) instead of this machine's measured calibration; null = measured.
    profile: Optional[str] = None
    # A hard cap on the whole job's memory (bytes or "2GiB"), enforced by the kernel through a memory-limited
    # control group (harness/memcap.py); null = none. On CUDA it also makes device_budget_bytes a hard limit.
    memory_cap: Any = None


@dataclass
class FlexgnnSystemConfig:
    """``flexgnn_core.engine`` options (conf/system/flexgnn.yaml); budgets in bytes come from the hardware group."""

    name: str = "flexgnn"
    policy: str = "optimal"  # a solver of flexgnn_core/plan/solvers SOLVERS; planner=NAME overrides
    num_chunks: Optional[int] = None  # null: the planner picks P
    reorder: str = "none"
    order: str = "auto"
    prefetch: bool = True


@dataclass
class TrainConfig:
    epochs: int = 30
    warmup_epochs: int = 1
    seed: int = 0
    device: str = "${hardware.device}"
    progress: bool = True
    # last: evaluate after the last epoch; best_val: after every epoch (timed apart from the epochs), and report
    # the accuracies of the best validation epoch beside the last one's
    select: str = "last"


@dataclass
class MlflowConfig:
    enabled: bool = True
    # null = sqlite:///<runs_dir>/mlflow.db; the MLFLOW_TRACKING_URI environment variable comes next.
    tracking_uri: Optional[str] = "${oc.env:MLFLOW_TRACKING_URI,null}"
    experiment: str = "flexgnn-bench"
    artifact_location: Optional[str] = None  # null = mlartifacts/ next to a sqlite store, else <runs_dir>/mlartifacts


@dataclass
class Config:
    dataset: Any = MISSING  # each dataset file brings its own schema (synthetic, ogb, files, saved)
    model: ModelConfig = MISSING
    system: Any = MISSING  # flat: `name` plus the system's own keys, which only that system knows
    hardware: HardwareConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    runs_dir: str = "${oc.env:FLEXGNN_RUNS_DIR,runs}"
    # `planner=NAME` (conf/planner/): the flexgnn engine's plan solver; null = the system file's `policy`.
    planner: Any = None
    # Index of a repeated job, no effect on training: a sweep lists `repeat: 0,1` (slowest-varying, so repeats
    # interleave) and the reports keep each job's fastest run, the least disturbed on a shared machine.
    repeat: int = 0
    # Rerun the identical sweep command with resume=true: its latest sweep directory is continued, jobs whose
    # record is complete (same config, same commit) are reused (harness/resume.py).
    resume: bool = False


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    store.store(group="dataset", name="synthetic_schema", node=SyntheticDatasetConfig)
    store.store(group="dataset", name="synthetic_large_schema", node=SyntheticLargeDatasetConfig)
    store.store(group="dataset", name="ogb_schema", node=OgbDatasetConfig)
    store.store(group="dataset", name="saved_schema", node=SavedDatasetConfig)
    store.store(group="dataset", name="files_schema", node=FilesDatasetConfig)
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="hardware", name="hardware_schema", node=HardwareConfig)
    store.store(group="system", name="flexgnn_schema", node=FlexgnnSystemConfig)


register_configs()
OmegaConf.register_new_resolver("sweep_dir", sweep_dir, replace=True)  # hydra.sweep.dir in conf/config.yaml


# --- validation ----------------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: Any, field_name: str) -> int | None:
    """``None`` -> ``None`` (unlimited); int or "512MiB" / "2GB" / "1.5GiB" -> positive int bytes."""
    if value is None:
        return None
    fix = f"set {field_name} to a positive size like 512MiB, 2GB or 1073741824 (or null for unlimited)"
    if isinstance(value, bool):
        raise ConfigError(f"config field '{field_name}': got {value!r}, not a size. Fix: {fix}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _SIZE.match(str(value))
        unit = match.group(2).lower() if match else None
        if unit not in _UNITS:
            raise ConfigError(f"config field '{field_name}': cannot read {value!r} as a size "
                              f"(units: {', '.join(u for u in _UNITS if u)}). Fix: {fix}")
        number = float(match.group(1)) * _UNITS[unit]
    if number <= 0 or number != number or number == float("inf"):
        raise ConfigError(f"config field '{field_name}': got {value!r}, must be > 0. Fix: {fix}")
    return int(number)


def _check_num_chunks(system_name: str, options: dict[str, Any]) -> None:
    chunks = options.get("num_chunks")
    if chunks is None:  # the planner picks P
        return
    if system_name == "flexgnn" and (isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1):
        raise ConfigError(f"config field 'system.num_chunks': got {chunks!r}, must be an integer >= 1 (the number of "
                          "destination chunks, at most the number of vertices), or null for the planner to pick. "
                          "Fix: raise it, e.g. system.num_chunks=4, or system.num_chunks=null")


@dataclass(frozen=True)
class Settings:
    """Everything ``run`` needs, validated: what to load, what to train, with which system and options."""

    dataset_name: str
    dataset_options: dict[str, Any]
    model: ModelSpec
    train: TrainSpec
    system_name: str
    system_options: dict[str, Any]
    # hardware-group settings this system does not use (e.g. a device budget for pyg on CPU): recorded, not fatal
    ignored_hardware: tuple[str, ...] = ()
    memory_cap_bytes: int | None = None  # hardware.memory_cap: the job runs in a capped group (harness/capped.py)
    device_budget_bytes: int | None = None  # hardware.device_budget_bytes (under a cap: the CUDA allocator's limit)


def _container(node: Any, field_name: str) -> dict[str, Any]:
    if not isinstance(node, DictConfig):
        raise ConfigError(f"config field '{field_name}' is missing or not a mapping. "
                          f"Fix: choose one with {field_name}=<option> (see conf/{field_name}/)")
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except Exception as error:  # a ??? left unset, or an interpolation that does not resolve
        raise ConfigError(f"config field '{field_name}': {error}. Fix: set the missing value on the command "
                          f"line, e.g. {field_name}.<key>=<value>") from None


def _spec(cls: type, values: dict[str, Any], group: str, schema: Any) -> Any:
    try:
        return cls(**values)
    except ValueError as error:  # the spec names the field (e.g. "model.hidden must be ..."); add the fix
        match = re.search(rf"\b{group}\.(\w+)", str(error))
        key = match.group(1) if match else None
        example = f"{group}.{key}={getattr(schema, key)}" if key and hasattr(schema, key) else f"{group}.<key>=..."
        raise ConfigError(f"config field '{group}.{key or '?'}': {error}. Fix: e.g. {example}") from None


def validate(cfg: DictConfig) -> Settings:
    """Check a composed config and turn it into train inputs; raise ``ConfigError`` naming the field."""
    dataset = _container(cfg.get("dataset"), "dataset")
    dataset_name = dataset.pop("name", None)
    if dataset_name not in DATASET_NAMES:
        raise ConfigError(f"config field 'dataset.name': unknown dataset {dataset_name!r}; valid: "
                          f"{', '.join(DATASET_NAMES)}. Fix: choose a preset with dataset=<file in conf/dataset/>")
    for key in DATASET_SIZE_KEYS:
        value = dataset.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ConfigError(f"config field 'dataset.{key}': got {value!r}, must be a positive number. "
                              f"Fix: e.g. dataset.{key}={getattr(SyntheticDatasetConfig, key)}")
    dataset_options = {key: value for key, value in dataset.items() if value is not None}

    model = _spec(ModelSpec, _container(cfg.get("model"), "model"), "model", ModelConfig())
    try:
        models.check(model)
    except ValueError as error:
        raise ConfigError(f"config field 'model.kind': {error}. Fix: model=<one of {', '.join(models.names())}> "
                          "(conf/model/)") from None
    train = _spec(TrainSpec, _container(cfg.get("train"), "train"), "train", TrainConfig())

    system = _container(cfg.get("system"), "system")
    system_name = system.pop("name", None)
    if system_name not in SYSTEMS:  # the registry is the list of valid names
        raise ConfigError(f"config field 'system.name': unknown system {system_name!r}; valid: "
                          f"{', '.join(SYSTEMS)}. Fix: system=<one of those>")
    group = _container(cfg.get("hardware"), "hardware")
    hardware, ignored = _hardware_options(group, system_name)
    options = {**system, **hardware}
    planner = cfg.get("planner")
    if planner is not None:
        if system_name != "flexgnn":
            raise ConfigError(f"config field 'planner': planner={planner.get('name')} plans the flexgnn engine, but "
                              f"system={system_name}. Fix: add system=flexgnn or drop planner=")
        options["policy"] = planner.get("name")
    _check_num_chunks(system_name, options)
    if train.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", train.device):
        raise ConfigError(f"config field 'hardware.device': got {train.device!r}. Fix: hardware.device=auto, cpu, "
                          "cuda or cuda:N")
    memory_cap_bytes = parse_bytes(group.get("memory_cap"), "hardware.memory_cap")
    device_budget_bytes = parse_bytes(group.get("device_budget_bytes"), "hardware.device_budget_bytes")
    if memory_cap_bytes is not None:  # under a cap the device budget is every system's hard CUDA limit
        ignored = [key for key in ignored if key != "hardware.device_budget_bytes"]
    if memory_cap_bytes is not None and options.get("launch") == "env":
        raise ConfigError("config field 'hardware.memory_cap': with system.launch=env every torchrun rank would cap "
                          "itself apart. Fix: cap torchrun as a whole (e.g. systemd-run --scope -p MemoryMax=...) "
                          "and drop hardware.memory_cap")
    return Settings(dataset_name=dataset_name, dataset_options=dataset_options, model=model, train=train,
                    system_name=system_name, system_options=options, ignored_hardware=tuple(ignored),
                    memory_cap_bytes=memory_cap_bytes, device_budget_bytes=device_budget_bytes)


def _hardware_options(hardware: dict[str, Any], system_name: str) -> tuple[dict[str, Any], list[str]]:
    """Budgets parsed and validated once (``flexgnn_core.plan.Budgets``), then the hardware keys the system
    declares as its options; set keys it does not take are listed as ignored (a profile is an error: it only
    steers a planner)."""
    values = {key: parse_bytes(hardware.get(key), f"hardware.{key}") for key in HARDWARE_BYTE_KEYS}
    values["device_budget_fraction"] = hardware.get("device_budget_fraction")
    try:
        Budgets(**values)
    except ValueError as error:
        field_name = re.search(r"hardware\.(\w+)", str(error))
        key = field_name.group(1) if field_name else "device_budget_bytes"
        raise ConfigError(f"config field 'hardware.{key}': {error}. Fix: e.g. hardware.{key}=null, or a value in "
                          "range (budgets: a size like 512MiB; fraction: in (0, 1])") from None
    values["disk_dir"], values["profile"] = hardware.get("disk_dir"), hardware.get("profile")
    values["memory_cap"] = parse_bytes(hardware.get("memory_cap"), "hardware.memory_cap")
    try:
        takes = hardware_keys(system_name)
    except SystemUnavailable:  # the run says why the system cannot run (a sweep records it as skipped)
        takes = ()
    if values["profile"] is not None and HARDWARE_OPTIONS["profile"] not in takes:
        raise ConfigError(f"config field 'hardware.profile': a datasheet profile only steers the flexgnn planner, "
                          f"but system={system_name}. Fix: add system=flexgnn or drop hardware.profile=")
    chosen = {HARDWARE_OPTIONS[key]: value for key, value in values.items()
              if value is not None and HARDWARE_OPTIONS[key] in takes}
    ignored = [f"hardware.{key}" for key, value in values.items()  # the harness enforces memory_cap for all
               if value is not None and HARDWARE_OPTIONS[key] not in takes and key != "memory_cap"]
    return chosen, ignored
