"""Train one experiment: `python -m moe_lab.train CONFIG [key.sub=value ...]`.

Writes <output_dir>/<name>/<version>/ with TensorBoard events, config.yaml, env.json,
model_summary.txt, the tokenizer, checkpoints/ (best.ckpt, last.ckpt) and metrics.json.
`trainer.resume=auto` continues the latest run of the experiment from its last checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from moe_lab.callbacks import ExpertCollapseDetector, ExpertLoadMonitor
from moe_lab.callbacks.progress import ProgressBar
from moe_lab.checkpoint import strip_to_weights
from moe_lab.callbacks.progress_file import PROGRESS, ProgressFile
from moe_lab.config import ExperimentConfig, flatten, load_config, to_dict, to_yaml
from moe_lab.data import TextDataModule
from moe_lab.checkpoint import CheckpointError, check_state_dict, read_torch_checkpoint
from moe_lab.errors import ConfigError, DataError, MoELabError
from moe_lab.model.accounting import si
from moe_lab.lit import MoELitModule
from moe_lab.loggers import build_loggers, finalize, next_version
from moe_lab.model.accounting import count_model
from moe_lab.artifacts.atomic import check_writable_dir, write_json_atomic, write_text_atomic
from moe_lab.artifacts.environment import environment_record
from moe_lab.runtime import lightning_output_captured, lightning_output_to, tune_cpu_allocator
from moe_lab.model.summary import model_summary, summary_record
from moe_lab.tb_hparams import HEADLINE_HPARAMS, experiment_summary, ordered_metrics, write_session

CHECKPOINTS = "checkpoints"
LAST, PREVIOUS = "last.ckpt", "previous.ckpt"  # the two newest checkpoints of a run
TRAIN_LOG = "train.log"  # a quiet run's Lightning output


class NonFiniteLossError(MoELabError, FloatingPointError):
    """Training produced a NaN or infinite loss."""


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    callbacks: dict = field(default_factory=dict)  # name -> callback instance, for sweeps


def _latest_last_checkpoint(experiment_dir: Path) -> Path | None:
    found = sorted(experiment_dir.glob(f"*/{CHECKPOINTS}/{LAST}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve_resume(cfg: ExperimentConfig) -> tuple[str | None, Path | None]:
    """(version to log into, checkpoint to resume from) for `trainer.resume` = "", "auto" or a path."""
    experiment_dir = Path(cfg.output_dir) / cfg.name
    if cfg.trainer.resume == "":
        return cfg.version or None, None
    ckpt = _latest_last_checkpoint(experiment_dir) if cfg.trainer.resume == "auto" else Path(cfg.trainer.resume)
    if cfg.trainer.resume == "auto" and cfg.version:
        candidate = experiment_dir / cfg.version / CHECKPOINTS / LAST
        ckpt = candidate if candidate.is_file() else None
    if ckpt is None:
        return cfg.version or None, None  # nothing to resume: a fresh run
    # Keep logging into the run directory the checkpoint belongs to, when it is one of ours.
    run_dir = ckpt.parent.parent
    version = run_dir.name if run_dir.parent.resolve() == experiment_dir.resolve() else (cfg.version or None)
    return version, ckpt


def check_resume_checkpoint(cfg: ExperimentConfig, ckpt: Path) -> None:
    """Raise ConfigError unless `ckpt` loads and holds the model `cfg` describes. Run before the run
    directory is touched: a damaged checkpoint must not leave records of a resume that never ran.
    For resume=auto the message names the run's previous checkpoint when that one is intact."""
    problem = _checkpoint_problem(cfg, ckpt)
    if problem is None:
        return
    if cfg.trainer.resume != "auto":
        raise ConfigError("trainer.resume", problem)
    previous = ckpt.with_name(PREVIOUS)
    if previous.is_file() and _checkpoint_problem(cfg, previous) is None:
        raise ConfigError("trainer.resume", f"auto: the latest checkpoint is damaged ({problem}); the previous "
                                            f"one is intact: continue from it with trainer.resume={previous}")
    raise ConfigError("trainer.resume", f"auto: the latest checkpoint is damaged ({problem}) and no intact "
                                        f"{PREVIOUS} is beside it; start afresh with trainer.resume=''")


