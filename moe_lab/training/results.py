"""What a finished run reports: its RunMetrics (run_dir.METRICS), its records in the run directory, the
final hyperparameters and metrics it hands to every logger, the checkpoints it keeps, and the lines it
prints last."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from moe_lab.artifacts.atomic import write_json_atomic, write_text_atomic
from moe_lab.artifacts.metrics import VOCABULARY, final_tag
from moe_lab.artifacts.run_dir import (
    BEST_CKPT,
    CHECKPOINTS,
    COMPLETED,
    CONFIG,
    FAILED,
    FINISHED_STATUSES,
    INTERRUPTED,
    LAST_CKPT,
    METRICS,
    PREVIOUS_CKPT,
    PRUNED,
    STOPPED,
    RunMetrics,
)
from moe_lab.callbacks.throughput import Throughput
from moe_lab.config import ExperimentConfig, to_dict
from moe_lab.config.experiment import flatten
from moe_lab.formatting import si
from moe_lab.interop.checkpoint import strip_to_weights
from moe_lab.model.summary import summary_record
from moe_lab.training.lit import MoELitModule
from moe_lab.training.loggers import finalize
from moe_lab.training.run_callbacks import RunCallbacks
from moe_lab.training.tb_hparams import HEADLINE_HPARAMS, experiment_summary, ordered_metrics, write_session


def final_metrics(
    cfg: ExperimentConfig,
    lit: MoELitModule,
    trainer: pl.Trainer,
    callbacks: RunCallbacks,
    wall: float,
    error: str | None,
    interrupted: bool = False,
) -> RunMetrics:
    """`interrupted`: a stop signal ended the fit (moe_lab.callbacks.stop)."""
    summary = summary_record(cfg.model, cfg.data.block_size)
    load = callbacks.load_monitor.summary()
    detector = callbacks.collapse_detector
    best = callbacks.best_checkpoint.best_model_score
    throughput = callbacks.throughput
    before = throughput.progress_before  # zeros unless the run resumed from a checkpoint
    tokens = before["train_tokens"] + throughput.train_tokens
    train_seconds = before["train_seconds"] + throughput.train_seconds
    status = COMPLETED
    if error is not None:
        status = FAILED
    elif interrupted:
        status = INTERRUPTED
    elif detector.prune_reason:
        status = PRUNED
    elif trainer.global_step < cfg.trainer.max_steps:
        status = STOPPED
    # A metric of the vocabulary is what a monitor of the run reports under its name, else the last
    # logged value of its tag (moe_lab.artifacts.metrics.Metric).
    reported = {
        **load,
        "best_val_loss": float(best) if best is not None else None,
        "tokens_per_s": _rate(tokens, train_seconds),
        "collapse_events_count": len(detector.events),
    }
    values = {m.name: reported[m.name] if m.name in reported else _last_value(lit, trainer, m.tag) for m in VOCABULARY}
    return RunMetrics(
        status=status,
        error=error,
        steps=int(trainer.global_step),
        **values,
        train_tokens=tokens,
        train_seconds=train_seconds,
        wall_time_s=before["wall_time_s"] + wall,
        resumed_from_step=throughput.resumed_from_step,
        this_part=_this_part(throughput, wall) if throughput.resumed_from_step is not None else None,
        total_params=summary["total_params"],
        active_params=summary["total_active_params"],
        flops_per_token=summary["total_flops_per_token"],
        moe_layers=summary["moe_layers"],
        collapse_events=[asdict(event) for event in detector.events],
        prune_reason=detector.prune_reason,
    )


def _rate(tokens: int, seconds: float) -> float | None:
    return tokens / seconds if seconds else None


def _this_part(throughput: Throughput, wall: float) -> dict:
    """The throughput figures of this part alone of a resumed run."""
    return {
        "train_tokens": throughput.train_tokens,
        "tokens_per_s": _rate(throughput.train_tokens, throughput.train_seconds),
        "wall_time_s": wall,
    }


def _last_value(lit: MoELitModule, trainer: pl.Trainer, tag: str | None) -> float | None:
    """The last value logged under `tag`: the last validation's, or the last training step's."""
    if tag in lit.last_val:
        return lit.last_val[tag]
    value = trainer.callback_metrics.get(tag) if tag else None
    return None if value is None else float(value)


def write_metrics(run_dir: Path, metrics: RunMetrics) -> None:
    """The run_dir.METRICS file: the RunMetrics fields, in their declared order."""
    write_json_atomic(run_dir / METRICS, asdict(metrics))


def write_record(run_dir: Path, name: str, text: str) -> None:
    """`name` (config.yaml, env.json) records the first part of a run; a resumed part whose record
    differs adds <stem>.resume<n><suffix> beside it rather than overwriting what the earlier part used."""
    path = run_dir / name
    stem, suffix = path.stem, path.suffix
    if path.is_file() and path.read_text() != text:
        n = len(list(run_dir.glob(f"{stem}.resume*{suffix}"))) + 1
        path = run_dir / f"{stem}.resume{n}{suffix}"
    if not path.is_file():
        write_text_atomic(path, text)


def json_text(record: dict) -> str:
    return json.dumps(record, indent=2, default=str) + "\n"


def finish_checkpoints(directory: Path, keep: str, status: str) -> None:
    """Apply `trainer.keep_checkpoints` to a run that has finished for good (completed or pruned); a
    failed or stopped run keeps what resuming it needs."""
    if keep == "all" or status not in FINISHED_STATUSES or not directory.is_dir():
        return
    if keep == "none":
        shutil.rmtree(directory)
        return
    for name in (LAST_CKPT, PREVIOUS_CKPT):  # what resuming needs; a finished run needs neither
        (directory / name).unlink(missing_ok=True)
    if (directory / BEST_CKPT).is_file():
        strip_to_weights(directory / BEST_CKPT)


def log_final(
    cfg: ExperimentConfig, loggers: list, metrics: RunMetrics, step: int, session: tuple[dict, str] | None
) -> None:
    """The whole config and the final metrics to every logger, at `step` (that of the run's last validation
    point). TensorBoard gets them through the hparams plugin's own summaries (a few declared columns,
    moe_lab.training.tb_hparams); its config text was written once, when the run started (MoELitModule)."""
    hparams = flatten(to_dict(cfg))
    values = asdict(metrics)
    final = {
        final_tag(k): float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    failed = metrics.status == "failed"
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.hparams.update(hparams)  # hparams.yaml, written by the logger's save()
            writer = logger.experiment
            if session is None:
                headline = {k: hparams.get(k) for k in HEADLINE_HPARAMS if k in hparams}
                writer._get_file_writer().add_summary(
                    experiment_summary({k: [v] for k, v in headline.items()}, ordered_metrics("val_loss"))
                )
                session = (headline, "")
            write_session(writer, *session, values, step, failed=failed)
        else:
            logger.log_hyperparams(hparams)
            logger.log_metrics(final, step=step)
    finalize(loggers, "failed" if failed else "success")


def end_of_run_summary(metrics: RunMetrics, run_dir: Path, output_dir: Path) -> str:
    """What a finished run printed last: its result, its cost and where to look further."""

    def number(value: float | None, fmt: str = "{:.4f}") -> str:
        return "-" if value is None else fmt.format(value)

    m = metrics
    best = f"best {number(m.best_val_loss)}"
    if m.best_val_loss is None and m.val_loss is not None:  # validated once, by run() after the last step
        best = "no best.ckpt: validation first ran after the last step (trainer.val_every_n_steps > the steps run)"
    return "\n".join(
        [
            f"{m.status} after {m.steps} steps in {number(m.wall_time_s, '{:.0f}')} s"
            + (f": {m.error}" if m.error else ""),
            f"  val loss {number(m.val_loss)} ({best}), val bits/byte {number(m.val_bpb)}, "
            f"{si(m.tokens_per_s)} training tokens/s",
            f"  params {si(m.total_params)} total, {si(m.active_params)} active per token; "
            f"final load CV {number(m.final_load_cv, '{:.3f}')}, collapse events {m.collapse_events_count}",
            f"  run directory: {run_dir} ({METRICS}, {CONFIG}, {CHECKPOINTS}/)",
            f"  curves: tensorboard --logdir {output_dir}",
        ]
    )
