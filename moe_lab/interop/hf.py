"""Hugging Face transformers MoE models <-> moe_lab configs and weights.

    python -m moe_lab.interop.hf convert HF_DIR OUT_DIR     # local HF checkpoint -> moe_lab directory
    python -m moe_lab.interop.hf export MOE_LAB_DIR OUT_DIR [--architecture NAME]   # and back

Supported: mixtral, olmoe, qwen2_moe, qwen3_moe (moe_lab/interop/{mixtral,olmoe,qwen_moe}.py). Everything is
local: an HF directory is config.json plus model.safetensors (or its sharded index); pickled
pytorch_model.bin files are never read. Tokenizer files in the source directory are copied along.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file

from moe_lab.cli import run_main
from moe_lab.interop import mixtral, olmoe, qwen_moe  # noqa: F401 - register the architectures
from moe_lab.interop.architecture import ARCHITECTURES, Architecture, get_architecture
from moe_lab.interop.checkpoint import CheckpointError, load_pretrained, save_pretrained
from moe_lab.interop.hf_weights import to_hf_state_dict, to_moe_lab_state_dict
from moe_lab.model.config import ModelConfig, validate_model_config

HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
HF_WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


# ------------------------------------------------------------------------------------ HF -> moe_lab


def from_hf(
    hf_config: Any, state_dict: dict[str, torch.Tensor], source: str = "state dict"
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """moe_lab config and state dict of an HF config + state dict (transformers 5 or per-expert layout)."""
    arch = get_architecture(getattr(hf_config, "model_type", type(hf_config).__name__))
    cfg = arch.to_model_config(hf_config)
    validate_model_config(cfg)
    return cfg, to_moe_lab_state_dict(cfg, arch, state_dict, source)


def from_hf_model(model: torch.nn.Module) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    return from_hf(model.config, model.state_dict(), source=type(model).__name__)


def read_hf_dir(directory: str | Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """The HF config object and the raw tensors of a local checkpoint directory."""
    directory = Path(directory)
    config_path = directory / HF_CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(
            f"{config_path}: not found (a Hugging Face checkpoint directory holds "
            f"{HF_CONFIG_FILE} and {HF_WEIGHTS_FILE})"
        )
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path}: not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object of config keys, got a {type(raw).__name__}")
    arch = get_architecture(raw.get("model_type"), key=f"{config_path}: model_type")
    try:
        hf_config = getattr(transformers, arch.config_class).from_dict(raw)
    except Exception as err:  # transformers' strict dataclass validation raises several types
        reason = " ".join(line.strip() for line in str(err).splitlines()[:2])
        raise CheckpointError(f"{config_path}: {reason}") from None
    return hf_config, read_safetensors(directory)


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    index_path = directory / HF_WEIGHTS_INDEX
    if index_path.is_file():
        files = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
    elif (directory / HF_WEIGHTS_FILE).is_file():
        files = [HF_WEIGHTS_FILE]
    else:
        raise CheckpointError(
            f"{directory / HF_WEIGHTS_FILE}: not found (nor {HF_WEIGHTS_INDEX}; "
            f"pickled pytorch_model.bin files are not read)"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: not found (listed in {HF_WEIGHTS_INDEX})")
        try:
            tensors.update(load_file(str(path)))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file: {err}") from None
    return tensors


def load_hf_dir(directory: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    hf_config, state_dict = read_hf_dir(directory)
    return from_hf(hf_config, state_dict, source=str(directory))


def convert_hf_dir(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a local HF checkpoint as a moe_lab pretrained directory (tokenizer files copied)."""
    cfg, state_dict = load_hf_dir(hf_dir)
    save_pretrained(out_dir, cfg, state_dict)
    copy_tokenizer_files(Path(hf_dir), Path(out_dir))
    return Path(out_dir)


# ------------------------------------------------------------------------------------ moe_lab -> HF


def default_architecture(cfg: ModelConfig) -> str:
    """The one supported architecture whose distinctive feature `cfg` has; its exporter checks the rest."""
    if cfg.moe.n_shared_experts or cfg.moe.shared_expert_gate or cfg.attention_bias:
        return "qwen2_moe"
    return {"full": "olmoe", "head": "qwen3_moe"}.get(cfg.qk_norm, "mixtral")


def to_hf_config(cfg: ModelConfig, architecture: str | None = None) -> Any:
    validate_model_config(cfg)
    arch = get_architecture(architecture or default_architecture(cfg), key="architecture")
    return getattr(transformers, arch.config_class)(**arch.to_hf_fields(cfg))


def to_hf(
    cfg: ModelConfig, state_dict: dict[str, torch.Tensor], architecture: str | None = None, source: str = "state dict"
) -> tuple[Any, dict[str, torch.Tensor]]:
    """HF config object and transformers 5 state dict of a moe_lab model."""
    hf_config = to_hf_config(cfg, architecture)
    arch: Architecture = ARCHITECTURES[hf_config.model_type]
    return hf_config, to_hf_state_dict(cfg, arch, state_dict, source)


def to_hf_model(
    cfg: ModelConfig, state_dict: dict[str, torch.Tensor], architecture: str | None = None, source: str = "state dict"
) -> torch.nn.Module:
    """The transformers model (eval mode) computing what MoETransformer(cfg) with `state_dict` computes."""
    hf_config, hf_state_dict = to_hf(cfg, state_dict, architecture, source)
    model = getattr(transformers, ARCHITECTURES[hf_config.model_type].model_class)(hf_config)
    model.load_state_dict(hf_state_dict, strict=True)
    return model.eval()


def export_hf_dir(moe_lab_dir: str | Path, out_dir: str | Path, architecture: str | None = None) -> Path:
    """Write a moe_lab pretrained directory as an HF checkpoint directory (`save_pretrained`)."""
    cfg, state_dict = load_pretrained(moe_lab_dir)
    model = to_hf_model(cfg, state_dict, architecture, source=str(moe_lab_dir))
    model.save_pretrained(str(out_dir))
    copy_tokenizer_files(Path(moe_lab_dir), Path(out_dir))
    return Path(out_dir)


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


# ------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moe_lab.interop.hf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="local HF checkpoint directory -> moe_lab directory")
    convert.add_argument("hf_dir", type=Path)
    convert.add_argument("out_dir", type=Path)
    export = commands.add_parser("export", help="moe_lab directory -> HF checkpoint directory")
    export.add_argument("moe_lab_dir", type=Path)
    export.add_argument("out_dir", type=Path)
    export.add_argument(
        "--architecture",
        choices=sorted(ARCHITECTURES),
        help="HF architecture to write (default: the one the config's features imply)",
    )
    args = parser.parse_args(argv)

    def convert_or_export() -> None:
        if args.command == "convert":
            out = convert_hf_dir(args.hf_dir, args.out_dir)
        else:
            out = export_hf_dir(args.moe_lab_dir, args.out_dir, args.architecture)
        print(f"wrote {out}")

    return run_main(convert_or_export)


if __name__ == "__main__":
    sys.exit(main())
