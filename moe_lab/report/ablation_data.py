"""An ablation directory read back for its report, from the run logs alone (never the Optuna storage):

    <dir>/STUDY_INFO                          what `python -m moe_lab.ablate` wrote ("kind": "ablation")
    <dir>/sweep.yaml                          the resolved AblationConfig: paper, claim, arms, claims
    <dir>/trials/t<NNN>-arm=<name>/seed<s>/   one run directory per arm and seed (final metrics, resolved
                                              config, environment record, TensorBoard events)
    <dir>/trials/t<NNN>-arm=<name>/seed<s>.retry<n>/   the n-th retry of a seed whose worker died (an
                                              interrupted session, a killed job): it counts in place of seed<s>

Only seeds whose run completed count: a pruned, stopped or failed seed, or one still running, is kept
with its status, so each arm reports its own n.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from moe_lab.artifacts.run_dir import CONFIG, ENV, METRICS
from moe_lab.artifacts.study_dir import STUDY_INFO, SWEEP_COPY, TRIALS
from moe_lab.artifacts.yaml_file import read_yaml_mapping
from moe_lab.config.budget import step_tokens
from moe_lab.errors import first_line
from moe_lab.report.common import ReportError, is_finite_non_bool, optional_json_object, read_json_object
from moe_lab.study.labels import LABEL_WIDTH

TRIAL_DIR = re.compile(r"^t(\d+)-(arm=.*)$")
SEED_DIR = re.compile(r"^seed(\d+)(?:\.retry(\d+))?$")


@dataclass
class SeedRun:
    seed: int
    status: str  # the final metrics' status, or "running" (no metrics yet) / "not started" (no directory)
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    run_dir: Path | None = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def setting(self, dotted: str) -> Any:
        """A value of the run's resolved config ('trainer.max_steps'), or None."""
        tree: Any = self.config
        for key in dotted.split("."):
            tree = tree.get(key) if isinstance(tree, dict) else None
        return tree

    def budget(self) -> tuple:
        """(max_steps, batch_size, block_size, accumulate_grad_batches) of the run's config (None: unset)."""
        return tuple(self.setting(k) for k in BUDGET_KEYS)


BUDGET_KEYS = ("trainer.max_steps", "data.batch_size", "data.block_size", "trainer.accumulate_grad_batches")


def recorded_tokens_per_step(batch: Any, block: Any, accumulate: Any) -> int | None:
    """Training tokens per optimizer step; None unless batch and block are integers (accumulate: 1 if unset)."""
    if not (isinstance(batch, int) and isinstance(block, int)):
        return None
    return step_tokens(batch, block, accumulate if isinstance(accumulate, int) else 1)


@dataclass
class Arm:
    name: str
    overrides: list[str]
    runs: list[SeedRun]  # one per seed, by seed

    @property
    def completed(self) -> list[SeedRun]:
        return [r for r in self.runs if r.completed]

    def values(self, metric: str) -> list[float]:
        """The metric over the completed seeds that recorded a finite value, by seed."""
        return list(self.by_seed(metric).values())

    def by_seed(self, metric: str) -> dict[int, float]:
        """{seed: metric} over the completed seeds that recorded a finite value, by seed."""
        return {r.seed: float(r.metrics[metric]) for r in self.completed if is_finite_non_bool(r.metrics.get(metric))}

    def first(self, key: str) -> Any:
        """A value every seed shares (parameter counts): the first seed's that recorded it."""
        return next((r.metrics[key] for r in self.runs if r.metrics.get(key) is not None), None)


@dataclass(frozen=True)
class Claim:
    metric: str
    arm: str
    other: str
    at_most: bool  # False: `arm less_than other`; True: `arm at_most other` (+ tolerance)
    tolerance: float = 0.0
    note: str = ""

    @property
    def text(self) -> str:
        if self.at_most:
            return f"{self.metric}: {self.arm} ≤ {self.other} + {self.tolerance:g}"
        return f"{self.metric}: {self.arm} < {self.other}"