def _checkpoint_problem(cfg: ExperimentConfig, ckpt: Path) -> str | None:
    # Lightning loads the file again when it resumes: reading it twice is the price of failing early.
    try:
        state = read_torch_checkpoint(ckpt)
        tensors = state.get("state_dict") if isinstance(state, dict) else None
        if not isinstance(tensors, dict) or "global_step" not in state:
            return f"{ckpt}: not a training checkpoint (no state_dict and global_step)"
        prefix = "model."
        check_state_dict(cfg.model, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                         f"{ckpt} (step {state['global_step']})")
    except CheckpointError as err:
        return str(err)
    return None


class RotatingCheckpoint(ModelCheckpoint):
    """ModelCheckpoint writing each file atomically (a temporary file in the same folder, then a
    rename), and with `keep_previous` moving the replaced last.ckpt to previous.ckpt: a crash, a full
    disk or a damaged file costs at most the steps since the checkpoint before.

    `trusted` says whether an existing last.ckpt may become previous.ckpt: one this run did not resume
    from (damaged, or left by another run in a reused version folder) is replaced, not kept."""

    def __init__(self, *args, keep_previous: bool = False, trusted: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_previous = keep_previous
        self.trusted = trusted

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        path = Path(filepath)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        super()._save_checkpoint(trainer, str(tmp))
        if trainer.is_global_zero:
            if self.keep_previous and self.trusted and path.is_file():
                os.replace(path, path.with_name(PREVIOUS))
            os.replace(tmp, path)
        trainer.strategy.barrier()
        self.trusted = True
        self._last_checkpoint_saved = filepath


class NonFiniteLossGuard(pl.Callback):
    """Stops a run whose loss is NaN/inf instead of letting it train on garbage (a sweep records the
    trial as failed with this message)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(f"non-finite training loss {loss.item()} at step {trainer.global_step}")


def build_callbacks(cfg: ExperimentConfig, run_dir: Path, resume_ckpt: Path | None = None) -> dict[str, pl.Callback]:
    m = cfg.monitor
    every = cfg.trainer.checkpoint_every_n_steps or cfg.trainer.val_every_n_steps
    last = run_dir / CHECKPOINTS / LAST
    resumed_from_last = resume_ckpt is not None and resume_ckpt.resolve() == last.resolve()
    return {
        "best_checkpoint": RotatingCheckpoint(dirpath=run_dir / CHECKPOINTS, filename="best", monitor="val/loss",
                                              mode="min", save_top_k=1, auto_insert_metric_name=False,
                                              enable_version_counter=False),
        "last_checkpoint": RotatingCheckpoint(dirpath=run_dir / CHECKPOINTS, save_top_k=0, save_last=True,
                                              every_n_train_steps=every, keep_previous=True,
                                              trusted=resumed_from_last),
        "load_monitor": ExpertLoadMonitor(log_every_n_steps=m.log_every_n_steps,
                                          heatmap_every_n_steps=m.heatmap_every_n_steps,
                                          max_experts_logged=m.max_experts_logged),
        "collapse_detector": ExpertCollapseDetector(min_load_fraction=m.collapse_min_load_fraction,
                                                    patience_steps=m.collapse_patience_steps,
                                                    min_entropy_norm=m.collapse_min_entropy_norm,
                                                    action=m.collapse_action,
                                                    dead_router_max_grad_norm=m.dead_router_max_grad_norm),
        "lr_monitor": LearningRateMonitor(logging_interval="step"),
        "nan_guard": NonFiniteLossGuard(),
        "progress": ProgressFile(run_dir / PROGRESS, flops_per_step(cfg)),
    }


def flops_per_step(cfg: ExperimentConfig) -> float:
    """Training FLOPs of one optimizer step, counted as 3x the forward (forward + backward), the count the
    sweep's dry run estimates its cost with."""
    tokens = cfg.data.batch_size * cfg.data.block_size * cfg.trainer.accumulate_grad_batches
    return 3 * count_model(cfg.model, cfg.data.block_size).total_flops_per_token * tokens


def _precision(value: str) -> str:
    return {"32": "32-true"}.get(value, value)


def _devices(value: str):
    value = value.replace(" ", "")
    if value == "auto":
        return "auto"
    parts = [int(p) for p in value.split(",") if p]
    return parts[0] if len(parts) == 1 and "," not in value else parts


def _write_record(run_dir: Path, name: str, suffix: str, text: str) -> None:
    """<name><suffix> records the first part of a run; a resumed part whose record differs adds
    <name>.resume<n><suffix> beside it rather than overwriting what the earlier part used."""
    path = run_dir / f"{name}{suffix}"
    if path.is_file() and path.read_text() != text:
        n = len(list(run_dir.glob(f"{name}.resume*{suffix}"))) + 1
        path = run_dir / f"{name}.resume{n}{suffix}"
    if not path.is_file():
        write_text_atomic(path, text)


def _print(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


# Lightning names no key when it refuses a device setting; the first of these its message mentions is it.
TRAINER_KEYS = ("strategy", "devices", "num_nodes", "precision", "accelerator")


def build_trainer(cfg: ExperimentConfig, logger, callbacks: list[pl.Callback], run_dir: Path,
                  quiet: bool) -> pl.Trainer:
    """The Trainer; Lightning checks accelerator, devices and strategy here, and writes nothing yet."""
    t = cfg.trainer
    try:
        return pl.Trainer(
            max_steps=t.max_steps, max_epochs=-1,
            val_check_interval=t.val_every_n_steps, check_val_every_n_epoch=None,
            limit_val_batches=t.val_batches or 1.0, num_sanity_val_steps=0,
            accumulate_grad_batches=t.accumulate_grad_batches, precision=_precision(t.precision),
            accelerator=t.accelerator, devices=_devices(t.devices), num_nodes=t.num_nodes, strategy=t.strategy,
            deterministic=t.deterministic, gradient_clip_val=cfg.optim.grad_clip or None,
            logger=logger, callbacks=[*callbacks, *([ProgressBar()] if t.progress_bar and not quiet else [])],
            enable_progress_bar=t.progress_bar and not quiet, log_every_n_steps=t.log_every_n_steps,
            enable_model_summary=False, use_distributed_sampler=False, default_root_dir=run_dir,
        )
    except (MisconfigurationException, ValueError, TypeError, ImportError, RuntimeError) as err:
        reason = " ".join((str(err).strip() or type(err).__name__).split("\n")[0].split())
        reason = reason.split(". ")[0].rstrip(".")  # the first sentence; the rest is links and lists
        lowered = reason.lower()
        name = next((k for k in TRAINER_KEYS if k in lowered), "accelerator")
        value = getattr(t, name)
        raise ConfigError(f"trainer.{name}", f"{value!r} cannot be used here "
                          f"(accelerator={t.accelerator}, devices={t.devices}, strategy={t.strategy}): "
                          f"{reason}") from None


def run(cfg: ExperimentConfig, extra_callbacks: tuple[pl.Callback, ...] = (), quiet: bool = False,
        session: tuple[dict, str] | None = None) -> RunResult:
    """Train `cfg` (already validated by load_config). Raises MoELabError for bad data input before
    anything is written. `session`: (hyperparameters, group) of this run in the TensorBoard HPARAMS table
    of a study that declared its own columns (moe_lab.tb_hparams); None: the run declares itself."""
    tune_cpu_allocator()
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # Everything that can be refused is checked before the run directory exists: output folder,
    # devices and strategy, data, the checkpoint to resume from.
    check_writable_dir(cfg.output_dir, "output_dir")
    version, resume_ckpt = resolve_resume(cfg)
    version = version or next_version(Path(cfg.output_dir) / cfg.name)
    loggers = build_loggers(cfg.trainer.loggers, cfg.output_dir, cfg.name, version)
    run_dir = Path(cfg.output_dir) / cfg.name / version
    callbacks = build_callbacks(cfg, run_dir, resume_ckpt)
    data = TextDataModule(cfg.data, seed=cfg.seed)
    data.prepare_data()
    data.setup("fit")
    if cfg.model_init:  # the pretrained embedding fixes the vocabulary; the tokenizer must fit in it
        if data.vocab_size > cfg.model.vocab_size:
            raise DataError(f"data tokenizer has {data.vocab_size} tokens but the model in model_init="
                            f"{cfg.model_init} has vocab_size {cfg.model.vocab_size}")
    else:
        cfg.model.vocab_size = data.vocab_size  # resolved from the tokenizer, recorded in config.yaml
    if resume_ckpt is not None:
        check_resume_checkpoint(cfg, resume_ckpt)
    lit = MoELitModule(to_dict(cfg), val_bytes_per_token=data.bytes_per_token["val"])
    lit.tokenizer = data.tokenizer
    if cfg.model_init:
        from moe_lab.checkpoint import load_pretrained

        _, state = load_pretrained(cfg.model_init)
        lit.model.load_state_dict(state, strict=True)

    # Last: Lightning logs its device lines while building the Trainer (a quiet run keeps them for its
    # train.log, written once the run directory exists).
    with contextlib.ExitStack() as early:
        captured = early.enter_context(lightning_output_captured()) if quiet else None
        trainer = build_trainer(cfg, loggers or False, [*callbacks.values(), *extra_callbacks], run_dir, quiet)
    run_dir.mkdir(parents=True, exist_ok=True)
    _print(f"run directory: {run_dir}" + (f" (resuming {resume_ckpt})" if resume_ckpt else ""), quiet)
    summary = model_summary(cfg.model, cfg.data.block_size)
    _print(summary, quiet)
    _write_record(run_dir, "config", ".yaml", to_yaml(cfg))
    _write_record(run_dir, "env", ".json",
                  json.dumps(environment_record(data=data.data_record(), seed=cfg.seed), indent=2, default=str) + "\n")
    write_text_atomic(run_dir / "model_summary.txt", summary + "\n")
    data.save_tokenizer(run_dir / "tokenizer")

    # Quiet runs (sweep trials) keep Lightning's own lines in the run's train.log, off the sweep console.
    output = contextlib.ExitStack()
    if quiet:
        with open(run_dir / TRAIN_LOG, "a", encoding="utf-8") as log:  # a resumed run adds to its log
            log.write(captured.getvalue())
        output.enter_context(lightning_output_to(run_dir / TRAIN_LOG))
    start = time.perf_counter()
    error = None
    try:
        trainer.fit(lit, datamodule=data, ckpt_path=resume_ckpt, weights_only=True)
        if lit.last_val.get("step") != trainer.global_step and not trainer.interrupted:
            trainer.validate(lit, datamodule=data, verbose=False)  # final metrics at the final step
    except NonFiniteLossError as err:
        error = str(err)
    finally:
        output.close()
    metrics = final_metrics(cfg, lit, trainer, callbacks, time.perf_counter() - start, error)
    if trainer.is_global_zero:
        finish_checkpoints(run_dir / CHECKPOINTS, cfg.trainer.keep_checkpoints, metrics["status"])
        write_json_atomic(run_dir / "metrics.json", metrics)
        log_final(cfg, loggers, metrics, trainer.global_step, session)
    _print(end_of_run_summary(metrics, run_dir, Path(cfg.output_dir)), quiet)
    if error is not None:
        raise NonFiniteLossError(error)
    return RunResult(run_dir=run_dir, metrics=metrics, callbacks=callbacks)


def finish_checkpoints(directory: Path, keep: str, status: str) -> None:
    """Apply `trainer.keep_checkpoints` to a run that has finished for good (completed or pruned); a
    failed or stopped run keeps what resuming it needs."""
    if keep == "all" or status not in ("completed", "pruned") or not directory.is_dir():
        return
    if keep == "none":
        shutil.rmtree(directory)
        return
    for name in (LAST, PREVIOUS):  # what resuming needs; a finished run needs neither
        (directory / name).unlink(missing_ok=True)
    if (directory / "best.ckpt").is_file():
        strip_to_weights(directory / "best.ckpt")


def log_final(cfg: ExperimentConfig, loggers: list, metrics: dict, step: int,
              session: tuple[dict, str] | None) -> None:
    """The whole config and the final metrics to every logger. TensorBoard gets them through the hparams
    plugin's own summaries (a few declared columns, moe_lab.tb_hparams) and the config as text."""
    hparams = flatten(to_dict(cfg))
    final = {f"final/{k}": float(v) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    status = "success" if metrics["status"] != "failed" else "failed"
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.hparams.update(hparams)  # hparams.yaml, written by the logger's save()
            writer = logger.experiment
            if session is None:
                headline = {k: hparams.get(k) for k in HEADLINE_HPARAMS if k in hparams}
                writer._get_file_writer().add_summary(
                    experiment_summary({k: [v] for k, v in headline.items()}, ordered_metrics("val_loss")))
                session = (headline, "")
            writer.add_text("config", "    " + to_yaml(cfg).replace("\n", "\n    "), step)
            write_session(writer, *session, metrics, step, failed=metrics["status"] == "failed")
        else:
            logger.log_hyperparams(hparams)
            logger.log_metrics(final, step=step)
    finalize(loggers, status)


def final_metrics(cfg, lit: MoELitModule, trainer: pl.Trainer, callbacks: dict, wall: float,
                  error: str | None) -> dict:
    summary = summary_record(cfg.model, cfg.data.block_size)
    load = callbacks["load_monitor"].summary()
    detector = callbacks["collapse_detector"]
    best = callbacks["best_checkpoint"].best_model_score
    before = lit.progress_before  # zeros unless the run resumed from a checkpoint
    resumed = lit.resumed_from_step is not None
    status = "completed"
    if error is not None:
        status = "failed"
    elif getattr(detector, "prune_reason", None):
        status = "pruned"
    elif trainer.global_step < cfg.trainer.max_steps:
        status = "stopped"
    return {
        "status": status,
        "error": error,
        "steps": int(trainer.global_step),
        "val_loss": lit.last_val.get("val/loss"),
        "val_ppl": lit.last_val.get("val/ppl"),
        "val_bpb": lit.last_val.get("val/bpb"),
        "best_val_loss": float(best) if best is not None else None,
        # Totals over every part of a resumed run (each part up to the checkpoint the next resumed from).
        **_throughput(before["train_tokens"] + lit.train_tokens, before["train_seconds"] + lit.train_seconds,
                      before["wall_time_s"] + wall),
        "resumed_from_step": lit.resumed_from_step,
        "this_part": _throughput(lit.train_tokens, lit.train_seconds, wall) if resumed else None,
        "total_params": summary["total_params"],
        "active_params": summary["total_active_params"],
        "flops_per_token": summary["total_flops_per_token"],
        "moe_layers": summary["moe_layers"],
        "final_load_cv": load.get("final_load_cv"),
        "final_max_over_uniform": load.get("final_max_over_uniform"),
        "final_dropped_frac": load.get("final_dropped_frac"),
        # The last training step's router losses (unweighted): how large the router logits ended up.
        "final_aux_loss": _metric(trainer, "train/aux_loss"),
        "final_z_loss": _metric(trainer, "train/z_loss"),
        "collapse_events": list(detector.events),
        "collapse_events_count": len(detector.events),
        "prune_reason": getattr(detector, "prune_reason", None),
    }


def _throughput(tokens: int, train_seconds: float, wall: float) -> dict:
    return {"train_tokens": tokens, "tokens_per_s": tokens / train_seconds if train_seconds else None,
            "wall_time_s": wall}


def end_of_run_summary(metrics: dict, run_dir: Path, output_dir: Path) -> str:
    """What a finished run printed last: its result, its cost and where to look further."""
    def number(key: str, fmt: str = "{:.4f}") -> str:
        return "-" if metrics.get(key) is None else fmt.format(metrics[key])

    return "\n".join([
        f"{metrics['status']} after {metrics['steps']} steps in {number('wall_time_s', '{:.0f}')} s"
        + (f": {metrics['error']}" if metrics.get("error") else ""),
        f"  val loss {number('val_loss')} (best {number('best_val_loss')}), val bits/byte {number('val_bpb')}, "
        f"{si(metrics.get('tokens_per_s'))} training tokens/s",
        f"  params {si(metrics['total_params'])} total, {si(metrics['active_params'])} active per token; "
        f"final load CV {number('final_load_cv', '{:.3f}')}, collapse events {metrics['collapse_events_count']}",
        f"  run directory: {run_dir} (metrics.json, config.yaml, checkpoints/)",
        f"  curves: tensorboard --logdir {output_dir}",
    ])


def _metric(trainer: pl.Trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return None if value is None else float(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_lab.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment YAML (see experiments/)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        run(cfg)
    except MoELabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, NonFiniteLossError) else 1
    except KeyboardInterrupt:
        print("interrupted: resume with trainer.resume=auto", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
