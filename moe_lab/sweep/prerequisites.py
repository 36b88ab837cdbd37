"""An ablation's prerequisite runs (`prerequisites: {name: [overrides]}`): runs of the base experiment trained
for every seed before the arms, each in <study_dir>/prerequisites/<name>/seed<S>, for arms to start from. An
arm names the one of its own seed by the value `@name` (`upcycle.source=@dense`, `model_init=@dense`), bound
here, per seed, to that run directory's absolute path: what the arm's run records in its config.yaml.

Sparse Upcycling (Komatsuzaki et al. 2022) needs this: the MoE upcycled from a dense model and the dense model
trained on instead start from the same trained dense run of their seed. Checking, planning and training the
runs: moe_lab.sweep.prerequisite_runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from moe_lab.artifacts.run_dir import CONFIG
from moe_lab.config import ExperimentConfig, to_yaml

REFERENCE = "@"  # an arm's value "@name" names prerequisite `name`


def named(override: str) -> str | None:
    """The prerequisite an override names by its value (`key=@name` -> name), or None."""
    value = override.split("=", 1)[-1]
    return value[len(REFERENCE) :] if value.startswith(REFERENCE) else None


@dataclass
class Prerequisites:
    runs: dict[str, list[str]]  # name -> its overrides of the base experiment (after the sweep's own)
    root: Path  # <study_dir>/prerequisites (moe_lab.artifacts.study_dir.PREREQUISITES), absolute
    # Each prerequisite's experiment as validated before any ran (prerequisite_runs.check): what an arm's
    # configuration is planned and validated against.
    planned: dict[str, ExperimentConfig] = field(default_factory=dict)
    _stand_ins: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)

    def run_dir(self, name: str, seed: int) -> Path:
        return self.root / name / f"seed{seed}"  # as Sweep.placement names a seed's run

    def bind(self, overrides: list[str], seed: int | None) -> list[str]:
        """`overrides` with each `@name` value replaced by prerequisite `name`'s run directory for `seed`.

        An arm is planned and validated (seed None) before any prerequisite ran; there `@name` is a stand-in:
        a directory holding only the prerequisite's planned config.yaml, which is all a config reads of a run
        directory (model_init's architecture; that upcycle.source exists). Its weights are read when a run starts.
        """
        bound = []
        for item in overrides:
            name = named(item)
            if name is not None:
                where = self.run_dir(name, seed) if seed is not None else self._stand_in(name)
                item = f"{item.split('=', 1)[0]}={where}"
            bound.append(item)
        return bound

    def _stand_in(self, name: str) -> Path:
        if self._stand_ins is None:  # removed when this object goes, at the latest when the process ends
            self._stand_ins = tempfile.TemporaryDirectory(prefix="moe_lab_planned_")
        path = Path(self._stand_ins.name) / name
        if not (path / CONFIG).is_file():
            path.mkdir(exist_ok=True)
            (path / CONFIG).write_text(to_yaml(self.planned[name]))
        return path
