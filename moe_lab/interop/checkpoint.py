"""moe_lab models on disk: the pretrained directory format and the trainer's Lightning checkpoints.

A pretrained directory holds `moe_lab_model.yaml` (the `ModelConfig`) and `model.safetensors` (the
state dict, a tied embedding stored once). Converters write it, `build_pretrained` turns it back into
a `MoETransformer`, and the trainer can fine-tune from it. Lightning `.ckpt` files are read with
`weights_only=True`: a checkpoint is data, never code to unpickle.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from moe_lab.artifacts.atomic import atomic_file
from moe_lab.artifacts.run_dir import BEST_CKPT, CHECKPOINTS, LAST_CKPT
from moe_lab.artifacts.yaml_file import read_yaml_mapping
from moe_lab.config import PRETRAINED_MODEL_FILE
from moe_lab.errors import ConfigError, MoELabError, first_line
from moe_lab.model.config import ModelConfig, validate_model_config
from moe_lab.model.transformer import MoETransformer

CONFIG_FILE = PRETRAINED_MODEL_FILE  # moe_lab_model.yaml
WEIGHTS_FILE = "model.safetensors"
TIED_HEAD = "lm_head.weight"  # with tie_embeddings this is embed.weight, stored only under that name


class CheckpointError(MoELabError, ValueError):
    """A checkpoint file or tensor is missing, unreadable, or does not fit its config."""


def model_config_from_dict(data: dict, source: str) -> ModelConfig:
    """A validated ModelConfig from a plain dict (YAML or a checkpoint's hyper-parameters)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), data)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = f"model.{err.full_key}" if getattr(err, "full_key", None) else "model"
        reason = first_line(err)
        raise ConfigError(key, f"{reason} (in {source})") from None
    validate_model_config(cfg)
    return cfg


def expected_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Every state-dict entry of the model `cfg` describes, with its shape; nothing is allocated."""
    with torch.device("meta"):
        model = MoETransformer(cfg)
    return {name: t.shape for name, t in model.state_dict().items()}


def check_state_dict(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming the first missing, unexpected or wrongly shaped tensor."""
    shapes = expected_shapes(cfg)
    for name, shape in shapes.items():
        if name not in state_dict:
            raise CheckpointError(f"{source}: tensor {name!r} is missing")
        if state_dict[name].shape != shape:
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {list(state_dict[name].shape)}, "
                f"the model config gives {list(shape)}"
            )
    extra = sorted(set(state_dict) - set(shapes))
    if extra:
        raise CheckpointError(f"{source}: tensor {extra[0]!r} is not part of the model the config describes")


def build_model(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], source: str) -> MoETransformer:
    """A MoETransformer holding exactly `state_dict` (strict: every tensor present, none left over)."""
    check_state_dict(cfg, state_dict, source)
    model = MoETransformer(cfg)
    model.load_state_dict(state_dict, strict=True)
    return model


