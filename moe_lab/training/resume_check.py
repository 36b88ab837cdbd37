"""Whether a run may resume from a checkpoint, decided before the run directory is touched: the file must
load as a training checkpoint (else it is damaged), hold the model the config describes, and, for
`trainer.resume=auto`, have been trained with the same settings except those a resume may change
(moe_lab.config.resume_rules). A resume that would record one config and train another is refused."""

from __future__ import annotations

from pathlib import Path

from moe_lab.artifacts.run_dir import PREVIOUS_CKPT
from moe_lab.config import ExperimentConfig, config_from_dict, to_dict
from moe_lab.config.resume_rules import changes_on_resume, describe_changes
from moe_lab.errors import ConfigError, MoELabError
from moe_lab.interop.checkpoint import CheckpointError, check_state_dict, read_torch_checkpoint

KEY = "trainer.resume"


def check_resume_checkpoint(cfg: ExperimentConfig, ckpt: Path) -> None:
    """Raise ConfigError (key trainer.resume) unless the run may resume from `ckpt`. For resume=auto a
    damaged checkpoint's message names the run's previous checkpoint when that one is intact."""
    auto = cfg.trainer.resume == "auto"
    state, damage = _load(ckpt)
    if damage is None:
        if auto:
            changes = _config_changes(cfg, state)
            if changes:
                raise ConfigError(
                    KEY,
                    f"auto: {ckpt} (step {state['global_step']}) was trained with other settings: "
                    f"{describe_changes(changes)}. Resume with the same settings, start a new run "
                    f"(another name, or trainer.resume=''), or continue anyway with trainer.resume={ckpt}",
                )
        mismatch = _model_mismatch(cfg, state, ckpt)
        if mismatch:
            raise ConfigError(KEY, ("auto: " if auto else "") + f"the checkpoint holds another model: {mismatch}")
        return
    if not auto:
        raise ConfigError(KEY, damage)
    previous = ckpt.with_name(PREVIOUS_CKPT)
    if previous.is_file():
        before, previous_damage = _load(previous)
        if previous_damage is None and _model_mismatch(cfg, before, previous) is None:
            raise ConfigError(
                KEY,
                f"auto: the latest checkpoint is damaged ({damage}); the previous "
                f"one is intact: continue from it with trainer.resume={previous}",
            )
    raise ConfigError(
        KEY,
        f"auto: the latest checkpoint is damaged ({damage}) and no intact "
        f"{PREVIOUS_CKPT} is beside it; start afresh with trainer.resume=''",
    )


def _load(ckpt: Path) -> tuple[dict, str | None]:
    """(the checkpoint, None) or ({}, why it is damaged). Lightning loads the file again when it resumes:
    reading it twice is the price of failing early."""
    try:
        state = read_torch_checkpoint(ckpt)
    except CheckpointError as err:
        return {}, str(err)
    tensors = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(tensors, dict) or "global_step" not in state:
        return {}, f"{ckpt}: not a training checkpoint (no state_dict and global_step)"
    return state, None


def _model_mismatch(cfg: ExperimentConfig, state: dict, ckpt: Path) -> str | None:
    prefix = "model."
    try:
        check_state_dict(
            cfg.model,
            {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)},
            f"{ckpt} (step {state['global_step']})",
        )
    except CheckpointError as err:
        return str(err)
    return None


def _config_changes(cfg: ExperimentConfig, state: dict) -> list[str]:
    """The settings the requested config changes against the one stored with the checkpoint (its
    hyper_parameters, written by the LightningModule); none when the checkpoint stores no readable config."""
    stored = (state.get("hyper_parameters") or {}).get("config")
    if not isinstance(stored, dict):
        return []
    try:
        saved = to_dict(config_from_dict(stored))  # the schema's defaults for keys newer than the checkpoint
    except MoELabError:
        return []
    return changes_on_resume(saved, to_dict(cfg))
