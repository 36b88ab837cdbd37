"""The experiment schema, and loading it: YAML file (+ the files it extends) + `key.sub=value` overrides.

Config flows one way: YAML -> OmegaConf structured merge against these dataclasses (unknown keys and
wrong types are caught here) -> plain dataclass objects -> `validate_experiment` (value and
cross-field rules) -> the rest of moe_lab. Derived values (a sweep's matched expert width) are merged in before
that one validation (`ExperimentSource.config(values)`); nothing changes a validated config. Errors name the key.
"""

from __future__ import annotations

import difflib
import importlib.util
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from moe_lab.data.config import DataConfig, validate_data_config
from moe_lab.errors import ConfigError
from moe_lab.model.config import ModelConfig, validate_model_config

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true")
COLLAPSE_ACTIONS = ("warn", "stop", "prune")  # what the collapse detector does when it fires
KEEP_CHECKPOINTS = ("all", "best_weights", "none")
# Experiment trackers (`trainer.loggers`): logger name -> the package it needs (None: installed with
# moe_lab). moe_lab.training.loggers builds them.
LOGGERS = {"tensorboard": None, "csv": None, "wandb": "wandb", "mlflow": "mlflow"}
# Key naming the base file(s) a YAML file extends, resolved relative to that file.
EXTENDS_KEY = "extends"


@dataclass
class OptimConfig:
    lr: float = 3e-3
    # Cosine decay from lr to lr * min_lr_ratio over trainer.max_steps, after a linear warmup.
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    # AdamW decoupled weight decay; never applied to norms, biases or embeddings.
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    val_every_n_steps: int = 100
    val_batches: int = 20  # validation batches per evaluation; 0 means the whole split
    accumulate_grad_batches: int = 1
    precision: str = "32-true"
    # Passed straight to lightning.Trainer; scale-out goes through Lightning's own strategies.
    accelerator: str = "auto"
    devices: str = "auto"  # "auto", a count ("2") or a list ("0,1")
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | fsdp | ...
    deterministic: bool = False
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each block in the backward
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    resume: str = ""  # "" (fresh run), "auto" (latest last.ckpt of this experiment) or a .ckpt path
    checkpoint_every_n_steps: int = 0  # last.ckpt cadence; 0 means every val_every_n_steps
    # What a finished run (completed or pruned) keeps: all = best.ckpt and last.ckpt in full;
    # best_weights = best.ckpt without optimiser state, no last.ckpt; none = no checkpoints.
    # A run that failed or stopped keeps everything, so it can resume.
    keep_checkpoints: str = "all"
    progress_bar: bool = True
    log_every_n_steps: int = 10
    # Experiment trackers, through Lightning's logger classes: tensorboard | csv | wandb | mlflow
    # (wandb and mlflow are optional extras; see moe_lab.training.loggers).
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class MonitorConfig:
    log_every_n_steps: int = 10
    heatmap_every_n_steps: int = 200  # 0: no heatmap images
    max_experts_logged: int = 64  # per-expert scalars only up to this many experts per layer (0: none)
    collapse_min_load_fraction: float = 0.1  # of uniform load
    collapse_patience_steps: int = 100
    collapse_min_entropy_norm: float = 0.0  # 0 disables the entropy criterion
    collapse_action: str = "warn"  # warn | stop | prune
    # Router health: every n optimizer steps (0: never) the norm of d(LM loss)/d(router weights) is
    # measured per MoE layer (one extra partial backward) and logged as moe/layer{i}/router_lm_grad_norm;
    # a router whose norm stays at or below `dead_router_max_grad_norm` for the collapse patience is a
    # collapse event ("dead_router": only the aux/z losses train it).
    router_grad_every_n_steps: int = 50
    dead_router_max_grad_norm: float = 1e-8
    sample_tokens: int = 200  # length of the text sample generated at each validation; 0 disables
    sample_prompt: str = "ROMEO:\n"


@dataclass
class ExperimentConfig:
    name: str = "default"
    seed: int = 0
    output_dir: str = "runs"
    version: str = ""  # run directory name under <output_dir>/<name>/; "" picks version_N
    # A moe_lab pretrained directory (moe_lab_model.yaml + model.safetensors) to start from.
    model_init: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


# ---------------------------------------------------------------------------------------------
# Loading


