"""An experiment read from disk, turned into the one validated ExperimentConfig a run gets
(`ExperimentSource`, `load_config`, `derive`), and the dict/YAML round trip of configs stored with runs
and checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moe_lab.artifacts.run_dir import CONFIG
from moe_lab.artifacts.yaml_file import read_yaml_mapping
from moe_lab.config.merging import explain, merge, parse_override, read_yaml
from moe_lab.config.schema import ExperimentConfig
from moe_lab.config.validation import validate_experiment
from moe_lab.errors import ConfigError, first_line

PRETRAINED_MODEL_FILE = "moe_lab_model.yaml"  # written by moe_lab.interop.checkpoint.save_pretrained


def _pretrained_model_section(model_init: str) -> DictConfig:
    """The model section stored with the model `model_init` names: a fine-tune starts from the architecture
    it was trained with, and the experiment's own model keys change only what they name. Read without the
    weights (moe_lab.interop.checkpoint.load_model_source reads those, from the same three kinds of source):
    a pretrained directory's moe_lab_model.yaml, a run directory's config.yaml, or a trainer checkpoint's
    hyper_parameters.config (written by the LightningModule)."""
    path = Path(model_init)

    def error(message: str) -> ConfigError:
        return ConfigError("model_init", message)

    if path.is_dir() and (path / PRETRAINED_MODEL_FILE).is_file():
        node = read_yaml_mapping(path / PRETRAINED_MODEL_FILE, error, "model config keys")
    elif path.is_dir() and (path / CONFIG).is_file():
        node = read_yaml_mapping(path / CONFIG, error, "config keys").get("model")
    elif path.is_file() and path.suffix == ".ckpt":
        node = _checkpoint_model_section(path)
    elif not path.exists():
        raise error(f"no such file or directory: {model_init}")
    else:
        raise error(
            f"{model_init}: not a moe_lab model directory ({PRETRAINED_MODEL_FILE}), a run directory ({CONFIG}) "
            f"or a trainer checkpoint (*.ckpt)"
        )
    if not isinstance(node, (dict, DictConfig)):
        raise error(f"{model_init}: holds no model section")
    return OmegaConf.create({"model": node})


def _checkpoint_model_section(path: Path) -> dict | None:
    import torch  # memory-mapped: the tensors are never read

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch's pickle, zip and OS errors: one line naming the file
        raise ConfigError("model_init", f"{path}: not a readable trainer checkpoint: {first_line(err)}") from None
    stored = (state.get("hyper_parameters") or {}).get("config") if isinstance(state, dict) else None
    return stored.get("model") if isinstance(stored, dict) else None


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
        parsed = tuple((item, parse_override(item)) for item in overrides)
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
            merged = merge(merged, _pretrained_model_section(model_init), schema, key_hint="model_init")
        if self.yaml is not None:
            merged = merge(merged, self.yaml, schema)
        for item, layer in self.overrides:  # one at a time, so an error names the override at fault
            merged = merge(merged, layer, schema, key_hint=item.split("=", 1)[0])
        if values:
            merged = merge(merged, given[-1], schema)
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
    merged = merge(OmegaConf.structured(schema), OmegaConf.create(values), schema)
    return OmegaConf.to_object(merged)


def to_dict(cfg: ExperimentConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config values as flat dotted keys (how TensorBoard's HPARAMS and resume checks name them):
    {"model": {"moe": {"top_k": 2}}} -> {"model.moe.top_k": 2}; lists become strings."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value) if isinstance(value, (list, tuple)) else value
    return flat


def to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
