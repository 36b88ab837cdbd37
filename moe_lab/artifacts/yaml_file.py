"""Reading a YAML file that must hold a mapping: the one reader of configs, pretrained model sections,
checkpoints' model files and ablation specs, with one wording for what can go wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def read_yaml_mapping(path: Path, error: Callable[[str], Exception], what: str = "keys") -> DictConfig:
    """The mapping `path` holds. An unparsable file or other content raises error("cannot parse <path>:
    <reason>" / "<path> must hold a mapping of <what>"), in one line, as the caller's own error type."""
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError, OmegaConf's and OS errors: say which file and why, in one line
        raise error(f"cannot parse {path}: {' '.join(str(err).split())}") from None
    if not isinstance(node, DictConfig):
        raise error(f"{path} must hold a mapping of {what}")
    return node
