"""Training one experiment: build the data, the LightningModule, the callbacks, the loggers and the
Trainer, refuse what cannot run before anything is written, fit (or resume), and leave a complete run
directory (<output_dir>/<name>/<version>/, file names in moe_lab.artifacts.run_dir)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from moe_lab import signals
from moe_lab.artifacts.atomic import check_writable_dir, write_text_atomic
from moe_lab.artifacts.environment import environment_record
from moe_lab.artifacts.metrics import VAL_LOSS
from moe_lab.artifacts.run_dir import (
    CHECKPOINTS,
    CONFIG,
    ENV,
    LAST_CKPT,
    MODEL_SUMMARY,
    PROGRESS,
    TOKENIZER_DIR,
    TRAIN_LOG,
    RunDirClaim,
    RunMetrics,
    claim_run_dir,
    launching_rank_run_dir,
    resolve_resume,
    shared_with_launched_ranks,
)
from moe_lab.callbacks import ExpertCollapseDetector, ExpertLoadMonitor
from moe_lab.callbacks.checkpoint import RotatingCheckpoint
from moe_lab.callbacks.nonfinite import NonFiniteLossError, NonFiniteLossGuard
from moe_lab.callbacks.progress import ProgressBar
from moe_lab.callbacks.progress_file import ProgressFile
from moe_lab.callbacks.routing_trace import RoutingTraceMonitor
from moe_lab.callbacks.throughput import Throughput
from moe_lab.checks import require
from moe_lab.config import ExperimentConfig, derive, to_yaml
from moe_lab.config.budget import training_flops_per_step
from moe_lab.data.datamodule import TextDataModule
from moe_lab.errors import ConfigError, DataError, Interrupted, first_line
from moe_lab.interop.checkpoint import CheckpointError, check_state_dict, load_model_source
from moe_lab.model.summary import model_summary
from moe_lab.training.lit import MoELitModule
from moe_lab.training.loggers import build_loggers
from moe_lab.training.output import lightning_output_captured, lightning_output_to
from moe_lab.training.results import (
    end_of_run_summary,
    final_metrics,
    finish_checkpoints,
    json_text,
    log_final,
    write_metrics,
    write_record,
)
from moe_lab.training.resume_check import check_resume_checkpoint
from moe_lab.training.run_callbacks import RunCallbacks
from moe_lab.training.upcycling import upcycle_from_dense


@dataclass
class RunResult:
    run_dir: Path
    record: RunMetrics
    callbacks: RunCallbacks | None = None  # the run's own callbacks, for sweeps

    @property
    def metrics(self) -> dict:
        """The run's final metrics file (run_dir.METRICS), as written."""
        return asdict(self.record)