@dataclass
class AblationData:
    study_dir: Path
    info: dict  # the study info the ablation wrote
    spec: dict  # sweep.yaml
    arms: list[Arm]  # in sweep.yaml's order, then arms found only on disk, by name
    claims: list[Claim]

    @property
    def name(self) -> str:
        return str(self.info.get("study_name") or self.spec.get("name") or self.study_dir.name)

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in (self.info.get("seeds") or self.spec.get("seeds") or [])]


def _read_yaml(path: Path) -> dict:
    try:
        return OmegaConf.to_container(read_yaml_mapping(path, ReportError), resolve=True)
    except ReportError:
        raise
    except Exception as err:  # an interpolation that does not resolve
        raise ReportError(f"cannot parse {path}: {first_line(err)}") from None


def _optional_yaml(path: Path) -> dict:
    try:
        return _read_yaml(path) if path.is_file() else {}
    except ReportError:
        return {}


def read_claims(spec: dict) -> list[Claim]:
    claims = []
    for raw in spec.get("claims") or []:
        at_most = bool(raw.get("at_most"))
        claims.append(
            Claim(
                metric=str(raw.get("metric", "val_loss")),
                arm=str(raw.get("arm", "")),
                other=str(raw["at_most"] if at_most else raw.get("less_than", "")),
                at_most=at_most,
                tolerance=float(raw.get("tolerance") or 0.0),
                note=str(raw.get("note") or ""),
            )
        )
    return claims


def _arm_of(label: str, names: list[str]) -> str:
    """The arm a trial directory's label ('arm=<name>', possibly truncated) belongs to."""
    for name in names:
        if label == f"arm={name}"[:LABEL_WIDTH]:
            return name
    return label.removeprefix("arm=")


def _seed_run(seed: int, run_dir: Path | None) -> SeedRun:
    if run_dir is None or not run_dir.is_dir():
        return SeedRun(seed, "not started")
    metrics = optional_json_object(run_dir / METRICS)
    status = str(metrics.get("status") or "running") if metrics else "running"
    return SeedRun(
        seed, status, metrics, _optional_yaml(run_dir / CONFIG), optional_json_object(run_dir / ENV), run_dir
    )


def _counted_run(seed: int, attempts: list[tuple[int, int, Path]]) -> SeedRun:
    """The run that stands for a seed: its completed attempt, else its latest (a retry of a seed whose
    worker died trains in seed<s>.retry<n>, leaving the interrupted seed<s> without final metrics)."""
    runs = [_seed_run(seed, path) for _, _, path in sorted(attempts, key=lambda a: a[:2], reverse=True)]
    return next((run for run in runs if run.completed), runs[0])


def load_ablation_data(study_dir: str | Path) -> AblationData:
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise ReportError(f"{study_dir}: no such directory")
    for name in (STUDY_INFO, SWEEP_COPY):
        if not (study_dir / name).is_file():
            raise ReportError(f"{study_dir}: no {name}; expected an ablation directory")
    info, spec = read_json_object(study_dir / STUDY_INFO), _read_yaml(study_dir / SWEEP_COPY)
    arm_overrides = {str(k): [str(o) for o in (v or [])] for k, v in (spec.get("arms") or {}).items()}
    names = list(arm_overrides)

    attempts: dict[str, dict[int, list[tuple[int, int, Path]]]] = {}  # arm -> seed -> (trial, retry, dir)
    for trial_dir in (study_dir / TRIALS).glob("t*"):
        if not (trial := TRIAL_DIR.match(trial_dir.name)) or not trial_dir.is_dir():
            continue
        arm = _arm_of(trial.group(2), names)
        for seed_dir in trial_dir.iterdir():
            if seed_dir.is_dir() and (m := SEED_DIR.match(seed_dir.name)):
                attempt = (int(trial.group(1)), int(m.group(2) or 0), seed_dir)
                attempts.setdefault(arm, {}).setdefault(int(m.group(1)), []).append(attempt)

    data = AblationData(study_dir, info, spec, [], read_claims(spec))
    for name in names + sorted(set(attempts) - set(names)):
        tried = attempts.get(name, {})
        seeds = sorted(set(data.seeds) | set(tried))
        runs = [_counted_run(s, tried[s]) if s in tried else _seed_run(s, None) for s in seeds]
        data.arms.append(Arm(name, arm_overrides.get(name, []), runs))
    return data
