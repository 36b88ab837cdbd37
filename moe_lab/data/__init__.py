"""Data layer: corpora (embedded Shakespeare, local files, HF hub), tokenizers, token cache, DataModule."""

from moe_lab.data.config import DataConfig, validate_data_config
from moe_lab.data.datamodule import TextDataModule

__all__ = ["DataConfig", "TextDataModule", "validate_data_config"]