def build_callbacks(cfg: ExperimentConfig, run_dir: Path, resume_ckpt: Path | None = None) -> RunCallbacks:
    m = cfg.monitor
    every = cfg.trainer.checkpoint_every_n_steps or cfg.trainer.val_every_n_steps
    last = run_dir / CHECKPOINTS / LAST_CKPT
    resumed_from_last = resume_ckpt is not None and resume_ckpt.resolve() == last.resolve()
    return RunCallbacks(
        best_checkpoint=RotatingCheckpoint(
            dirpath=run_dir / CHECKPOINTS,
            filename="best",
            monitor=VAL_LOSS,
            mode="min",
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        last_checkpoint=RotatingCheckpoint(
            dirpath=run_dir / CHECKPOINTS,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every,
            keep_previous=True,
            trusted=resumed_from_last,
        ),
        load_monitor=ExpertLoadMonitor(
            log_every_n_steps=m.log_every_n_steps,
            heatmap_every_n_steps=m.heatmap_every_n_steps,
            max_experts_logged=m.max_experts_logged,
            log_expert_scalars=m.log_expert_scalars,
        ),
        collapse_detector=ExpertCollapseDetector(
            min_load_fraction=m.collapse_min_load_fraction,
            patience_steps=m.collapse_patience_steps,
            min_entropy_norm=m.collapse_min_entropy_norm,
            action=m.collapse_action,
            dead_router_max_grad_norm=m.dead_router_max_grad_norm,
        ),
        nan_guard=NonFiniteLossGuard(),
        progress=ProgressFile(run_dir / PROGRESS, training_flops_per_step(cfg)),
        throughput=Throughput(),
        routing_trace=RoutingTraceMonitor(run_dir, m.trace_every_n_steps) if m.trace_every_n_steps else None,
    )


def _precision(value: str) -> str:
    return {"32": "32-true"}.get(value, value)


def _devices(value: str):
    value = value.replace(" ", "")
    if value == "auto":
        return "auto"
    parts = [int(p) for p in value.split(",") if p]
    return parts[0] if len(parts) == 1 and "," not in value else parts


# Lightning names no key when it refuses a device setting; the first of these its message mentions is it.
TRAINER_KEYS = ("strategy", "devices", "num_nodes", "precision", "accelerator")


def build_trainer(
    cfg: ExperimentConfig, logger, callbacks: list[pl.Callback], run_dir: Path, quiet: bool
) -> pl.Trainer:
    """The Trainer; Lightning checks accelerator, devices and strategy here, and writes nothing yet."""
    t = cfg.trainer
    try:
        trainer = pl.Trainer(
            max_steps=t.max_steps,
            max_epochs=-1,
            val_check_interval=t.val_every_n_steps,
            check_val_every_n_epoch=None,
            limit_val_batches=t.val_batches or 1.0,
            num_sanity_val_steps=0,
            accumulate_grad_batches=t.accumulate_grad_batches,
            precision=_precision(t.precision),
            accelerator=t.accelerator,
            devices=_devices(t.devices),
            num_nodes=t.num_nodes,
            strategy="ddp" if t.expert_parallel > 1 and t.strategy == "auto" else t.strategy,
            deterministic=t.deterministic,
            gradient_clip_val=cfg.optim.grad_clip or None,
            logger=logger,
            callbacks=[*callbacks, *([ProgressBar()] if t.progress_bar and not quiet else [])],
            enable_progress_bar=t.progress_bar and not quiet,
            log_every_n_steps=t.log_every_n_steps,
            enable_model_summary=False,
            use_distributed_sampler=False,
            default_root_dir=run_dir,
        )
    except (MisconfigurationException, ValueError, TypeError, ImportError, RuntimeError) as err:
        reason = " ".join(first_line(err).split())
        reason = reason.split(". ")[0].rstrip(".")  # the first sentence; the rest is links and lists
        lowered = reason.lower()
        name = next((k for k in TRAINER_KEYS if k in lowered), "accelerator")
        value = getattr(t, name)
        raise ConfigError(
            f"trainer.{name}",
            f"{value!r} cannot be used here "
            f"(accelerator={t.accelerator}, devices={t.devices}, strategy={t.strategy}): "
            f"{reason}",
        ) from None
    require(
        trainer.world_size % t.expert_parallel == 0,
        "trainer.expert_parallel",
        f"{t.expert_parallel} does not divide the world size {trainer.world_size} (devices x num_nodes)",
    )
    # Lightning moves the checkpoint callbacks to the end of the list; Throughput must come after them and
    # after the extra callbacks and the progress bar, to time each step with all their hooks inside.
    trainer.callbacks.sort(key=lambda callback: isinstance(callback, Throughput))  # stable: others keep order
    return trainer


def _print(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def prepare_data(cfg: ExperimentConfig) -> TextDataModule:
    data = TextDataModule(cfg.data, seed=cfg.seed, val_batches=cfg.trainer.val_batches)
    data.prepare_data()
    data.setup("fit")
    return data


def with_tokenizer_vocabulary(cfg: ExperimentConfig, vocab_size: int) -> ExperimentConfig:
    """The experiment whose model.vocab_size is the tokenizer's (recorded in config.yaml and every
    checkpoint). The tokenizer exists only once the data the config describes was prepared, so this one
    value is merged in after the validation (into a new config, validated whole; `cfg` is unchanged).
    A pretrained model (model_init) keeps its vocabulary: the tokenizer must fit in it."""
    if cfg.model_init:
        if vocab_size > cfg.model.vocab_size:
            raise DataError(
                f"data tokenizer has {vocab_size} tokens but the model in model_init="
                f"{cfg.model_init} has vocab_size {cfg.model.vocab_size}"
            )
        return cfg
    if vocab_size == cfg.model.vocab_size:
        return cfg
    return derive(cfg, {"model": {"vocab_size": vocab_size}})


def run(
    cfg: ExperimentConfig,
    extra_callbacks: tuple[pl.Callback, ...] = (),
    quiet: bool = False,
    session: tuple[dict, str] | None = None,
) -> RunResult:
    """Train `cfg` (already validated by load_config). Raises MoELabError for bad data input before
    anything is written. `session`: (hyperparameters, group) of this run in the TensorBoard HPARAMS table
    of a study that declared its own columns (moe_lab.training.tb_hparams); None: the run declares itself."""
    with contextlib.ExitStack() as held:  # the run directory's claim, let go however the run ends
        return _train(cfg, extra_callbacks, quiet, session, held)


def _claim_run_dir(experiment_dir: Path, version: str | None, held: contextlib.ExitStack) -> RunDirClaim | None:
    """This run's claim on its directory, held until `held` closes; None for a rank that Lightning started
    from a one-host DDP run's rank 0, which trains in rank 0's directory and writes and prints nothing."""
    if launching_rank_run_dir() is not None:
        return None
    claim = claim_run_dir(experiment_dir, version)
    held.callback(claim.release)
    held.enter_context(shared_with_launched_ranks(claim.path))
    return claim


def _start_run_dir(
    run_dir: Path,
    cfg: ExperimentConfig,
    data: TextDataModule,
    resume_ckpt: Path | None,
    upcycled: str,
    quiet: bool,
    writer: bool,
) -> None:
    """Say where the run goes and what it trains; the writer records its config, environment, model summary
    and tokenizer there."""
    _print(f"run directory: {run_dir}" + (f" (resuming {resume_ckpt})" if resume_ckpt else ""), quiet)
    if upcycled:
        _print(upcycled, quiet)
    summary = model_summary(cfg.model, cfg.data.block_size)
    _print(summary, quiet)
    if not writer:
        return
    write_record(run_dir, CONFIG, to_yaml(cfg))
    write_record(run_dir, ENV, json_text(environment_record(data=data.data_record(), seed=cfg.seed)))
    write_text_atomic(run_dir / MODEL_SUMMARY, summary + "\n")
    data.save_tokenizer(run_dir / TOKENIZER_DIR)


def _train(
    cfg: ExperimentConfig,
    extra_callbacks: tuple[pl.Callback, ...],
    quiet: bool,
    session: tuple[dict, str] | None,
    held: contextlib.ExitStack,
) -> RunResult:
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # Everything that can be refused is checked before the run directory exists: output folder,
    # devices and strategy, data, the checkpoint to resume from.
    check_writable_dir(cfg.output_dir, "output_dir")
    experiment_dir = Path(cfg.output_dir) / cfg.name
    version, resume_ckpt = resolve_resume(experiment_dir, cfg.version, cfg.trainer.resume)
    data = prepare_data(cfg)
    cfg = with_tokenizer_vocabulary(cfg, data.vocab_size)
    if resume_ckpt is not None:
        check_resume_checkpoint(cfg, resume_ckpt)
    lit = MoELitModule(cfg, val_bytes_per_token=data.bytes_per_token["val"])
    lit.tokenizer = data.tokenizer
    if cfg.model_init:
        try:
            _, state, read_from = load_model_source(cfg.model_init)
        except CheckpointError as err:
            raise ConfigError("model_init", str(err)) from None
        try:  # the experiment's own model keys (its bases' included) may have changed a shape
            check_state_dict(cfg.model, state, str(read_from))
        except CheckpointError as err:
            raise ConfigError("model_init", f"{err}; the experiment's model keys must keep its shapes") from None
        lit.model.load_state_dict(state, strict=True)
    # A resumed run takes its weights from its checkpoint: the dense model is read at step 0 only.
    upcycled = upcycle_from_dense(cfg, lit.model) if cfg.upcycle.method and resume_ckpt is None else ""
    # Claimed only now, so a refused run leaves no directory; two runs of one name never share one.
    claim = _claim_run_dir(experiment_dir, version, held)
    run_dir = claim.path if claim else launching_rank_run_dir()
    writer, quiet_rank = claim is not None, quiet or claim is None
    loggers = build_loggers(cfg.trainer.loggers, cfg.output_dir, cfg.name, run_dir.name)
    callbacks = build_callbacks(cfg, run_dir, resume_ckpt)

    # Last: Lightning logs its device lines while building the Trainer (a quiet run keeps them for its
    # train.log, written once the run directory exists).
    try:
        with contextlib.ExitStack() as early:
            captured = early.enter_context(lightning_output_captured()) if quiet else None
            trainer = build_trainer(cfg, loggers or False, [*callbacks.as_list(), *extra_callbacks], run_dir, quiet)
    except BaseException:
        if claim:
            claim.release(remove_if_unused=True)  # devices or strategy refused: the run never started
        raise
    _start_run_dir(run_dir, cfg, data, resume_ckpt, upcycled, quiet_rank, writer)

    # Quiet runs (sweep trials) keep Lightning's own lines in the run's train.log, off the sweep console.
    output = contextlib.ExitStack()
    if quiet:
        with open(run_dir / TRAIN_LOG, "a", encoding="utf-8") as log:  # a resumed run adds to its log
            log.write(captured.getvalue())
        output.enter_context(lightning_output_to(run_dir / TRAIN_LOG))
    start = time.perf_counter()
    error, interrupted = None, None
    # From here on a stop signal only ends the fit at its next step boundary, last.ckpt saved there, and the
    # records below are written whatever arrives (moe_lab.signals).
    held.enter_context(signals.handled())
    held.enter_context(signals.deferred())
    try:
        trainer.fit(lit, datamodule=data, ckpt_path=resume_ckpt, weights_only=True)
        if lit.last_val.get("step") != trainer.global_step and not trainer.interrupted:
            trainer.validate(lit, datamodule=data, verbose=False)  # final metrics at the final step
    except NonFiniteLossError as err:
        error = str(err)
    except Interrupted as stop:
        interrupted = Interrupted(stop.signum, run_dir=run_dir)
    finally:
        output.close()
    metrics = final_metrics(cfg, lit, trainer, callbacks, time.perf_counter() - start, error, interrupted is not None)
    if trainer.is_global_zero:
        finish_checkpoints(run_dir / CHECKPOINTS, cfg.trainer.keep_checkpoints, metrics.status)
        write_metrics(run_dir, metrics)
        # At the step of the last validation point, where the final val/* values are plotted.
        final_step = lit.last_val_logged_step if lit.last_val_logged_step is not None else trainer.global_step
        log_final(cfg, loggers, metrics, final_step, session)
    _print(end_of_run_summary(metrics, run_dir, Path(cfg.output_dir)), quiet_rank)
    if error is not None:
        raise NonFiniteLossError(error)
    if interrupted is not None:
        raise interrupted
    return RunResult(run_dir=run_dir, record=metrics, callbacks=callbacks)
