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
    UpcycleConfig,
)
from moe_lab.data.config import validate_data_config
from moe_lab.model.config import expert_dims, moe_layer_indices, validate_model_config
from moe_lab.model.upcycle import UPCYCLE_METHODS


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
        require(Path(cfg.model_init).exists(), "model_init", f"no such file or directory: {cfg.model_init}")
    _validate_upcycle(cfg)
    _validate_trainer(cfg.trainer)  # first: optim rules compare against trainer.max_steps
    _validate_expert_parallel(cfg)
    _validate_optim(cfg.optim, cfg.trainer)
    _validate_monitor(cfg.monitor)


def _validate_upcycle(cfg: ExperimentConfig) -> None:
    """The value rules, and what upcycling needs of the rest of the experiment. Whether the MoE can be
    upcycled from the source's dense model (its shapes) is checked when the run reads it
    (moe_lab.model.upcycle.check_upcyclable), still before anything is written."""
    u = cfg.upcycle
    methods = ("", *UPCYCLE_METHODS)
    require(u.method in methods, "upcycle.method", f"unknown value {u.method!r}; expected one of {methods}")
    at_least("upcycle.noise_std", u.noise_std, 0)
    require(0 < u.drop_ratio <= 1, "upcycle.drop_ratio", f"must be in (0, 1], got {u.drop_ratio}")
    # A key the chosen method does not read would be silently ignored: refuse it.
    defaults = UpcycleConfig()
    for key, reader in (("noise_std", "copy_noise"), ("drop_ratio", "drop")):
        value, default = getattr(u, key), getattr(defaults, key)
        require(
            u.method == reader or value == default,
            f"upcycle.{key}",
            f"{value!r} is ignored with upcycle.method={u.method!r}; only {reader} reads it (leave it at {default!r})",
        )
    if not u.method:
        require(not u.source, "upcycle.source", f"{u.source!r} is ignored while upcycle.method is '' (off)")
        return
    require(not cfg.model_init, "model_init", "cannot be combined with upcycle (both give the starting weights)")
    require(
        bool(u.source),
        "upcycle.source",
        f"required with upcycle.method={u.method}: a moe_lab model directory, a trainer checkpoint (*.ckpt) "
        f"or a run directory",
    )
    require(Path(u.source).exists(), "upcycle.source", f"no such file or directory: {u.source}")
    require(
        bool(moe_layer_indices(cfg.model)),
        "model.moe.placement",
        f"{cfg.model.moe.placement!r} gives no MoE layer; upcycling needs at least one",
    )


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


# The strategies expert parallelism runs under ("auto" means ddp: moe_lab.training.run.build_trainer).
EXPERT_PARALLEL_STRATEGIES = ("auto", "ddp")


def configured_world_size(t: TrainerConfig) -> int | None:
    """devices x num_nodes when trainer.devices names the devices (a count or a list); None for auto or -1."""
    devices = t.devices.replace(" ", "")
    if devices == "auto":
        return None
    parts = [int(part) for part in devices.split(",") if part]
    count = len(parts) if "," in devices else parts[0]
    return count * t.num_nodes if count >= 1 else None


def _validate_expert_parallel(cfg: ExperimentConfig) -> None:
    """What trainer.expert_parallel = N needs; the world size Lightning resolves is checked again when the
    Trainer is built (moe_lab.training.run.build_trainer)."""
    t, key = cfg.trainer, "trainer.expert_parallel"
    n = t.expert_parallel
    at_least(key, n, 1)
    if n == 1:
        return
    strategies = " or ".join(EXPERT_PARALLEL_STRATEGIES)
    require(t.strategy in EXPERT_PARALLEL_STRATEGIES, key, f"{n} needs trainer.strategy {strategies}, not {t.strategy}")
    # 16-mixed's loss scaler decides per rank whether to skip a step, from gradients that differ per rank.
    require(t.precision != "16-mixed", key, f"{n} cannot run with precision 16-mixed; use bf16-mixed or 32-true")
    # torch.utils.checkpoint refuses the recomputed all-to-alls: "a different number of tensors was saved
    # during the original forward and recomputation" (torch 2.13, all_to_all_single_autograd).
    require(not t.activation_checkpointing, key, f"{n} cannot be combined with trainer.activation_checkpointing yet")
    world = configured_world_size(t)
    require(world is not None, key, f"{n} needs trainer.devices to be a count or a list, got {t.devices!r}")
    require(
        world % n == 0,
        key,
        f"{n} does not divide the world size {world} (trainer.devices={t.devices} x trainer.num_nodes={t.num_nodes})",
    )
    require(bool(moe_layer_indices(cfg.model)), key, f"{n} needs an MoE layer; model.moe.placement gives none")
    n_experts = expert_dims(cfg.model).n_routed_experts
    require(
        n_experts % n == 0,
        key,
        f"{n} does not divide the {n_experts} routed experts (model.moe.n_experts x model.moe.granularity)",
    )


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
    # 0: off
    for name in ("heatmap_every_n_steps", "max_experts_logged", "router_grad_every_n_steps", "trace_every_n_steps"):
        value = getattr(m, name)
        at_least(f"monitor.{name}", value, 0)
    check_collapse_settings(
        m.collapse_min_load_fraction, m.collapse_min_entropy_norm, m.collapse_action, prefix="monitor.collapse_"
    )
    at_least("monitor.dead_router_max_grad_norm", m.dead_router_max_grad_norm, 0)
    at_least("monitor.sample_tokens", m.sample_tokens, 0)
