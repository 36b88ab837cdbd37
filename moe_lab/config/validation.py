"""Validation of a merged experiment: value rules and rules that tie keys of different sections
together. A config is validated once, after every value (derived ones included) was merged in."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from moe_lab.checks import above, at_least, in_range, no_nul, one_of, path_component, require, seed
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
from moe_lab.model.config import validate_model_config


def validate_experiment(cfg: ExperimentConfig) -> None:
    validate_model_config(cfg.model, "model")
    validate_data_config(cfg.data, "data")
    path_component("name", cfg.name)
    if cfg.version:
        path_component("version", cfg.version)
    no_nul("output_dir", cfg.output_dir)
    seed("seed", cfg.seed)
    require(
        cfg.data.block_size <= cfg.model.max_seq_len,
        "data.block_size",
        f"{cfg.data.block_size} > model.max_seq_len={cfg.model.max_seq_len}",
    )
    if cfg.model_init:
        require(Path(cfg.model_init).is_dir(), "model_init", f"no such directory: {cfg.model_init}")
    _validate_trainer(cfg.trainer)  # first: optim rules compare against trainer.max_steps
    _validate_optim(cfg.optim, cfg.trainer)
    _validate_monitor(cfg.monitor)


def _validate_optim(o: OptimConfig, t: TrainerConfig) -> None:
    above("optim.lr", o.lr, 0)
    require(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")
    at_least("optim.warmup_steps", o.warmup_steps, 0)
    require(
        o.warmup_steps <= t.max_steps,
        "optim.warmup_steps",
        f"{o.warmup_steps} > trainer.max_steps={t.max_steps}; set optim.warmup_steps={t.max_steps // 10} "
        f"(a tenth of the run) or fewer",
    )
    at_least("optim.weight_decay", o.weight_decay, 0)
    for name in ("beta1", "beta2"):
        value = getattr(o, name)
        in_range(f"optim.{name}", value, 0, 1)
    above("optim.eps", o.eps, 0)
    at_least("optim.grad_clip", o.grad_clip, 0)


def _validate_trainer(t: TrainerConfig) -> None:
    for name in ("max_steps", "val_every_n_steps", "accumulate_grad_batches", "num_nodes", "log_every_n_steps"):
        value = getattr(t, name)
        at_least(f"trainer.{name}", value, 1)
    at_least("trainer.val_batches", t.val_batches, 0)
    at_least("trainer.threads", t.threads, 0)
    at_least("trainer.checkpoint_every_n_steps", t.checkpoint_every_n_steps, 0)
    one_of("trainer.keep_checkpoints", t.keep_checkpoints, KEEP_CHECKPOINTS)
    one_of("trainer.precision", t.precision, PRECISIONS)
    devices = t.devices.replace(" ", "")
    require(
        devices == "auto" or all(part.lstrip("-").isdigit() for part in devices.split(",")),
        "trainer.devices",
        f"expected 'auto', a count or a comma-separated list, got {t.devices!r}",
    )
    if t.resume not in ("", "auto"):
        require(Path(t.resume).is_file(), "trainer.resume", f"no such checkpoint: {t.resume}")
    _validate_loggers(t.loggers)


def missing_package(logger: str) -> str | None:
    """The package logger `logger` needs and is not installed, or None."""
    package = LOGGERS[logger]
    return package if package and importlib.util.find_spec(package) is None else None


def _validate_loggers(names: list[str]) -> None:
    for name in names:
        require(name in LOGGERS, "trainer.loggers", f"unknown logger {name!r}; expected some of {', '.join(LOGGERS)}")
        missing = missing_package(name)
        require(
            missing is None,
            "trainer.loggers",
            f"the {name} logger needs the {missing} package: pip install 'moe-lab[{name}]'",
        )
    require(len(set(names)) == len(names), "trainer.loggers", f"a logger is listed twice: {names}")


def check_collapse_settings(min_load_fraction: float, min_entropy_norm: float, action: str, prefix: str = "") -> None:
    """The collapse detector's rules, here for the config and for the detector itself (keys `prefix` +
    name). Both thresholds are in [0, 1): at 1 every expert below uniform load is starved and every
    router short of uniform entropy has collapsed, i.e. any imbalance at all fires."""
    in_range(f"{prefix}min_load_fraction", min_load_fraction, 0, 1, what="a fraction of uniform load ")
    require(
        0 <= min_entropy_norm < 1,
        f"{prefix}min_entropy_norm",
        f"must be in [0, 1) (0 disables), got {min_entropy_norm}",
    )
    one_of(f"{prefix}action", action, COLLAPSE_ACTIONS)


def _validate_monitor(m: MonitorConfig) -> None:
    for name in ("log_every_n_steps", "collapse_patience_steps"):
        value = getattr(m, name)
        at_least(f"monitor.{name}", value, 1)
    for name in ("heatmap_every_n_steps", "max_experts_logged", "router_grad_every_n_steps"):  # 0: off
        value = getattr(m, name)
        at_least(f"monitor.{name}", value, 0)
    check_collapse_settings(
        m.collapse_min_load_fraction, m.collapse_min_entropy_norm, m.collapse_action, prefix="monitor.collapse_"
    )
    at_least("monitor.dead_router_max_grad_norm", m.dead_router_max_grad_norm, 0)
    at_least("monitor.sample_tokens", m.sample_tokens, 0)
