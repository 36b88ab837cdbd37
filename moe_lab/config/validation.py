"""Validation of a merged experiment: value rules and rules that tie keys of different sections
together. A config is validated once, after every value (derived ones included) was merged in."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from moe_lab.config.schema import (
    COLLAPSE_ACTIONS,
    KEEP_CHECKPOINTS,
    LOGGERS,
    PRECISIONS,
    ExperimentConfig,
    MonitorConfig,
    OptimConfig,
    TrainerConfig,
)
from moe_lab.data.config import validate_data_config
from moe_lab.errors import ConfigError
from moe_lab.model.config import validate_model_config


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def validate_experiment(cfg: ExperimentConfig) -> None:
    validate_model_config(cfg.model, "model")
    validate_data_config(cfg.data, "data")
    _check(
        bool(cfg.name.strip()) and "/" not in cfg.name,
        "name",
        f"must be a non-empty name without '/', got {cfg.name!r}",
    )
    _check("/" not in cfg.version, "version", f"must be a directory name, got {cfg.version!r}")
    _check(
        cfg.data.block_size <= cfg.model.max_seq_len,
        "data.block_size",
        f"{cfg.data.block_size} > model.max_seq_len={cfg.model.max_seq_len}",
    )
    if cfg.model_init:
        _check(Path(cfg.model_init).is_dir(), "model_init", f"no such directory: {cfg.model_init}")
    _validate_trainer(cfg.trainer)  # first: optim rules compare against trainer.max_steps
    _validate_optim(cfg.optim, cfg.trainer)
    _validate_monitor(cfg.monitor)


def _validate_optim(o: OptimConfig, t: TrainerConfig) -> None:
    _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    _check(
        o.warmup_steps <= t.max_steps,
        "optim.warmup_steps",
        f"{o.warmup_steps} > trainer.max_steps={t.max_steps}; set optim.warmup_steps={t.max_steps // 10} "
        f"(a tenth of the run) or fewer",
    )
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
    _check(
        t.checkpoint_every_n_steps >= 0,
        "trainer.checkpoint_every_n_steps",
        f"must be >= 0, got {t.checkpoint_every_n_steps}",
    )
    _check(
        t.keep_checkpoints in KEEP_CHECKPOINTS,
        "trainer.keep_checkpoints",
        f"unknown value {t.keep_checkpoints!r}; expected one of {', '.join(KEEP_CHECKPOINTS)}",
    )
    _check(
        t.precision in PRECISIONS,
        "trainer.precision",
        f"unknown value {t.precision!r}; expected one of {', '.join(PRECISIONS)}",
    )
    devices = t.devices.replace(" ", "")
    _check(
        devices == "auto" or all(part.lstrip("-").isdigit() for part in devices.split(",")),
        "trainer.devices",
        f"expected 'auto', a count or a comma-separated list, got {t.devices!r}",
    )
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
        _check(
            missing is None,
            "trainer.loggers",
            f"the {name} logger needs the {missing} package: pip install 'moe-lab[{name}]'",
        )
    _check(len(set(names)) == len(names), "trainer.loggers", f"a logger is listed twice: {names}")


def check_collapse_settings(min_load_fraction: float, min_entropy_norm: float, action: str, prefix: str = "") -> None:
    """The collapse detector's rules, here for the config and for the detector itself (keys `prefix` +
    name). Both thresholds are in [0, 1): at 1 every expert below uniform load is starved and every
    router short of uniform entropy has collapsed, i.e. any imbalance at all fires."""
    _check(
        0 <= min_load_fraction < 1,
        f"{prefix}min_load_fraction",
        f"must be a fraction of uniform load in [0, 1), got {min_load_fraction}",
    )
    _check(
        0 <= min_entropy_norm < 1,
        f"{prefix}min_entropy_norm",
        f"must be in [0, 1) (0 disables), got {min_entropy_norm}",
    )
    _check(
        action in COLLAPSE_ACTIONS,
        f"{prefix}action",
        f"unknown value {action!r}; expected one of {', '.join(COLLAPSE_ACTIONS)}",
    )


def _validate_monitor(m: MonitorConfig) -> None:
    for name in ("log_every_n_steps", "collapse_patience_steps"):
        value = getattr(m, name)
        _check(value >= 1, f"monitor.{name}", f"must be >= 1, got {value}")
    for name in ("heatmap_every_n_steps", "max_experts_logged", "router_grad_every_n_steps"):  # 0: off
        value = getattr(m, name)
        _check(value >= 0, f"monitor.{name}", f"must be >= 0, got {value}")
    check_collapse_settings(
        m.collapse_min_load_fraction, m.collapse_min_entropy_norm, m.collapse_action, prefix="monitor.collapse_"
    )
    _check(
        m.dead_router_max_grad_norm >= 0,
        "monitor.dead_router_max_grad_norm",
        f"must be >= 0, got {m.dead_router_max_grad_norm}",
    )
    _check(m.sample_tokens >= 0, "monitor.sample_tokens", f"must be >= 0, got {m.sample_tokens}")
