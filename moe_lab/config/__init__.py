"""The experiment configuration: its schema, and loading it from YAML files and `key.sub=value` overrides.

Config flows one way: YAML -> OmegaConf structured merge against the schema's dataclasses (unknown keys
and wrong types are caught here; `merging`) -> plain dataclass objects -> `validate_experiment` (value
and cross-field rules; `validation`) -> the rest of moe_lab. Derived values (a sweep's matched expert
width) are merged in before that one validation (`ExperimentSource.config(values)`, `experiment`);
nothing changes a validated config. Errors name the key.
"""

from moe_lab.config.experiment import (
    PRETRAINED_MODEL_FILE,
    ExperimentSource,
    config_from_dict,
    derive,
    fit_warmup,
    load_config,
    read_experiment,
    to_dict,
    to_yaml,
)
from moe_lab.config.merging import (
    expected_type,
    explain,
    merge,
    parse_override,
    read_yaml,
    schema_keys,
)
from moe_lab.config.schema import (
    COLLAPSE_ACTIONS,
    EXTENDS_KEY,
    KEEP_CHECKPOINTS,
    LOGGERS,
    PRECISIONS,
    ExperimentConfig,
    MonitorConfig,
    OptimConfig,
    TrainerConfig,
)
from moe_lab.config.validation import (
    check_collapse_settings,
    missing_package,
    validate_experiment,
)

__all__ = [
    "COLLAPSE_ACTIONS",
    "EXTENDS_KEY",
    "ExperimentConfig",
    "ExperimentSource",
    "KEEP_CHECKPOINTS",
    "LOGGERS",
    "MonitorConfig",
    "OptimConfig",
    "PRECISIONS",
    "PRETRAINED_MODEL_FILE",
    "TrainerConfig",
    "check_collapse_settings",
    "config_from_dict",
    "derive",
    "expected_type",
    "explain",
    "fit_warmup",
    "load_config",
    "merge",
    "missing_package",
    "parse_override",
    "read_experiment",
    "read_yaml",
    "schema_keys",
    "to_dict",
    "to_yaml",
    "validate_experiment",
]
