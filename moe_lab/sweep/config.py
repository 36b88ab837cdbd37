"""Sweep files: schema, search-space parsing and validation.

A sweep names a base experiment, overrides, an objective, a sampler and pruner, a budget, the seeds
each configuration is trained with, and a search space over dotted experiment keys:

    space:
      model.moe.top_k: [1, 2, 4]                            # categorical (shorthand)
      optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.moe.n_experts: {type: int, low: 4, high: 32, step: 4}
"""

from __future__ import annotations

import difflib
import functools
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moe_lab.artifacts.run_dir import METRIC_CURVES, OBJECTIVE_METRICS
from moe_lab.artifacts.run_index import RunIndex
from moe_lab.artifacts.study_dir import default_storage_url
from moe_lab.checks import at_least, no_nul, one_of, path_component, require, seed
from moe_lab.config import (
    KEEP_CHECKPOINTS,
    ExperimentConfig,
    ExperimentSource,
    explain,
    read_experiment,
    read_yaml,
    schema_keys,
)
from moe_lab.errors import ConfigError, MoELabError
from moe_lab.sweep.matching import Matched, match_expert_hidden
from moe_lab.sweep.prerequisites import Prerequisites

SAMPLERS = ("grid", "random", "tpe")
# Bounds a study has: past them a typo (a range to 1e9, n_trials 1e9) would fill memory or enqueue forever.
MAX_GRID = 10_000  # configurations of a grid, each validated before the first trial
MAX_TRIALS = 10_000
PRUNERS = ("none", "median", "hyperband")
DIRECTIONS = ("minimize", "maximize")
MATCHING = ("none", "active", "total")


@dataclass
class ObjectiveConfig:
    metric: str = "val_loss"
    direction: str = "minimize"


@dataclass
class SweepConfig:
    name: str = ""  # the Optuna study name; "" = the sweep file's stem
    base: str = ""  # experiment YAML, relative to the sweep file
    overrides: list[str] = field(default_factory=list)  # key.sub=value applied to the base for every trial
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    sampler: str = "grid"
    sampler_seed: int = 0
    pruner: str = "none"
    pruner_warmup_steps: int = 0  # median pruner: no pruning before this step
    n_trials: int = 0  # 0: the grid size (grid); required for random / tpe
    timeout_s: float = 0.0  # time budget per invocation; 0: none. Running trials finish.
    seeds: list[int] = field(default_factory=lambda: [0])  # each configuration is trained once per seed
    output_dir: str = "sweeps_out"
    # "" = sqlite:///<output_dir>/<name>/study.db; any Optuna RDB URL; or journal:<path> (file journal)
    storage: str = ""
    heartbeat_interval: int = 20  # seconds; RDB storages detect a killed worker's trial through it
    # A trial whose heartbeat is older than this is failed and retried. 15 missed beats: a worker on a
    # loaded machine was seen stalled ~100 s; a killed trial waits this long for its retry.
    grace_period: int = 300
    max_retries: int = 3  # a trial whose worker died is retried this many times
    compute_matching: str = "none"  # none | active | total: hold expert params fixed via expert_hidden
    collapse_prunes: bool = True  # the expert-collapse detector prunes a trial (reason recorded)
    # trainer.keep_checkpoints of every run: a finished run keeps its best weights only (a sixth of a
    # full best.ckpt + last.ckpt); a live or failed run keeps what its retry resumes from.
    keep_checkpoints: str = "best_weights"
    # A run whose resolved config, seed, clean code commit, packages and threads equal a completed run's
    # in the run index is copied from it instead of trained (moe_lab.artifacts.run_index). The index:
    # "" = <output_dir>/run_index, shared by every study in that output_dir; point several at one path.
    reuse_runs: bool = True
    run_index: str = ""
    space: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # categorical | int | float
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False

    def grid_values(self) -> list:
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise ConfigError(f"space.{self.key}", "the grid sampler needs categorical values or an int range without log")

    def grid_size(self) -> int:
        """len(grid_values()), counted without building the list."""
        if self.kind == "int" and not self.log:
            return (int(self.high) - int(self.low)) // int(self.step or 1) + 1
        return len(self.grid_values())


