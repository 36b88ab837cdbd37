"""OmegaConf plumbing behind the schema: a YAML file with the files it extends, `key.sub=value`
overrides, and merge errors turned into one-line ConfigErrors that name the key."""

from __future__ import annotations

import difflib
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from moe_lab.artifacts.yaml_file import read_yaml_mapping
from moe_lab.config.schema import EXTENDS_KEY
from moe_lab.errors import ConfigError, first_line


def read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> DictConfig:
    """A YAML file with the files it `extends` merged underneath it (base first)."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(EXTENDS_KEY, f"{path} extends itself through {' -> '.join(map(str, chain))}")
    if not path.is_file():
        raise ConfigError(EXTENDS_KEY if chain else "config", f"no such config file: {path}")
    node = read_yaml_mapping(path, lambda message: ConfigError("config", message), "config keys")
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


def expected_type(schema: Any, key: str) -> str:
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
        return ConfigError(key, f"expected {expected_type(schema, key)}{got}")
    return ConfigError(key, " ".join(first_line(err).split()))


def merge(base: DictConfig, update: DictConfig, schema: Any, key_hint: str = "config") -> DictConfig:
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as err:
        raise explain(err, schema, key_hint) from None


def parse_override(item: str) -> DictConfig:
    key = item.split("=", 1)[0]
    if "=" not in item or not key:
        raise ConfigError(item, "overrides are key.sub=value")
    try:
        return OmegaConf.from_dotlist([item])
    except OmegaConfBaseException as err:
        raise ConfigError(key, " ".join(first_line(err).split())) from None
