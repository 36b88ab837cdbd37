"""The experiment trackers a run logs to (`trainer.loggers`), all through Lightning's own logger classes.

TensorBoard is the default and what the sweep and ablation reports read curves from (or, without it,
the CSV logger's metrics.csv). wandb and MLflow are optional extras (`pip install 'moe-lab[wandb]'`,
`'moe-lab[mlflow]'`); they honour their own environment variables (WANDB_MODE=offline, WANDB_PROJECT,
MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME), so nothing here talks to a network service by itself:
without MLFLOW_TRACKING_URI, MLflow writes the local SQLite store <output_dir>/mlflow.db (MLflow 3 refuses
its older file store ./mlruns unless MLFLOW_ALLOW_FILE_STORE=true).
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import Logger, TensorBoardLogger

PROJECT = "moe_lab"  # wandb project / MLflow experiment when the environment names none


class StepTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger without the `epoch` scalar Lightning adds to every `self.log` call: a
    run counts optimizer steps over an endless sampler (max_epochs=-1), so it is a flat line at 0."""

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)


def build_loggers(names: list[str], output_dir: str, name: str, version: str) -> list[Logger]:
    """One Lightning logger per name, all writing about the run directory <output_dir>/<name>/<version>."""
    run_dir = Path(output_dir) / name / version
    loggers: list[Logger] = []
    for kind in names:
        if kind == "tensorboard":
            loggers.append(
                StepTensorBoardLogger(save_dir=output_dir, name=name, version=version, default_hp_metric=False)
            )
        elif kind == "csv":
            from lightning.pytorch.loggers import CSVLogger

            loggers.append(CSVLogger(save_dir=output_dir, name=name, version=version))
        elif kind == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            # The wandb files stay inside the run directory, like every other record of the run.
            loggers.append(
                WandbLogger(
                    name=f"{name}/{version}",
                    group=name,
                    save_dir=str(run_dir),
                    project=os.environ.get("WANDB_PROJECT", PROJECT),
                )
            )
        elif kind == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            tracking_uri = (
                os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(output_dir) / 'mlflow.db').resolve()}"
            )
            loggers.append(
                MLFlowLogger(
                    experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT),
                    run_name=f"{name}/{version}",
                    tracking_uri=tracking_uri,
                    tags={"run_dir": str(run_dir.resolve())},
                )
            )
    return loggers


def finalize(loggers: list[Logger], status: str) -> None:
    """Close every logger's run. Lightning leaves a wandb run open until the process exits, but a sweep
    worker trains run after run in one process: each must be finished before the next one starts."""
    for logger in loggers:
        logger.finalize(status)
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish(exit_code=0 if status == "success" else 1)
