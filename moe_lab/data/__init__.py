"""Data layer: corpora (embedded Shakespeare, local files, HF hub), tokenizers, token cache, DataModule.

The package itself imports only the config (`moe_lab.data.config`): reading and validating an
experiment must not pay for Lightning's import (seconds), so a config error is reported at once.
The DataModule is `moe_lab.data.datamodule.TextDataModule`.
"""

from moe_lab.data.config import DataConfig, validate_data_config

__all__ = ["DataConfig", "validate_data_config"]