def read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> DictConfig:
    """A YAML file with the files it `extends` merged underneath it (base first)."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(EXTENDS_KEY, f"{path} extends itself through {' -> '.join(map(str, chain))}")
    if not path.is_file():
        raise ConfigError(EXTENDS_KEY if chain else "config", f"no such config file: {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends: say which file and why, in one line
        reason = " ".join(str(err).split())
        raise ConfigError("config", f"cannot parse {path}: {reason}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError("config", f"{path} must hold a mapping of config keys")
    if not node:  # an empty file would silently train every schema default
        raise ConfigError("config", f"{path} is empty; an experiment names at least the keys it changes")
    bases = node.pop(EXTENDS_KEY, None)
    if bases is None:
        return node
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(merged, read_yaml(path.parent / str(base), chain + (path,)))
    return OmegaConf.merge(merged, node)


def schema_keys(schema: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        keys.append(key)
        value = getattr(schema, f.name)
        if is_dataclass(value):
            keys += schema_keys(value, key + ".")
    return keys


def _expected_type(schema: Any, key: str) -> str:
    """The declared type of a dotted key in the schema ("int", "list[int]", "section"...)."""
    node: Any = type(schema)
    for part in key.split("."):
        part = part.split("[")[0]
        hints = typing.get_type_hints(node) if is_dataclass(node) else {}
        if part not in hints:
            return "another type"
        node = hints[part]
    if is_dataclass(node):
        return "a section (mapping of keys), not a value"
    if "[" in key.rsplit(".", 1)[-1] and typing.get_args(node):  # an element of a list
        node = typing.get_args(node)[0]
    return getattr(node, "__name__", str(node)) if typing.get_origin(node) is None else str(node)


def explain(err: OmegaConfBaseException, schema: Any, key_hint: str = "config") -> ConfigError:
    key = str(getattr(err, "full_key", "") or key_hint)
    if isinstance(err, ConfigKeyError):
        close = difflib.get_close_matches(key, schema_keys(schema), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        return ConfigError(key, f"unknown key{hint}")
    if isinstance(err, ValidationError):
        value = getattr(err, "value", None)
        got = "" if value is None else f", got {value!r}"
        return ConfigError(key, f"expected {_expected_type(schema, key)}{got}")
    return ConfigError(key, " ".join(str(err).split("\n")[0].split()))


def _merge(base: DictConfig, update: DictConfig, schema: Any, key_hint: str = "config") -> DictConfig:
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as err:
        raise explain(err, schema, key_hint) from None


def _parse_override(item: str) -> DictConfig:
    key = item.split("=", 1)[0]
    if "=" not in item or not key:
        raise ConfigError(item, "overrides are key.sub=value")
    try:
        return OmegaConf.from_dotlist([item])
    except OmegaConfBaseException as err:
        raise ConfigError(key, " ".join(str(err).split("\n")[0].split())) from None


PRETRAINED_MODEL_FILE = "moe_lab_model.yaml"  # written by moe_lab.interop.checkpoint.save_pretrained


def _pretrained_model_section(model_init: str) -> DictConfig:
    """The model section stored with a pretrained directory: a fine-tune starts from the architecture
    it was trained with, and the experiment's own model keys change only what they name."""
    path = Path(model_init) / PRETRAINED_MODEL_FILE
    if not Path(model_init).is_dir():
        raise ConfigError("model_init", f"no such directory: {model_init}")
    if not path.is_file():
        raise ConfigError("model_init", f"no {PRETRAINED_MODEL_FILE} in {model_init}")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends
        raise ConfigError("model_init", f"cannot parse {path}: {' '.join(str(err).split())}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError("model_init", f"{path} must hold a mapping of model config keys")
    return OmegaConf.create({"model": node})


@dataclass(frozen=True)
class ExperimentSource:
    """An experiment read from disk once: its YAML file (with the files it extends) and its parsed
    `key.sub=value` overrides. `config(values)` merges them onto the schema with `values` last (a nested
    mapping: a sweep's parameters, where a run writes, the matched expert width) and validates the
    result, the one validation a config gets; `draft(values)` is that merge unvalidated."""

    yaml: DictConfig | None
    overrides: tuple[tuple[str, DictConfig], ...] = ()  # (as typed, parsed)

    def extended(self, overrides: list[str] | tuple[str, ...]) -> ExperimentSource:
        """The same experiment with more overrides after its own (an ablation arm's)."""
        parsed = tuple((item, _parse_override(item)) for item in overrides)
        return ExperimentSource(self.yaml, self.overrides + parsed)

    def draft(self, values: Mapping[str, Any] | None = None) -> ExperimentConfig:
        """Schema defaults <- (pretrained model section) <- YAML (with its bases) <- overrides <- values,
        the warmup fitted to the run (fit_warmup); not validated."""
        schema = ExperimentConfig()
        given = [layer for _, layer in self.overrides] + ([OmegaConf.create(dict(values))] if values else [])
        layers = ([self.yaml] if self.yaml is not None else []) + given
        model_init = next((str(layer.model_init) for layer in reversed(layers) if "model_init" in layer), "")
        merged = OmegaConf.structured(schema)
        if model_init:
            merged = _merge(merged, _pretrained_model_section(model_init), schema, key_hint="model_init")
        if self.yaml is not None:
            merged = _merge(merged, self.yaml, schema)
        for item, layer in self.overrides:  # one at a time, so an error names the override at fault
            merged = _merge(merged, layer, schema, key_hint=item.split("=", 1)[0])
        if values:
            merged = _merge(merged, given[-1], schema)
        try:
            cfg = OmegaConf.to_object(merged)
        except OmegaConfBaseException as err:
            raise explain(err, schema) from None
        if not any(OmegaConf.select(layer, "optim.warmup_steps") is not None for layer in given):
            cfg.optim.warmup_steps = fit_warmup(cfg.optim.warmup_steps, cfg.trainer.max_steps)
        return cfg

    def config(self, values: Mapping[str, Any] | None = None) -> ExperimentConfig:
        cfg = self.draft(values)  # a fresh object: nothing else holds it
        validate_experiment(cfg)
        return cfg


def read_experiment(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentSource:
    """Read an experiment YAML (None: the schema defaults alone) and parse its overrides."""
    return ExperimentSource(read_yaml(Path(path)) if path is not None else None).extended(overrides)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The validated experiment of a YAML file and its overrides."""
    return read_experiment(path, overrides).config()


def derive(cfg: ExperimentConfig, values: Mapping[str, Any]) -> ExperimentConfig:
    """A new config: `cfg` with `values` merged on top, validated as a whole (`cfg` is left as it is):
    for a value only the data can tell (the tokenizer's vocabulary size) once `cfg` was validated."""
    return ExperimentSource(OmegaConf.structured(cfg)).config(values)


def fit_warmup(warmup_steps: int, max_steps: int) -> int:
    """A config file's warmup that is longer than the run (a short smoke test of a long experiment,
    `trainer.max_steps=50`) becomes a tenth of the run. A warmup given on the command line is kept
    as given, and validation says when it does not fit."""
    return warmup_steps if warmup_steps <= max_steps else max_steps // 10


def config_from_dict(values: dict) -> ExperimentConfig:
    """The inverse of `to_dict` (for configs stored in checkpoints and run directories)."""
    schema = ExperimentConfig()
    merged = _merge(OmegaConf.structured(schema), OmegaConf.create(values), schema)
    return OmegaConf.to_object(merged)


def to_dict(cfg: ExperimentConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# ---------------------------------------------------------------------------------------------
# Validation: value rules and rules that tie keys of different sections together.


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def validate_experiment(cfg: ExperimentConfig) -> None:
    validate_model_config(cfg.model, "model")
    validate_data_config(cfg.data, "data")
    _check(bool(cfg.name.strip()) and "/" not in cfg.name, "name", f"must be a non-empty name without '/', got {cfg.name!r}")
    _check("/" not in cfg.version, "version", f"must be a directory name, got {cfg.version!r}")
    _check(cfg.data.block_size <= cfg.model.max_seq_len, "data.block_size",
           f"{cfg.data.block_size} > model.max_seq_len={cfg.model.max_seq_len}")
    if cfg.model_init:
        _check(Path(cfg.model_init).is_dir(), "model_init", f"no such directory: {cfg.model_init}")
    _validate_trainer(cfg.trainer)  # first: optim rules compare against trainer.max_steps
    _validate_optim(cfg.optim, cfg.trainer)
    _validate_monitor(cfg.monitor)


def _validate_optim(o: OptimConfig, t: TrainerConfig) -> None:
    _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    _check(o.warmup_steps <= t.max_steps, "optim.warmup_steps",
           f"{o.warmup_steps} > trainer.max_steps={t.max_steps}; set optim.warmup_steps={t.max_steps // 10} "
           f"(a tenth of the run) or fewer")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    for name in ("beta1", "beta2"):
        value = getattr(o, name)
        _check(0 <= value < 1, f"optim.{name}", f"must be in [0, 1), got {value}")
    _check(o.eps > 0, "optim.eps", f"must be > 0, got {o.eps}")
    _check(o.grad_clip >= 0, "optim.grad_clip", f"must be >= 0, got {o.grad_clip}")


def _validate_trainer(t: TrainerConfig) -> None:
    for name in ("max_steps", "val_every_n_steps", "accumulate_grad_batches", "num_nodes", "log_every_n_steps"):
        value = getattr(t, name)
        _check(value >= 1, f"trainer.{name}", f"must be >= 1, got {value}")
    _check(t.val_batches >= 0, "trainer.val_batches", f"must be >= 0, got {t.val_batches}")
    _check(t.threads >= 0, "trainer.threads", f"must be >= 0, got {t.threads}")
    _check(t.checkpoint_every_n_steps >= 0, "trainer.checkpoint_every_n_steps",
           f"must be >= 0, got {t.checkpoint_every_n_steps}")
    _check(t.keep_checkpoints in KEEP_CHECKPOINTS, "trainer.keep_checkpoints",
           f"unknown value {t.keep_checkpoints!r}; expected one of {', '.join(KEEP_CHECKPOINTS)}")
    _check(t.precision in PRECISIONS, "trainer.precision",
           f"unknown value {t.precision!r}; expected one of {', '.join(PRECISIONS)}")
    devices = t.devices.replace(" ", "")
    _check(devices == "auto" or all(part.lstrip("-").isdigit() for part in devices.split(",")),
           "trainer.devices", f"expected 'auto', a count or a comma-separated list, got {t.devices!r}")
    if t.resume not in ("", "auto"):
        _check(Path(t.resume).is_file(), "trainer.resume", f"no such checkpoint: {t.resume}")
    _validate_loggers(t.loggers)


def missing_package(logger: str) -> str | None:
    """The package logger `logger` needs and is not installed, or None."""
    package = LOGGERS[logger]
    return package if package and importlib.util.find_spec(package) is None else None


def _validate_loggers(names: list[str]) -> None:
    for name in names:
        _check(name in LOGGERS, "trainer.loggers", f"unknown logger {name!r}; expected some of {', '.join(LOGGERS)}")
        missing = missing_package(name)
        _check(missing is None, "trainer.loggers",
               f"the {name} logger needs the {missing} package: pip install 'moe-lab[{name}]'")
    _check(len(set(names)) == len(names), "trainer.loggers", f"a logger is listed twice: {names}")


def check_collapse_settings(min_load_fraction: float, min_entropy_norm: float, action: str,
                            prefix: str = "") -> None:
    """The collapse detector's rules, here for the config and for the detector itself (keys `prefix` +
    name). Both thresholds are in [0, 1): at 1 every expert below uniform load is starved and every
    router short of uniform entropy has collapsed, i.e. any imbalance at all fires."""
    _check(0 <= min_load_fraction < 1, f"{prefix}min_load_fraction",
           f"must be a fraction of uniform load in [0, 1), got {min_load_fraction}")
    _check(0 <= min_entropy_norm < 1, f"{prefix}min_entropy_norm",
           f"must be in [0, 1) (0 disables), got {min_entropy_norm}")
    _check(action in COLLAPSE_ACTIONS, f"{prefix}action",
           f"unknown value {action!r}; expected one of {', '.join(COLLAPSE_ACTIONS)}")


def _validate_monitor(m: MonitorConfig) -> None:
    for name in ("log_every_n_steps", "collapse_patience_steps"):
        value = getattr(m, name)
        _check(value >= 1, f"monitor.{name}", f"must be >= 1, got {value}")
    for name in ("heatmap_every_n_steps", "max_experts_logged", "router_grad_every_n_steps"):  # 0: off
        value = getattr(m, name)
        _check(value >= 0, f"monitor.{name}", f"must be >= 0, got {value}")
    check_collapse_settings(m.collapse_min_load_fraction, m.collapse_min_entropy_norm, m.collapse_action,
                            prefix="monitor.collapse_")
    _check(m.dead_router_max_grad_norm >= 0, "monitor.dead_router_max_grad_norm",
           f"must be >= 0, got {m.dead_router_max_grad_norm}")
    _check(m.sample_tokens >= 0, "monitor.sample_tokens", f"must be >= 0, got {m.sample_tokens}")
