"""What a study has finished, read from its Optuna trials: the one rule the sweep (what is left to train,
the dry run's estimate) and the report (each configuration's finished seeds) share."""

from __future__ import annotations

from collections.abc import Iterable

from moe_lab.artifacts.study_dir import TRIAL_SEEDS, TRIAL_UNIT_SEED, trial_unit

# Trial states of a unit of work that is over for good: running it again would only repeat it.
ENDED_STATES = ("COMPLETE", "PRUNED")


def seeds_finished_by(trial) -> list[int]:
    """The seeds a trial (Optuna Trial or FrozenTrial) finished: its unit's seed, or (a trial of all seeds)
    the seeds it ran; none while it has not ended."""
    if trial.state.name not in ENDED_STATES:
        return []
    seed = trial.user_attrs.get(TRIAL_UNIT_SEED)
    return [seed] if seed is not None else list(trial.user_attrs.get(TRIAL_SEEDS) or [])


def finished_seeds(trials: Iterable, seeds: list[int]) -> dict[int, set[int]]:
    """Config id -> the seeds of it that the trials finished. The latest trial of each unit counts (earlier
    ones were retried); a configuration all of whose units ended has every one of `seeds`, pruned
    ones included (a pruned configuration trains no further seed)."""
    latest: dict[tuple, object] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        latest[trial_unit(trial)] = trial
    units: dict[int, list] = {}
    for (config_id, _), trial in latest.items():
        units.setdefault(config_id, []).append(trial)
    return {
        config_id: set(seeds)
        if all(t.state.name in ENDED_STATES for t in group)
        else {s for t in group for s in seeds_finished_by(t)}
        for config_id, group in units.items()
    }