@dataclass
class Sweep:
    """A validated sweep: the config, where it came from, and its parsed search space.

    An ablation is a grid over one categorical parameter, "arm", whose values name sets of overrides
    (`arms`); everything else (storage, workers, resume, seeds) is the sweep machinery."""

    cfg: SweepConfig
    path: Path
    params: list[Param]
    arms: dict[str, list[str]] | None = None
    prerequisites: Prerequisites | None = None  # runs the arms start from, named `@name` in their values
    # Validated configurations without placement, by parameters: checks, estimates and the console
    # ask for them again.
    _configurations: dict[str, tuple] = field(default_factory=dict, init=False, repr=False)

    @property
    def name(self) -> str:
        return self.cfg.name or self.path.stem

    @property
    def study_dir(self) -> Path:
        return Path(self.cfg.output_dir) / self.name

    @property
    def base_path(self) -> Path:
        return (self.path.parent / self.cfg.base).resolve()

    @property
    def storage_url(self) -> str:
        return self.cfg.storage or default_storage_url(self.study_dir)

    def grid(self) -> list[dict[str, Any]]:
        keys = [p.key for p in self.params]
        return [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*(p.grid_values() for p in self.params))
        ]

    def n_trials(self) -> int:
        return self.cfg.n_trials or len(self.grid())

    def stops_early(self) -> str | None:
        """What may stop runs before their last step (so a time estimate is an upper bound), or None."""
        if self.cfg.pruner != "none":
            return f"the {self.cfg.pruner} pruner"
        return "the collapse detector" if self.cfg.collapse_prunes else None

    # ------------------------------------------------------------------ the experiments it trains
    @functools.cached_property
    def source(self) -> ExperimentSource:
        """The base experiment with the sweep's overrides, read once per sweep process."""
        return read_experiment(self.base_path, list(self.cfg.overrides))

    @functools.cached_property
    def base_config(self) -> ExperimentConfig:
        """The base experiment as the sweep's overrides leave it: what compute matching holds constant."""
        return self.source.config()

    def run_index(self) -> RunIndex | None:
        """The index of completed runs this sweep reuses and adds to; None when reuse is off."""
        if not self.cfg.reuse_runs:
            return None
        root = Path(self.cfg.run_index) if self.cfg.run_index else Path(self.cfg.output_dir) / "run_index"
        return RunIndex(root)  # relative to the working directory, as output_dir is

    def run_values(self) -> dict[str, Any]:
        """What the sweep sets in every run it trains."""
        values: dict[str, Any] = {"trainer": {"progress_bar": False, "keep_checkpoints": self.cfg.keep_checkpoints}}
        if self.cfg.collapse_prunes:
            values["monitor"] = {"collapse_action": "prune"}
        return values

    def experiment(
        self,
        params: dict[str, Any],
        placement: dict[str, Any] | None = None,
    ) -> tuple[ExperimentConfig, Matched | None]:
        """The validated experiment of one configuration, and the expert width compute matching chose
        for it (None: not resized): the base experiment with the arm's overrides or the parameters'
        values, the sweep's run values, `placement` (seed and where the run writes) and the matched width,
        all merged before the one validation."""
        key = json.dumps(params, sort_keys=True, default=str)
        if placement is None and key in self._configurations:
            return self._configurations[key]
        source = self.source.extended(self.arm_overrides(params["arm"], placement) if self.arms is not None else [])
        values = merged_values(nested(params) if self.arms is None else {}, self.run_values(), placement)
        matched = self._matched(source, values)
        if matched is not None:
            values = merged_values(values, {"model": {"moe": {"expert_hidden": matched.expert_hidden}}})
        result = source.config(values), matched
        if placement is None:
            self._configurations[key] = result
        return result

    def arm_overrides(self, arm: str, placement: dict[str, Any] | None = None) -> list[str]:
        """An arm's overrides, each `@name` bound to prerequisite `name`'s run of the placement's seed."""
        overrides = self.arms[arm]
        if self.prerequisites is None:
            return list(overrides)
        return self.prerequisites.bind(overrides, placement["seed"] if placement else None)

    def _matched(self, source: ExperimentSource, values: dict[str, Any]) -> Matched | None:
        if self.cfg.compute_matching == "none":
            return None
        try:
            model = source.draft(values).model
            return match_expert_hidden(self.base_config.model, model, self.cfg.compute_matching)
        except (ArithmeticError, ValueError, KeyError, IndexError):
            return None  # a model that cannot be counted is not resized; validation names its fault

    @staticmethod
    def placement(trial_dir: Path, seed: int, version: str | None = None) -> dict[str, Any]:
        """Where one run of a trial writes: <study>/trials/<trial>/<version>, version seed<S> by default."""
        return {
            "seed": seed,
            "output_dir": str(trial_dir.parent),
            "name": trial_dir.name,
            "version": version or f"seed{seed}",
        }