def save_pretrained(directory: str | Path, cfg: ModelConfig, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write `cfg` and `state_dict` as a moe_lab pretrained directory; returns the directory."""
    validate_model_config(cfg)
    if cfg.tie_embeddings and TIED_HEAD not in state_dict and "embed.weight" in state_dict:
        state_dict = {**state_dict, TIED_HEAD: state_dict["embed.weight"]}
    check_state_dict(cfg, state_dict, "state dict to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: t.detach().contiguous()
        for name, t in state_dict.items()
        if not (cfg.tie_embeddings and name == TIED_HEAD)
    }  # safetensors refuses shared storage
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return directory


def load_pretrained(directory: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and the full state dict (tied head restored) of a moe_lab pretrained directory."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(
                f"{path}: not found (a moe_lab model directory holds {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
    data = OmegaConf.to_container(read_yaml_mapping(config_path, CheckpointError, "model config keys"))
    cfg = model_config_from_dict(data, str(config_path))
    try:
        state_dict = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file: {err}") from None
    if cfg.tie_embeddings and "embed.weight" in state_dict:
        state_dict[TIED_HEAD] = state_dict["embed.weight"]
    check_state_dict(cfg, state_dict, str(weights_path))
    return cfg, state_dict


def build_pretrained(directory: str | Path) -> MoETransformer:
    cfg, state_dict = load_pretrained(directory)
    return build_model(cfg, state_dict, str(Path(directory) / WEIGHTS_FILE))


def read_torch_checkpoint(path: Path) -> object:
    """The contents of a `.ckpt` file, tensors and plain containers only; CheckpointError naming the file
    when it is missing, truncated, not a torch file, or holds pickled objects."""
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    # torch.save writes a zip archive; a file cut short loses the archive's directory at its end. Said
    # here in a few words, before torch.load's long advice about pickles and miniz.
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a torch checkpoint (not a complete zip archive: truncated, or another kind of file)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: holds objects other than tensors and plain containers, which are "
            f"never unpickled ({first_line(err, 200)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a torch checkpoint: {first_line(err)}") from None


# What a weights-only trainer checkpoint keeps: enough for load_lightning_checkpoint and for Lightning's
# own loaders to rebuild the module, nothing to resume training with (optimiser, schedule, loops).
WEIGHTS_ONLY_KEYS = ("state_dict", "hyper_parameters", "epoch", "global_step", "pytorch-lightning_version")


def strip_to_weights(path: str | Path) -> int:
    """Rewrite a trainer checkpoint in place without its optimiser state (AdamW's two moments are
    twice the weights); returns the bytes saved. Written beside it and renamed, so a crash leaves
    either file whole."""
    path = Path(path)
    before = path.stat().st_size
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    with atomic_file(path, "wb") as f:  # a failed write leaves neither half a file nor a temporary one
        torch.save({k: ckpt[k] for k in WEIGHTS_ONLY_KEYS if k in ckpt}, f)
    return before - path.stat().st_size


def load_lightning_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Model config and state dict from a trainer checkpoint: `state_dict` keys `model.*`, the model
    section of the experiment config under `hyper_parameters.config.model` as a plain dict."""
    path = Path(path)
    ckpt = read_torch_checkpoint(path)
    model_section = ckpt.get("hyper_parameters", {}).get("config", {}).get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model_section, dict):
        raise CheckpointError(f"{path}: no model config under hyper_parameters.config.model")
    prefix = "model."
    state_dict = {k[len(prefix) :]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(prefix)}
    if not state_dict:
        raise CheckpointError(f"{path}: state_dict has no '{prefix}*' tensors")
    cfg = model_config_from_dict(model_section, str(path))
    check_state_dict(cfg, state_dict, str(path))
    return cfg, state_dict


def load_model_source(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Path]:
    """Model config, state dict and the file or directory they were read from, of a moe_lab pretrained
    directory, a trainer checkpoint (*.ckpt) or a run directory (its best checkpoint, else its last)."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return (*load_pretrained(path), path)
    if path.is_dir() and (path / CHECKPOINTS).is_dir():
        ckpt = next(
            (path / CHECKPOINTS / n for n in (BEST_CKPT, LAST_CKPT) if (path / CHECKPOINTS / n).is_file()), None
        )
        if ckpt is None:
            raise CheckpointError(f"{path}: a run directory without {CHECKPOINTS}/{BEST_CKPT} or {LAST_CKPT}")
        return (*load_lightning_checkpoint(ckpt), ckpt)
    if path.is_file() and path.suffix == ".ckpt":
        return (*load_lightning_checkpoint(path), path)
    raise CheckpointError(
        f"{path}: not a moe_lab model directory ({CONFIG_FILE}), a trainer checkpoint (*.ckpt) "
        f"or a run directory ({CHECKPOINTS}/{BEST_CKPT} or {LAST_CKPT})"
    )