def nested(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """{"model.moe.top_k": 2} -> {"model": {"moe": {"top_k": 2}}} (tuples become lists): a sweep's
    parameters as values to merge."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = list(value) if isinstance(value, tuple) else value
    return out


def merged_values(*parts: Mapping[str, Any] | None) -> dict[str, Any]:
    """Nested value mappings merged left to right (a later leaf wins)."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in (part or {}).items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merged_values(out[key], value)
            else:
                out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


def _parse_param(key: str, spec: Any) -> Param:
    where = f"space.{key}"
    if isinstance(spec, (list, ListConfig)):
        spec = {"type": "categorical", "choices": list(spec)}
    if not isinstance(spec, (dict, DictConfig)):
        raise ConfigError(where, f"expected a list of values or a mapping with 'type', got {spec!r}")
    spec = dict(OmegaConf.to_container(spec) if isinstance(spec, DictConfig) else spec)
    kind = spec.pop("type", None)
    if kind == "categorical":
        choices = spec.pop("choices", None)
        if not isinstance(choices, list) or not choices:
            raise ConfigError(where, "categorical needs a non-empty 'choices' list")
        param = Param(key, "categorical", choices=tuple(_hashable(c) for c in choices))
    elif kind in ("int", "float"):
        try:
            low, high = float(spec.pop("low")), float(spec.pop("high"))
        except KeyError as missing:
            raise ConfigError(where, f"{kind} needs 'low' and 'high' (missing {missing})") from None
        step, log = spec.pop("step", None), bool(spec.pop("log", False))
        if not low <= high:
            raise ConfigError(where, f"low {low} > high {high}")
        if log and low <= 0:
            raise ConfigError(where, f"log scale needs low > 0, got {low}")
        if log and step is not None:
            raise ConfigError(where, "step and log cannot be combined")
        if step is not None and float(step) <= 0:
            raise ConfigError(where, f"step must be > 0, got {step}")
        if kind == "int" and (low != int(low) or high != int(high)):
            raise ConfigError(where, f"int range needs integer bounds, got {low}..{high}")
        if kind == "int" and step is not None and float(step) != int(float(step)):
            raise ConfigError(where, f"int range needs an integer step, got {step}")
        param = Param(key, kind, low=low, high=high, step=None if step is None else float(step), log=log)
    else:
        raise ConfigError(where, f"unknown type {kind!r}; expected categorical, int or float")
    if spec:
        raise ConfigError(f"{where}.{next(iter(spec))}", "unknown key; expected type, choices, low, high, step, log")
    return param


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def read_structured(path: Path, schema: Any, overrides: list[str]) -> Any:
    """A YAML file (with the files it extends) merged onto a dataclass schema, errors naming the key."""
    merged = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(merged, read_yaml(path), OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise explain(err, schema) from None


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Read and validate a sweep file; every configuration of a grid is validated as an experiment."""
    path = Path(path)
    cfg: SweepConfig = read_structured(path, SweepConfig(), overrides)
    validate_sweep_config(cfg)
    params = [_parse_param(key, spec) for key, spec in cfg.space.items()]
    valid = schema_keys(ExperimentConfig())
    for p in params:
        if p.key not in valid:
            close = difflib.get_close_matches(p.key, valid, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"space.{p.key}", f"not a key of the experiment schema{hint}")
    sweep = Sweep(cfg=cfg, path=path, params=params)
    check_sweep(sweep)
    return sweep


def check_sweep(sweep: Sweep) -> None:
    if not sweep.base_path.is_file():
        raise ConfigError("base", f"no such experiment file: {sweep.base_path}")
    path_component("name", sweep.name)
    if sweep.cfg.sampler == "grid":
        sizes = [p.grid_size() for p in sweep.params]
        require(
            math.prod(sizes) <= MAX_GRID,
            "space",
            f"the grid has {math.prod(sizes):,} configurations ({' x '.join(map(str, sizes))}); at most {MAX_GRID:,}: "
            "narrow a range or raise its step",
        )
    _check_configurations(sweep)


def validate_sweep_config(cfg: SweepConfig, needs_space: bool = True) -> None:
    if not cfg.base:
        raise ConfigError("base", "a sweep needs a base experiment file")
    if needs_space and not cfg.space:
        raise ConfigError("space", "a sweep needs at least one parameter to search")
    one_of("objective.metric", cfg.objective.metric, OBJECTIVE_METRICS)
    one_of("objective.direction", cfg.objective.direction, DIRECTIONS)
    one_of("sampler", cfg.sampler, SAMPLERS)
    one_of("pruner", cfg.pruner, PRUNERS)
    one_of("compute_matching", cfg.compute_matching, MATCHING)
    one_of("keep_checkpoints", cfg.keep_checkpoints, KEEP_CHECKPOINTS)
    if cfg.sampler != "grid" and cfg.n_trials < 1:
        raise ConfigError("n_trials", f"sampler {cfg.sampler!r} needs n_trials >= 1")
    if cfg.n_trials < 0 or cfg.timeout_s < 0:
        raise ConfigError("n_trials" if cfg.n_trials < 0 else "timeout_s", "must be >= 0")
    require(cfg.n_trials <= MAX_TRIALS, "n_trials", f"at most {MAX_TRIALS} trials a study, got {cfg.n_trials}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError("seeds", f"needs one or more distinct seeds, got {list(cfg.seeds)}")
    for s in cfg.seeds:
        seed("seeds", s)
    if cfg.name:
        path_component("name", cfg.name)
    no_nul("output_dir", cfg.output_dir)
    if cfg.heartbeat_interval < 1 or cfg.grace_period <= cfg.heartbeat_interval:
        raise ConfigError("grace_period", f"must exceed heartbeat_interval={cfg.heartbeat_interval}")
    at_least("max_retries", cfg.max_retries, 0)
    if cfg.pruner != "none" and METRIC_CURVES[cfg.objective.metric] is None:
        raise ConfigError("pruner", f"objective {cfg.objective.metric} has no validation curve to prune on")


def _check_configurations(sweep: Sweep) -> None:
    """Every grid point (or, for other samplers, every categorical choice and range end) must be a
    valid experiment: a sweep fails now, not at trial 37."""
    if sweep.cfg.sampler == "grid":
        candidates = sweep.grid()
    else:
        candidates = [
            {p.key: (v if p.kind == "categorical" else (int(v) if p.kind == "int" else v))}
            for p in sweep.params
            for v in (p.choices or (p.low, p.high))
        ]
    for params in candidates:
        try:
            sweep.experiment(params)
        except MoELabError as err:
            described = ", ".join(f"{k}={v}" for k, v in params.items())
            where = f"arms.{params['arm']}" if sweep.arms is not None else f"space ({described})"
            raise ConfigError(where, f"invalid experiment: {err}") from None
